"""The daemon with its HTTP server: commits show up in /api/runs by themselves, and a signed
webhook wakes a fetch of a remote repository (a bad one changes nothing)."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time

import httpx
import pytest

from gitopsq.daemon import WEBHOOK_FETCH_SPACING
from gitopsq.store import Store
from tests.helpers import GitRepo, task
from tests.test_daemon import Daemon, free_port, wait_for

SECRET = b"s3cret-for-tests"


def api_runs(base: str, header: dict):
    try:
        return httpx.get(f"{base}/api/runs", timeout=2, headers=header).json()
    except httpx.HTTPError:
        return None


def test_commit_appears_in_api_runs_without_any_trigger(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("README.md", "runs\n")
    repo.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(repo.path, tmp_path / "state" / "gitopsq.db", "--http", f"127.0.0.1:{port}", "--interval", "1h")
    try:
        header = daemon.token_header()
        wait_for(lambda: api_runs(base, header) == [], what="the API")
        repo.write("runs/hello.yml", task("hello", "sleep 5", priority=7))
        repo.commit("add hello")
        runs = wait_for(lambda: api_runs(base, header), timeout=10, what="hello in /api/runs")
        assert [(r["name"], r["submission"], r["priority"]) for r in runs] == [("hello", 1, 7)]
        assert runs[0]["status"] in ("queued", "provisioning", "running")
        assert httpx.get(f"{base}/healthz").json()["commit"] == repo.head()
    finally:
        assert daemon.stop() == 0


def sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()


@pytest.fixture
def remote_daemon(tmp_path, cleanup_nodes):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work = GitRepo(tmp_path / "work")
    work.write("runs/first.yml", task("first", "true"))
    work.commit("first")
    work.git("remote", "add", "origin", str(bare))
    work.git("push", "-q", "origin", "main")
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    port = free_port()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(f"file://{bare}", db, "--http", f"127.0.0.1:{port}", "--interval", "1h",
                    "--webhook-secret-file", str(secret_file))
    base = f"http://127.0.0.1:{port}"
    try:
        header = daemon.token_header()
        wait_for(lambda: [r["name"] for r in api_runs(base, header) or []] == ["first"], what="first reconcile")
        yield work, base, db, header
    finally:
        assert daemon.stop() == 0


def push_second(work: GitRepo) -> str:
    work.write("runs/second.yml", task("second", "true"))
    sha = work.commit("second")
    work.git("push", "-q", "origin", "main")
    return sha


def cursor(db) -> str:
    store = Store(db)
    try:
        return store.cursor("main")
    finally:
        store.close()


@pytest.mark.parametrize("header", ["X-Hub-Signature-256", "X-Signature"])
def test_valid_signature_wakes_a_fetch(remote_daemon, header):
    work, base, db, token = remote_daemon
    sha = push_second(work)
    time.sleep(0.5)
    assert cursor(db) != sha, "with a 1h interval nothing fetches by itself"
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    reply = httpx.post(f"{base}/api/webhook", content=body, headers={header: sign(body), "Content-Type": "application/json"})
    assert reply.status_code == 202
    # at once, or once WEBHOOK_FETCH_SPACING has passed since the daemon's first fetch
    wait_for(lambda: cursor(db) == sha, timeout=WEBHOOK_FETCH_SPACING + 10, what="the fetch the webhook woke")
    assert sorted(r["name"] for r in api_runs(base, token)) == ["first", "second"]


def test_bad_signatures_get_401_and_change_nothing(remote_daemon):
    work, base, db, header = remote_daemon
    before = cursor(db)
    push_second(work)
    body = b'{"ref": "refs/heads/main"}'
    cases = [
        {"X-Hub-Signature-256": "sha256=" + "0" * 64},
        {},
        {"X-Hub-Signature-256": sign(body)},  # replayed signature, changed body below
    ]
    for headers in cases:
        sent = body if headers.get("X-Hub-Signature-256") != sign(body) else body + b" "
        reply = httpx.post(f"{base}/api/webhook", content=sent, headers=headers)
        assert reply.status_code == 401
    big = b"x" * (1024 * 1024 + 1)
    assert httpx.post(f"{base}/api/webhook", content=big, headers={"X-Hub-Signature-256": sign(big)}).status_code == 413
    time.sleep(1.0)
    assert cursor(db) == before
    assert [r["name"] for r in api_runs(base, header)] == ["first"]


LOAD_SCRIPT = r"""
import hashlib, hmac, json, sys
from concurrent.futures import ThreadPoolExecutor
import httpx
base, secret, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
body = b'{"ref": "refs/heads/main"}'
good = {"X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}
bad = {"X-Hub-Signature-256": "sha256=" + "f" * 64}
codes = {}
client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16))
def send(i):
    return client.post(base + "/api/webhook", content=body, headers=good if i % 2 else bad).status_code
with ThreadPoolExecutor(16) as pool:
    for code in pool.map(send, range(n)):
        codes[str(code)] = codes.get(str(code), 0) + 1
print(json.dumps(codes))
"""


def test_webhook_under_load(remote_daemon):
    import sys

    work, base, db, header = remote_daemon
    sha = push_second(work)
    load = subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, base, SECRET.decode(), "1000"],
                            stdout=subprocess.PIPE, text=True)
    answered = 0
    while load.poll() is None:
        assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # responsive under load
        answered += 1
        time.sleep(0.05)
    out, _ = load.communicate()
    assert load.returncode == 0
    assert json.loads(out) == {"202": 500, "401": 500}
    assert answered >= 1
    wait_for(lambda: cursor(db) == sha, timeout=WEBHOOK_FETCH_SPACING + 10, what="the pushed tip")
    time.sleep(0.5)
    store = Store(db)
    try:
        tips = [row["commit_sha"] for row in store.conn.execute("SELECT commit_sha FROM events WHERE kind = 'reconciled'")]
    finally:
        store.close()
    assert sorted(tips) == sorted({tips[0], sha}) and tips.count(sha) == 1, "each distinct tip reconciled once"
