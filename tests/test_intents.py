"""Stop and rerun by hand: recorded as intents with who asked, applied by the controller's step."""

from __future__ import annotations

import json

import pytest

from gitopsq import intents
from gitopsq.intents import IntentRefused, request_rerun, request_stop
from gitopsq.store import listing, submissions
from tests.fakes import fake_world
from tests.helpers import task


@pytest.fixture
def world(tmp_path):
    with fake_world(tmp_path, {"runs/a.yml": task("a"), "runs/b.yml": task("b")}) as world:
        world.controller.step()
        yield world


def test_a_stop_is_recorded_with_its_actor_and_applied_by_the_next_step(world):
    store, provider, controller = world.store, world.provider, world.controller
    asked = request_stop(store, "a", "ci", "api", 1000.0)
    assert store.current_submission("a")["status"] == "running"  # recorded only: the controller acts
    assert [i.kind for i in intents.pending(store)] == ["stop"] and asked.actor == "ci"
    controller.step()
    current = store.current_submission("a")
    assert current["status"] == "cancelled" and current["reason"] == "stopped" and current["stopped_by"] == "ci"
    assert provider.stopped == ["node-0"] and intents.pending(store) == []
    row = next(r for r in listing(store) if r["name"] == "a")
    assert row["why"] == "stopped by ci" and row["stopped_by"] == "ci"
    kinds = [(e["kind"], json.loads(e["detail"]).get("by")) for e in reversed(store.events("a"))]
    assert ("stop-requested", "ci") in kinds and ("stopping", "ci") in kinds


def test_a_stopped_run_stays_stopped_until_its_file_changes(world):
    repo, store, controller = world.repo, world.store, world.controller
    request_stop(store, "a", "ci", "api", 1000.0)
    controller.step()
    repo.write("README.md", "a commit that leaves the run file alone\n")
    repo.commit()
    controller.step()
    assert [s["status"] for s in store.history("a")] == ["cancelled"]
    repo.write("runs/a.yml", task("a", priority=5))  # an edit of a finished run is a new submission
    repo.commit()
    controller.step()
    assert [(s["number"], s["status"]) for s in store.history("a")] == [(1, "cancelled"), (2, "running")]


def test_a_stop_is_scoped_to_the_submission_it_names(world):
    repo, store, controller = world.repo, world.store, world.controller
    request_stop(store, "a", "ci", "api", 1000.0)
    repo.write("runs/a.yml", task("a", "echo changed"))  # a commit restarts it before the stop is applied
    repo.commit()
    controller.step()
    old, new = store.history("a")
    assert old["reason"] == "replaced" and old["stopped_by"] is None and new["status"] == "running"
    done = store.conn.execute("SELECT outcome FROM intents").fetchone()[0]
    assert done.startswith("nothing to stop")


def test_rerun_submits_the_current_spec_and_restarts_an_active_run(world):
    store, controller = world.store, world.controller
    request_rerun(store, "b", "alice", "cli", 1000.0)
    controller.step()
    old, new = store.history("b")
    assert (old["status"], old["reason"], old["stopped_by"]) == ("cancelled", "rerun", "alice")
    assert (new["number"], new["status"], new["submitted_by"]) == (2, "running", "alice")
    assert json.loads(new["spec"]) == json.loads(old["spec"])
    rows = submissions(store, run="b")
    assert [(r["submission"], r["submitted_by"], r["stopped_by"]) for r in rows] == [(1, None, "alice"), (2, "alice", None)]


def test_rerun_of_a_finished_run_makes_a_new_submission(world):
    store, provider, controller = world.store, world.provider, world.controller
    provider.finish("node-0", 0)
    controller.step()
    assert store.current_submission("a")["status"] == "done"
    with pytest.raises(IntentRefused, match="not active"):
        request_stop(store, "a", "ci", "api", 1000.0)
    request_rerun(store, "a", "ci", "api", 1000.0)
    request_rerun(store, "a", "ci", "api", 1001.0)  # asked twice before the step: one rerun
    controller.step()
    assert [(s["number"], s["status"]) for s in store.history("a")] == [(1, "done"), (2, "running")]


def test_what_cannot_be_stopped_or_rerun_is_refused(world):
    repo, store, controller = world.repo, world.store, world.controller
    with pytest.raises(IntentRefused) as unknown:
        request_stop(store, "nope", "ci", "api", 1000.0)
    assert unknown.value.status == 404
    repo.remove("runs/b.yml")
    repo.commit()
    controller.step()
    with pytest.raises(IntentRefused, match="gone from the branch") as gone:
        request_rerun(store, "b", "ci", "api", 1000.0)
    assert gone.value.status == 409
