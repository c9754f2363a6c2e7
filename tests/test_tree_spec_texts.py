"""The controller's tree keeps names and blob ids, not spec texts, once the store has them; a run
whose unchanged file becomes its only claimant is planned from the text in the store."""

from __future__ import annotations

import json

import pytest

from gitopsq.controller import Controller
from gitopsq.spec import parse_run
from tests.fakes import Clock, FakeProvider, fake_world
from tests.helpers import task


def synced(controller) -> list[tuple[str, str]]:
    _, actions = controller.sync_git()
    return [(a.kind, a.run) for a in actions]


def stored_spec(store, run: str) -> dict:
    return json.loads(store.run(run)["spec"])


def parsed(text: str, path: str) -> dict:
    return json.loads(json.dumps(parse_run(text.encode(), path).to_dict(), sort_keys=True))


@pytest.mark.parametrize("restart", [False, True])
def test_a_run_claimed_again_by_an_unchanged_file_gets_that_file_s_spec(tmp_path, restart):
    y = task("a", "echo from y", priority=7)
    with fake_world(tmp_path, {"runs/x.yml": task("a", "echo from x"), "runs/y.yml": y}) as world:
        assert synced(world.controller) == []  # both claim a: neither is submitted
        assert all(row.spec is None for row in world.controller._tree.files.values())
        world.repo.write("runs/x.yml", task("b", "echo from x"))  # y.yml, untouched, now claims a alone
        world.repo.commit()
        controller = world.controller
        if restart:  # a new daemon: the tree comes from the store
            controller = Controller(world.store, FakeProvider(), world.controller.repo, clock=Clock())
        assert synced(controller) == [("submit", "a"), ("submit", "b")]
        assert stored_spec(world.store, "a") == parsed(y, "runs/y.yml")
        assert json.loads(world.store.current_submission("a")["spec"]) == parsed(y, "runs/y.yml")
        assert all(row.spec is None for row in controller._tree.files.values())
        assert [dict(r) for r in world.store.conn.execute("SELECT path, spec FROM files ORDER BY path")] == [
            {"path": "runs/x.yml", "spec": json.dumps(parse_run(task("b", "echo from x").encode(), "runs/x.yml").to_dict(),
                                                      sort_keys=True)},
            {"path": "runs/y.yml", "spec": json.dumps(parse_run(y.encode(), "runs/y.yml").to_dict(), sort_keys=True)}]


def test_a_held_run_is_looked_at_from_the_store_while_its_file_is_broken(tmp_path):
    with fake_world(tmp_path, {"runs/a.yml": task("a", priority=3)}) as world:
        assert synced(world.controller) == [("submit", "a")]
        world.repo.write("runs/a.yml", "type: task\nname: [\n")  # broken: a keeps its spec
        world.repo.write("runs/other.yml", task("a", "echo other"))  # another file claims a: held
        world.repo.commit()
        assert synced(world.controller) == []
        world.repo.write("runs/unrelated.yml", task("c"))
        world.repo.commit()
        assert synced(world.controller) == [("submit", "c")]  # other.yml unchanged: its spec read from the store
        messages = [p["message"] for p in world.store.conn.execute("SELECT message FROM problems")]
        assert any("does not validate" in m for m in messages)
        assert stored_spec(world.store, "a")["priority"] == 3
