"""A sub-step that fails does not stop the others: a fetch or commit that breaks must not stop
deadlines, node watching or admission (every step failed after one bad commit, and with it
max_duration, cancels and the queue)."""

from __future__ import annotations

import pytest

from gitopsq.controller import StepFailed
from gitopsq.source import SourceError
from tests.fakes import fake_world
from tests.helpers import task


@pytest.fixture
def env(tmp_path):
    files = {"runs/long.yml": task("long", "sleep 1000", priority=90, max_duration="10s"),
             "runs/next.yml": task("next") + "retry: {on_events: [no-capacity], duration: off}\n"}
    with fake_world(tmp_path, files, slots=1, message="a run with a deadline, and one waiting for its slot") as world:
        yield world.repo, world.store, world.provider, world.controller, world.clock


def test_deadlines_and_admission_go_on_while_git_fails(env, monkeypatch):
    repo, store, provider, controller, clock = env
    controller.step()
    assert provider.running_runs() == ["long"]

    def broken():
        raise SourceError("git ls-tree failed: a corrupt object")

    monkeypatch.setattr(controller.repo, "tip", broken)
    clock.advance(11)
    with pytest.raises(StepFailed) as caught:
        controller.step()
    assert "git: SourceError: git ls-tree failed" in str(caught.value)
    long = store.current_submission("long")
    assert (long["status"], long["reason"]) == ("failed", "max-duration-exceeded"), "max_duration still enforced"
    with pytest.raises(StepFailed) as caught:
        controller.step()
    assert provider.running_runs() == ["next"], "the freed slot still goes to the queue"
    assert caught.value.result.next_wake is not None, "the daemon still knows when to look again"


def test_serve_once_reports_a_partial_step_and_exits_1(tmp_path):
    from tests.helpers import run_cli

    db = tmp_path / "state" / "gitopsq.db"
    result = run_cli("serve", "--repo", str(tmp_path / "nowhere"), "--once", "--db", str(db))
    assert result.exit_code == 1 and "not a git repository" in result.output
