"""The controller driving EC2 (moto's server on 127.0.0.1) through the cloud provider, end to end."""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from libcloud.compute.types import NodeState

from gitopsq.controller import Controller, record_report
from gitopsq.nodetoken import attempt_token
from gitopsq.providers import ec2
from gitopsq.providers.base import TAG_CONTROLLER
from gitopsq.providers.cloud import make_cloud_provider
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import Clock
from tests.moto_ec2 import TEST_KEY, TEST_SECRET, MotoEC2Server

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_URL = "http://127.0.0.1:8765"


@pytest.fixture(autouse=True)
def env(monkeypatch):
    monkeypatch.setenv("GITOPSQ_PROVIDER_KEY", TEST_KEY)
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", TEST_SECRET)


@pytest.fixture
def server():
    with MotoEC2Server() as srv:
        yield srv


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=True, text=True).stdout.strip()


class World:
    """A config repo, a store and a controller over EC2 on moto."""

    def __init__(self, tmp_path: Path, server: MotoEC2Server, max_nodes: int | None = None):
        self.work = tmp_path / "config"
        self.work.mkdir()
        git(self.work, "init", "-q", "-b", "main")
        self.commit({".gitopsq.yml": "paths: ['runs/*.yml']\n"})
        self.server = server
        self.store = Store(tmp_path / "s.db")
        self.clock = Clock()
        self.provider = make_cloud_provider("ec2", {"region": "us-east-1", "endpoint": server.endpoint},
                                            self.store.controller_id, max_nodes, PUBLIC_URL)
        self.repo = ConfigRepo(str(self.work), branch="main")
        self.controller = Controller(self.store, self.provider, self.repo, branch="main", clock=self.clock,
                                     rng=random.Random(0))

    def commit(self, files: dict[str, str | None]) -> None:
        for name, content in files.items():
            path = self.work / name
            if content is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-q", "--allow-empty", "-m", "change")

    def step(self, advance: float = 0.0):
        self.clock.now += advance
        return self.controller.step()

    def instances(self, include_terminated: bool = False):
        return ec2.list_nodes_by_tag(self.provider.driver, TAG_CONTROLLER, self.store.controller_id, include_terminated)

    def sub(self, run: str):
        return self.store.current_submission(run)

    def close(self) -> None:
        self.repo.close()
        self.store.close()


@pytest.fixture
def world(tmp_path, server):
    w = World(tmp_path, server)
    yield w
    w.close()


def run_file(commands: str = "echo hi", extra: str = "") -> str:
    return f"type: task\ncommands: [{commands!r}]\nresources: {{cpu: 2, memory: 8GB}}\n{extra}"


def test_commit_delete_and_edit_drive_instances(world):
    world.commit({"runs/train.yml": run_file()})
    world.step()
    sub = world.sub("train")
    [node] = world.instances()
    assert sub["status"] == "running" and sub["node_id"] == node.id
    assert node.extra["instance_type"] == "t3a.large"  # cheapest 2 vCPU / 8GB x86 size in us-east-1
    assert node.extra["tags"] == {"Name": f"gq-train-{sub['id']}", TAG_CONTROLLER: world.store.controller_id,
                                  "gitopsq-run": "train", "gitopsq-submission": str(sub["id"]), "gitopsq-attempt": "0"}
    world.step(1)  # nothing changed: nothing new
    assert [n.id for n in world.instances()] == [node.id] and world.server.calls["RunInstances"] == 1

    # edit the commands: the old instance is terminated, a new one created
    world.commit({"runs/train.yml": run_file("echo again")})
    world.step(1)
    history = world.store.history("train")
    assert [(h["number"], h["status"], h["reason"]) for h in history] == [(1, "cancelled", "replaced"), (2, "running", None)]
    [new] = world.instances()
    assert new.id != node.id and new.id == history[1]["node_id"]
    assert "echo again" in _script_of(world, new)
    states = {n.id: n.state for n in world.instances(include_terminated=True)}
    assert states == {node.id: NodeState.TERMINATED, new.id: NodeState.RUNNING}

    # delete the file: terminated
    world.commit({"runs/train.yml": None})
    world.step(1)
    assert world.instances() == []
    assert (world.sub("train")["status"], world.sub("train")["reason"]) == ("cancelled", "deleted")


def _script_of(world, node) -> str:
    import base64

    text = ec2.get_user_data(world.provider.driver, node)
    # the run's commands travel base64-encoded inside the script
    encoded = re.search(r"echo (\S+) \| base64 -d > \"\$GITOPSQ_DIR/script.sh\"", text).group(1)
    return base64.b64decode(encoded).decode()


def _token_in_user_data(world, node) -> str:
    text = ec2.get_user_data(world.provider.driver, node)
    return re.search(r'"token": "([^"]+)"', text).group(1)


@pytest.mark.parametrize("exit_code, status", [(0, "done"), (5, "failed")])
def test_report_from_the_node_finishes_the_submission(world, exit_code, status):
    world.commit({"runs/job.yml": run_file()})
    world.step()
    [node] = world.instances()
    sub_id = world.sub("job")["id"]
    token = _token_in_user_data(world, node)
    assert token == attempt_token(world.sub("job")["token"], 0)
    assert not record_report(world.store, sub_id, "wrong-" + token, exit_code, world.clock.now)
    assert record_report(world.store, sub_id, token, exit_code, world.clock.now)
    world.step(1)
    sub = world.sub("job")
    assert (sub["status"], sub["exit_code"]) == (status, exit_code)
    assert world.instances() == []  # the node is terminated once its report is in


def test_node_gone_without_report_is_an_interruption(world):
    world.commit({"runs/job.yml": run_file(extra="retry: {on_events: [interruption]}\n"),
                  "runs/other.yml": run_file()})
    world.step()
    job, other = world.sub("job"), world.sub("other")
    world.provider.driver.ex_stop_node(next(n for n in world.instances() if n.id == job["node_id"]))
    world.provider.driver.destroy_node(next(n for n in world.instances() if n.id == other["node_id"]))
    world.step(1)
    # stopped, with retry on interruption: back to the queue, backing off, then relaunched on a new node
    waiting = world.sub("job")
    assert (waiting["status"], waiting["reason"], waiting["attempts"]) == ("queued", "interrupted", 1)
    assert (waiting["backoff_event"], waiting["message"]) == ("interruption", "node lost: it ended without reporting an exit code")
    world.step(waiting["next_try_at"] - world.clock.now + 0.1)
    job2 = world.sub("job")
    assert (job2["status"], job2["reason"], job2["attempts"]) == ("running", "interrupted", 1)
    assert job2["node_id"] != job["node_id"]
    # vanished, no retry: failed as interrupted
    assert (world.sub("other")["status"], world.sub("other")["reason"]) == ("failed", "interrupted")
    assert [n.id for n in world.instances()] == [job2["node_id"]]


def test_a_reclaimed_spot_node_retries_under_interruption(world):
    world.commit({"runs/job.yml": run_file(extra="spot_policy: spot\nretry: {on_events: [interruption]}\n"),
                  "runs/once.yml": run_file(extra="spot_policy: spot\n")})
    world.step()
    job, once = world.sub("job"), world.sub("once")
    for sub in (job, once):
        world.server.reclaim_spot(sub["node_id"])  # EC2 takes the instances back
    world.step(1)
    waiting = world.sub("job")
    spot = "spot interruption (Server.SpotInstanceTermination)"
    assert (waiting["status"], waiting["reason"], waiting["backoff_event"], waiting["attempts"]) == (
        "queued", "interrupted", "interruption", 1)
    assert waiting["message"] == spot
    assert (world.sub("once")["status"], world.sub("once")["reason"], world.sub("once")["message"]) == ("failed", "interrupted", spot)
    world.step(waiting["next_try_at"] - world.clock.now + 0.1)
    again = world.sub("job")
    assert (again["status"], again["attempts"]) == ("running", 1) and again["node_id"] != job["node_id"]
    [node] = world.instances()
    assert node.id == again["node_id"] and node.extra["instance_lifecycle"] == "spot"


def test_auto_runs_on_demand_when_spot_has_no_capacity(world):
    world.commit({"runs/job.yml": run_file(extra="spot_policy: auto\n")})
    world.provider.adapter.image()
    world.server.inject("RunInstances", "InsufficientInstanceCapacity", status=500, times=100,
                        when={"InstanceMarketOptions.MarketType": "spot"})
    world.step()
    sub = world.sub("job")
    assert (sub["status"], sub["attempts"]) == ("running", 0)
    [node] = world.instances()
    assert node.id == sub["node_id"] and node.extra.get("instance_lifecycle") != "spot"
    markets = [r.get("InstanceMarketOptions.MarketType") for r in world.server.requests("RunInstances")]
    assert markets == ["spot", None]


def test_a_report_of_an_earlier_attempt_is_refused(world):
    import httpx

    from gitopsq.web import create_app
    from tests.helpers import Recorder
    from tests.webserver import running

    world.commit({"runs/job.yml": run_file(extra="retry: {on_events: [interruption]}\n")})
    world.step()
    [first] = world.instances()
    captured = _token_in_user_data(world, first)  # what attempt 1 sent, seen by someone on its path
    world.provider.driver.ex_stop_node(first)
    world.step(1)
    world.step(world.sub("job")["next_try_at"] - world.clock.now + 0.1)
    job = world.sub("job")
    [second] = [n for n in world.instances() if n.id == job["node_id"]]
    assert (job["status"], job["attempts"]) == ("running", 1)

    wake = Recorder()
    app = create_app(world.store.path, wake, lambda: {}, None, clock=lambda: world.clock.now)
    with running(app) as url:
        replay = httpx.post(f"{url}/api/submissions/{job['id']}/report", json={"token": captured, "exit_code": 0})
        assert replay.status_code == 403 and wake.calls == []
        world.step(1)
        job = world.sub("job")
        assert (job["status"], job["exit_code"], job["reported_at"]) == ("running", None, None)
        assert job["node_id"] == second.id and second.id in [n.id for n in world.instances()]

        own = _token_in_user_data(world, second)
        assert own != captured
        reply = httpx.post(f"{url}/api/submissions/{job['id']}/report", json={"token": own, "exit_code": 0})
        assert reply.status_code == 200
    world.step(1)
    assert world.sub("job")["status"] == "done"


def test_no_capacity_queues_with_retry_and_fails_without(world):
    world.commit({"runs/patient.yml": run_file(extra="priority: 5\nretry: {on_events: [no-capacity]}\n"),
                  "runs/eager.yml": run_file()})
    world.provider.adapter.image()  # look the image up now, so only RunInstances is counted below
    world.server.inject("RunInstances", "InsufficientInstanceCapacity", status=500, times=2)
    world.step()
    patient, eager = world.sub("patient"), world.sub("eager")
    assert (eager["status"], eager["reason"]) == ("failed", "no-capacity")
    assert (patient["status"], patient["attempts"]) == ("queued", 1)
    assert "InsufficientInstanceCapacity" in patient["message"]
    wait = patient["next_try_at"] - world.clock.now
    assert 13 <= wait <= 17  # 15s backoff with jitter
    world.step(wait / 2)  # still backing off: EC2 is not asked again
    assert world.server.calls["RunInstances"] == 2 and world.sub("patient")["status"] == "queued"
    world.step(wait)
    patient = world.sub("patient")
    assert patient["status"] == "running"
    assert [n.id for n in world.instances()] == [patient["node_id"]]
    assert world.server.calls["RunInstances"] == 3


def test_timeout_is_retried_and_the_late_instance_does_not_leak(world):
    world.provider = make_cloud_provider("ec2", {"region": "us-east-1", "endpoint": world.server.endpoint, "timeout": "1"},
                                         world.store.controller_id, None, PUBLIC_URL)
    world.controller = Controller(world.store, world.provider, world.repo, branch="main", clock=world.clock, rng=random.Random(0))
    world.commit({"runs/job.yml": run_file()})
    world.provider.adapter.image()
    # moto answers only after the client gave up: the instance is created all the same.
    world.server.inject_delay("RunInstances", seconds=2.5, times=1)
    world.step()
    sub = world.sub("job")
    assert (sub["status"], sub["attempts"]) == ("queued", 0)
    assert world.controller.provider_health.startswith("provider ec2: throttle:")
    time.sleep(2.0)  # the stalled request reaches moto meanwhile
    world.step(sub["next_try_at"] - world.clock.now + 0.1)
    sub = world.sub("job")
    assert sub["status"] == "running"
    assert [n.id for n in world.instances()] == [sub["node_id"]], "the late instance was destroyed, not kept"
    assert len(world.instances(include_terminated=True)) == 2, "the timed-out request did create an instance"


@pytest.mark.parametrize("fault", ["RequestLimitExceeded", "http-503"])
def test_throttling_and_outages_are_retried_without_counting(world, fault):
    world.commit({"runs/job.yml": run_file()})  # no retry policy: provider trouble is not the run's failure
    world.provider.adapter.image()
    if fault == "http-503":
        world.server.inject_http("RunInstances", status=503)
    else:
        world.server.inject("RunInstances", "RequestLimitExceeded", status=503)
    world.step()
    sub = world.sub("job")
    assert (sub["status"], sub["attempts"]) == ("queued", 0)
    assert sub["next_try_at"] > world.clock.now
    assert world.controller.provider_health.startswith("provider ec2: throttle:")
    world.step(sub["next_try_at"] - world.clock.now + 0.1)
    sub = world.sub("job")
    assert (sub["status"], sub["attempts"]) == ("running", 0)
    assert [n.id for n in world.instances()] == [sub["node_id"]]
    assert world.controller.provider_health is None


def test_auth_failure_keeps_runs_queued_and_reports_once(world, caplog):
    world.commit({"runs/a.yml": run_file(), "runs/b.yml": run_file()})
    world.provider.adapter.image()
    world.server.inject("RunInstances", "AuthFailure", status=401, times=4)
    with caplog.at_level(logging.WARNING, logger="gitopsq.controller"):
        world.step()
        world.step(60)
    assert [world.sub(r)["status"] for r in ("a", "b")] == ["queued", "queued"]
    assert [world.sub(r)["attempts"] for r in ("a", "b")] == [0, 0]
    health = world.controller.provider_health
    assert health.startswith("provider ec2: auth: AuthFailure")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [health]  # four refusals, one message
    assert world.instances() == []
    world.step(60)  # credentials fixed
    assert [world.sub(r)["status"] for r in ("a", "b")] == ["running", "running"]
    assert world.controller.provider_health is None


def test_an_expired_session_token_is_an_auth_problem_on_healthz_not_a_run_failure(world):
    import httpx

    from gitopsq.web import create_app
    from tests.helpers import Recorder
    from tests.webserver import running

    world.commit({"runs/running.yml": run_file()})
    world.step()
    assert world.sub("running")["status"] == "running"
    world.commit({"runs/waiting.yml": run_file()})
    # Temporary credentials ran out: every call is refused until new ones are given.
    world.server.inject("*", "ExpiredToken", status=400, times=1000, message="The security token included in the request is expired")
    world.step(60)
    world.step(60)
    busy, waiting = world.sub("running"), world.sub("waiting")
    assert (busy["status"], busy["reason"]) == ("running", None), "a run is not failed for the controller's credentials"
    assert (waiting["status"], waiting["attempts"], waiting["reason"]) == ("queued", 0, None)
    health = world.controller.provider_health
    assert health == "provider ec2: auth: ExpiredToken: The security token included in the request is expired"
    status = lambda: {"branch": "main", "provider": "ec2", "provider_health": world.controller.provider_health}  # noqa: E731
    with running(create_app(world.store.path, Recorder(), status, None)) as url:
        answer = httpx.get(f"{url}/healthz")
        assert answer.status_code == 503
        assert (answer.json()["status"], answer.json()["reason"]) == ("degraded", health)
        world.server.clear_faults()  # new credentials
        world.step(60)
        assert [world.sub(r)["status"] for r in ("running", "waiting")] == ["running", "running"]
        answer = httpx.get(f"{url}/healthz")
        assert (answer.status_code, answer.json()["status"], answer.json()["provider_health"]) == (200, "ok", None)


def test_unsatisfiable_run_fails_at_once(world):
    world.commit({"runs/big.yml": "type: task\ncommands: [train]\nresources: {gpu: H100:16}\n"})
    world.step()
    sub = world.sub("big")
    assert (sub["status"], sub["reason"], sub["message"]) == (
        "failed", "unsatisfiable", "resources.gpu: no ec2 size has 16x H100 in us-east-1")
    assert world.server.calls["RunInstances"] == 0


def test_max_nodes_runs_the_highest_priorities_first(tmp_path, server):
    world = World(tmp_path, server, max_nodes=2)
    try:
        # queued until they fit, as `gitopsq apply -Q` writes them (without retry they would fail no-capacity)
        queue = "retry: {on_events: [no-capacity], duration: off}\n"
        world.commit({f"runs/p{p}.yml": run_file(extra=f"priority: {p}\n{queue}") for p in (10, 50, 30, 20, 40)})
        world.step()
        running = lambda: sorted(r for r in ("p10", "p20", "p30", "p40", "p50") if world.sub(r)["status"] == "running")  # noqa: E731
        assert running() == ["p40", "p50"]
        assert [world.sub(r)["status"] for r in ("p10", "p20", "p30")] == ["queued"] * 3
        assert len(world.instances()) == 2
        world.step(1)
        assert running() == ["p40", "p50"] and world.server.calls["RunInstances"] == 2

        world.commit({"runs/p50.yml": None})  # delete a running one: the next highest starts
        world.step(1)
        assert running() == ["p30", "p40"]
        sub = world.sub("p40")
        node = next(n for n in world.instances() if n.id == sub["node_id"])
        assert record_report(world.store, sub["id"], _token_in_user_data(world, node), 0, world.clock.now)
        world.step(1)  # a report ends one: the next highest starts
        assert running() == ["p20", "p30"] and world.sub("p40")["status"] == "done"
        assert sorted(n.extra["tags"]["gitopsq-run"] for n in world.instances()) == ["p20", "p30"]
    finally:
        world.close()


# --- crash safety: kill -9 between create-node and its record -----------------------------------

CHILD = textwrap.dedent("""
    import random, sys
    from gitopsq.controller import Controller
    from gitopsq.providers.cloud import make_cloud_provider
    from gitopsq.source import ConfigRepo
    from gitopsq.store import Store

    db, repo, endpoint = sys.argv[1:4]
    store = Store(db)
    provider = make_cloud_provider("ec2", {"region": "us-east-1", "endpoint": endpoint}, store.controller_id, None,
                                   "http://127.0.0.1:8765")
    provider.adapter.image()
    controller = Controller(store, provider, ConfigRepo(repo), "main")
    print("go", flush=True)
    controller.step()
    print("done", flush=True)
""")


def test_kill_9_never_duplicates_or_orphans_instances(tmp_path, server):
    world = World(tmp_path, server)
    rng = random.Random(5)
    child_env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # Each RunInstances stalls a little, so kills also land while a create is in flight.
    server.inject_delay("RunInstances", seconds=0.05, times=10_000)

    def child_step(kill_after: float | None) -> float:
        proc = subprocess.Popen([sys.executable, str(script), str(world.store.path), str(world.work), server.endpoint],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env)
        try:
            assert proc.stdout.readline() == "go\n", proc.stderr.read()
            started = time.monotonic()
            if kill_after is not None:
                time.sleep(kill_after)
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            proc.stderr.close()

    def check(where: str) -> None:
        by_sub: dict[str, list[str]] = {}
        for node in world.instances():
            by_sub.setdefault(node.extra["tags"]["gitopsq-submission"], []).append(node.id)
        assert all(len(ids) == 1 for ids in by_sub.values()), f"{where}: two instances for one submission: {by_sub}"
        running = {str(s["id"]): s["node_id"] for s in world.store.submissions_with_status("running")}
        # every instance belongs to a running submission, and every running submission has its instance
        assert {k: v[0] for k, v in by_sub.items()} == running, f"{where}: instances {by_sub} vs running {running}"
        assert world.store.submissions_with_status("queued", "provisioning", "stopping") == []

    try:
        names = iter(range(1000))
        world.commit({f"runs/r{next(names)}.yml": run_file() for _ in range(3)})
        full = child_step(None)  # one step to completion: how long a step takes here
        check("unkilled step")
        in_window = 0
        for i in range(20):
            current = sorted(p.stem for p in (world.work / "runs").glob("*.yml"))
            change = {f"runs/{name}.yml": None for name in current[:1]}  # a stop to finish, too
            change.update({f"runs/r{next(names)}.yml": run_file() for _ in range(3)})
            world.commit(change)
            child_step(rng.uniform(0, full))
            in_window += bool(world.store.submissions_with_status("provisioning"))
            # A fresh controller (as after a restart) recovers. Every other time it starts while a
            # create may still be in flight on the server; moto ignores EC2's client token, so that
            # create can add a second instance after the relaunch: the next step must remove it.
            immediate = i % 2 == 1
            if not immediate:
                time.sleep(0.1)
            fresh = Controller(world.store, world.provider, world.repo, "main", clock=time.time)
            fresh.step()
            if immediate:
                time.sleep(0.1)
                fresh.step()
            check(f"kill {i} after {'immediate' if immediate else 'delayed'} recovery")
        print(f"kills between intent and record: {in_window} of 20")
        assert in_window >= 1, "some kills must land between create-node and its record (machine load shifts how many)"
        assert len(world.instances()) == len(current) - 1 + 3
    finally:
        world.close()


def test_serve_reports_provider_config_errors_plainly(tmp_path, monkeypatch):
    from tests.helpers import run_cli

    work = tmp_path / "config"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    git(work, "commit", "-q", "--allow-empty", "-m", "empty")
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", "very-secret-value")
    monkeypatch.delenv("GITOPSQ_PROVIDER_KEY")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    base = ["serve", "--repo", str(work), "--db", str(tmp_path / "s.db"), "--once", "--provider", "ec2"]
    result = run_cli(*base)
    assert result.exit_code == 1
    assert "Error: --public-url is required for a cloud provider" in result.output
    result = run_cli(*base, "--public-url", "http://gitopsq.example.com")
    assert result.exit_code == 1
    assert "Error: --public-url must be https://" in result.output and "--insecure-public-url" in result.output
    result = run_cli(*base, "--public-url", "http://gitopsq.example.com", "--insecure-public-url")
    assert result.exit_code == 1 and "must be https" not in result.output  # past the URL: credentials are missing
    result = run_cli(*base, "--public-url", PUBLIC_URL, "--provider-opt", "region=us-east-1")
    assert result.exit_code == 1
    assert "GITOPSQ_PROVIDER_KEY" in result.output and "very-secret-value" not in result.output


def test_serve_once_launches_on_ec2(tmp_path, server):
    from tests.helpers import run_cli

    work = tmp_path / "config"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "job.yml").write_text(run_file())
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "job")
    db = tmp_path / "s.db"
    result = run_cli("serve", "--repo", str(work), "--db", str(db), "--once", "--provider", "ec2",
                     "--provider-opt", "region=us-east-1", "--provider-opt", f"endpoint={server.endpoint}",
                     "--max-nodes", "3", "--public-url", PUBLIC_URL)
    assert result.exit_code == 0, result.output
    assert result.output == "submit job\n"
    store = Store(db)
    try:
        sub = store.current_submission("job")
        driver = ec2.make_ec2_driver(endpoint=server.endpoint, key=TEST_KEY, secret=TEST_SECRET)
        [node] = ec2.list_nodes_by_tag(driver, TAG_CONTROLLER, store.controller_id)
        assert (sub["status"], sub["node_id"]) == ("running", node.id)
    finally:
        store.close()


# --- cluster runs (nodes: N) -------------------------------------------------------------------------


def test_a_two_node_task_makes_two_instances_and_a_fault_on_the_second_queues_it(world):
    import httpx

    from gitopsq.web import create_app
    from tests.helpers import Recorder
    from tests.webserver import running

    world.commit({"runs/dist.yml": run_file("torchrun train.py", "nodes: 2\nretry: {on_events: [no-capacity]}\n")})
    world.provider.adapter.image()
    world.server.inject("RunInstances", "InsufficientInstanceCapacity", status=500, after=1)
    world.step()
    sub = world.sub("dist")
    assert (sub["status"], sub["attempts"], sub["backoff_event"]) == ("queued", 1, "no-capacity")
    assert world.server.calls["RunInstances"] == 2 and world.instances() == [], "the first instance was destroyed"

    world.step(sub["next_try_at"] - world.clock.now + 0.1)
    sub = world.sub("dist")
    assert sub["status"] == "running"
    instances = sorted(world.instances(), key=lambda n: n.extra["tags"]["gitopsq-rank"])
    assert [n.extra["tags"]["gitopsq-rank"] for n in instances] == ["0", "1"]
    recorded = world.store.submission_nodes(sub["id"])
    assert [(n["rank"], n["node_id"]) for n in recorded] == [(0, instances[0].id), (1, instances[1].id)]

    app = create_app(world.store.path, Recorder(), lambda: {}, None, clock=lambda: world.clock.now)
    with running(app) as url:
        base = f"{url}/api/submissions/{sub['id']}"
        token = _token_in_user_data(world, instances[1])
        cluster = httpx.get(f"{base}/inputs/cluster", headers={"Authorization": f"Bearer {token}"})
        assert cluster.status_code == 200
        ips = [n["ip"] for n in recorded]
        assert cluster.text == f"export DSTACK_MASTER_NODE_IP={ips[0]}\nexport DSTACK_NODES_IPS='{ips[0]}\n{ips[1]}'\n"
        assert httpx.get(f"{base}/inputs/cluster", headers={"Authorization": "Bearer nope"}).status_code in (401, 403)
        for rank in (0, 1):
            reply = httpx.post(f"{base}/report", json={"token": token, "exit_code": 0, "rank": rank})
            assert reply.status_code == 200, reply.text
        assert httpx.post(f"{base}/report", json={"token": token, "exit_code": 0, "rank": 1}).status_code == 403
    world.step(1)
    assert world.sub("dist")["status"] == "done" and world.instances() == []
