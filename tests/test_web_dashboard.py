"""The dashboard rendered by headless Chromium against a running server: queue order, columns, logs."""

from __future__ import annotations

import struct

import httpx
import pytest

from gitopsq.spec import Retry
from gitopsq.store import Store
from gitopsq.web import create_app
from tests.browser import chromium, dump_dom, parse, squash
from tests.webserver import add_run, running

NOW = 1_800_000_000.0
STATUS = {"branch": "main", "commit": "89abcdef0123456789abcdef0123456789abcdef", "provider": "local",
          "provider_health": "provider local: throttle: too many requests", "last_step_at": NOW - 4,
          "repo": "/srv/config.git"}


# --- state ------------------------------------------------------------------------------------------

@pytest.fixture
def site(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    logs = tmp_path / "logs"
    logs.mkdir()
    first_log, second_log = logs / "train-1.log", logs / "train-2.log"
    first_log.write_text("first attempt output\n")
    second_log.write_text("".join(f"line {i} <b>bold</b> & done\n" for i in range(1, 151)))

    add_run(store, "low", NOW - 900, priority=1)
    add_run(store, "late", NOW - 300, priority=5, retry=Retry(("no-capacity",), None))
    add_run(store, "early", NOW - 600, priority=5, retry=Retry(("no-capacity",), 3600), window_start=NOW - 600,
            deadline=NOW - 600 + 3600)
    add_run(store, "backoff", NOW - 700, priority=2, retry=Retry(("no-capacity", "error"), None), attempts=2,
            window_start=NOW - 700, next_try_at=NOW + 90)
    train = add_run(store, "train", NOW - 800, priority=3, status="running", retry=Retry(("interruption",), 7200),
                    log=str(first_log))
    with store.transaction():  # interrupted, requeued, running again on a new node with a new log
        store.set_status(train, "queued", NOW - 500, reason="interrupted", attempts=1, node_id=None,
                         detail={"retry": "interruption"})
        store.set_status(train, "provisioning", NOW - 400)
        store.set_status(train, "running", NOW - 390, node_id="node-train-2", started_at=NOW - 390,
                         log_path=str(second_log), detail={"node": "node-train-2", "log": str(second_log)})
    add_run(store, "broken", NOW - 1000, priority=9, status="failed", reason="exit-code", exit_code=2, ended_at=NOW - 60)
    problem = {"file": "runs/bad.yml", "line": 3, "field": "resources.gpu", "message": "'H100:lots' is not a GPU"}
    with store.transaction():
        store.replace_problems([problem])
    app = create_app(db, lambda reason: None, lambda: dict(STATUS), None, clock=lambda: NOW)
    with running(app) as url:
        yield url, tmp_path
    store.close()


def test_dashboard_in_chromium(site):
    url, tmp_path = site
    dom = dump_dom(tmp_path, url + "/")
    rows = dom.find_all("tr", "run")
    assert [(r.attrs["data-name"], r.attrs["data-status"]) for r in rows] == [
        ("early", "queued"), ("late", "queued"), ("train", "running"), ("backoff", "queued"), ("low", "queued"),
        ("broken", "failed")]
    cells = {r.attrs["data-name"]: {c: squash(r.one("td", c).text()) for c in ("status", "priority", "retry", "reason", "time")}
             for r in rows}
    assert [cells[name]["priority"] for name in ("early", "late", "train", "backoff", "low")] == ["5", "5", "3", "2", "1"]
    assert cells["early"] == {"status": "queued", "priority": "5", "retry": "gives up in 50m00s", "reason": "just queued",
                              "time": "waiting 10m00s"}
    assert cells["late"]["retry"] == "waits forever"
    assert cells["backoff"]["retry"] == "2 attempt(s) failed; waits forever; next try in 1m30s"
    assert cells["low"]["retry"] == "no retry"
    assert cells["train"]["retry"] == "1 attempt(s) failed; retries on interruption for 2h00m"
    assert cells["train"]["reason"] == "interrupted" and cells["train"]["time"] == "up 6m30s"
    assert cells["broken"] == {"status": "failed", "priority": "9", "retry": "no retry", "reason": "exit-code (exit 2)",
                               "time": "ended 1m00s ago"}
    assert {r.attrs["data-name"]: r.one("td", "retry").attrs["data-retry"] for r in rows} == {
        "early": "gives-up", "late": "forever", "train": "policy", "backoff": "forever", "low": "none", "broken": "none"}
    links = {a.attrs["href"] for r in rows for a in r.find_all("a")}
    assert links == {f"/runs/{name}" for name in ("early", "late", "train", "backoff", "low", "broken")}

    assert squash(dom.one(cls="commit").text()) == "89abcdef0123"
    health = dom.one(cls="provider-health")
    assert health.attrs["data-healthy"] == "false" and squash(health.text()) == STATUS["provider_health"]
    assert [squash(p.text()) for p in dom.find_all("li", "problem")] == [
        "runs/bad.yml:3: resources.gpu: 'H100:lots' is not a GPU"]
    assert {"http-equiv": "refresh", "content": "5"} in [m.attrs for m in dom.find_all("meta")]

    shot = tmp_path / "dashboard.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", url + "/")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 900)
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes: blank page?"


def test_run_history_page_shows_the_latest_log_tail(site):
    url, tmp_path = site
    dom = dump_dom(tmp_path, url + "/runs/train")
    assert squash(dom.one(cls="run-name").text()) == "train"
    subs = dom.find_all("tr", "submission")
    assert [(s.attrs["data-number"], s.attrs["data-status"]) for s in subs] == [("1", "running")]
    assert squash(subs[0].one("td", "reason").text()) == "interrupted"
    assert squash(subs[0].one("td", "commit").text()) == "c0ffee00"
    assert dom.one(cls="log-path").text().endswith("train-2.log")
    log = dom.one("pre", "log")
    assert log.find_all("b") == []  # the log's markup is shown as text, not rendered
    lines = log.text().splitlines()
    assert lines == [f"line {i} <b>bold</b> & done" for i in range(51, 151)]
    assert "first attempt" not in log.text()

    failed = dump_dom(tmp_path, url + "/runs/broken")
    assert squash(failed.one("td", "exit-code").text()) == "2"
    assert squash(failed.one(cls="log-missing").text()) == "no log yet"

    missing = httpx.get(url + "/runs/nope")
    assert missing.status_code == 404 and "No run named" in missing.text


def test_a_failing_step_shows_in_the_header(tmp_path):
    status = dict(STATUS, provider_health=None, last_step_error="OperationalError: database or disk is full",
                  last_success_at=NOW - 300)
    app = create_app(tmp_path / "state.db", lambda reason: None, lambda: status, None, clock=lambda: NOW)
    with running(app) as url:
        dom = parse(httpx.get(url + "/").text)
        step = dom.one(cls="step-health")
        assert step.attrs["data-ok"] == "false"
        assert squash(step.text()) == "failed: OperationalError: database or disk is full"
        assert squash(dom.one(cls="last-success").text()) == "5m00s ago"
        status.update(last_step_error=None, last_success_at=NOW - 4)
        dom = parse(httpx.get(url + "/").text)
        assert dom.one(cls="step-health").attrs["data-ok"] == "true"
        assert squash(dom.one(cls="last-step").text()) == "4s ago"
