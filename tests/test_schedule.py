"""Scheduled runs (schedule: {cron}): a submission per tick, a skipped tick while one is active,
one catch-up after a restart, and the next tick as a timer of the controller (injected clock)."""

from __future__ import annotations

import datetime as dt
import json

from gitopsq.controller import Controller
from gitopsq.source import ConfigRepo
from gitopsq.store import listing
from tests.fakes import Clock, fake_world

MINUTE = 60.0
START = dt.datetime(2030, 1, 1, 3, 0, 20, tzinfo=dt.timezone.utc).timestamp()  # 20 s past a minute


def scheduled(cron: str = "* * * * *", commands: str = "echo tick") -> str:
    return f"type: task\nname: nightly\ncommands: [{commands!r}]\nschedule:\n  cron: {cron!r}\n"


def subs(world):
    return [(s["number"], s["status"]) for s in world.store.history("nightly")]


def events(world, kind):
    rows = world.store.conn.execute("SELECT * FROM events WHERE run = 'nightly' AND kind = ? ORDER BY id", (kind,))
    return [json.loads(row["detail"]) for row in rows]


def finish_all(world):
    for node in list(world.provider.nodes_by_id.values()):
        if node.running:
            world.provider.finish(node.node_id, 0)


def test_every_minute_a_submission_on_the_minute(tmp_path):
    clock = Clock(START)
    with fake_world(tmp_path, {"runs/nightly.yml": scheduled()}, clock=clock) as world:
        result = world.controller.step()
        assert subs(world) == [], "a commit alone never starts a scheduled run"
        assert [a.kind for a in result.actions] == ["submit"] and events(world, "scheduled")
        first_tick = START - 20 + MINUTE
        assert result.next_wake == first_tick, "a sleeping daemon wakes for the tick"
        [row] = listing(world.store, now=clock())
        assert (row["status"], row["next_tick_at"]) == ("scheduled", first_tick)
        assert "next tick 2030-01-01 03:01 UTC (in 40s)" in row["why"]

        clock.now = first_tick - 0.5
        world.controller.step()
        assert subs(world) == []
        clock.now = first_tick
        world.controller.step()
        assert subs(world) == [(1, "running")]
        assert events(world, "tick") == [{"tick": first_tick, "next_tick_at": first_tick + MINUTE}]
        finish_all(world)
        clock.advance(30)
        world.controller.step()
        assert subs(world) == [(1, "done")]
        clock.now = first_tick + MINUTE
        result = world.controller.step()
        assert subs(world) == [(1, "done"), (2, "running")]
        assert world.store.current_submission("nightly")["commit_sha"] == world.repo.head()


def test_a_tick_while_the_last_submission_is_active_is_skipped_and_recorded(tmp_path):
    clock = Clock(START)
    with fake_world(tmp_path, {"runs/nightly.yml": scheduled()}, clock=clock) as world:
        world.controller.step()
        tick = START - 20 + MINUTE
        clock.now = tick
        world.controller.step()
        assert subs(world) == [(1, "running")]
        clock.now = tick + MINUTE  # still running
        world.controller.step()
        assert subs(world) == [(1, "running")]
        assert events(world, "tick-skipped") == [{"tick": tick + MINUTE, "next_tick_at": tick + 2 * MINUTE,
                                                  "active": {"number": 1, "status": "running"}}]
        finish_all(world)
        clock.now = tick + 2 * MINUTE
        world.controller.step()
        assert subs(world) == [(1, "done"), (2, "running")]


def test_a_restart_after_missed_ticks_makes_one_catch_up_submission(tmp_path):
    clock = Clock(START)
    with fake_world(tmp_path, {"runs/nightly.yml": scheduled()}, clock=clock) as world:
        world.controller.step()
        first = START - 20 + MINUTE
        # The controller is down for an hour: 60 ticks go by.
        clock.now = first + 3600 + 5
        again = Controller(world.store, world.provider, ConfigRepo(str(world.repo.path)), clock=clock)
        result = again.step()
        assert subs(world) == [(1, "running")], "one catch-up submission, not one per missed tick"
        assert events(world, "tick") == [{"tick": first + 3600, "missed_since": first, "next_tick_at": first + 3660}]
        assert world.store.next_schedule_tick() == first + 3660 and result.next_wake <= first + 3660
        finish_all(world)
        clock.now = first + 3660
        again.step()
        assert subs(world) == [(1, "done"), (2, "running")]


def test_editing_or_deleting_the_file_changes_or_ends_the_schedule(tmp_path):
    clock = Clock(START)
    with fake_world(tmp_path, {"runs/nightly.yml": scheduled()}, clock=clock) as world:
        world.controller.step()
        clock.now = START - 20 + MINUTE
        world.controller.step()
        assert subs(world) == [(1, "running")]
        # Only the schedule changes: the running submission goes on; ticks follow the new cron.
        world.repo.write("runs/nightly.yml", scheduled("0 4 * * *"))
        world.repo.commit("at four")
        result = world.controller.step()
        assert [(a.kind, a.run) for a in result.actions] == [("update", "nightly")]
        assert subs(world) == [(1, "running")]
        four = dt.datetime(2030, 1, 1, 4, 0, tzinfo=dt.timezone.utc).timestamp()
        assert world.store.run("nightly")["next_tick_at"] == four
        # Another edit restarts: the active submission stops, the new spec runs at the next tick.
        world.repo.write("runs/nightly.yml", scheduled("0 4 * * *", "echo changed"))
        world.repo.commit("new command")
        world.controller.step()
        assert subs(world) == [(1, "cancelled")]
        clock.now = four
        world.controller.step()
        assert subs(world) == [(1, "cancelled"), (2, "running")]
        assert json.loads(world.store.current_submission("nightly")["spec"])["commands"] == ["echo changed"]
        # Deleting the file cancels the active one and ends the schedule.
        world.repo.remove("runs/nightly.yml")
        world.repo.commit("gone")
        result = world.controller.step()
        assert subs(world) == [(1, "cancelled"), (2, "cancelled")]
        assert world.store.run("nightly")["next_tick_at"] is None and result.next_wake is None
        clock.now = four + 86400
        world.controller.step()
        assert len(subs(world)) == 2


def test_dropping_the_schedule_of_a_finished_run_submits_it_like_any_edit(tmp_path):
    clock = Clock(START)
    with fake_world(tmp_path, {"runs/nightly.yml": scheduled("0 4 * * *")}, clock=clock) as world:
        world.controller.step()
        world.repo.write("runs/nightly.yml", "type: task\nname: nightly\ncommands: ['echo now']\n")
        world.repo.commit("no schedule")
        world.controller.step()
        assert subs(world) == [(1, "running")] and world.store.run("nightly")["next_tick_at"] is None
