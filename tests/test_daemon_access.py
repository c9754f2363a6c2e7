"""`gitopsq serve` as it is deployed: off loopback it creates an admin token, warns without TLS,
closes an unsigned webhook; with --tls-cert/--tls-key it serves HTTPS; the node channel caps a
report's body before reading it (a 10 MB report costs the daemon no memory); a burst of webhooks
costs at most two fetches."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import ssl
import stat
import subprocess
import sys
import time

import httpx
import pytest

from gitopsq.daemon import WEBHOOK_FETCH_SPACING
from gitopsq.tokens import admin_token_path
from tests.gitserver import DumbGitServer
from tests.helpers import GitRepo, run_cli, task
from tests.test_daemon import Daemon, free_port, wait_for
from tests.test_daemon_http import cursor

SECRET = b"webhook-secret-for-the-burst"


def healthy(base: str, **options) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2, **options).json().get("last_step_at") is not None
    except httpx.HTTPError:
        return False


@pytest.fixture
def repo(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/hello.yml", task("hello", "sleep 30"))
    repo.commit()
    return repo


def test_off_loopback_every_route_needs_a_token_and_the_daemon_says_so(tmp_path, repo, cleanup_nodes):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", f"0.0.0.0:{port}", "--interval", "1h")
    try:
        wait_for(lambda: healthy(base), what="the daemon")
        path = admin_token_path(db)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        header = {"Authorization": f"Bearer {token}"}
        for route in ("/api/runs", "/api/submissions", "/api/runs/hello", "/api/secrets", "/metrics", "/", "/runs/hello",
                      "/openapi.json", "/docs"):
            refused = httpx.get(base + route)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", route
            assert "sleep 30" not in refused.text
            assert httpx.get(base + route, headers=header).status_code == 200, route
        assert httpx.post(base + "/api/runs/hello/activity").status_code == 401
        webhook = httpx.post(base + "/api/webhook", content=b"{}")
        assert webhook.status_code == 403 and "--webhook-secret-file" in webhook.json()["detail"]
    finally:
        assert daemon.stop() == 0
    log = daemon.log.read_text()
    assert f"created the API token 'admin' (write access) in {path}" in log
    assert "serving on 0.0.0.0 without TLS" in log and "the webhook is closed" in log
    assert token not in log

    again = Daemon(repo.path, db, "--http", f"127.0.0.1:{port}", "--interval", "1h")  # a restart on loopback
    try:
        wait_for(lambda: healthy(base), what="the daemon again")
        assert path.read_text().strip() == token
        assert httpx.get(base + "/api/runs", headers=header).status_code == 200
    finally:
        assert again.stop() == 0
    log = again.log.read_text()[len(log):]
    assert "created the API token" not in log and "without TLS" not in log and "webhook is closed" not in log
    listed = json.loads(run_cli("token", "list", "--json", "--db", str(db)).output)
    assert [(row["name"], row["access"]) for row in listed] == [("admin", "write")]


def test_metrics_open_lets_prometheus_scrape_without_a_token(tmp_path, repo, cleanup_nodes):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(repo.path, tmp_path / "state" / "gitopsq.db", "--http", f"127.0.0.1:{port}", "--metrics-open")
    try:
        wait_for(lambda: healthy(base), what="the daemon")
        assert httpx.get(base + "/metrics").status_code == 200
        assert httpx.get(base + "/api/runs").status_code == 401
    finally:
        assert daemon.stop() == 0


def self_signed(tmp_path) -> tuple[str, str]:
    """(certificate, key) PEM files of a self-signed certificate for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_serves_https_and_the_login_cookie_is_secure(tmp_path, repo, cleanup_nodes):
    cert, key = self_signed(tmp_path)
    port = free_port()
    base = f"https://127.0.0.1:{port}"
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", f"0.0.0.0:{port}", "--tls-cert", cert, "--tls-key", key)
    trust = ssl.create_default_context(cafile=cert)
    try:
        wait_for(lambda: healthy(base, verify=trust), what="the daemon over HTTPS")
        token = admin_token_path(db).read_text().strip()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        login = httpx.post(base + "/login", data={"token": token}, verify=trust)
        assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower().split("; ")
    finally:
        assert daemon.stop() == 0
    log = daemon.log.read_text()
    assert f"HTTP API and dashboard on https://0.0.0.0:{port}" in log and "without TLS" not in log

    one = run_cli("serve", "--repo", str(repo.path), "--db", str(db), "--tls-cert", cert)
    assert one.exit_code == 2 and "give both --tls-cert and --tls-key" in one.output


def test_an_empty_webhook_secret_file_is_an_error_at_start(tmp_path, repo):
    empty = tmp_path / "webhook-secret"
    empty.write_text("\n")
    result = run_cli("serve", "--repo", str(repo.path), "--db", str(tmp_path / "s.db"), "--webhook-secret-file", str(empty))
    assert result.exit_code == 2
    assert f"{empty} is empty" in result.output and "--webhook-secret-file" in result.output
    assert not (tmp_path / "s.db").exists()


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident memory (VmHWM): what a body read whole, even briefly, would raise."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def test_a_10_mb_report_gets_413_and_the_daemon_does_not_grow(tmp_path, repo, cleanup_nodes):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(repo.path, tmp_path / "state" / "gitopsq.db", "--http", f"127.0.0.1:{port}", "--interval", "1h")
    url = f"{base}/api/submissions/1/report"
    try:
        wait_for(lambda: healthy(base), what="the daemon")
        for _ in range(3):  # warm up: the report's code path is loaded and has run
            assert httpx.post(url, json={"token": "x", "exit_code": 0}).status_code == 403
        before = peak_rss_kib(daemon.proc.pid)

        def report(size: int):  # a JSON report whose token is `size` bytes, streamed (no Content-Length to trust)
            yield b'{"exit_code": 0, "token": "'
            for _ in range(size // 65536):
                yield b"A" * 65536
            yield b'"}'

        streamed = httpx.post(url, content=report(10 * 1024 * 1024), headers={"Content-Type": "application/json"},
                              timeout=60)
        announced = httpx.post(url, content=b"".join(report(10 * 1024 * 1024)), timeout=60)
        grown = peak_rss_kib(daemon.proc.pid) - before
    finally:
        assert daemon.stop() == 0
    for reply in (streamed, announced):
        assert reply.status_code == 413 and reply.json() == {"detail": "the body is larger than 4096 bytes"}
    assert grown < 4 * 1024, f"the daemon's peak memory grew by {grown} KiB for a 10 MiB body"


LOAD = r"""
import hashlib, hmac, json, sys
from concurrent.futures import ThreadPoolExecutor
import httpx
base, secret, n = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
body = b'{"ref": "refs/heads/main"}'
signed = {"X-Hub-Signature-256": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}
client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16))
with ThreadPoolExecutor(16) as pool:
    codes = list(pool.map(lambda i: client.post(base + "/api/webhook", content=body, headers=signed).status_code, range(n)))
print(json.dumps(sorted(set(codes))))
"""


def test_a_burst_of_1000_webhooks_costs_at_most_two_fetches(tmp_path, cleanup_nodes):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work = GitRepo(tmp_path / "work")
    work.write("runs/first.yml", task("first", "true"))
    work.commit("first")
    work.git("remote", "add", "origin", str(bare))
    work.git("push", "-q", "origin", "main")
    server = DumbGitServer(bare)
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(server.url, db, "--http", f"127.0.0.1:{port}", "--interval", "1h",
                    "--webhook-secret-file", str(secret_file))
    try:
        wait_for(lambda: healthy(base), timeout=30, what="the first step")
        before = server.fetches
        work.write("runs/second.yml", task("second", "true"))
        sha = work.commit("second")
        work.git("push", "-q", "origin", "main")
        server.update()
        burst = subprocess.run([sys.executable, "-c", LOAD, base, SECRET.decode(), "1000"], capture_output=True,
                               text=True, timeout=120)
        assert burst.returncode == 0, burst.stderr
        assert json.loads(burst.stdout) == [202]
        wait_for(lambda: cursor(db) == sha, timeout=60, what="the pushed commit, fetched")
        time.sleep(WEBHOOK_FETCH_SPACING + 1)  # room for a fetch still pending to run, were there one
        # one fetch the burst's first webhooks started (or that waited for the start-up fetch's
        # spacing), and at most one more the rest of the burst left pending
        assert 1 <= server.fetches - before <= 2
    finally:
        assert daemon.stop() == 0
        server.close()


def test_webhook_fetches_coalesce_into_one_pending_fetch():
    from gitopsq.daemon import Loop

    loop = Loop(controller=None, interval=3600)
    assert loop._fetch_now(remote=True, now=100.0) == (True, None)  # the first step fetches
    loop.last_fetch_at = 100.0
    for _ in range(1000):
        loop.wake("webhook")
    assert loop._fetch_now(True, 101.0) == (False, WEBHOOK_FETCH_SPACING - 1)  # one pending, not due yet
    assert loop._fetch_now(True, 100.0 + WEBHOOK_FETCH_SPACING) == (True, None)
    loop.last_fetch_at = 100.0 + WEBHOOK_FETCH_SPACING
    assert loop._fetch_now(True, 200.0) == (False, None)  # the burst cost that one: nothing pending
    assert loop._fetch_now(True, loop.last_fetch_at + 3600) == (True, None)  # the periodic fetch
    loop.wake("webhook")
    assert loop._fetch_now(remote=False, now=300.0) == (False, None)  # a local repo is watched, never fetched
