"""Cluster runs (nodes: N) through the controller, on the in-memory provider: admitted whole, never
starved by smaller runs, ended and retried as one, recovered only whole (an injected clock)."""

from __future__ import annotations

from gitopsq.controller import Controller, record_report
from gitopsq.nodetoken import attempt_token
from gitopsq.providers.base import CAPACITY, NodeStatus, ProviderError
from gitopsq.source import ConfigRepo
from gitopsq.store import listing
from tests.fakes import Clock, fake_world
from tests.helpers import task

def gang(name="train", nodes=3, priority=50, extra=""):
    return task(name, "torchrun train.py", nodes=nodes, priority=priority, retry="{on_events: [no-capacity], duration: off}") + extra


def status(world, run):
    sub = world.store.current_submission(run)
    return sub["status"] if sub else None


def test_a_gang_starts_as_soon_as_its_slots_are_free_despite_a_stream_of_small_runs(tmp_path):
    """3 slots, a gang of 3 at priority 50, 1-slot runs at priority 10 arriving every second."""
    clock = Clock()
    files = {f"runs/small{i}.yml": task(f"small{i}", priority=10, retry="{on_events: [no-capacity], duration: off}")
             for i in range(3)}
    with fake_world(tmp_path, files, slots=3, clock=clock) as world:
        world.controller.step()
        assert world.provider.running_runs() == ["small0", "small1", "small2"]
        world.repo.write("runs/train.yml", gang())
        world.repo.commit("the gang")
        holders = {f"small{i}": 2 * (i + 1) for i in range(3)}  # the small runs end at 2, 4 and 6 s
        started, arrived = None, 3
        for second in range(1, 12):
            clock.advance(1)
            world.repo.write(f"runs/small{arrived}.yml", task(f"small{arrived}", priority=10,
                                                              retry="{on_events: [no-capacity], duration: off}"))
            world.repo.commit(f"small{arrived}")
            arrived += 1
            for node in list(world.provider.nodes_by_id.values()):
                if node.running and node.run in holders and holders[node.run] <= second:
                    world.provider.finish(node.node_id, 0)
            world.controller.step()
            newcomers = [r for r in world.provider.running_runs() if r.startswith("small") and r not in holders]
            assert newcomers == [], f"a small run took a slot the gang waits for at {second}s"
            if status(world, "train") == "running":
                started = second
                break
        assert started == 6, "the gang starts the step its third slot is freed"
        sub = world.store.current_submission("train")
        assert [n.rank for n in world.provider.nodes_of(sub["id"])] == [0, 1, 2]
        [row] = [r for r in listing(world.store) if r["name"] == "train"]
        assert [(n["rank"], n["status"], n["ip"]) for n in row["nodes"]] == [
            (0, "running", "10.0.0.3"), (1, "running", "10.0.0.4"), (2, "running", "10.0.0.5")]
        assert "3 nodes running" in row["why"]


def test_one_node_failing_ends_the_run_stops_the_others_and_a_retry_restarts_them_all(tmp_path):
    clock = Clock()
    text = task("train", "torchrun", nodes=2, retry="{on_events: [error], duration: 1h}")
    with fake_world(tmp_path, {"runs/train.yml": text}, slots=4, clock=clock) as world:
        world.controller.step()
        first = world.store.current_submission("train")
        n0, n1 = world.provider.nodes_of(first["id"])
        world.provider.finish(n1.node_id, 3)
        clock.advance(1)
        world.controller.step()
        sub = world.store.current_submission("train")
        assert (sub["status"], sub["reason"], sub["exit_code"], sub["attempts"]) == ("queued", "exit-code", 3, 1)
        assert set(world.provider.stopped) == {n0.node_id, n1.node_id}, "the node still running is stopped with it"
        nodes = world.store.submission_nodes(sub["id"], 0)
        assert [(n["rank"], n["status"], n["exit_code"]) for n in nodes] == [(0, "stopped", None), (1, "failed", 3)]
        clock.now = sub["next_try_at"] + 0.1
        world.controller.step()
        again = world.provider.nodes_of(sub["id"])
        assert [n.rank for n in again] == [0, 1] and {n.node_id for n in again}.isdisjoint({n0.node_id, n1.node_id})
        assert [n["status"] for n in world.store.submission_nodes(sub["id"])] == ["running", "running"]
        for node in again:
            world.provider.finish(node.node_id, 0)
        world.controller.step()
        assert status(world, "train") == "done"


def test_done_only_when_every_node_ended_with_zero(tmp_path):
    with fake_world(tmp_path, {"runs/train.yml": task("train", nodes=2)}, slots=2) as world:
        world.controller.step()
        sub = world.store.current_submission("train")
        n0, n1 = world.provider.nodes_of(sub["id"])
        world.provider.finish(n0.node_id, 0)
        world.controller.step()
        assert status(world, "train") == "running" and world.provider.stopped == []
        assert [n["status"] for n in world.store.submission_nodes(sub["id"])] == ["done", "running"]
        world.provider.finish(n1.node_id, 0)
        world.controller.step()
        assert status(world, "train") == "done" and world.provider.running_runs() == []


def test_a_vanished_node_is_an_interruption_of_the_whole_run(tmp_path):
    with fake_world(tmp_path, {"runs/train.yml": task("train", nodes=2)}, slots=2) as world:
        world.controller.step()
        sub = world.store.current_submission("train")
        n0, n1 = world.provider.nodes_of(sub["id"])
        world.provider.nodes_by_id.pop(n1.node_id)
        world.controller.step()
        sub = world.store.current_submission("train")
        assert (sub["status"], sub["reason"]) == ("failed", "interrupted") and n0.node_id in world.provider.stopped


def test_cancel_and_max_duration_stop_every_node(tmp_path):
    clock = Clock()
    files = {"runs/a.yml": task("a", nodes=2), "runs/b.yml": task("b", nodes=2, max_duration="1m")}
    with fake_world(tmp_path, files, slots=4, clock=clock) as world:
        world.controller.step()
        a, b = (world.store.current_submission(r) for r in ("a", "b"))
        every = {n.node_id for s in (a, b) for n in world.provider.nodes_of(s["id"])}
        world.repo.remove("runs/a.yml")
        world.repo.commit("cancel a")
        clock.advance(61)
        world.controller.step()
        assert (status(world, "a"), status(world, "b")) == ("cancelled", "failed")
        assert set(world.provider.stopped) == every and len(every) == 4
        assert world.provider.nodes() == []
        assert {n["status"] for s in (a, b) for n in world.store.submission_nodes(s["id"])} == {"stopped"}


def test_a_gang_that_cannot_be_made_whole_queues_per_its_retry_policy(tmp_path):
    clock = Clock()
    with fake_world(tmp_path, {"runs/train.yml": gang(nodes=2)}, slots=2, clock=clock) as world:
        world.provider.fail_next = ProviderError(CAPACITY, "InsufficientInstanceCapacity", "no room")
        world.controller.step()
        sub = world.store.current_submission("train")
        assert (sub["status"], sub["attempts"], sub["backoff_event"]) == ("queued", 1, "no-capacity")
        assert world.store.submission_nodes(sub["id"]) == [] and world.provider.nodes() == []


def test_a_cloud_node_reports_with_its_rank_once(tmp_path):
    with fake_world(tmp_path, {"runs/train.yml": task("train", nodes=2)}, slots=2) as world:
        world.controller.step()
        sub = world.store.current_submission("train")
        token = attempt_token(sub["token"], 0)
        assert not record_report(world.store, sub["id"], token, 0, 1.0)  # no rank: refused
        assert not record_report(world.store, sub["id"], token, 0, 1.0, rank=2)
        assert record_report(world.store, sub["id"], token, 0, 1.0, rank=1)
        assert not record_report(world.store, sub["id"], token, 0, 1.0, rank=1)  # once
        assert record_report(world.store, sub["id"], token, 4, 1.0, rank=0)
        world.controller.step()
        sub = world.store.current_submission("train")
        assert (sub["status"], sub["exit_code"]) == ("failed", 4)


def test_recovery_adopts_a_whole_gang_and_destroys_a_partial_one(tmp_path):
    clock = Clock()
    with fake_world(tmp_path, {"runs/whole.yml": task("whole", nodes=2), "runs/part.yml": task("part", nodes=3)},
                    slots=10, clock=clock) as world:
        world.controller.sync_git()
        whole, part = (world.store.current_submission(r) for r in ("whole", "part"))
        # A crash after the intent was recorded: whole's nodes were all made, part's only one of three.
        with world.store.transaction():
            for sub in (whole, part):
                world.store.set_status(sub["id"], "provisioning", clock())
        made = {}
        for sub, ranks in ((whole, (0, 1)), (part, (0,))):
            for rank in ranks:
                node = NodeStatus(f"n-{sub['run']}-{rank}", sub["id"], sub["run"], True, None, rank=rank, ip="10.1.0.1")
                world.provider.nodes_by_id[node.node_id] = made[node.node_id] = node
        # and a second node of whole's rank 1 from a create that was in flight
        stray = NodeStatus("n-whole-1b", whole["id"], "whole", True, None, rank=1)
        world.provider.nodes_by_id[stray.node_id] = stray
        fresh = Controller(world.store, world.provider, ConfigRepo(str(world.repo.path)), clock=clock)
        fresh.step()
        assert world.store.submission(whole["id"])["status"] == "running"
        assert {n["rank"]: n["node_id"] for n in world.store.submission_nodes(whole["id"])} == {0: "n-whole-0", 1: "n-whole-1"}
        assert "n-part-0" in world.provider.stopped, "never a partial gang left running"
        assert "n-whole-1b" in world.provider.stopped, "never two nodes of one rank"
        part_now = world.store.submission(part["id"])
        assert part_now["status"] == "running", "rolled back, then admitted again whole"
        assert [n.rank for n in world.provider.nodes_of(part["id"])] == [0, 1, 2]


def test_a_new_run_never_takes_a_freed_slot_before_a_waiting_higher_priority_run(tmp_path):
    """Found with gangs, true of any run: a submission new in this step was decided on alone, so
    it took the slot that had just freed although a higher-priority run waited for it."""
    clock = Clock()
    wait = "{on_events: [no-capacity], duration: off}"
    files = {"runs/holder.yml": task("holder", priority=90), "runs/high.yml": task("high", priority=80, retry=wait)}
    with fake_world(tmp_path, files, slots=1, clock=clock) as world:
        world.controller.step()
        assert (status(world, "holder"), status(world, "high")) == ("running", "queued")
        world.repo.write("runs/low.yml", task("low", priority=10, retry=wait))
        world.repo.commit("a newcomer")
        [node] = world.provider.nodes()
        world.provider.finish(node.node_id, 0)
        clock.advance(1)
        world.controller.step()
        assert (status(world, "high"), status(world, "low")) == ("running", "queued")


def test_the_dashboard_shows_a_cluster_run_as_one_run_with_its_nodes(tmp_path):
    from gitopsq.web import dashboard

    clock = Clock()
    with fake_world(tmp_path, {"runs/train.yml": task("train", nodes=2)}, slots=2, clock=clock) as world:
        world.controller.step()
        index = dashboard.render_index(world.store, {}, clock())
        assert index.count('data-name="train"') <= 1 and "2 nodes running" in index
        page = dashboard.render_run(world.store, "train", clock())
        assert page.count('class="node"') == 2 and 'data-rank="1"' in page and "10.0.0.1" in page


def test_while_a_gang_waits_admission_reads_only_the_head_of_the_queue(tmp_path):
    """What a waiting gang sets aside counts as taken: the queue behind it is not read to the end
    every step (the controller once lost the set-aside capacity between queue.admit and itself)."""
    wait = "{on_events: [no-capacity], duration: off}"
    files = {f"runs/small{i:02d}.yml": task(f"small{i:02d}", priority=10, retry=wait) for i in range(40)}
    files.update({"runs/holder.yml": task("holder", priority=90, nodes=2), "runs/train.yml": gang(nodes=3)})
    with fake_world(tmp_path, files, slots=3) as world:
        world.controller.step()
        assert world.provider.running_runs() == ["holder", "holder"] and status(world, "train") == "queued"
        read = []
        chunks = world.store.queued_in_order

        def counted(*args, **kwargs):
            for chunk in chunks(*args, **kwargs):
                read.append(len(chunk))
                yield chunk

        world.store.queued_in_order = counted
        world.controller.step()
        assert world.provider.running_runs() == ["holder", "holder"]
        assert len(read) == 1, "only the head chunk: what is free is set aside for the gang"
