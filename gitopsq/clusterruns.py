"""The controller's steps for cluster runs (`nodes: N`): recording, watching and recovering a gang.

A mixin of gitopsq.controller.Controller (the one place that sequences side effects), kept apart
so that the single-node path reads as it did. A gang's nodes are made together by the provider
(`launch_gang`: all or none) and recorded together, one row per node of each attempt
(store.submission_nodes). dstack's rules: the run is done when every node ended with exit code
0; the first node that fails or vanishes ends the whole run, and its other nodes are stopped
with it; a retry starts all of them again, as a new attempt.
"""

from __future__ import annotations

import logging

from gitopsq.providers.base import NodeStatus
from gitopsq.queue import within as _when

log = logging.getLogger("gitopsq.controller")


class ClusterRuns:
    """Needs the Controller's store, clock, inputs, _spec, _finish, _interrupted, _attempt_ended,
    _destroy and _capacity_freed."""

    def _gang_running(self, sub, nodes: list[NodeStatus], now: float, adopted: bool = False) -> None:
        """Every node of the gang exists: record them, and the run as running on its master."""
        master = min(nodes, key=lambda n: n.rank)
        info = [{"rank": n.rank, "node": n.node_id, "ip": n.ip, "log": n.log_path, "workdir": n.workdir} for n in nodes]
        with self.store.transaction():
            self.store.record_nodes(sub["id"], sub["attempts"], [
                {"rank": n.rank, "node_id": n.node_id, "ip": n.ip, "log_path": n.log_path, "workdir": n.workdir}
                for n in nodes], now)
            self.store.set_status(sub["id"], "running", now, node_id=master.node_id, started_at=sub["started_at"] or now
                                  if adopted else now, window_start=now, deadline=None, log_path=master.log_path,
                                  workdir=master.workdir, next_try_at=None, backoff_event=None,
                                  detail={"node": master.node_id, "log": master.log_path, "workdir": master.workdir,
                                          "nodes": info, **({"adopted": master.node_id} if adopted else {})})

    def _recover_gang(self, sub, mine: list[NodeStatus], now: float) -> None:
        """A gang whose launch a crash interrupted: adopted only whole (one live node of every
        rank); otherwise every node it has is destroyed and it queues again, never part of it left."""
        ranks: dict[int, NodeStatus] = {}
        for node in sorted(mine, key=lambda n: n.node_id):
            ranks.setdefault(node.rank, node)
        if set(ranks) == set(range(self._spec(sub).nodes)) and not any(n.lost for n in ranks.values()):
            self._gang_running(sub, sorted(ranks.values(), key=lambda n: n.rank), now, adopted=True)
            return  # a second node of one rank (a create in flight at the crash) goes in the next poll
        for node in mine:
            self._destroy(node.node_id)
        with self.store.transaction():
            self.store.forget_nodes(sub["id"], sub["attempts"])
            self.store.set_status(sub["id"], "queued", now, node_id=None,
                                  detail={"rolled_back": True, "nodes_found": len(mine)})

    def _poll_gang(self, sub, listed: dict[int, NodeStatus]) -> None:
        """Look at a running gang's nodes: done when all ended with 0; ended (and retried as its
        policy says) at the first that failed or vanished, its other nodes stopped with it."""
        rows = self.store.submission_nodes(sub["id"], sub["attempts"])
        outcomes = {row["rank"]: _outcome(row, listed.get(row["rank"])) for row in rows} or {0: ("lost", None, None)}
        states = {state for state, _, _ in outcomes.values()}
        if states == {"running"}:
            return
        now = self.clock()
        bad = [rank for rank, (state, _, _) in sorted(outcomes.items()) if state in ("failed", "lost")]
        with self.store.transaction():
            for row in rows:
                state, code, ended = outcomes[row["rank"]]
                if state == "running" and not bad:
                    continue
                final = "stopped" if state == "running" else state
                if row["status"] != final:
                    self.store.update_node(sub["id"], row["attempt"], row["rank"], status=final, exit_code=code,
                                           finished_at=_when(ended, row["started_at"], now))
        if "running" in states and not bad:
            return  # some nodes are done, the others still work
        failed = [rank for rank in bad if outcomes[rank][0] == "failed"]
        why = None
        if failed:  # a node's own failure says more than one that vanished
            exit_code, event = outcomes[failed[0]][1], None
            log.info("%s #%s: node %s exited with %s: the cluster run ends", sub["run"], sub["number"], failed[0], exit_code)
        elif bad:
            exit_code, event = None, "interruption"
            lost = next((row["node_id"] for row in rows if row["rank"] == bad[0]), None)
            why = self._interrupted(sub, exit_code, event, lost)  # e.g. spot took that node back
            log.info("%s #%s: node %s vanished: the cluster run ends", sub["run"], sub["number"], bad[0])
        else:
            exit_code, event = 0, None
        ends = [ended for _, _, ended in outcomes.values() if ended is not None]
        self._finish(sub, exit_code, event, now, _when(max(ends) if ends else None, sub["started_at"], now), why)
        self._attempt_ended(sub, why or (f"its nodes ended (exit code {exit_code})"))
        self.inputs.release(sub["id"])
        for node in listed.values():
            self._destroy(node.node_id)
        self._capacity_freed(now)


def _outcome(row, node: NodeStatus | None) -> tuple[str, int | None, float | None]:
    """(running, done, failed or lost; exit code; when it ended) of one node of a gang."""
    if row["status"] in ("done", "failed", "lost", "stopped"):
        return row["status"], row["exit_code"], row["finished_at"]
    if row["reported_at"] is not None:  # a cloud node's report
        return ("done" if row["exit_code"] == 0 else "failed"), row["exit_code"], row["reported_at"]
    if node is not None and node.running:
        return "running", None, None
    if node is None or node.lost:
        return "lost", None, None
    return ("done" if node.exit_code == 0 else "failed"), node.exit_code, node.finished_at
