"""The queue on this machine: real processes through the local Libcloud provider."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gitopsq.controller import Controller, touch
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.providers.local_adapter import make_local_provider
from gitopsq.source import ConfigRepo
from gitopsq.store import Store, listing
from tests.fakes import Clock
from tests.helpers import GitRepo, run_cli

QUEUE_FOREVER = "retry:\n  on_events: [no-capacity]\n  duration: off\n"


def run_file(name, commands, priority=0, extra=""):
    cmds = "\n".join(f"  - {c!r}" for c in commands)
    return f"type: task\nname: {name}\npriority: {priority}\ncommands:\n{cmds}\n{extra}"


def make(tmp_path, slots=1, clock=None):
    repo = GitRepo(tmp_path / "repo")
    store = Store(tmp_path / "state" / "gitopsq.db")
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=slots, gpus=0)
    controller = Controller(store, provider, ConfigRepo(str(repo.path)), clock=clock or time.time)
    return repo, store, controller


def drive(controller, until, timeout=30.0):
    """Step like the daemon would, until the condition holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        controller.step()
        if until():
            return
        time.sleep(0.05)
    raise AssertionError("the controller did not converge in time")


def idle(store):
    return not store.submissions_with_status("queued", "provisioning", "running", "stopping")


@pytest.fixture(autouse=True)
def no_leftover_processes(cleanup_nodes):
    yield


def test_priority_order_no_capacity_and_retry_limit(tmp_path):
    repo, store, controller = make(tmp_path, slots=1)
    stamp = "date +%s.%N"
    for name, priority in (("low", 10), ("high", 90), ("mid", 50)):
        repo.write(f"runs/{name}.yml", run_file(name, [stamp, "sleep 1.5"], priority, QUEUE_FOREVER))
    repo.write("runs/impatient.yml", run_file("impatient", ["echo never"], 5))
    # It gives up while the second of the three holds the slot (each holds it 1.5 s plus making its venv).
    repo.write("runs/short.yml", run_file("short", ["echo never"], 1, "retry:\n  on_events: [no-capacity]\n  duration: 3s\n"))
    repo.commit("five runs at once")

    controller.step()
    assert store.current_submission("high")["status"] == "running"
    impatient = store.current_submission("impatient")
    assert (impatient["status"], impatient["reason"]) == ("failed", "no-capacity")

    drive(controller, lambda: store.current_submission("short")["status"] == "failed")
    short = store.current_submission("short")
    assert short["reason"] == "retry-limit-exceeded"
    holders = [r["name"] for r in listing(store) if r["status"] == "running"]
    assert len(holders) == 1 and holders[0] in ("mid", "low"), "the others still hold the slot"

    drive(controller, lambda: idle(store))
    starts = {}
    for name in ("high", "mid", "low"):
        sub = store.current_submission(name)
        assert sub["status"] == "done"
        starts[name] = float(Path(sub["log_path"]).read_text().split()[0])
    assert sorted(starts, key=starts.get) == ["high", "mid", "low"]


def test_dev_environment_inactivity_changed_in_place(tmp_path):
    clock = Clock(start=time.time())
    repo, store, controller = make(tmp_path, slots=2, clock=clock)
    env = "type: dev-environment\nname: notebook\nide: vscode\ninit: ['echo ready']\ninactivity_duration: {}\n"
    repo.write("runs/notebook.yml", env.format("1h"))
    repo.commit()
    controller.step()
    first = store.current_submission("notebook")
    assert first["status"] == "running"
    deadline = time.monotonic() + 30  # its init has run (after its venv is made) before the clock moves
    while "ready" not in Path(first["log_path"]).read_text():
        assert time.monotonic() < deadline, "init did not run"
        time.sleep(0.05)

    repo.write("runs/notebook.yml", env.format("3s"))
    repo.commit("shorter inactivity")
    clock.advance(60)
    assert touch(store, "notebook", clock())  # someone is using it
    result = controller.step()
    assert [(a.kind, a.run) for a in result.actions] == [("update", "notebook")]
    assert store.current_submission("notebook")["status"] == "running"

    clock.advance(2.9)
    controller.step()
    assert store.current_submission("notebook")["status"] == "running"
    clock.advance(0.1)
    controller.step()
    sub = store.current_submission("notebook")
    assert (sub["status"], sub["reason"]) == ("done", "inactivity-duration-exceeded")
    assert sub["id"] == first["id"] and sub["number"] == 1
    node = LocalNodeDriver(log_dir_for(store.path), slots=2, gpus=0).ex_get_node(sub["node_id"])
    assert node.extra["destroyed"] and not node.extra["pid"] is None
    assert "ready" in Path(sub["log_path"]).read_text()


def test_edit_of_finished_run_is_submission_two_with_both_logs(tmp_path):
    repo, store, controller = make(tmp_path, slots=1)
    repo.write("runs/job.yml", run_file("job", ["echo first $GITOPSQ_SUBMISSION"]))
    repo.commit()
    drive(controller, lambda: store.current_submission("job")["status"] == "done")
    repo.write("runs/job.yml", run_file("job", ["echo second $GITOPSQ_SUBMISSION", "exit 3"]))
    repo.commit("edit")
    drive(controller, lambda: store.current_submission("job")["status"] == "failed")

    db = str(store.path)
    hist = json.loads(run_cli("history", "job", "--json", "--db", db).output)
    assert [(h["submission"], h["status"], h["exit_code"]) for h in hist] == [(1, "done", 0), (2, "failed", 3)]
    assert hist[1]["reason"] == "exit-code"
    assert run_cli("logs", "job", "--submission", "1", "--db", db).output == "first 1\n"
    assert run_cli("logs", "job", "--db", db).output == "second 2\n"
    table = run_cli("history", "job", "--db", db).output
    assert "done" in table and "failed" in table


def test_ps_for_people_and_scripts(tmp_path):
    repo, store, controller = make(tmp_path, slots=1)
    repo.write("runs/a.yml", run_file("a", ["sleep 5"], 20, QUEUE_FOREVER))
    repo.write("runs/b.yml", run_file("b", ["sleep 5"], 70, QUEUE_FOREVER))
    repo.write("runs/c.yml", run_file("c", ["sleep 5"], 40, "retry:\n  on_events: [no-capacity]\n  duration: 1h\n"))
    repo.commit()
    controller.step()
    rows = json.loads(run_cli("ps", "--json", "--db", str(store.path)).output)
    assert [(r["name"], r["status"], r["priority"], r["submission"]) for r in rows] == [
        ("b", "running", 70, 1), ("c", "queued", 40, 1), ("a", "queued", 20, 1)]
    assert all({"name", "status", "priority", "submission", "reason"} <= set(r) for r in rows)
    assert rows[1]["deadline"] is not None and rows[2]["deadline"] is None
    table = run_cli("ps", "--db", str(store.path), env={"COLUMNS": "200"}).output
    lines = [l for l in table.splitlines() if l.strip()]
    assert lines[0].split() == ["NAME", "STATUS", "PRIORITY", "SUB", "TIME", "RETRY", "REASON"]
    assert [l.split()[0] for l in lines[1:]] == ["b", "c", "a"]
    assert "gives up in" in lines[2] and "waits forever" in lines[3]


def _scenario(repo: GitRepo, ran: Path):
    for i, priority in enumerate((30, 80, 55, 10)):
        name = f"job{i}"
        cmds = [f"echo {name} >> {ran}", "sleep 0.2"]
        repo.write(f"runs/{name}.yml", run_file(name, cmds, priority, QUEUE_FOREVER))
    repo.commit()


def _final_state(store):
    return sorted((r["name"], r["status"], r["submission"]) for r in listing(store, include_all=True))


@pytest.mark.parametrize("trials", [pytest.param(20, id="20-trials"), pytest.param(100, id="100-trials", marks=pytest.mark.slow)])
def test_kill_9_at_random_points_converges(tmp_path, trials):
    rng = random.Random(4242)
    for trial in range(trials):
        root = tmp_path / f"t{trial}"
        repo = GitRepo(root / "repo")
        _scenario(repo, root / "ran.txt")
        db = root / "state" / "gitopsq.db"
        cmd = [sys.executable, "-m", "gitopsq", "serve", "--once", "--repo", str(repo.path), "--db", str(db), "--local-slots", "2"]
        for _ in range(2):  # two interrupted steps in a row, at random points
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.05, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        store = Store(db)
        provider = make_local_provider(log_dir_for(db), store.controller_id, slots=2, gpus=0)
        controller = Controller(store, provider, ConfigRepo(str(repo.path)))
        drive(controller, lambda: idle(store))
        assert _final_state(store) == [(f"job{i}", "done", 1) for i in range(4)], f"trial {trial}"
        ran = (root / "ran.txt").read_text().split()
        assert sorted(ran) == [f"job{i}" for i in range(4)], f"trial {trial}: a run ran twice or never: {ran}"
        driver = LocalNodeDriver(log_dir_for(db), slots=2, gpus=0)
        assert [n for n in driver.list_nodes() if n.state == "running"] == []
        store.close()
