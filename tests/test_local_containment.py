"""A local run owns every process it starts: stopping it, or its end, leaves nothing behind.

Each test tags its run with a unique PROBE variable and looks for it in /proc/PID/environ, so
it finds the run's processes wherever they went (setsid, double fork) and nobody else's.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
from libcloud.compute.types import NodeState

from gitopsq.providers.local import LocalNodeDriver
from tests.test_local_driver import is_live, wait_for, wait_stopped
from tests.test_local_queue import drive, make, run_file


def probe_processes(probe: str) -> dict[int, tuple[str, ...]]:
    """Live processes whose environment carries PROBE=probe, with their command lines."""
    marker, found = f"PROBE={probe}".encode(), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            cmdline = tuple(Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")[:-1])
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if is_live(int(entry)):
            found[int(entry)] = cmdline
    return found


def sleeps(probe: str) -> list[str]:
    """The `sleep N` processes of the probed run, by their argument."""
    return sorted(cmd[1] for cmd in probe_processes(probe).values() if cmd[:1] == ("sleep",))


@pytest.fixture
def probe():
    """A unique tag for one test's run; whatever still carries it at the end is killed."""
    tag = uuid.uuid4().hex
    yield tag
    for pid in probe_processes(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- stopping a run --------------------------------------------------------------------------


def test_destroy_ends_processes_that_left_the_group(state_dir, probe):
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0)
    script = (
        "setsid sleep 777 >/dev/null 2>&1 &\n"  # a session of its own
        "(setsid sleep 778 >/dev/null 2>&1 &)\n"  # double fork: its parent is gone at once
        "sleep 600\n"
    )
    node = driver.create_node("escape", ex_script=script, ex_env={"PROBE": probe})
    wait_for(lambda: sleeps(probe) == ["600", "777", "778"], 10, "the three sleeps")

    assert driver.destroy_node(node) is True
    assert probe_processes(probe) == {}
    assert driver.ex_capacity()["slots"] == 1
    assert driver.ex_get_node(node.id).extra["exit_code"] == 143  # the status of the stop is recorded


def test_destroy_after_the_wrapper_was_killed_still_ends_detached_processes(state_dir, probe):
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0)
    node = driver.create_node("orphaned", ex_script="setsid sleep 777 >/dev/null 2>&1 &\nsleep 600\n",
                              ex_env={"PROBE": probe})
    wait_for(lambda: sleeps(probe) == ["600", "777"], 10, "the sleeps")
    os.kill(node.extra["pid"], signal.SIGKILL)  # nothing is left to stop the run's processes

    lost = wait_stopped(driver, node.id)
    assert lost.extra["lost"] is True
    driver.destroy_node(lost, ex_timeout=1)
    assert probe_processes(probe) == {}


def test_cancel_ends_detached_processes_before_the_slot_is_reused(tmp_path, probe, cleanup_nodes):
    repo, store, controller = make(tmp_path, slots=1)
    env = f"env:\n  PROBE: {probe}\n"
    repo.write("runs/a.yml", run_file("a", ["setsid sleep 777 >/dev/null 2>&1 &", "sleep 600"], extra=env))
    repo.commit("add a")
    drive(controller, lambda: sleeps(probe) == ["600", "777"])

    repo.remove("runs/a.yml")
    repo.write("runs/b.yml", run_file("b", ["echo b"]))
    repo.commit("replace a by b")
    drive(controller, lambda: store.current_submission("b")["status"] == "done")
    assert store.current_submission("a")["status"] == "cancelled"
    assert probe_processes(probe) == {}


# ---- the end of a run ------------------------------------------------------------------------


def test_background_processes_end_with_the_run_and_hold_its_slot_until_gone(state_dir, probe):
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0, stop_grace=60)
    script = (
        "setsid sleep 779 >/dev/null 2>&1 &\n"
        # Ignores TERM, so it outlives the main command until it sees `go`.
        "(trap '' TERM; touch ignoring; while [ ! -e go ]; do sleep 0.05; done) &\n"
        # The main command ends only once the TERM is ignored (on a loaded machine it could come first).
        "while [ ! -e ignoring ]; do sleep 0.05; done\n"
        "echo $$ > main.pid\n"
        "exit 4\n"
    )
    node = driver.create_node("leftovers", ex_script=script, ex_env={"PROBE": probe})
    workdir = state_dir / "workdirs" / node.id / "work"
    main_pid = int(wait_for(lambda: (workdir / "main.pid").exists() and (workdir / "main.pid").read_text().strip(),
                            10, "the main pid"))
    wait_for(lambda: not is_live(main_pid), 10, "the main command to end")

    # The main command ended, a process it started has not: the run still holds its slot.
    wait_for(lambda: "779" not in sleeps(probe), 10, "the TERMed leftover to end")
    still = driver.ex_get_node(node.id)
    assert still.state == NodeState.RUNNING and still.extra["exit_code"] is None
    assert driver.ex_capacity()["slots"] == 0

    (workdir / "go").touch()
    stopped = wait_stopped(driver, node.id)
    assert stopped.extra["exit_code"] == 4  # the main command's status, not the leftovers'
    assert probe_processes(probe) == {}
    assert driver.ex_capacity()["slots"] == 1


def test_leftovers_that_ignore_term_are_killed_after_the_grace(state_dir, probe):
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0, stop_grace=0.5)
    script = "(trap '' TERM; exec sleep 600) &\nsetsid bash -c \"trap '' TERM; sleep 601\" &\nsleep 0.5\nexit 0\n"
    node = driver.create_node("stubborn", ex_script=script, ex_env={"PROBE": probe})
    assert wait_stopped(driver, node.id).extra["exit_code"] == 0
    assert probe_processes(probe) == {}


def test_run_gets_default_signal_dispositions(state_dir):
    # `yes | head` ends `yes` with SIGPIPE (141) only if the run did not inherit an ignored SIGPIPE.
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0)
    node = driver.create_node("pipe", ex_script='yes | head -n 1; echo "status ${PIPESTATUS[0]}"')
    wait_stopped(driver, node.id)
    assert driver.ex_log_path(node).read_text().splitlines() == ["y", "status 141"]


def test_run_processes_carry_the_node_id(state_dir):
    driver = LocalNodeDriver(state_dir, slots=1, gpus=0)
    node = driver.create_node("tagged", ex_script="echo $GITOPSQ_NODE_ID")
    wait_stopped(driver, node.id)
    assert driver.ex_log_path(node).read_text().strip() == node.id
