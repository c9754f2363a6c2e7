"""kill -9 of the running daemon at random points: after a restart the end state equals an
uninterrupted run's (no duplicate node, no lost or doubled submission, no event missing)."""

from __future__ import annotations

import random
import signal
import time

import pytest

from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.store import Store, listing
from tests.helpers import GitRepo
from tests.test_daemon import Daemon, wait_for

QUEUE = "retry:\n  on_events: [no-capacity]\n  duration: off\n"


def add_runs(repo: GitRepo, names, ran):
    for i, name in enumerate(names):
        repo.write(f"runs/{name}.yml", f"type: task\nname: {name}\npriority: {(i * 37) % 100}\n"
                   f"commands: ['echo {name} >> {ran}', 'sleep 0.3']\n{QUEUE}")
    repo.commit(f"add {' '.join(names)}")


def scenario(root, rng: random.Random | None):
    """Two commits while the daemon runs; with rng, the daemon is SIGKILLed at random moments."""
    repo = GitRepo(root / "repo")
    ran = root / "ran.txt"
    db = root / "state" / "gitopsq.db"
    args = ("--http", "off", "--local-slots", "2", "--interval", "2s")
    daemon = Daemon(repo.path, db, *args)
    add_runs(repo, ["a", "b", "c", "d"], ran)
    for second_commit in (True, False):
        if rng:
            time.sleep(rng.uniform(0.0, 1.5))
            daemon.stop(signal.SIGKILL)
            daemon = Daemon(repo.path, db, *args)
        if second_commit:
            add_runs(repo, ["e", "f"], ran)
    try:
        try:
            wait_for(lambda: len(daemon.rows()) == 6 and all(r["status"] == "done" for r in daemon.rows()), timeout=40, what="all done")
        except AssertionError:
            rows = [(r["name"], r["status"], r["reason"], r["message"]) for r in daemon.rows()]
            raise AssertionError(f"not converged: {rows}\n{daemon.log.read_text()[-3000:]}") from None
    finally:
        assert daemon.stop() == 0
    store = Store(db)
    state = sorted((r["name"], r["status"], r["submission"]) for r in listing(store, include_all=True))
    kinds = {}
    for row in store.conn.execute("SELECT run, kind FROM events WHERE run IS NOT NULL ORDER BY id"):
        kinds.setdefault(row["run"], []).append(row["kind"])
    nodes = LocalNodeDriver(log_dir_for(db), slots=2, gpus=0)
    live = [n.id for n in nodes.list_nodes() if n.state == "running"]
    store.close()
    return state, kinds, sorted(ran.read_text().split()), live


@pytest.mark.parametrize("trials", [pytest.param(6, id="6-trials"), pytest.param(40, id="40-trials", marks=pytest.mark.slow)])
def test_daemon_killed_at_random_points(tmp_path, trials):
    expected_state, expected_kinds, expected_ran, _ = scenario(tmp_path / "clean", None)
    assert expected_state == [(n, "done", 1) for n in "abcdef"]
    rng = random.Random(7)
    for trial in range(trials):
        state, kinds, ran, live = scenario(tmp_path / f"t{trial}", rng)
        assert state == expected_state, f"trial {trial}"
        assert ran == expected_ran, f"trial {trial}: a run ran twice or never"
        assert live == [], f"trial {trial}: nodes left running"
        for run, wanted in expected_kinds.items():
            missing = [k for k in ("submitted", "submit", "provisioning", "running", "done") if k in wanted and k not in kinds[run]]
            assert not missing, f"trial {trial}: {run} lacks events {missing}"
