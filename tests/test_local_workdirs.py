"""Working directories outlive their run: kept per run and in total by a retention policy, oldest
pruned first, never a running node's, at a cost of what ended since the last prune."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gitopsq.providers import workdirs
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.providers.workdirs import Ended, victims

MB = 1024**2


def test_each_run_keeps_its_last_submissions_with_all_their_attempts():
    entries = [Ended("a1", "a", "1", 10, "/x"), Ended("a2", "a", "2", 20, "/x"),
               Ended("a3-try1", "a", "3", 25, "/x"), Ended("b1", "b", "1", 5, "/x"),
               Ended("a3-try2", "a", "3", 30, "/x")]
    assert sorted(victims(entries, keep=2, max_size=10**12)) == ["a1"]
    assert sorted(victims(entries, keep=1, max_size=10**12)) == ["a1", "a2"]
    assert sorted(victims(entries, keep=0, max_size=10**12)) == ["a1", "a2", "a3-try1", "a3-try2", "b1"]


def test_past_the_total_size_the_oldest_go_first():
    entries = [Ended("old", "a", "1", 10, "/x", 5 * MB), Ended("mid", "b", "1", 20, "/x", 5 * MB),
               Ended("new", "c", "1", 30, "/x", 5 * MB), Ended("unmeasured", "d", "1", 1, "/x")]
    assert victims(entries, keep=5, max_size=15 * MB) == []
    assert victims(entries, keep=5, max_size=14 * MB) == ["unmeasured", "old"]
    assert victims(entries, keep=5, max_size=0) == ["unmeasured", "old", "mid", "new"]


def make_driver(state_dir, **kw):
    return LocalNodeDriver(state_dir, slots=4, gpus=0, stop_grace=1.0, **kw)


def ended_node(driver, run, submission, megabytes=0):
    node = driver.create_node(f"{run}-{submission}", ex_script=f"head -c {megabytes * MB} /dev/zero > out.bin",
                              ex_retention_key=(run, str(submission)))
    deadline = time.monotonic() + 20
    while driver.ex_get_node(node.id).extra["exit_code"] is None:
        assert time.monotonic() < deadline, "the node did not end"
        time.sleep(0.02)
    driver.destroy_node(node)
    return Path(node.extra["workdir"])


def test_a_runs_older_working_directories_are_pruned_never_a_running_one(tmp_path):
    driver = make_driver(tmp_path / "nodes", keep_workdirs=2)
    a = [ended_node(driver, "a", n) for n in (1, 2, 3)]
    b = ended_node(driver, "b", 1)
    running = driver.create_node("a-4", ex_script="echo x > out.txt; while [ ! -e go ]; do sleep 0.05; done",
                                 ex_retention_key=("a", "4"))
    try:
        deadline = time.monotonic() + 10
        while not (Path(running.extra["workdir"]) / "out.txt").exists():
            assert time.monotonic() < deadline, "the running node did not write its file"
            time.sleep(0.02)
        assert all(p.is_dir() for p in [*a, b])
        pruned = driver.ex_prune_workdirs()
        assert [p.is_dir() for p in a] == [False, True, True] and b.is_dir()
        assert pruned == [a[0].parent.name]  # the node's whole folder under workdirs/
        assert Path(running.extra["workdir"]).is_dir()
        assert (tmp_path / "nodes" / "logs" / f"{a[0].parent.name}.log").exists(), "logs are kept"

        total = make_driver(tmp_path / "nodes", keep_workdirs=2, workdirs_max_size=0)  # a restarted controller
        total.ex_prune_workdirs()
        assert not any(p.is_dir() for p in [*a, b])
        assert (Path(running.extra["workdir"]) / "out.txt").exists(), "never a running node's"
    finally:
        driver.destroy_node(running)


def test_the_size_cap_prunes_oldest_first_and_measures_each_directory_once(tmp_path, monkeypatch):
    measured = []
    real = workdirs.disk_usage
    monkeypatch.setattr(workdirs, "disk_usage", lambda path: measured.append(path) or real(path))
    driver = make_driver(tmp_path / "nodes", workdirs_max_size=5 * MB)
    first, second = ended_node(driver, "a", 1, 2), ended_node(driver, "b", 1, 2)
    driver.ex_prune_workdirs()
    assert first.is_dir() and second.is_dir() and len(measured) == 2
    third = ended_node(driver, "c", 1, 2)
    driver.ex_prune_workdirs()
    assert len(measured) == 3, "only what ended since the last prune is measured"
    assert (first.is_dir(), second.is_dir(), third.is_dir()) == (False, True, True)
    driver.ex_prune_workdirs()
    assert len(measured) == 3
    restarted = make_driver(tmp_path / "nodes", workdirs_max_size=5 * MB)
    restarted.ex_prune_workdirs()
    assert len(measured) == 3, "sizes are kept in the index across restarts"


def test_prunes_come_with_listing_at_most_every_interval(tmp_path):
    driver = make_driver(tmp_path / "nodes", keep_workdirs=0, prune_interval=3600)
    driver.list_nodes()  # the first list after a start prunes
    old = ended_node(driver, "a", 1)
    driver.list_nodes()
    assert old.is_dir(), "not again before the interval has passed"
    driver.retention._due = 0  # as if the interval had passed
    driver.list_nodes()
    assert not old.is_dir()


def test_nodes_ended_before_the_index_existed_are_listed_once(tmp_path):
    state = tmp_path / "nodes"
    driver = make_driver(state, keep_workdirs=1)
    for n in (1, 2):  # as an older gitopsq left them: the working directory inside ended/<id>/
        node_dir = state / "ended" / f"local-old{n}"
        (node_dir / "work").mkdir(parents=True)
        (node_dir / "meta.json").write_text(json.dumps({"id": f"local-old{n}", "name": "gq-a-7", "workdir": "work"}))
        (node_dir / "destroyed").touch()
    (state / "workdirs.jsonl").unlink()
    upgraded = make_driver(state, workdirs_max_size=0)
    upgraded.ex_prune_workdirs()
    assert not (state / "ended" / "local-old1" / "work").exists() and not (state / "ended" / "local-old2" / "work").exists()
    assert (state / "ended" / "local-old1" / "meta.json").exists()


def test_retention_options_are_checked(tmp_path):
    from gitopsq.providers.local import LocalError

    with pytest.raises(LocalError, match=">= 0"):
        make_driver(tmp_path / "nodes", keep_workdirs=-1)


# ---- through the controller: each submission records its working directory -------------------


def controller_for(tmp_path, **provider_options):
    from gitopsq.controller import Controller
    from gitopsq.providers.base import log_dir_for
    from gitopsq.providers.local_adapter import make_local_provider
    from gitopsq.source import ConfigRepo
    from gitopsq.store import Store
    from tests.helpers import GitRepo

    repo = GitRepo(tmp_path / "repo")
    store = Store(tmp_path / "state" / "gitopsq.db")
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0, **provider_options)
    return repo, store, Controller(store, provider, ConfigRepo(str(repo.path)))


def step_until(controller, condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the controller did not get there in time"
        controller.step()
        time.sleep(0.05)


def test_history_and_the_api_show_each_submissions_working_directory_or_that_it_was_pruned(tmp_path, cleanup_nodes):
    from gitopsq.web import Metrics, create_app
    from tests.helpers import Recorder, run_cli
    from tests.webserver import bearer, running

    import httpx

    repo, store, controller = controller_for(tmp_path, keep_workdirs=1)
    for n in (1, 2):
        repo.write("runs/job.yml", f"type: task\ncommands: ['echo {n} > out.txt']\n")
        repo.commit(f"submission {n}")
        step_until(controller, lambda: (store.current_submission("job") or {"number": 0})["number"] == n
                   and store.current_submission("job")["status"] == "done")
    controller.provider.driver.ex_prune_workdirs()

    db = str(store.path)
    rows = json.loads(run_cli("history", "job", "--json", "--db", db).output)
    assert [(r["submission"], r["workdir_pruned"]) for r in rows] == [(1, True), (2, False)]
    assert rows[0]["workdir"] and not Path(rows[0]["workdir"]).exists()
    assert (Path(rows[1]["workdir"]) / "out.txt").read_text() == "2\n"
    wide = run_cli("history", "job", "--db", db, env={"COLUMNS": "400"}).output.splitlines()
    assert "WORKDIR" in wide[0].split()
    assert "pruned" in wide[1].split() and rows[1]["workdir"] in wide[2]

    app = create_app(store.path, Recorder(), lambda: {"status": "ok"}, None, Metrics())
    with running(app) as url:
        served = httpx.get(f"{url}/api/runs/job/history", timeout=10, headers=bearer(store)).json()
    assert [(r["workdir"], r["workdir_pruned"]) for r in served] == [(r["workdir"], r["workdir_pruned"]) for r in rows]


def test_a_recovered_launch_records_its_working_directory(tmp_path, cleanup_nodes):
    from gitopsq.controller import Controller

    repo, store, controller = controller_for(tmp_path)
    repo.write("runs/job.yml", "type: task\ncommands: ['while [ ! -e go ]; do sleep 0.05; done']\n")
    repo.commit()
    controller.step()
    sub = store.current_submission("job")
    assert sub["status"] == "running" and Path(sub["workdir"]).is_dir()
    with store.transaction():  # as if the controller died between the launch and recording it
        store.update_submission(sub["id"], status="provisioning", workdir=None, node_id=None)
    Controller(store, controller.provider, controller.repo).step()
    adopted = store.current_submission("job")
    assert (adopted["status"], adopted["workdir"], adopted["node_id"]) == ("running", sub["workdir"], sub["node_id"])
    (Path(sub["workdir"]) / "go").touch()


def test_serve_takes_the_retention_policy_from_its_options(tmp_path, cleanup_nodes):
    from gitopsq.providers.base import log_dir_for
    from tests.helpers import GitRepo, run_cli

    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/job.yml", "type: task\ncommands: ['echo out > out.txt']\n")
    repo.commit()
    db = str(tmp_path / "state" / "gitopsq.db")
    serve = ("serve", "--once", "--repo", str(repo.path), "--db", db)
    assert run_cli(*serve).exit_code == 0  # launches it
    driver = LocalNodeDriver(log_dir_for(Path(db)), slots=1, gpus=0)
    (node,) = driver.list_nodes()
    deadline = time.monotonic() + 20
    while driver.ex_get_node(node.id).extra["exit_code"] is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert run_cli(*serve, "--keep-workdirs", "0").exit_code == 0  # sees it end: its directory is kept until a prune
    (row,) = json.loads(run_cli("history", "job", "--json", "--db", db).output)
    assert (row["status"], row["workdir_pruned"]) == ("done", False)
    assert run_cli(*serve, "--keep-workdirs", "0").exit_code == 0  # a start prunes
    (row,) = json.loads(run_cli("history", "job", "--json", "--db", db).output)
    assert row["workdir_pruned"] is True and not Path(row["workdir"]).exists()
    assert (Path(db).parent / "gitopsq-nodes" / "logs" / f"{node.id}.log").read_text() == ""

    for option, value in (("--keep-workdirs", "-1"), ("--workdirs-max-size", "lots")):
        bad = run_cli(*serve, option, value)
        assert bad.exit_code == 2 and option in bad.output
    assert run_cli(*serve, "--workdirs-max-size", "512MB").exit_code == 0
