"""A run's end time is when it ended, not when a (restarted) controller noticed."""

from __future__ import annotations

import time

import pytest

from gitopsq.controller import Controller, record_report
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.providers.local_adapter import make_local_provider
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import Clock, FakeProvider
from tests.helpers import GitRepo, task
from tests.test_local_driver import wait_stopped


@pytest.fixture
def world(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/a.yml", task("a"))
    repo.commit()
    store = Store(tmp_path / "state.db")
    source = ConfigRepo(str(repo.path))
    yield repo, store, source
    source.close()
    store.close()


def restarted(store, provider, source, clock) -> Controller:
    return Controller(store, provider, source, clock=clock)


def test_restart_records_when_the_node_ended(world):
    _, store, source = world
    clock, provider = Clock(), FakeProvider()
    Controller(store, provider, source, clock=clock).step()
    sub = store.current_submission("a")
    assert sub["status"] == "running"
    ended = clock.now + 10
    provider.finish(sub["node_id"], 0, finished_at=ended)
    clock.advance(130)  # the controller was down meanwhile

    restarted(store, provider, source, clock).step()
    sub = store.current_submission("a")
    assert sub["status"] == "done"
    assert sub["finished_at"] == ended


def test_adopted_launch_keeps_the_node_start_and_end(world):
    _, store, source = world
    clock, provider = Clock(), FakeProvider()
    Controller(store, provider, source, clock=clock).step()
    sub = store.current_submission("a")
    # The controller died after the node was created and before it recorded it.
    store.update_submission(sub["id"], status="provisioning", node_id=None, started_at=None)
    started, ended = clock.now + 1, clock.now + 20
    provider.finish(sub["node_id"], 0, started_at=started, finished_at=ended)
    clock.advance(300)

    restarted(store, provider, source, clock).step()
    sub = store.current_submission("a")
    assert (sub["status"], sub["started_at"], sub["finished_at"]) == ("done", started, ended)


def test_reported_exit_code_ends_the_run_when_reported(world):
    _, store, source = world
    clock, provider = Clock(), FakeProvider()
    controller = Controller(store, provider, source, clock=clock)
    controller.step()
    sub = store.current_submission("a")
    reported = clock.now + 5
    assert record_report(store, sub["id"], provider.launched[-1].token, 3, reported)
    clock.advance(90)

    controller.step()
    sub = store.current_submission("a")
    assert (sub["status"], sub["exit_code"], sub["finished_at"]) == ("failed", 3, reported)


def test_an_end_time_is_never_later_than_now_nor_before_the_start(world):
    _, store, source = world
    clock, provider = Clock(), FakeProvider()
    Controller(store, provider, source, clock=clock).step()
    sub = store.current_submission("a")
    provider.finish(sub["node_id"], 0, finished_at=clock.now + 3600)  # a node clock running ahead
    clock.advance(1)
    restarted(store, provider, source, clock).step()
    assert store.current_submission("a")["finished_at"] == clock.now


def test_local_run_ended_while_the_controller_was_down(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/quick.yml", task("quick", "exit 0"))
    repo.commit()
    store = Store(tmp_path / "state" / "gitopsq.db")
    clock = Clock(time.time() - 600)  # the run started ten minutes ago by the controller's clock
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0)
    source = ConfigRepo(str(repo.path))
    Controller(store, provider, source, clock=clock).step()
    node_id = store.current_submission("quick")["node_id"]
    driver = LocalNodeDriver(log_dir_for(store.path), slots=1, gpus=0)
    node = wait_stopped(driver, node_id)
    ended = (log_dir_for(store.path) / "nodes" / node_id / "exit_code").stat().st_mtime
    clock.now = time.time() + 120  # the controller comes back two minutes after the run ended

    restarted(store, make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0),
              source, clock).step()
    sub = store.current_submission("quick")
    assert sub["status"] == "done"
    assert sub["finished_at"] == pytest.approx(ended, abs=0.002)
    assert node.extra["finished_at"] is not None
    source.close()
    store.close()
