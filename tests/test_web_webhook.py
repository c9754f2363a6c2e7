"""POST /api/webhook: signatures checked in constant time, bodies capped, a wake only when verified."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import pytest

from gitopsq.web import Metrics, create_app
from gitopsq.web.webhook import MAX_BODY, hmac_signature, verify
from tests.helpers import Recorder
from tests.webserver import running

SECRET = b"s3cret-webhook-key"
BODY = b'{"ref": "refs/heads/main", "after": "0123456789abcdef0123456789abcdef01234567"}'


def github(body: bytes, secret: bytes = SECRET) -> dict:
    return {"X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}


@pytest.fixture
def hook(tmp_path):
    """(post, wake calls, metrics) for an app with a secret."""
    yield from _hook(tmp_path, SECRET)


@pytest.fixture
def open_hook(tmp_path):
    """Without a secret, as the daemon serves it on loopback."""
    yield from _hook(tmp_path, None, accept_unsigned=True)


@pytest.fixture
def closed_hook(tmp_path):
    """Without a secret, as the daemon serves it off loopback."""
    yield from _hook(tmp_path, None)


def _hook(tmp_path, secret, accept_unsigned=False):
    wake, metrics = Recorder(), Metrics()
    app = create_app(tmp_path / "state.db", wake, lambda: {}, secret, metrics, accept_unsigned_webhooks=accept_unsigned)
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        def post(content=BODY, headers=None):
            return client.post("/api/webhook", content=content, headers={"Content-Type": "application/json", **(headers or {})})
        yield post, wake.calls, metrics


def outcomes(metrics: Metrics) -> dict:
    text = metrics.exposition().decode()
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("gitopsq_webhooks_total{")}


def test_valid_github_signature_wakes_once(hook):
    post, calls, metrics = hook
    reply = post(headers=github(BODY))
    assert reply.status_code == 202 and reply.json() == {"accepted": True}
    assert calls == ["webhook"]
    assert outcomes(metrics) == {"accepted": 1}


def test_valid_generic_signature(hook):
    post, calls, _ = hook
    reply = post(headers={"X-Signature": hmac_signature(SECRET, BODY)})
    assert reply.status_code == 202 and calls == ["webhook"]


def test_gitlab_token(hook):
    post, calls, _ = hook
    assert post(headers={"X-Gitlab-Token": SECRET.decode()}).status_code == 202
    assert calls == ["webhook"]


@pytest.mark.parametrize("headers", [
    pytest.param(github(BODY, b"another-secret"), id="github-wrong-secret"),
    pytest.param({"X-Hub-Signature-256": "sha256=" + "0" * 64}, id="github-zeros"),
    pytest.param({"X-Hub-Signature-256": hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()}, id="github-no-prefix"),
    pytest.param({"X-Signature": "sha256=abc"}, id="generic-wrong"),
    pytest.param({"X-Gitlab-Token": "s3cret"}, id="gitlab-wrong"),
    pytest.param({"X-Gitlab-Token": ""}, id="gitlab-empty"),
    pytest.param({}, id="missing"),
])
def test_bad_or_missing_signature_is_401_without_a_wake(hook, headers):
    post, calls, metrics = hook
    reply = post(headers=headers)
    assert reply.status_code == 401 and reply.json() == {"detail": "missing or wrong signature"}
    assert calls == []
    assert outcomes(metrics) == {"unauthorized": 1}


def test_signature_replayed_with_a_changed_body_is_refused(hook):
    post, calls, _ = hook
    signed = github(BODY)
    assert post(BODY.replace(b"main", b"evil"), headers=signed).status_code == 401
    assert post(BODY + b" ", headers=signed).status_code == 401
    assert calls == []
    assert post(BODY, headers=signed).status_code == 202
    assert calls == ["webhook"]


def test_body_over_one_mib_is_413_without_a_wake(hook):
    post, calls, metrics = hook
    big = b"x" * (MAX_BODY + 1)
    assert post(big, headers=github(big)).status_code == 413

    def chunks():  # chunked transfer: no Content-Length to trust, the cap counts the bytes read
        for _ in range(4):
            yield b"y" * (MAX_BODY // 2)

    streamed = b"y" * (MAX_BODY * 2)
    assert post(chunks(), headers=github(streamed)).status_code == 413
    assert calls == []
    assert outcomes(metrics) == {"too-large": 2}
    exact = b"z" * MAX_BODY
    assert post(exact, headers=github(exact)).status_code == 202
    assert calls == ["webhook"]


def test_without_a_secret_on_loopback_every_webhook_is_accepted(open_hook):
    post, calls, _ = open_hook
    assert post().status_code == 202
    assert post(b"", headers={"X-Hub-Signature-256": "sha256=nonsense"}).status_code == 202
    assert calls == ["webhook", "webhook"]


def test_without_a_secret_off_loopback_every_webhook_is_refused(closed_hook):
    post, calls, metrics = closed_hook
    for headers in ({}, github(BODY), {"X-Gitlab-Token": ""}):
        reply = post(headers=headers)
        assert reply.status_code == 403 and "--webhook-secret-file" in reply.json()["detail"]
    assert calls == []
    assert outcomes(metrics) == {"closed": 3}


def test_verify_is_pure():
    assert verify(None, {}, b"anything")
    assert verify(SECRET, {"x-hub-signature-256": hmac_signature(SECRET, b"a")}, b"a")
    assert not verify(SECRET, {"x-hub-signature-256": hmac_signature(SECRET, b"a")}, b"b")
    assert verify(SECRET, {"x-gitlab-token": SECRET.decode()}, b"whatever")
    assert not verify(SECRET, {"x-gitlab-token": "é"}, b"")
    # The first header present decides: a valid token cannot rescue a wrong HMAC.
    assert not verify(SECRET, {"x-hub-signature-256": "sha256=00", "x-gitlab-token": SECRET.decode()}, b"")
