"""A provider held in memory, for controller tests that need no processes (the real local and
EC2 providers carry the end-to-end tests)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from gitopsq.controller import Controller
from gitopsq.providers.base import CAPACITY, Launch, NodeStatus, ProviderError
from gitopsq.source import ConfigRepo
from gitopsq.store import Store

if TYPE_CHECKING:
    from tests.helpers import GitRepo


class FakeProvider:
    name = "fake"
    reports_exit_codes = False

    def __init__(self, slots: int = 1):
        self.slots = slots
        self.nodes_by_id: dict[str, NodeStatus] = {}
        self.launched: list[Launch] = []
        self.stopped: list[str] = []
        self.fail_next: ProviderError | None = None

    def demand(self, spec):
        return {"slots": spec.nodes}

    def capacity(self):
        return {"slots": self.slots - sum(1 for n in self.nodes_by_id.values() if n.running)}

    def unsatisfiable(self, spec):
        return None

    def launch(self, launch: Launch) -> NodeStatus:
        if self.fail_next:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.capacity()["slots"] < 1:
            raise ProviderError(CAPACITY, "full", "no slot")
        node = NodeStatus(f"node-{len(self.launched)}", launch.submission_id, launch.run, True, None, rank=launch.rank,
                          ip=f"10.0.0.{len(self.launched)}")
        self.launched.append(launch)
        self.nodes_by_id[node.node_id] = node
        return node

    def launch_gang(self, launch: Launch) -> list[NodeStatus]:
        if self.fail_next:
            error, self.fail_next = self.fail_next, None
            raise error
        if self.capacity()["slots"] < launch.spec.nodes:
            raise ProviderError(CAPACITY, "full", "no room for every node")
        return [self.launch(launch.for_rank(rank)) for rank in range(launch.spec.nodes)]

    def finish(self, node_id: str, exit_code: int | None = 0, lost: bool = False,
               started_at: float | None = None, finished_at: float | None = None) -> None:
        node = self.nodes_by_id[node_id]
        self.nodes_by_id[node_id] = NodeStatus(node.node_id, node.submission_id, node.run, False, exit_code, lost,
                                               started_at=started_at, finished_at=finished_at, rank=node.rank, ip=node.ip)

    def nodes(self):
        return list(self.nodes_by_id.values())

    def stop(self, node_id: str) -> None:
        self.stopped.append(node_id)
        self.nodes_by_id.pop(node_id, None)

    def nodes_of(self, submission_id: int) -> list[NodeStatus]:
        return sorted((n for n in self.nodes_by_id.values() if n.submission_id == submission_id), key=lambda n: n.rank)

    def running_runs(self) -> list[str]:
        return sorted(n.run for n in self.nodes_by_id.values() if n.running)


class Clock:
    """An injectable clock: tests move time instead of sleeping."""

    def __init__(self, start: float = 1_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    """A real config repo, a real store and a controller over a FakeProvider, driven by a Clock."""

    repo: "GitRepo"
    db: Path
    store: Store
    provider: FakeProvider
    controller: Controller
    clock: Clock


@contextmanager
def fake_world(tmp_path: Path, files: dict[str, str], slots: int = 10, clock: Clock | None = None,
               message: str = "first") -> Iterator[World]:
    """`files` committed to a new repo, and a controller (not yet stepped) over it; closed after."""
    from tests.helpers import GitRepo

    repo = GitRepo(tmp_path / "repo")
    for path, text in files.items():
        repo.write(path, text)
    repo.commit(message)
    db = tmp_path / "state.db"
    store = Store(db)
    provider = FakeProvider(slots=slots)
    source = ConfigRepo(str(repo.path))
    clock = clock or Clock()
    try:
        yield World(repo, db, store, provider, Controller(store, provider, source, clock=clock), clock)
    finally:
        source.close()
        store.close()
