"""The JSON API, /healthz, /openapi.json and /metrics over real HTTP against a uvicorn server."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitopsq.nodetoken import attempt_token
from gitopsq.spec import Retry
from gitopsq.store import Store, listing
from gitopsq.web import Metrics, create_app
from tests.helpers import Recorder, run_cli
from tests.webserver import add_run, bearer, running

NOW = 1_800_000_000.0
STATUS = {"branch": "main", "commit": "0123456789abcdef", "provider": "local", "provider_health": None,
          "last_step_at": NOW - 2, "last_success_at": NOW - 2, "last_step_error": None, "step_failures": 0,
          "repo": "/srv/config.git", "runs_isolated": True, "runs_isolation": "process runs execute as gitopsq-run"}


@pytest.fixture
def state(tmp_path):
    """Four active runs (two of equal priority), two finished ones and one whose file is gone."""
    db = tmp_path / "state.db"
    store = Store(db)
    add_run(store, "low", NOW - 500, priority=1)
    add_run(store, "late", NOW - 100, priority=5, retry=Retry(("no-capacity",), None))
    add_run(store, "early", NOW - 300, priority=5, retry=Retry(("no-capacity",), 3600), window_start=NOW - 300,
            deadline=NOW - 300 + 3600)
    add_run(store, "train", NOW - 400, priority=3, status="running", run_type="dev-environment")
    add_run(store, "broken", NOW - 600, priority=9, status="failed", reason="exit-code", exit_code=2, ended_at=NOW - 50)
    add_run(store, "finished", NOW - 700, priority=0, status="done", exit_code=0, ended_at=NOW - 80)
    add_run(store, "removed", NOW - 800, status="cancelled", ended_at=NOW - 90)
    with store.transaction():
        store.mark_absent("removed", NOW - 90)
    yield db, store
    store.close()


@pytest.fixture
def server(state):
    db, store = state
    wake = Recorder()
    metrics = Metrics()
    app = create_app(db, wake, lambda: dict(STATUS), None, metrics, clock=lambda: NOW, accept_unsigned_webhooks=True)
    with running(app) as url, httpx.Client(base_url=url, timeout=10, headers=bearer(store)) as client:
        yield client, store, wake, metrics, db


ACTIVE_ORDER = ["early", "late", "train", "low"]  # priority desc, then first queued


def names(rows):
    return [row["name"] for row in rows]


def test_runs_are_in_queue_order_and_match_ps_json(server):
    client, store, _, _, db = server
    rows = client.get("/api/runs").json()
    assert names(rows) == ACTIVE_ORDER + ["broken", "finished"]  # finished ones: most recently ended first
    assert rows == json.loads(json.dumps(listing(store, now=NOW), default=str))
    cli = run_cli("ps", "--json", "--db", str(db))
    assert cli.exit_code == 0, cli.output
    assert rows == json.loads(cli.output)
    early = rows[0]
    assert early["status"] == "queued" and early["priority"] == 5
    assert early["retry"] == {"on_events": ["no-capacity"], "duration": 3600}
    assert early["deadline"] == NOW - 300 + 3600


def test_runs_filters(server):
    client, store, *_ = server
    assert names(client.get("/api/runs", params={"status": "queued"}).json()) == ["early", "late", "low"]
    failed = client.get("/api/runs", params={"status": "failed"}).json()
    assert names(failed) == ["broken"] and failed[0]["exit_code"] == 2 and failed[0]["reason"] == "exit-code"
    assert "removed" not in names(client.get("/api/runs").json())
    everything = client.get("/api/runs", params={"all": "true"}).json()
    assert names(everything) == ACTIVE_ORDER + ["broken", "finished", "removed"]
    assert everything[-1]["present"] is False
    assert everything == json.loads(json.dumps(listing(store, include_all=True), default=str))
    bad = client.get("/api/runs", params={"status": "sleeping"})
    assert bad.status_code == 422


def test_submissions_in_queue_order(server):
    client, store, *_ = server
    rows = client.get("/api/submissions").json()
    assert names(rows) == ACTIVE_ORDER
    ids = [row["id"] for row in store.submissions_with_status("queued", "provisioning", "running", "stopping")]
    assert [row["submission_id"] for row in rows] == ids
    assert "token" not in rows[0]
    failed = client.get("/api/submissions", params={"status": "failed"}).json()
    assert [(r["name"], r["exit_code"]) for r in failed] == [("broken", 2)]


def test_run_detail_history_and_404(server):
    client, store, *_ = server
    # A second submission of "broken" (a restart after an edit).
    with store.transaction():
        spec = json.loads(store.current_submission("broken")["spec"])
        store.add_submission("broken", spec, "feedbeef", NOW - 10)
    detail = client.get("/api/runs/broken").json()
    assert (detail["name"], detail["submission"], detail["status"], detail["commit_sha"]) == ("broken", 2, "queued", "feedbeef")
    history = client.get("/api/runs/broken/history").json()
    assert [(h["submission"], h["status"], h["exit_code"], h["commit_sha"]) for h in history] == [
        (1, "failed", 2, "c0ffee00"), (2, "queued", None, "feedbeef")]
    assert history[0]["finished_at"] == NOW - 50
    for path in ("/api/runs/nope", "/api/runs/nope/history"):
        missing = client.get(path)
        assert missing.status_code == 404 and missing.json() == {"detail": "no run named 'nope'"}


def test_activity_touches_an_active_run(server):
    client, store, wake, *_ = server
    reply = client.post("/api/runs/train/activity")
    assert reply.status_code == 200 and reply.json() == {"name": "train", "last_activity_at": NOW}
    assert store.current_submission("train")["last_activity_at"] == NOW
    assert client.get("/api/runs/train").json()["last_activity_at"] == NOW
    not_active = client.post("/api/runs/broken/activity")
    assert not_active.status_code == 409 and "not active" in not_active.json()["detail"]
    assert store.current_submission("broken")["last_activity_at"] is None
    assert client.post("/api/runs/nope/activity").status_code == 404
    assert wake.calls == []


def test_report_needs_the_token_of_the_current_attempt(server):
    api, store, wake, *_ = server
    client = httpx.Client(base_url=api.base_url, timeout=10)  # a node has its attempt's token, no API token
    sub = store.current_submission("train")
    token = attempt_token(sub["token"], sub["attempts"])
    url = f"/api/submissions/{sub['id']}/report"
    for wrong in ("wrong", token[:-1], sub["token"], attempt_token(sub["token"], sub["attempts"] + 1)):
        assert client.post(url, json={"token": wrong, "exit_code": 3}).status_code == 403
    for missing in ({"token": "", "exit_code": 3}, {"exit_code": 3}):
        reply = client.post(url, json=missing)
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
    other = store.current_submission("low")  # right token, but not running
    other_token = attempt_token(other["token"], other["attempts"])
    assert client.post(f"/api/submissions/{other['id']}/report", json={"token": other_token, "exit_code": 0}).status_code == 403
    assert client.post("/api/submissions/99999/report", json={"token": token, "exit_code": 3}).status_code == 403
    assert client.post(url, json={"token": token}).status_code == 422
    assert client.post(url, json={"token": token, "exit_code": 2**70}).status_code == 422
    unchanged = store.submission(sub["id"])
    assert (unchanged["exit_code"], unchanged["reported_at"]) == (None, None)
    assert wake.calls == []

    reply = client.post(url, json={"token": token, "exit_code": 3})
    assert reply.status_code == 200
    assert reply.json() == {"submission_id": sub["id"], "exit_code": 3, "reported_at": NOW}
    assert wake.calls == ["report"]
    detail = api.get("/api/runs/train").json()
    assert (detail["exit_code"], detail["reported_at"], detail["status"]) == (3, NOW, "running")
    # A second report of the same submission is refused: the first one stands.
    assert client.post(url, json={"token": token, "exit_code": 0}).status_code == 403
    assert store.submission(sub["id"])["exit_code"] == 3
    assert wake.calls == ["report"]


def test_healthz_is_ok_only_while_steps_succeed_and_the_provider_answers(tmp_path):
    info = dict(STATUS)
    app = create_app(tmp_path / "s.db", Recorder(), lambda: info, None)
    with running(app) as url:
        reply = httpx.get(url + "/healthz")
        assert reply.status_code == 200 and reply.json() == {"status": "ok", "reason": None, "invalid_files": 0, **STATUS}
        info["provider_health"] = "provider local: throttle: slow down"
        reply = httpx.get(url + "/healthz")
        assert reply.status_code == 503
        assert reply.json()["status"] == "degraded" and reply.json()["reason"] == "provider local: throttle: slow down"
        info.update(provider_health=None, last_step_error="OperationalError: database or disk is full", step_failures=3)
        reply = httpx.get(url + "/healthz")
        assert reply.status_code == 503
        assert reply.json()["reason"] == "last step failed: OperationalError: database or disk is full"
        assert reply.json()["step_failures"] == 3
        info.update(last_step_error=None)
        assert httpx.get(url + "/healthz").json()["status"] == "ok"


def test_openapi_lists_every_endpoint_with_models(server):
    client, *_ = server
    doc = client.get("/openapi.json").json()
    paths = {path: set(ops) for path, ops in doc["paths"].items()}
    assert paths == {
        "/api/runs": {"get"}, "/api/runs/{name}": {"get"}, "/api/runs/{name}/history": {"get"},
        "/api/runs/{name}/activity": {"post"}, "/api/runs/{name}/logs": {"get"}, "/api/submissions": {"get"},
        "/api/submissions/{submission_id}/report": {"post"}, "/api/webhook": {"post"}, "/healthz": {"get"},
        "/metrics": {"get"}, "/": {"get"}, "/runs/{name}": {"get"},
        "/api/secrets": {"get"}, "/api/secrets/{name}": {"put", "delete"}, "/login": {"post"}, "/logout": {"post"},
        "/api/submissions/{submission_id}/inputs/env": {"get"}, "/api/submissions/{submission_id}/inputs/cluster": {"get"},
        "/api/submissions/{submission_id}/inputs/tree": {"get"},
        "/api/submissions/{submission_id}/log": {"post"}, "/api/submissions/{submission_id}/interruption": {"post"},
        "/api/runs/{name}/stop": {"post"}, "/api/runs/{name}/rerun": {"post"}, "/runs/{name}/stop": {"post"},
        "/runs/{name}/rerun": {"post"}, "/api/state": {"post"},
    }
    schemas = doc["components"]["schemas"]
    assert {"RunRow", "RunDetail", "Submission", "Health", "WebhookAccepted"} <= set(schemas)
    report = doc["paths"]["/api/submissions/{submission_id}/report"]["post"]
    body = report["requestBody"]["content"]["application/json"]["schema"]
    assert body["title"] == "Report" and set(body["required"]) == {"token", "exit_code"}
    assert {"200", "401", "403", "413", "422"} <= set(report["responses"])
    runs = doc["paths"]["/api/runs"]["get"]
    assert "401" in runs["responses"] and runs["security"] == [{"HTTPBearer": []}]
    assert "403" in doc["paths"]["/api/runs/{name}/activity"]["post"]["responses"]


def scrape(client) -> dict:
    families = text_string_to_metric_families(client.get("/metrics").text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_metrics_from_the_store_and_the_daemon(server):
    client, store, _, metrics, _ = server
    reply = client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    samples = scrape(client)
    by_status = {dict(labels)["status"]: value for (name, labels), value in samples.items() if name == "gitopsq_runs"}
    assert by_status == {"queued": 3, "provisioning": 0, "running": 1, "stopping": 0, "done": 1, "failed": 1, "cancelled": 0}
    assert samples[("gitopsq_queue_length", ())] == 3
    assert samples[("gitopsq_queue_oldest_wait_seconds", ())] == 500  # "low", queued at NOW - 500
    assert samples[("gitopsq_provider_healthy", ())] == 1
    assert samples[("gitopsq_last_step_timestamp_seconds", ())] == NOW - 2
    assert samples[("gitopsq_last_step_success", ())] == 1
    assert samples[("gitopsq_step_failures_total", ())] == 0

    metrics.observe_reconcile(0.3)
    metrics.observe_reconcile(7)
    metrics.provider_error("capacity")
    client.post("/api/webhook", content=b"{}")
    samples = scrape(client)
    assert samples[("gitopsq_reconcile_duration_seconds_count", ())] == 2
    assert samples[("gitopsq_reconcile_duration_seconds_sum", ())] == pytest.approx(7.3)
    assert samples[("gitopsq_reconcile_duration_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("gitopsq_provider_errors_total", (("kind", "capacity"),))] == 1
    assert samples[("gitopsq_webhooks_total", (("outcome", "accepted"),))] == 1

    # The gauges follow the store at each scrape.
    with store.transaction():
        store.set_status(store.current_submission("low")["id"], "cancelled", NOW, reason="deleted")
    samples = scrape(client)
    assert samples[("gitopsq_queue_length", ())] == 2
    assert samples[("gitopsq_queue_oldest_wait_seconds", ())] == 300


def test_metrics_count_failed_steps_and_keep_the_time_of_the_last_good_one(tmp_path):
    info = {**STATUS, "last_step_at": NOW, "last_success_at": NOW - 60, "last_step_error": "SourceError: boom",
            "step_failures": 4}
    app = create_app(tmp_path / "s.db", Recorder(), lambda: info, None)
    with running(app) as url:
        samples = scrape(httpx.Client(base_url=url, headers=bearer(tmp_path / "s.db")))
    assert samples[("gitopsq_last_step_timestamp_seconds", ())] == NOW - 60
    assert samples[("gitopsq_last_step_success", ())] == 0
    assert samples[("gitopsq_step_failures_total", ())] == 4


def test_two_apps_keep_their_own_metrics(tmp_path):
    first, second = Metrics(), Metrics()
    first.provider_error("auth")
    assert b'gitopsq_provider_errors_total{kind="auth"} 1.0' in first.exposition()
    assert b"gitopsq_provider_errors_total{" not in second.exposition()


def test_concurrent_requests_while_the_controller_writes(server):
    client, store, *_ = server
    base = str(client.base_url)
    failures = []

    def reader():
        with httpx.Client(base_url=base, timeout=10, headers=client.headers) as own:
            for _ in range(15):
                for path in ("/api/runs", "/api/submissions", "/metrics", "/"):
                    reply = own.get(path)
                    if reply.status_code != 200:
                        failures.append((path, reply.status_code))

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for thread in threads:
        thread.start()
    for i in range(20):
        add_run(store, f"extra-{i}", time.time(), priority=i % 3)
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(client.get("/api/runs", params={"status": "queued"}).json()) == 23
