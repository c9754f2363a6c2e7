"""Admission at each step: what the controller keeps between steps, and what it writes.

The head of the queue is read every step; what admission derives from a queued submission (its
decoded spec, secret names, its queue.Waiting) is kept while the submission's row is unchanged.
"""

from __future__ import annotations

import sqlite3

from tests.fakes import fake_world
from tests.helpers import task

WAIT = "{on_events: [no-capacity], duration: off}"


def status(world, run):
    return world.store.current_submission(run)["status"]


def test_a_commit_that_reorders_the_waiting_runs_is_followed_at_the_next_launch(tmp_path):
    files = {"runs/holder.yml": task("holder", priority=90), "runs/a.yml": task("a", priority=50, retry=WAIT),
             "runs/b.yml": task("b", priority=40, retry=WAIT)}
    with fake_world(tmp_path, files, slots=1) as world:
        world.controller.step()
        assert world.provider.running_runs() == ["holder"] and status(world, "a") == status(world, "b") == "queued"
        world.repo.write("runs/b.yml", task("b", priority=60, retry=WAIT))
        world.repo.commit("b before a")
        world.controller.step()
        assert status(world, "b") == "queued", "a priority change updates the waiting run in place"
        world.provider.finish("node-0", exit_code=0)
        world.controller.step()
        assert world.provider.running_runs() == ["b"], "decided on b's new priority, not on what the last step saw"


def test_a_run_sent_back_to_backoff_is_not_launched_on_what_the_last_step_saw(tmp_path):
    files = {"runs/holder.yml": task("holder", priority=90), "runs/a.yml": task("a", priority=50, retry=WAIT),
             "runs/b.yml": task("b", priority=40, retry=WAIT)}
    with fake_world(tmp_path, files, slots=1) as world:
        world.controller.step()
        a = world.store.current_submission("a")["id"]
        with world.store.transaction():  # what a provider error does to a waiting run: an hour's backoff
            world.store.update_submission(a, next_try_at=world.clock() + 3600, backoff_event="error")
        world.provider.finish("node-0", exit_code=0)
        world.controller.step()
        assert world.provider.running_runs() == ["b"] and status(world, "a") == "queued"


def test_an_admission_that_changes_nothing_does_not_wait_for_the_write_lock(tmp_path):
    """A full machine and a waiting queue: the step reads, decides that nothing changes, and writes
    nothing, so a `secret set` or `stop` holding the database does not hold up the controller."""
    files = {"runs/holder.yml": task("holder", priority=90), "runs/a.yml": task("a", priority=50, retry=WAIT)}
    with fake_world(tmp_path, files, slots=1) as world:
        world.controller.step()
        assert world.provider.running_runs() == ["holder"] and status(world, "a") == "queued"
        other = sqlite3.connect(world.db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            world.store.conn.execute("PRAGMA busy_timeout=200")
            assert world.controller.admit_and_launch() == []
        finally:
            other.execute("ROLLBACK")
            other.close()
        world.provider.finish("node-0", exit_code=0)
        world.controller.step()
        assert world.provider.running_runs() == ["a"]


def test_what_admission_keeps_of_finished_runs_is_forgotten(tmp_path):
    files = {f"runs/r{i}.yml": task(f"r{i}", priority=i, retry=WAIT) for i in range(3)}
    with fake_world(tmp_path, files, slots=1) as world:
        world.controller.step()
        for i in range(2):
            world.provider.finish(f"node-{i}", exit_code=0)
            world.controller.step()
        world.controller._forget_at = 0  # prune at the next step, as when the caches have grown
        world.provider.finish("node-2", exit_code=0)
        world.controller.step()
        assert world.controller._queued == {} and status(world, "r0") == "done"


def test_a_step_takes_a_bounded_number_of_first_decisions_and_asks_for_the_next_step_at_once(tmp_path, monkeypatch):
    """A first sync of 10,000 runs left them all to decide on (fail the unsatisfiable, open the
    others' retry windows) in one step of over a second, and a commit pushed meanwhile waited for
    it. Each step now takes at most FIRST_DECISIONS_PER_STEP of them and wakes the loop at once."""
    import gitopsq.controller as controller

    monkeypatch.setattr(controller, "FIRST_DECISIONS_PER_STEP", 3)
    files = {f"runs/w{i}.yml": task(f"w{i}", priority=10, retry=WAIT) for i in range(7)}
    files["runs/huge.yml"] = task("huge", priority=5, resources="{gpu: 64}")  # nothing here can run it
    files["runs/top.yml"] = task("top", priority=90)
    with fake_world(tmp_path, files, slots=1) as world:
        result = world.controller.step()
        assert world.provider.running_runs() == ["top"], "the head of the queue is decided on in the first step"
        undecided = lambda: sum(1 for name in [f"w{i}" for i in range(7)] + ["huge"]  # noqa: E731
                                if world.store.current_submission(name)["window_start"] is None
                                and status(world, name) == "queued")
        assert 4 <= undecided() <= 6, "at most 3 first decisions taken, and the head's"
        assert result.next_wake is not None and result.next_wake <= world.clock(), "more to decide: step again at once"
        for _ in range(3):
            result = world.controller.step()
        assert undecided() == 0 and status(world, "huge") == "failed"
        assert result.next_wake is None or result.next_wake > world.clock(), "nothing left: no busy loop"
