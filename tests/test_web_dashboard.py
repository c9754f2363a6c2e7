"""The dashboard rendered by headless Chromium against a running server: the login form, queue
order, columns, logs."""

from __future__ import annotations

import struct

import httpx
import pytest

from gitopsq import tokens
from gitopsq.spec import Retry
from gitopsq.store import Store
from gitopsq.web import create_app
from gitopsq.web.auth import COOKIE
from tests.browser import Browser, parse, squash
from tests.webserver import add_run, bearer, running

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
    token = tokens.create(store, "viewer", read_only=True)
    app = create_app(db, lambda reason: None, lambda: dict(STATUS), None, clock=lambda: NOW)
    with running(app) as url:
        yield url, tmp_path, token
    store.close()


def log_in(browser: Browser, url: str, token: str) -> None:
    """What a person does: open a page, paste the token into the form, press the button."""
    browser.goto(url)
    browser.type_into("input[name=token]", token)
    browser.click_and_wait("form.login button")


@pytest.fixture
def browser(site):
    """Headless Chromium, logged in to the dashboard with a read-only token."""
    url, tmp_path, token = site
    with Browser(tmp_path) as browser:
        log_in(browser, url + "/", token)
        yield browser


def test_login_and_logout_in_chromium(site):
    url, tmp_path, token = site
    with Browser(tmp_path) as browser:
        browser.goto(url + "/runs/train")
        form = browser.dom().one("form", "login")
        fields = {field.attrs["name"]: field.attrs for field in form.find_all("input")}
        assert fields["next"]["value"] == "/runs/train" and fields["token"]["type"] == "password"
        assert "train" not in squash(browser.dom().one("main").text())  # nothing of the state before logging in

        log_in(browser, url + "/runs/train", "gq_not-the-token")
        assert squash(browser.dom().one(cls="login-error").text()) == "That token is not valid (unknown or revoked)."
        assert browser.cookies() == []

        browser.type_into("input[name=token]", token)
        browser.click_and_wait("form.login button")
        dom = browser.dom()
        assert browser.evaluate("location.pathname") == "/runs/train" and squash(dom.one(cls="run-name").text()) == "train"
        assert squash(dom.one(cls="user").text()) == "viewer"
        [cookie] = browser.cookies()
        assert (cookie["name"], cookie["value"], cookie["httpOnly"], cookie["sameSite"]) == (COOKIE, token, True, "Strict")
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: no script on the page can read it

        browser.goto(url + "/")
        assert len(browser.dom().find_all("tr", "run")) == 6

        browser.click_and_wait("form.logout button")
        assert browser.cookies() == []
        assert browser.dom().find_all("form", "login") and browser.dom().find_all("tr", "run") == []


def test_dashboard_in_chromium(site, browser):
    url, tmp_path, _ = site
    browser.goto(url + "/")
    dom = browser.dom()
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

    data = browser.screenshot(1280, 900)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (1280, 900)
    assert len(data) > 20_000, f"screenshot is only {len(data)} bytes: blank page?"


def test_run_history_page_shows_the_latest_log_tail(site, browser):
    url, tmp_path, token = site
    browser.goto(url + "/runs/train")
    dom = browser.dom()
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

    browser.goto(url + "/runs/broken")
    failed = browser.dom()
    assert squash(failed.one("td", "exit-code").text()) == "2"
    assert squash(failed.one(cls="log-missing").text()) == "no log yet"

    missing = httpx.get(url + "/runs/nope", headers={"Authorization": f"Bearer {token}"})
    assert missing.status_code == 404 and "No run named" in missing.text


def test_a_failing_step_shows_in_the_header(tmp_path):
    status = dict(STATUS, provider_health=None, last_step_error="OperationalError: database or disk is full",
                  last_success_at=NOW - 300)
    app = create_app(tmp_path / "state.db", lambda reason: None, lambda: status, None, clock=lambda: NOW)
    header = bearer(tmp_path / "state.db", read_only=True)
    with running(app) as url:
        dom = parse(httpx.get(url + "/", headers=header).text)
        step = dom.one(cls="step-health")
        assert step.attrs["data-ok"] == "false"
        assert squash(step.text()) == "failed: OperationalError: database or disk is full"
        assert squash(dom.one(cls="last-success").text()) == "5m00s ago"
        status.update(last_step_error=None, last_success_at=NOW - 4)
        dom = parse(httpx.get(url + "/", headers=header).text)
        assert dom.one(cls="step-health").attrs["data-ok"] == "true"
        assert squash(dom.one(cls="last-step").text()) == "4s ago"
