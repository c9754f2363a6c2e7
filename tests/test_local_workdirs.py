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
