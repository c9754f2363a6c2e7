"""The planner's table (DESIGN.md section 3), tested directly: no git, no store."""

from __future__ import annotations

import pytest

from gitopsq.plan import Desired, Known, absent, held, plan


def spec(**kw):
    base = {"name": "a", "type": "task", "commands": ["echo"], "priority": 0, "retry": None, "max_duration": None,
            "inactivity_duration": None, "env": []}
    base.update(kw)
    return base


def desired(file=None, **kw):
    s = spec(**kw)
    return {s["name"]: Desired(s["name"], file or f"runs/{s['name']}.yml", "blob", s)}


def known(status="running", present=True, **kw):
    s = spec(**kw)
    return {s["name"]: Known(s["name"], f"runs/{s['name']}.yml", s, present, status)}


def kinds(actions):
    return [(a.kind, a.run) for a in actions]


@pytest.mark.parametrize("status", ["queued", "provisioning", "running", "stopping"])
def test_unchanged_active_run_needs_nothing(status):
    assert plan(desired(), set(), known(status)) == []


@pytest.mark.parametrize("status", ["done", "failed", "cancelled"])
def test_unchanged_finished_run_needs_nothing(status):
    assert plan(desired(), set(), known(status)) == []


def test_new_run_is_submitted():
    actions = plan(desired(), set(), {})
    assert kinds(actions) == [("submit", "a")]
    assert actions[0].spec["name"] == "a"


@pytest.mark.parametrize("field, value", [("priority", 50), ("retry", {"on_events": ["error"], "duration": 60}),
                                          ("max_duration", 600), ("inactivity_duration", 3)])
def test_in_place_edit_of_active_run_updates(field, value):
    actions = plan(desired(**{field: value}), set(), known("running"))
    assert kinds(actions) == [("update", "a")]
    assert actions[0].changes == {field: (spec()[field], value)}


def test_other_edit_of_active_run_restarts():
    actions = plan(desired(commands=["echo 2"], priority=5), set(), known("running"))
    assert kinds(actions) == [("restart", "a")]
    assert set(actions[0].changes) == {"commands", "priority"}


@pytest.mark.parametrize("status", ["done", "failed", "cancelled"])
@pytest.mark.parametrize("edit", [{"priority": 9}, {"commands": ["other"]}])
def test_edit_of_finished_run_submits_anew(status, edit):
    assert kinds(plan(desired(**edit), set(), known(status))) == [("submit", "a")]


def test_deleted_file_cancels_active_run_only():
    assert kinds(plan({}, set(), known("queued"))) == [("cancel", "a")]
    assert plan({}, set(), known("done")) == []
    assert absent({}, set(), known("done")) == ["a"]


def test_invalid_file_keeps_the_run():
    assert plan({}, {"runs/a.yml"}, known("running")) == []
    assert absent({}, {"runs/a.yml"}, known("running")) == []


def test_re_added_file_of_finished_run_submits():
    assert kinds(plan(desired(), set(), known("done", present=False))) == [("submit", "a")]


def test_moved_file_without_rename_needs_nothing():
    assert plan(desired(file="other/place.yml"), set(), known("running")) == []


def test_rename_cancels_old_and_submits_new():
    actions = plan(desired(name="b"), set(), known("running"))
    assert kinds(actions) == [("cancel", "a"), ("submit", "b")]


def test_a_run_whose_file_broke_is_not_taken_over_by_another_file():
    have = {"a": Known("a", "runs/a.yml", spec(), True, "running")}
    other = {"a": Desired("a", "runs/other.yml", "blob", spec(commands=["other"]))}
    assert plan(other, {"runs/a.yml"}, have) == []
    assert held(other, {"runs/a.yml"}, have) == {
        "a": "run 'a' is defined by runs/a.yml, which does not validate: fix or delete that file first"}
    # Once the broken file is gone, the other file's spec is simply the run's new spec.
    assert [(x.kind, x.run) for x in plan(other, set(), have)] == [("restart", "a")]
    assert held(other, set(), have) == {}
