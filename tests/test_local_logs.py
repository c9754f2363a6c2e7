"""A local run's log is bounded, and a full disk costs output, never the run's exit status."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from libcloud.compute.types import NodeState

from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.runtime import parse_log_size
from tests.helpers import GitRepo, run_cli, task
from tests.test_local_driver import wait_for, wait_stopped

CUT = re.compile(rb"\[gitopsq: (\d+) bytes of output cut here\]")
LOST = re.compile(rb"\[gitopsq: (\d+) bytes of output lost: disk full\]")


def seq_output(first: int, last: int) -> bytes:
    return "".join(f"{i}\n" for i in range(first, last + 1)).encode()


def check_tail(log: bytes, last: int, cap: int) -> None:
    """The log is a cut line, then consecutive whole lines of `seq 1 last` ending at last."""
    assert len(log) <= cap
    first_line, kept = log.split(b"\n", 1)
    cut = CUT.fullmatch(first_line)
    assert cut, first_line
    lines = kept.decode().splitlines()
    assert lines[-1] == str(last)
    assert kept == seq_output(int(lines[0]), last)  # whole lines, none missing
    assert int(cut[1]) == len(seq_output(1, last)) - len(kept)  # says exactly what is gone


def test_log_keeps_the_tail_and_says_what_was_cut(state_dir):
    cap = 64 * 1024
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0, max_log_size=cap)
    node = driver.create_node("chatty", ex_script="seq 1 100000\nwhile [ ! -e go ]; do sleep 0.05; done\necho end")
    log = driver.ex_log_path(node)
    # Bounded while the run runs, not only once it ends.
    wait_for(lambda: log.read_bytes().endswith(b"\n100000\n"), 10, "the last line in the log")
    check_tail(log.read_bytes(), 100000, cap)
    assert driver.ex_get_node(node.id).state == NodeState.RUNNING

    (state_dir / "workdirs" / node.id / "work" / "go").touch()
    assert wait_stopped(driver, node.id).extra["exit_code"] == 0
    assert log.read_bytes().endswith(b"\n100000\nend\n")
    assert len(log.read_bytes()) <= cap


def test_a_line_longer_than_the_cap_keeps_its_end(state_dir):
    cap = 16 * 1024
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0, max_log_size=cap)
    node = driver.create_node("one-line", ex_script="head -c 300000 /dev/zero | tr '\\0' x; echo END")
    wait_stopped(driver, node.id)
    log = driver.ex_log_path(node).read_bytes()
    first_line, kept = log.split(b"\n", 1)
    assert len(log) <= cap and kept.endswith(b"xEND\n") and set(kept[:-4]) == {ord("x")}
    assert int(CUT.fullmatch(first_line)[1]) == 300000 + 4 - len(kept)


def test_small_output_is_left_as_it_is(state_dir):
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0, max_log_size=64 * 1024)
    node = driver.create_node("quiet", ex_script="seq 1 1000")
    wait_stopped(driver, node.id)
    assert driver.ex_log_path(node).read_bytes() == seq_output(1, 1000)


def test_log_size_must_leave_room_for_output(state_dir):
    from gitopsq.providers.local import LocalError

    with pytest.raises(LocalError, match="max_log_size"):
        LocalNodeDriver(state_dir, slots=1, gpus=0, max_log_size=100)


# ---- a small disk ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (needs root and permission to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        state = mount_point / "state"
        if state.exists():
            driver = LocalNodeDriver(state, slots=1, gpus=0)
            for node in driver.list_nodes():
                driver.destroy_node(node, ex_timeout=1)
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_run_that_fills_the_disk_keeps_its_exit_code(small_disk):
    driver = LocalNodeDriver(small_disk / "state", slots=1, gpus=0)  # the default cap is larger than the disk
    node = driver.create_node("flood", ex_script="seq 1 300000\necho still running\nexit 3")  # about 2 MB
    stopped = wait_stopped(driver, node.id, timeout=30)
    assert stopped.extra["lost"] is False
    assert stopped.extra["exit_code"] == 3


def test_output_lost_to_a_full_disk_is_noted_once_there_is_room(small_disk):
    driver = LocalNodeDriver(small_disk / "state", slots=1, gpus=0)
    script = (
        "head -c 2000000 /dev/zero > filler 2>/dev/null\n"  # the disk is full from here
        "seq 1 20000\n"
        "rm filler\n"
        "echo after\n"
    )
    node = driver.create_node("full", ex_script=script)
    assert wait_stopped(driver, node.id, timeout=30).extra["exit_code"] == 0
    first, rest = driver.ex_log_path(node).read_bytes().split(b"\n", 1)
    lost = LOST.fullmatch(first)
    assert lost, first
    assert int(lost[1]) == len(seq_output(1, 20000))
    assert rest == b"after\n"


# ---- the option ------------------------------------------------------------------------------


def test_log_sizes_are_read_like_run_file_sizes():
    assert parse_log_size("512KB") == 512 * 1024
    assert parse_log_size("16MB") == 16 * 1024**2
    assert parse_log_size("1GB") == 1024**3
    assert parse_log_size("65536") == 65536
    assert parse_log_size("2mb") == 2 * 1024**2
    for bad in ("", "lots", "12XB", "-1MB", "1KB"):
        with pytest.raises(ValueError):
            parse_log_size(bad)


def test_serve_caps_logs_at_max_log_size(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/chatty.yml", task("chatty", "seq 1 100000"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    result = run_cli("serve", "--once", "--repo", str(repo.path), "--db", str(db), "--max-log-size", "64KB")
    assert result.exit_code == 0, result.output
    driver = LocalNodeDriver(log_dir_for(db), slots=1, gpus=0)
    (node,) = driver.list_nodes()
    wait_stopped(driver, node.id)
    check_tail(driver.ex_log_path(node).read_bytes(), 100000, 64 * 1024)


def test_serve_rejects_a_bad_max_log_size(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.commit()
    result = run_cli("serve", "--once", "--repo", str(repo.path), "--db", str(tmp_path / "s" / "g.db"),
                     "--max-log-size", "lots")
    assert result.exit_code == 2
    assert "--max-log-size" in result.output and "16MB" in result.output
