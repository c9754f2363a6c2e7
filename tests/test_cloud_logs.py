"""A cloud node's log as the controller stores it: chunks at offsets, replays, gaps, the size
cap, what never arrived, and a controller killed between the steps of a write."""

from __future__ import annotations

import json
import os

from gitopsq.providers.cloud_logs import NodeLog, log_path


def test_chunks_are_stored_in_order_and_a_replay_is_not_stored_twice(tmp_path):
    log = NodeLog(log_path(tmp_path / "logs", 7, 2), limit=1 << 20)
    assert log.path == tmp_path / "logs" / "7.2.log"
    assert log.append(0, b"one\n") == (4, True, False)
    assert log.append(0, b"one\n") == (4, True, False), "the same chunk again (its answer was lost)"
    assert log.append(2, b"e\ntwo\n") == (8, True, False), "overlapping: only the new part"
    assert log.append(12, b"four\n") == (8, False, False), "a gap: resend from 8"
    assert log.append(8, b"three\n", final=True) == (14, True, True)
    assert log.path.read_bytes() == b"one\ntwo\nthree\n"


def test_final_only_when_the_chunk_ends_where_the_log_does(tmp_path):
    log = NodeLog(tmp_path / "a.log", limit=1 << 20)
    log.append(0, b"abcdef")
    assert log.append(0, b"abc", final=True).complete is False  # a stale final chunk
    assert log.append(6, b"", final=True) == (6, True, True)


def test_past_the_cap_the_log_keeps_its_tail_under_a_line_saying_so(tmp_path):
    log = NodeLog(tmp_path / "a.log", limit=200)
    offset = 0
    for i in range(40):
        line = f"line {i:03d}\n".encode()
        offset = log.append(offset, line).offset
    assert offset == 40 * 9, "every byte counts as received, kept or cut"
    text = log.path.read_text()
    assert len(text) <= 200 and text.endswith("line 039\n")
    first, *rest = text.splitlines()
    assert first.startswith("[gitopsq: ") and first.endswith(" bytes of output cut here]")
    cut = int(first.split()[1])
    assert cut + sum(len(r) + 1 for r in rest) == 40 * 9
    assert all(r.startswith("line ") for r in rest)


def test_what_never_arrived_is_said_once(tmp_path):
    log = NodeLog(tmp_path / "a.log", limit=1 << 20)
    log.append(0, b"started\n")
    assert log.note_incomplete("the node ended without its last chunk")
    assert not log.note_incomplete("again")
    assert log.path.read_text() == ("started\n\n[gitopsq: the node ended without its last chunk; "
                                    "the node's output after byte 8 did not reach the controller]\n")
    done = NodeLog(tmp_path / "b.log", limit=1 << 20)
    done.append(0, b"all\n", final=True)
    assert not done.note_incomplete("lost") and done.path.read_text() == "all\n"


def test_an_append_killed_before_its_commit_is_undone_and_resent(tmp_path):
    log = NodeLog(tmp_path / "a.log", limit=1 << 20)
    log.append(0, b"kept\n")
    with open(log.path, "ab") as f:  # written, and the process killed before the state was saved
        f.write(b"half a chu")
    assert log.append(5, b"half a chunk\n") == (18, True, False)
    assert log.path.read_bytes() == b"kept\nhalf a chunk\n"


def test_a_cut_killed_midway_is_finished_or_dropped(tmp_path):
    log = NodeLog(tmp_path / "a.log", limit=100)
    log.append(0, b"x" * 60 + b"\n")
    state_file = tmp_path / "a.log.state"
    cut_file = tmp_path / "a.log.cut"
    # killed after writing the cut, before the state named it: dropped, the chunk is resent
    cut_file.write_bytes(b"[gitopsq: 61 bytes of output cut here]\nnew\n")
    assert log.append(61, b"y\n") == (63, True, False)
    assert not cut_file.exists() and log.path.read_bytes() == b"x" * 60 + b"\ny\n"
    # killed after committing the state, before the rename: put in place by the next call
    cut_file.write_bytes(b"[gitopsq: 63 bytes of output cut here]\nz\n")
    state = json.loads(state_file.read_text())
    state.update(received=65, size=os.path.getsize(cut_file), ino=os.stat(cut_file).st_ino, head=38, cut=63)
    state_file.write_text(json.dumps(state))
    assert log.append(65, b"after\n") == (71, True, False)
    assert log.path.read_bytes() == b"[gitopsq: 63 bytes of output cut here]\nz\nafter\n"
