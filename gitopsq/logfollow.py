"""Reading a submission's output as it is written: `logs -f`, the streaming API route, the run page.

A submission's output is the log of each of its attempts, oldest first (a retry runs on a new
node). The reader yields masked text as it arrives and, when following, ends once the
submission has ended and its last bytes are out. A local log is capped by keeping its tail
under a line `[gitopsq: N bytes of output cut here]`; that line says where the kept bytes sit
in the whole output, so the reader goes on from where it was, not from the top again.
"""

from __future__ import annotations

import codecs
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from gitopsq.masking import StreamMasker, mask
from gitopsq.store import FINISHED, Store, labelled_logs

POLL = 0.5  # seconds between looks at the log and the submission's status
READ_BYTES = 64 * 1024
TAIL_BYTES = 256 * 1024  # --tail N reads at most this much from the end of the log
_CUT_LINE = re.compile(rb"\[gitopsq: (\d+) bytes of output cut here\]\n")


class Note(str):
    """Something said about the output rather than part of it (the CLI prints it on stderr)."""


# Yielded instead of sleeping when the caller sleeps itself (a web server between two looks).
IDLE = Note("")


@dataclass
class AttemptLog:
    """One attempt's log file, read from where the reader got to (`shown`: bytes of the whole
    output read so far, counting what a cap cut from the file)."""

    path: str
    shown: int = 0
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))

    def read_new(self) -> tuple[bytes, int]:
        """(the bytes written since the last read, bytes cut before they could be read)."""
        with open(self.path, "rb") as f:
            for _ in range(3):  # the writer may cut the file between our reads: read again
                head, cut = _cut_of(f)
                position = head + self.shown - cut
                missed = max(0, head - position)
                f.seek(max(position, head))
                data = f.read()
                if _cut_of(f) == (head, cut):
                    self.shown += missed + len(data)
                    return data, missed
        return b"", 0

    def decode(self, data: bytes, final: bool = False) -> str:
        return self.decoder.decode(data, final=final)


def _cut_of(f) -> tuple[int, int]:
    """(length of the cut line at the top of the file, bytes it says were cut); (0, 0) when none."""
    f.seek(0)
    match = _CUT_LINE.match(f.read(64))
    return (len(match[0]), int(match[1])) if match else (0, 0)


def tail_start(path: str, lines: int, secrets) -> tuple[str, int]:
    """(the last `lines` whole lines of the log, masked; the output's byte count they end at).

    The text ends at the log's last newline: the reader goes on from there. Masking at a line
    boundary hides as much as masking the whole, since each line of a value is masked alone."""
    with open(path, "rb") as f:
        head, cut = _cut_of(f)
        size = f.seek(0, os.SEEK_END)
        start = max(head, size - TAIL_BYTES)
        f.seek(start)
        data = f.read()
    end = data.rfind(b"\n") + 1
    text = mask(data[:end].decode("utf-8", errors="replace"), secrets)
    kept = text.splitlines(True)
    if start > head and len(kept) <= lines:
        kept = kept[1:]  # the first line was cut by the byte limit
    return "".join(kept[-lines:] if lines else []), cut + (start - head) + end


def read_submission(store: Callable[[], Store], submission_id: int, mask_values: Callable[[], list[str]], *,
                    follow: bool = False, tail: int | None = None, poll: float = POLL,
                    sleep: Callable[[float], None] | None = time.sleep) -> Iterator[str]:
    """The output of a submission, masked: what is there, then (follow) what comes, until it ends.

    store(): the state to read (called at each look: a web app's thread may change between
    them). mask_values(): the secret values to hide, asked again at each new attempt. tail:
    start with the last N lines of the latest attempt instead of every attempt from the top.
    Yields text, and Note for what is said about it (attempt headers are text, as `logs` shows them).
    A cluster run's nodes write at once: each node's log of the latest attempt is followed, its
    header repeated when the output moves from one node to another.
    sleep=None: yields IDLE where it would sleep, so that a server can wait without a thread and
    notice a client that went away.
    """
    logs = labelled_logs(store(), submission_id)
    open_logs: dict[int, tuple[AttemptLog, StreamMasker]] = {}  # index in `logs` -> its reader
    finished: set[int] = set()
    shown: list[int | None] = [None]  # the log whose header or output was yielded last

    def header(i: int) -> str:
        shown[0] = i
        return f"--- {logs[i].label} ({logs[i].path})\n"

    def out(i: int, text: str) -> Iterator[str]:
        if text:
            if shown[0] is not None and shown[0] != i:
                yield header(i)
            shown[0] = i
            yield text

    if tail is not None and logs:
        latest = [i for i, log in enumerate(logs) if log.attempt == logs[-1].attempt]
        finished.update(range(latest[0]))
        for i in latest:
            reader = AttemptLog(logs[i].path)
            try:
                text, reader.shown = tail_start(reader.path, tail, mask_values())
            except OSError as exc:
                yield Note(f"(log not readable here: {exc.strerror})\n")
                finished.add(i)
                continue
            if len(latest) > 1:
                yield header(i)
            yield text
            shown[0] = i
            open_logs[i] = reader, StreamMasker(mask_values())
    many = len(logs) > 1 and tail is None
    while True:
        row = store().submission(submission_id)
        ended = row is None or row["status"] in FINISHED
        logs = labelled_logs(store(), submission_id)
        writing = logs[-1].attempt if logs and follow and not ended else None  # its nodes may write more
        for i in range(len(logs)):
            if i in finished:
                continue
            if i not in open_logs:
                open_logs[i] = AttemptLog(logs[i].path), StreamMasker(mask_values())
                if many or i > 0:
                    yield header(i)
            reader, masker = open_logs[i]
            try:
                data, missed = reader.read_new()
            except OSError as exc:
                yield Note(f"(log not readable here: {exc.strerror})\n")
                finished.add(i)
                continue
            if missed:
                yield from out(i, masker.finish() + f"[gitopsq: {missed} bytes of output were cut before they could be shown]\n")
            yield from out(i, masker.feed(reader.decode(data)))
            if logs[i].attempt == writing:
                continue
            yield from out(i, masker.feed(reader.decode(b"", final=True)) + masker.finish())
            finished.add(i)
            del open_logs[i]
        if ended or not follow:
            return
        if sleep is None:
            yield IDLE
        else:
            sleep(poll)
