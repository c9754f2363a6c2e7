"""Retries after `error` and `interruption` back off (15 s doubling to 10 min, with jitter);
freed capacity still wakes runs that wait for capacity at once."""

from __future__ import annotations

import time

import pytest

from gitopsq.controller import Controller
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local_adapter import make_local_provider
from gitopsq.queue import BACKOFF_SCHEDULE_S
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import fake_world
from tests.helpers import GitRepo, task

RETRY_ON_ERROR = "retry: {on_events: [error, interruption], duration: 1h}"


@pytest.fixture
def env(tmp_path):
    with fake_world(tmp_path, {"runs/flaky.yml": task("flaky") + RETRY_ON_ERROR + "\n"}, slots=2) as world:
        yield world.repo, world.store, world.provider, world.controller, world.clock


def current(store):
    return store.current_submission("flaky")


@pytest.mark.parametrize("event", ["error", "interruption"])
def test_each_retry_waits_longer(env, event):
    repo, store, provider, controller, clock = env
    controller.step()
    for attempt, base in enumerate(BACKOFF_SCHEDULE_S[:4], start=1):
        assert len(provider.launched) == attempt
        node = f"node-{attempt - 1}"
        provider.finish(node, exit_code=None if event == "interruption" else 127, lost=event == "interruption")
        controller.step()
        sub = current(store)
        assert sub["status"] == "queued" and sub["attempts"] == attempt
        delay = sub["next_try_at"] - clock()
        assert base * 0.9 <= delay <= base * 1.1
        assert len(provider.launched) == attempt, "not relaunched in the step that saw it end"
        clock.advance(delay * 0.8)
        controller.step()
        assert len(provider.launched) == attempt, "not relaunched before its backoff ends"
        assert controller.next_wake() == pytest.approx(sub["next_try_at"]), "the daemon wakes for it"
        clock.advance(delay * 0.2 + 0.01)
        controller.step()
    assert len(provider.launched) == 5


def test_the_backoff_is_capped_at_ten_minutes(env):
    repo, store, provider, controller, clock = env
    controller.step()
    for attempt in range(1, 10):
        provider.finish(f"node-{attempt - 1}", exit_code=1)
        controller.step()
        delay = current(store)["next_try_at"] - clock()
        assert delay <= 600 * 1.1
        clock.advance(delay + 0.01)
        controller.step()
    assert delay >= 600 * 0.9


def test_freed_capacity_still_wakes_a_run_waiting_for_capacity(env):
    repo, store, provider, controller, clock = env
    provider.slots = 1
    repo.write("runs/holder.yml", task("holder", priority=90))
    repo.write("runs/waiter.yml", task("waiter", priority=50) + "retry: {on_events: [no-capacity], duration: off}\n")
    repo.write("runs/flaky.yml", task("flaky", priority=10) + RETRY_ON_ERROR + "\n")
    repo.commit("three runs, one slot")
    controller.step()
    assert provider.running_runs() == ["holder"]
    clock.advance(1)
    provider.finish("node-0", exit_code=0)
    controller.step()
    assert provider.running_runs() == ["waiter"], "woken by the freed slot, without waiting for a timer"


def test_a_missing_command_does_not_relaunch_every_second(tmp_path, cleanup_nodes):
    """Observed: `retry: {on_events: [error]}` with a missing command relaunched ~1/s (21 logs in 20 s)."""
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/broken.yml", task("broken", "no-such-command-here") + "retry: {on_events: [error], duration: 1h}\n")
    repo.commit("a command that does not exist")
    store = Store(tmp_path / "state" / "gitopsq.db")
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0)
    controller = Controller(store, provider, ConfigRepo(str(repo.path)))
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        controller.step()
        time.sleep(0.1)
    rows = store.history("broken")
    assert len(rows) == 1
    sub = rows[0]
    assert sub["status"] == "queued" and sub["attempts"] == 1 and sub["exit_code"] == 127
    assert sub["next_try_at"] - time.time() > 5, "the next attempt is about 15 s away"
    launched = [e for e in store.events("broken", limit=100) if e["kind"] == "running"]
    assert len(launched) == 1
