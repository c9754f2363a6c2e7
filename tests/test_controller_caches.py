"""The controller's per-submission caches keep only submissions still in play (a daemon runs for months)."""

from __future__ import annotations

from gitopsq.plan import ACTIVE
from tests.fakes import fake_world
from tests.helpers import task

WAITS = "{on_events: [no-capacity], duration: off}"  # queued until there is room, never failed for want of it


def test_forgetting_keeps_the_live_submissions_and_drops_the_finished(tmp_path):
    files = {f"runs/{name}.yml": task(name, retry=WAITS) for name in ("a", "b", "c")}
    with fake_world(tmp_path, files, slots=2) as world:
        world.controller.step()  # a and b start, c waits: all three specs decoded once
        ids = {world.store.current_submission(name)["id"]: name for name in ("a", "b", "c")}
        assert set(world.controller._specs) == set(ids)
        world.provider.finish(world.store.current_submission("a")["node_id"], exit_code=0)
        world.controller.poll_nodes()
        assert world.store.current_submission("a")["status"] == "done"
        world.controller._forget_at = 0  # prune now, as a cache grown past its mark would
        world.controller._forget_finished()
        live = {sub_id for sub_id, name in ids.items() if name != "a"}
        assert set(world.controller._specs) <= live and set(world.controller._unsatisfiable) <= live
        assert set(world.controller._specs) | set(world.controller._unsatisfiable) == live


def test_submission_ids_with_status_are_those_of_the_full_rows(tmp_path):
    files = {f"runs/{name}.yml": task(name, retry=WAITS) for name in ("a", "b", "c")}
    with fake_world(tmp_path, files, slots=1) as world:
        world.controller.step()
        store = world.store
        for statuses in (ACTIVE, ("queued",), ("running",), ("done",)):
            assert store.submission_ids_with_status(*statuses) == {row["id"] for row in store.submissions_with_status(*statuses)}
        assert len(store.submission_ids_with_status(*ACTIVE)) == 3
