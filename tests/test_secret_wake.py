"""`gitopsq secret set` wakes a served controller at once (SIGUSR1 to the pid in its lock file),
and the signal never kills a controller, not even one still starting up."""

from __future__ import annotations

import signal
import subprocess

import httpx
import pytest

from gitopsq.store import lock_path
from tests.gitserver import DumbGitServer
from tests.helpers import GitRepo, run_cli, task
from tests.test_daemon import Daemon, free_port, wait_for


def last_step_at(url: str) -> float | None:
    try:
        return httpx.get(url + "/healthz", timeout=5).json().get("last_step_at")
    except httpx.TransportError:
        return None


def test_secret_set_wakes_a_served_daemon(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("README.md", "runs\n")
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # An hour between checks and no commits: only a wake makes the loop step again.
    daemon = Daemon(repo.path, db, "--http", f"127.0.0.1:{port}", "--interval", "1h")
    try:
        first = wait_for(lambda: last_step_at(url), what="the first step")
        result = run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input="hf_abcdefgh\n")
        assert result.exit_code == 0, result.output
        assert f"Woke the controller (pid {daemon.proc.pid})" in result.output
        wait_for(lambda: (last_step_at(url) or 0) > first, timeout=10, what="a step after the wake")
        assert daemon.proc.poll() is None
    finally:
        assert daemon.stop() == 0


@pytest.fixture
def hanging_remote(tmp_path):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work = GitRepo(tmp_path / "work")
    work.write("runs/first.yml", task("first", "true"))
    work.commit("first")
    work.git("push", "-q", str(bare), "main")
    server = DumbGitServer(bare)
    server.hang()
    yield server
    server.close()


@pytest.mark.parametrize("once", [False, True], ids=["serve", "serve --once"])
def test_a_wake_during_start_up_does_not_kill_the_controller(tmp_path, hanging_remote, once, cleanup_nodes):
    db = tmp_path / "state" / "gitopsq.db"
    # The first clone hangs: the controller holds the lock (with its pid) and has no loop yet.
    daemon = Daemon(hanging_remote.url, db, "--http", "off", *(("--once",) if once else ()))
    try:
        assert hanging_remote.held.wait(20), "the first clone never reached the server"
        wait_for(lambda: lock_path(db).exists() and str(daemon.proc.pid) in lock_path(db).read_text(), what="the lock")
        result = run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input="hf_abcdefgh\n")
        assert f"Woke the controller (pid {daemon.proc.pid})" in result.output
    finally:
        code = daemon.stop(signal.SIGTERM)
    # Had SIGUSR1 not been handled, it would have ended the process before the SIGTERM (10 < 15).
    assert code != -signal.SIGUSR1, daemon.log.read_text()
