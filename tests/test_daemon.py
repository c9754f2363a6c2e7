"""`gitopsq serve` as a daemon: reacts to commits by itself, stops cleanly, adopts on restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.store import Store, listing
from tests.helpers import GitRepo, task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """`gitopsq serve` in a subprocess; the test that starts it stops it."""

    def __init__(self, repo: Path, db: Path, *extra: str):
        self.db = db
        self.log = db.parent / "daemon.log"
        db.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitopsq", "serve", "--repo", str(repo), "--db", str(db), *extra],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def token_header(self, timeout: float = 20.0) -> dict[str, str]:
        """An Authorization header with the admin token the daemon wrote beside its state on its first start."""
        from gitopsq.tokens import admin_token_path

        path = admin_token_path(self.db)
        token = wait_for(lambda: path.exists() and path.read_text().strip(), timeout, what=f"the admin token in {path}")
        return {"Authorization": f"Bearer {token}"}

    def rows(self):
        if not self.db.exists():
            return []
        store = Store(self.db)
        try:
            return listing(store, include_all=True)
        finally:
            store.close()

    def stop(self, sig=signal.SIGTERM, timeout=5.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the daemon did not exit within {timeout}s:\n{self.log.read_text()}")


def test_sigterm_exits_0_and_restart_adopts_running_runs(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/long.yml", task("long", "sleep 30"))
    repo.write("runs/busy.yml", task("busy", "for i in $(seq 1 300); do echo $i; sleep 0.1; done"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", "off", "--local-slots", "2")
    try:
        wait_for(lambda: sorted(r["status"] for r in daemon.rows()) == ["running", "running"], what="both running")
    finally:
        code = daemon.stop(signal.SIGTERM)
    assert code == 0
    nodes_before = {r["name"]: r["node_id"] for r in daemon.rows()}
    driver = LocalNodeDriver(log_dir_for(db), slots=2, gpus=0)
    assert sorted(n.state for n in driver.list_nodes()) == ["running", "running"], "nodes outlive the daemon"

    again = Daemon(repo.path, db, "--http", "off", "--local-slots", "2")
    try:
        wait_for(lambda: "watching" in again.log.read_text(), what="the second daemon's loop")
        time.sleep(1.0)  # its first step
        rows = again.rows()
        assert {r["name"]: r["node_id"] for r in rows} == nodes_before
        assert all(r["status"] == "running" and r["submission"] == 1 for r in rows)
        assert len(driver.list_nodes()) == 2, "adopted, not launched again"
    finally:
        assert again.stop(signal.SIGINT) == 0


def test_commit_is_picked_up_without_a_trigger(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("README.md", "runs\n")
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", "off", "--interval", "1h")
    try:
        wait_for(lambda: db.exists() and Store(db).cursor("main") == repo.head(), what="first reconcile")
        repo.write("runs/hello.yml", task("hello", "echo hi"))
        repo.commit("add hello")
        rows = wait_for(lambda: [r for r in daemon.rows() if r["name"] == "hello"], timeout=10, what="hello submitted")
        assert rows[0]["submission"] == 1
        wait_for(lambda: daemon.rows()[0]["status"] == "done", what="hello done")
    finally:
        assert daemon.stop() == 0


def test_json_logs(tmp_path, cleanup_nodes):
    import json

    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/hello.yml", task("hello", "echo hi"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", "off", "--log-format", "json")
    try:
        wait_for(lambda: daemon.rows() and daemon.rows()[0]["status"] == "done", what="hello done")
    finally:
        assert daemon.stop() == 0
    records = [json.loads(line) for line in daemon.log.read_text().splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("reconciled ") and "submit hello" in r["message"] for r in records)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_before_the_daemon_reads_its_credentials_is_a_clean_stop(tmp_path, sig):
    """Observed on a loaded CI machine: SIGINT to a daemon still importing its modules ended it
    with 'Aborted!' and 1. The credentials file, a FIFO nobody writes, holds it at that point."""
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/a.yml", task("a", "true"))
    repo.commit()
    daemon = Daemon(repo.path, tmp_path / "state" / "gitopsq.db", "--http", "off", "--provider", "ec2",
                    "--provider-key-file", str(fifo), "--public-url", "http://127.0.0.1:9")

    def reading():  # a writer can open the FIFO without blocking once the daemon opened it to read
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return None

    writer = wait_for(reading, what="the daemon reading its key file")
    try:
        code = daemon.stop(sig)
    finally:
        os.close(writer)
    assert code == 0, daemon.log.read_text()
    assert "stopped during start-up" in daemon.log.read_text()
