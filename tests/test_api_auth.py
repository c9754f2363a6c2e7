"""Who may call what, over real HTTP against a served app: every route needs its credential (API
token, node attempt token, webhook signature) except /healthz (and /metrics where opened); a
read-only token cannot write; the dashboard's login cookie; no error echoes the request body."""

from __future__ import annotations

import re

import httpx
import pytest

from gitopsq import tokens
from gitopsq.nodetoken import attempt_token
from gitopsq.store import Store
from gitopsq.web import create_app
from gitopsq.web.auth import COOKIE, NODE_MAX_BODY, access_of, routes
from tests.helpers import Recorder
from tests.webserver import add_run, bearer, running

NOW = 1_800_000_000.0
STATUS = {"branch": "main", "commit": "0" * 40, "provider": "local", "provider_health": None, "last_step_at": NOW,
          "last_success_at": NOW, "last_step_error": None, "step_failures": 0, "repo": "/srv/config.git"}
MARKER = "MARKER-c0ffee-" * 8

# Every route, with the access it declares: a route added, removed or opened changes this table.
ACCESS = {
    ("GET", "/healthz"): "public", ("GET", "/metrics"): "read", ("GET", "/openapi.json"): "read",
    ("GET", "/docs"): "read", ("GET", "/"): "read", ("GET", "/runs/{name}"): "read",
    ("POST", "/login"): "login", ("POST", "/logout"): "read",
    ("GET", "/api/runs"): "read", ("GET", "/api/runs/{name}"): "read", ("GET", "/api/runs/{name}/history"): "read",
    ("GET", "/api/submissions"): "read", ("GET", "/api/secrets"): "read", ("GET", "/api/runs/{name}/logs"): "read",
    ("POST", "/api/state"): "read",
    ("POST", "/api/runs/{name}/activity"): "write", ("PUT", "/api/secrets/{name}"): "write",
    ("DELETE", "/api/secrets/{name}"): "write", ("POST", "/api/runs/{name}/stop"): "write",
    ("POST", "/api/runs/{name}/rerun"): "write", ("POST", "/runs/{name}/stop"): "write", ("POST", "/runs/{name}/rerun"): "write",
    ("POST", "/api/submissions/{submission_id}/report"): "node", ("POST", "/api/submissions/{submission_id}/log"): "node",
    ("POST", "/api/submissions/{submission_id}/interruption"): "node",
    ("GET", "/api/submissions/{submission_id}/inputs/env"): "node", ("GET", "/api/submissions/{submission_id}/inputs/tree"): "node",
    ("GET", "/api/submissions/{submission_id}/inputs/cluster"): "node", ("POST", "/api/webhook"): "webhook",
}


@pytest.fixture
def state(tmp_path):
    db = tmp_path / "state" / "gitopsq.db"
    db.parent.mkdir()
    store = Store(db)
    log = tmp_path / "state" / "node-1.log"
    log.write_text("output\n")
    add_run(store, "train", NOW - 100, status="running", run_type="dev-environment", log=str(log))
    yield db, store
    store.close()


def serve(db, **options):
    app = create_app(db, Recorder(), lambda: dict(STATUS), b"webhook-secret", clock=lambda: NOW, **options)
    return app, running(app)


def each_route(app, store):
    """(method, template, concrete path, access) of every route the app serves."""
    sub = store.current_submission("train")["id"]
    for route in routes(app):
        for method in sorted(route.methods - {"HEAD"}):
            path = route.path.replace("{name}", "train").replace("{submission_id}", str(sub))
            yield method, route.path, path, access_of(route)


def test_every_route_declares_the_access_in_the_table(state):
    db, store = state
    app, _ = serve(db)
    assert {(method, template): kind for method, template, _, kind in each_route(app, store)} == ACCESS
    opened, _ = serve(db, metrics_open=True)
    assert {(m, t): k for m, t, _, k in each_route(opened, store)} == {**ACCESS, ("GET", "/metrics"): "public"}


@pytest.mark.parametrize("credential", [{}, {"Authorization": "Bearer gq_not-a-token"}, {"Authorization": "Basic eDp5"},
                                        {"Cookie": f"{COOKIE}=gq_not-a-token"}], ids=["none", "wrong", "basic", "cookie"])
def test_without_a_valid_token_every_route_but_healthz_is_refused(state, credential):
    db, store = state
    app, server = serve(db)
    with server as url, httpx.Client(base_url=url, timeout=10, headers=credential) as client:
        for method, template, path, kind in each_route(app, store):
            reply = client.request(method, path, content=b"{}")
            if kind == "public":
                assert reply.status_code == 200, (method, path)
            elif kind == "webhook":  # its own credential: the signature
                assert reply.status_code == 401 and reply.json() == {"detail": "missing or wrong signature"}
            elif kind == "node" and "Bearer" in credential.get("Authorization", ""):  # a token, not its attempt's
                assert reply.status_code == 403 and "current attempt" in reply.json()["detail"]
            else:  # a token, a write token, the login form's token, or a node's attempt token
                assert reply.status_code == 401, (method, path, reply.status_code)
                assert reply.headers["www-authenticate"] == "Bearer", (method, path)
            shown = reply.text.replace(f'value="{path}"', "")  # the login form keeps the page asked for
            assert "train" not in shown and "dev-environment" not in shown, (method, path)


def test_metrics_open_opens_metrics_only(state):
    db, store = state
    app, server = serve(db, metrics_open=True)
    with server as url:
        assert httpx.get(url + "/metrics").status_code == 200
        assert httpx.get(url + "/api/runs").status_code == 401
        assert httpx.get(url + "/").status_code == 401


def test_a_read_only_token_reads_and_cannot_write(state, tmp_path):
    db, store = state
    app, server = serve(db)
    reader, writer = bearer(store, read_only=True), bearer(store)
    with server as url, httpx.Client(base_url=url, timeout=10) as client:
        for method, template, path, kind in each_route(app, store):
            if kind == "read" and method == "GET":
                assert client.get(path, headers=reader).status_code == 200, path
        refused = [client.post("/api/runs/train/activity", headers=reader),
                   client.put("/api/secrets/HF_TOKEN", json={"value": "hf-secret-value"}, headers=reader),
                   client.delete("/api/secrets/HF_TOKEN", headers=reader)]
        for reply in refused:
            assert reply.status_code == 403 and "read-only" in reply.json()["detail"]
        assert store.current_submission("train")["last_activity_at"] is None
        assert client.get("/api/secrets", headers=reader).json() == []

        assert client.post("/api/runs/train/activity", headers=writer).status_code == 200
        assert client.put("/api/secrets/HF_TOKEN", json={"value": "hf-secret-value"}, headers=writer).status_code == 200
        assert client.delete("/api/secrets/HF_TOKEN", headers=writer).status_code == 204


def test_a_revoked_token_is_refused_at_once(state):
    db, store = state
    _, server = serve(db)
    header = bearer(store, name="ci")
    with server as url:
        assert httpx.get(url + "/api/runs", headers=header).status_code == 200
        assert tokens.listing(store)[0].last_used_at == NOW
        tokens.revoke(store, "ci")
        reply = httpx.get(url + "/api/runs", headers=header)
        assert reply.status_code == 401 and "not valid" in reply.json()["detail"]


def test_dashboard_login_cookie_and_logout(state):
    db, store = state
    _, server = serve(db)
    token = tokens.create(store, "dash", read_only=True)
    with server as url, httpx.Client(base_url=url, timeout=10) as client:
        form = client.get("/runs/train?x=1")
        assert form.status_code == 401 and form.headers["www-authenticate"] == "Bearer"
        assert 'action="/login"' in form.text and 'value="/runs/train?x=1"' in form.text

        wrong = client.post("/login", data={"token": "gq_wrong", "next": "/runs/train"})
        assert wrong.status_code == 401 and "not valid" in wrong.text and COOKIE not in wrong.headers.get("set-cookie", "")
        reply = client.post("/login", data={"token": token, "next": "/runs/train"})
        assert reply.status_code == 303 and reply.headers["location"] == "/runs/train"
        cookie = reply.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={token};")
        assert {"httponly", "samesite=strict", "path=/"} <= {part.strip().lower() for part in cookie.split(";")}
        page = client.get("/runs/train")
        assert page.status_code == 200 and 'class="user">dash<' in page.text
        assert client.get("/").status_code == 200 and client.get("/api/runs").status_code == 200
        # A cookie alone never writes, even a write token's (another site cannot make a browser write).
        assert client.post("/api/runs/train/activity").status_code == 401

        out = client.post("/logout")
        assert out.status_code == 303 and re.search(rf'{COOKIE}=""?;', out.headers["set-cookie"])
        assert client.get("/").status_code == 401


@pytest.mark.parametrize("target, went", [("/runs/train?x=1", "/runs/train?x=1"), ("//evil.example/", "/"),
                                          ("https://evil.example/", "/"), ("/\\evil.example", "/"),
                                          ("/\t/evil.example", "/"), ("evil", "/")])
def test_login_goes_back_to_a_page_of_this_site_only(state, target, went):
    db, store = state
    _, server = serve(db)
    token = tokens.create(store, "dash")
    with server as url:
        reply = httpx.post(url + "/login", data={"token": token, "next": target})
    assert reply.status_code == 303 and reply.headers["location"] == went


def test_no_error_echoes_the_request_body(state):
    db, store = state
    _, server = serve(db)
    sub = store.current_submission("train")
    token = attempt_token(sub["token"], sub["attempts"])
    report = f"/api/submissions/{sub['id']}/report"
    writer = bearer(store)
    with server as url, httpx.Client(base_url=url, timeout=10) as client:
        replies = [
            client.post(report, json={"token": token, "exit_code": MARKER}),
            client.post(report, json={"token": token, "exit_code": 1, MARKER: MARKER}),
            client.post(report, json={"token": MARKER, "exit_code": 1}),
            client.post(report, content=("{" + MARKER).encode(), headers={"Authorization": f"Bearer {token}"}),
            client.post(report, content=MARKER.encode() * (NODE_MAX_BODY // len(MARKER) + 1)),
            client.get("/api/runs", params={"status": MARKER}, headers=writer),
            client.get("/api/runs", params={"all": MARKER}, headers=writer),
            client.put("/api/secrets/A", json={"value": 5, "x": MARKER}, headers=writer),
            client.post("/login", data={"token": MARKER}),
            client.post("/api/webhook", content=MARKER.encode()),
        ]
    assert [r.status_code for r in replies] == [422, 200, 403, 422, 413, 422, 422, 422, 401, 401]
    for reply in replies:
        assert "MARKER" not in reply.text, reply.text[:300]
    assert replies[0].json()["detail"] == [{"loc": ["body", "exit_code"], "type": "int_parsing",
                                            "msg": "Input should be a valid integer, unable to parse string as an integer"}]


@pytest.mark.parametrize("accept_unsigned, code, calls", [(False, 403, []), (True, 202, ["webhook"])])
def test_an_unsigned_webhook_is_closed_unless_accepted(state, accept_unsigned, code, calls):
    db, store = state
    wake = Recorder()
    app = create_app(db, wake, lambda: dict(STATUS), None, accept_unsigned_webhooks=accept_unsigned)
    with running(app) as url:
        reply = httpx.post(url + "/api/webhook", content=b"{}")
        assert reply.status_code == code and wake.calls == calls
