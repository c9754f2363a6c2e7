"""The local compute provider, exercised with real processes."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from libcloud.compute.providers import get_driver
from libcloud.compute.types import NodeState

from gitopsq.providers.local import (
    LocalCapacityError,
    LocalError,
    LocalImageError,
    LocalNodeDriver,
    register,
)

PR_SET_CHILD_SUBREAPER = 36


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    """Poll until predicate() is truthy and return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def proc_state(pid: int) -> str | None:
    """Process state letter, None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def is_live(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z", "X")


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                out.append(int(entry))
    return out


def zombie_children() -> list[int]:
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            if int(fields[1]) == me and fields[0] == "Z":
                out.append(int(entry))
    return out


@pytest.fixture(scope="module", autouse=True)
def reaping_parent():
    """Act like a reaping init: orphaned node processes are re-parented to this process.

    On a normal machine init adopts and reaps them; here it lets the tests see that the
    driver itself reaps wrappers re-parented to the controller, and keeps the sandbox clean.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    yield
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def state_dir(tmp_path):
    """A state dir whose nodes are all killed and reaped after the test."""
    state = tmp_path / "state"
    yield state
    for meta_file in (state / "nodes").glob("*/meta.json"):
        pid = json.loads(meta_file.read_text()).get("pid")
        if pid and group_members(pid):
            os.killpg(pid, signal.SIGKILL)
            wait_for(lambda: not group_members(pid), 5, "cleanup of the node group")
    # Reap what was re-parented to us (orphaned children of ended scripts).
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break


def make_driver(state_dir, **kw) -> LocalNodeDriver:
    return LocalNodeDriver(state_dir, **kw)


def wait_stopped(driver, node_id, timeout=10.0):
    def stopped():
        node = driver.ex_get_node(node_id)
        return node if node.state == NodeState.STOPPED else None

    return wait_for(stopped, timeout, f"node {node_id} to stop")


# ---- registration and catalog --------------------------------------------------------


def test_register_makes_get_driver_return_the_class():
    register()
    register()  # idempotent
    assert get_driver("gitopsq-local") is LocalNodeDriver
    assert LocalNodeDriver.type == "gitopsq-local"


def test_sizes_and_images_describe_this_machine(state_dir):
    driver = make_driver(state_dir, slots=3, gpus=2)
    assert driver.connection is None  # no network connection set up
    (size,) = driver.list_sizes()
    assert size.id == "local" and size.price == 0
    assert size.ram > 0 and size.disk > 0
    assert size.extra == {"cpus": 3, "gpus": 2}
    assert [i.id for i in driver.list_images()] == ["host"]
    assert make_driver(state_dir).slots == os.cpu_count()


# ---- running a node ------------------------------------------------------------------


def test_node_runs_script_in_its_workdir_and_records_exit_code(state_dir):
    driver = make_driver(state_dir, slots=2, gpus=0)
    node = driver.create_node(
        "hello",
        ex_script="echo hello; echo $GITOPSQ_X; pwd; echo out > result.txt; exit 3",
        ex_env={"GITOPSQ_X": "from-env"},
        ex_tags={"run": "r1", "commit": "abc123"},
    )
    assert node.id.startswith("local-") and node.name == "hello"
    assert node.state in (NodeState.RUNNING, NodeState.STOPPED)
    assert node.extra["pid"] > 0
    listed = {n.id: n for n in driver.list_nodes()}
    assert node.id in listed

    stopped = wait_stopped(driver, node.id)
    assert stopped.extra["exit_code"] == 3
    assert stopped.extra["lost"] is False
    assert stopped.extra["finished_at"] is not None
    assert stopped.extra["tags"] == {"run": "r1", "commit": "abc123"}
    node_dir = state_dir / "nodes" / node.id
    workdir = state_dir / "workdirs" / node.id / "work"
    assert driver.ex_log_path(node) == state_dir / "logs" / f"{node.id}.log"
    assert driver.ex_log_path(node.id).read_text().splitlines() == [
        "hello", "from-env", str(workdir)
    ]
    assert (workdir / "result.txt").read_text() == "out\n"
    assert (node_dir / "exit_code").read_text().strip() == "3"
    # Ended nodes stay listed until destroyed, so the controller can read the exit code.
    assert [n.extra["exit_code"] for n in driver.list_nodes()] == [3]


def test_env_is_clean_and_minimal(state_dir, monkeypatch):
    monkeypatch.setenv("GITOPSQ_CONTROLLER_TOKEN", "secret")
    driver = make_driver(state_dir, slots=1, gpus=0)
    node = driver.create_node("env", ex_script="env", ex_env={"A": "1"})
    wait_stopped(driver, node.id)
    env = dict(
        line.split("=", 1) for line in driver.ex_log_path(node).read_text().splitlines()
    )
    assert "GITOPSQ_CONTROLLER_TOKEN" not in env
    assert env["A"] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert env["PATH"] and env["HOME"] and env["LANG"]


def test_output_reaches_the_log_while_running(state_dir):
    driver = make_driver(state_dir, slots=1, gpus=0)
    script = f"{sys.executable} -c 'print(\"early\")'\nwhile [ ! -e go ]; do sleep 0.05; done"
    node = driver.create_node("live", ex_script=script)
    log = driver.ex_log_path(node)
    wait_for(lambda: "early" in log.read_text(), 10, "output in the log")
    assert driver.ex_get_node(node.id).state == NodeState.RUNNING
    (state_dir / "workdirs" / node.id / "work" / "go").touch()
    assert wait_stopped(driver, node.id).extra["exit_code"] == 0


def test_workdir_name_and_node_is_its_own_session(state_dir):
    driver = make_driver(state_dir, slots=1, gpus=0)
    node = driver.create_node("wd", ex_script="pwd; ps -o sid= -p $$", ex_workdir_name="repo")
    assert Path(node.extra["workdir"]) == state_dir / "workdirs" / node.id / "repo"
    wait_stopped(driver, node.id)
    pwd, sid = driver.ex_log_path(node).read_text().split()
    assert pwd == node.extra["workdir"]
    assert int(sid) == node.extra["pid"]  # the wrapper leads its own session and group
    with pytest.raises(LocalError, match="ex_workdir_name"):
        driver.create_node("bad", ex_script="true", ex_workdir_name="../x")


# ---- capacity ------------------------------------------------------------------------


def test_slot_capacity(state_dir):
    driver = make_driver(state_dir, slots=1, gpus=0)
    assert driver.ex_capacity() == {"slots": 1, "gpus": 0}
    first = driver.create_node("one", ex_script="while [ ! -e go ]; do sleep 0.05; done")
    assert driver.ex_capacity() == {"slots": 0, "gpus": 0}
    with pytest.raises(LocalCapacityError, match="no free slot"):
        driver.create_node("two", ex_script="true")
    assert len(driver.list_nodes()) == 1  # the refused node left nothing behind

    (state_dir / "workdirs" / first.id / "work" / "go").touch()
    wait_stopped(driver, first.id)
    assert driver.destroy_node(first) is True
    assert driver.list_nodes() == []
    second = driver.create_node("two", ex_script="exit 0")
    assert wait_stopped(driver, second.id).extra["exit_code"] == 0


def test_gpu_assignment(state_dir):
    driver = make_driver(state_dir, slots=4, gpus=2)
    hold = "echo $CUDA_VISIBLE_DEVICES; while [ ! -e go ]; do sleep 0.05; done"
    a = driver.create_node("a", ex_script=hold, ex_gpus=1)
    b = driver.create_node("b", ex_script=hold, ex_gpus=1)
    assert (a.extra["gpus"], b.extra["gpus"]) == ([0], [1])
    for node, expected in ((a, "0"), (b, "1")):
        log = driver.ex_log_path(node)
        wait_for(lambda: log.read_text(), 10, "gpu line")
        assert log.read_text().strip() == expected
    assert driver.ex_capacity() == {"slots": 2, "gpus": 0}
    with pytest.raises(LocalCapacityError, match="1 GPU.*0 of 2 free"):
        driver.create_node("c", ex_script="true", ex_gpus=1)
    # A CPU-only node still fits.
    cpu = driver.create_node("cpu", ex_script="true")
    assert cpu.extra["gpus"] == []

    driver.destroy_node(a)
    d = driver.create_node("d", ex_script="echo $CUDA_VISIBLE_DEVICES", ex_gpus=1)
    assert d.extra["gpus"] == [0]
    wait_stopped(driver, d.id)
    assert driver.ex_log_path(d).read_text().strip() == "0"


# ---- destroy -------------------------------------------------------------------------


def test_destroy_kills_the_whole_process_group(state_dir):
    driver = make_driver(state_dir, slots=1, gpus=0)
    node = driver.create_node("sleeper", ex_script="sleep 60 & echo $! > child.pid; wait")
    child_file = state_dir / "workdirs" / node.id / "work" / "child.pid"
    wait_for(lambda: child_file.exists() and child_file.read_text().strip(), 10, "child pid")
    child = int(child_file.read_text())
    pid = node.extra["pid"]
    assert is_live(child) and is_live(pid)

    started = time.monotonic()
    assert driver.destroy_node(node) is True
    assert time.monotonic() - started < 3
    assert not is_live(child) and not is_live(pid)
    assert group_members(pid) == []
    assert driver.list_nodes() == []
    gone = driver.ex_get_node(node.id)
    assert gone.state == NodeState.TERMINATED and gone.extra["destroyed"] is True
    assert gone.extra["exit_code"] == 143  # the wrapper recorded the SIGTERM
    assert driver.ex_log_path(node).exists()  # logs outlive destroy
    # The directory moved out of nodes/: listing costs what the live nodes cost, not all that ever ran.
    assert not (state_dir / "nodes" / node.id).exists() and (state_dir / "ended" / node.id / "meta.json").exists()
    assert driver.destroy_node(node) is True  # idempotent
    assert driver.destroy_node("local-nope") is False
    assert driver.ex_get_node("local-nope") is None


def test_destroy_escalates_to_sigkill(state_dir):
    driver = make_driver(state_dir, slots=1, gpus=0)
    # Ignoring TERM is inherited by the sleep, so only SIGKILL ends this group.
    node = driver.create_node("stubborn", ex_script="trap '' TERM; echo ready; sleep 60")
    wait_for(lambda: "ready" in driver.ex_log_path(node).read_text(), 10, "ready")
    started = time.monotonic()
    assert driver.destroy_node(node, ex_timeout=0.3) is True
    assert time.monotonic() - started < 3
    assert group_members(node.extra["pid"]) == []


# ---- durability ----------------------------------------------------------------------

_CONTROLLER = textwrap.dedent(
    """
    import os, signal, sys
    from gitopsq.providers.local import LocalNodeDriver
    d = LocalNodeDriver(sys.argv[1], slots=2, gpus=0)
    script = "while [ ! -e go ]; do sleep 0.05; done; echo done; exit 7"
    n = d.create_node("durable", ex_script=script, ex_tags={"k": "v"})
    print(n.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_node_survives_controller_kill_and_restart_reads_exit_code(state_dir):
    # A real controller process creates the node, then dies with kill -9.
    proc = subprocess.run(
        [sys.executable, "-c", _CONTROLLER, str(state_dir)],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    node_id = proc.stdout.strip()

    restarted = make_driver(state_dir, slots=2, gpus=0)
    (node,) = restarted.list_nodes()
    assert node.id == node_id and node.name == "durable"
    assert node.state == NodeState.RUNNING
    assert node.extra["tags"] == {"k": "v"}
    assert restarted.ex_capacity()["slots"] == 1

    (state_dir / "workdirs" / node_id / "work" / "go").touch()
    stopped = wait_stopped(restarted, node_id)
    assert stopped.extra["exit_code"] == 7 and stopped.extra["lost"] is False
    assert restarted.ex_log_path(node_id).read_text() == "done\n"
    # The wrapper was re-parented to us (the reaping parent) and list_nodes reaped it.
    assert proc_state(node.extra["pid"]) is None
    assert restarted.ex_capacity()["slots"] == 2


def test_second_driver_instance_sees_running_node(state_dir):
    first = make_driver(state_dir, slots=2, gpus=0)
    node = first.create_node("n", ex_script="while [ ! -e go ]; do sleep 0.05; done; exit 5")
    second = make_driver(state_dir, slots=2, gpus=0)
    assert [(n.id, n.state) for n in second.list_nodes()] == [(node.id, NodeState.RUNNING)]
    (state_dir / "workdirs" / node.id / "work" / "go").touch()
    assert wait_stopped(second, node.id).extra["exit_code"] == 5


def test_killed_wrapper_is_reported_lost(state_dir):
    driver = make_driver(state_dir, slots=1, gpus=0)
    node = driver.create_node("lost", ex_script="sleep 60 & echo $! > child.pid; wait")
    child_file = state_dir / "workdirs" / node.id / "work" / "child.pid"
    wait_for(lambda: child_file.exists() and child_file.read_text().strip(), 10, "child pid")
    os.kill(node.extra["pid"], signal.SIGKILL)

    lost = wait_stopped(driver, node.id)
    assert lost.extra["exit_code"] is None and lost.extra["lost"] is True
    assert driver.ex_capacity()["slots"] == 1  # a dead leader frees its slot
    # The rest of the group is still around; destroy cleans it up.
    child = int(child_file.read_text())
    assert is_live(child)
    driver.destroy_node(lost)
    assert not is_live(child)


def test_no_zombie_children_left_by_create(state_dir):
    driver = make_driver(state_dir, slots=2, gpus=0)
    node = driver.create_node("quick", ex_script="exit 0")
    wait_stopped(driver, node.id)
    driver.list_nodes()
    assert zombie_children() == []


# ---- images --------------------------------------------------------------------------


def _engine_answers() -> bool:
    for tool in ("docker", "podman"):
        try:
            if subprocess.run([tool, "info"], capture_output=True, timeout=3).returncode == 0:
                return True
        except (OSError, subprocess.SubprocessError):
            pass
    return False


@pytest.mark.skipif(_engine_answers(), reason="a container engine answers here")
def test_image_without_engine_raises_clear_error(state_dir):
    driver = make_driver(state_dir, slots=1, gpus=0)
    with pytest.raises(LocalImageError) as err:
        driver.create_node("img", ex_script="true", ex_image="python:3.11-slim")
    message = str(err.value)
    assert "python:3.11-slim" in message
    assert "docker or podman" in message and "neither answered" in message
    assert driver.list_nodes() == [] and driver.ex_capacity()["slots"] == 1
