"""A provider held in memory, for controller tests that need no processes (the real local and
EC2 providers carry the end-to-end tests)."""

from __future__ import annotations

from gitopsq.providers.base import CAPACITY, Launch, NodeStatus, ProviderError


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
        return {"slots": 1}

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
        node = NodeStatus(f"node-{len(self.launched)}", launch.submission_id, launch.run, True, None)
        self.launched.append(launch)
        self.nodes_by_id[node.node_id] = node
        return node

    def finish(self, node_id: str, exit_code: int | None = 0, lost: bool = False,
               started_at: float | None = None, finished_at: float | None = None) -> None:
        node = self.nodes_by_id[node_id]
        self.nodes_by_id[node_id] = NodeStatus(node.node_id, node.submission_id, node.run, False, exit_code, lost,
                                               started_at=started_at, finished_at=finished_at)

    def nodes(self):
        return list(self.nodes_by_id.values())

    def stop(self, node_id: str) -> None:
        self.stopped.append(node_id)
        self.nodes_by_id.pop(node_id, None)

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
