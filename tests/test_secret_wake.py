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


SECRET = "hf_Zq8ReallySecret_4711"


def test_a_run_waits_for_its_missing_secret_runs_once_it_is_set_and_never_shows_it(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/train.yml", "type: task\nenv:\n  - HF_TOKEN\n  - WANDB=${{ secrets.wandb_key }}\n"
                                 "commands:\n  - echo \"token=$HF_TOKEN wandb=$WANDB\"\n")
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon(repo.path, db, "--http", f"127.0.0.1:{port}", "--interval", "1h")
    try:
        def reason():
            rows = [r for r in daemon.rows() if r["name"] == "train"]
            return rows and rows[0]["status"] == "queued" and "secret-missing" in (rows[0].get("why") or "") and rows[0]
        waiting = wait_for(reason, what="train waiting for its secrets")
        assert waiting["why"].startswith("secret-missing: HF_TOKEN, wandb_key")
        ps = run_cli("ps", "--db", str(db))
        assert "secret-missing: HF_TOKEN," in ps.output

        assert run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input=SECRET + "\n").exit_code == 0
        still = wait_for(lambda: reason() if reason() and "HF_TOKEN" not in reason()["why"] else None, what="one secret left")
        assert still["why"].startswith("secret-missing: wandb_key")
        assert run_cli("secret", "set", "wandb_key", "--db", str(db), input="wandb-0123456789\n").exit_code == 0
        wait_for(lambda: [r for r in daemon.rows() if r["name"] == "train" and r["status"] == "done"], timeout=30,
                 what="train to run once its secrets exist")

        logs = run_cli("logs", "train", "--db", str(db))
        assert "token=*** wandb=***" in logs.output, logs.output
        auth = daemon.token_header()
        shown = [httpx.get(url + path, timeout=5, headers=auth).text for path in
                 ("/api/runs", "/api/runs/train", "/api/runs/train/history", "/api/submissions", "/runs/train", "/")]
        shown += [run_cli("ps", "--db", str(db), "--json").output, run_cli("history", "train", "--db", str(db)).output,
                  run_cli("secret", "list", "--db", str(db), "--json").output]
        assert "token=***" in shown[4]  # the run page's log tail, masked
        for text in shown:
            assert SECRET not in text and "wandb-0123456789" not in text
    finally:
        assert daemon.stop() == 0
    # The run's own log file holds what it printed; nothing gitopsq keeps besides it does.
    log_files = set((db.parent / "gitopsq-nodes" / "logs").rglob("*"))
    kept = b"".join(p.read_bytes() for p in sorted(db.parent.rglob("*"))
                    if p.is_file() and p not in log_files and p.suffix != ".key")
    assert SECRET.encode() not in kept and b"wandb-0123456789" not in kept
    assert SECRET.encode() not in daemon.log.read_bytes()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_during_start_up_ends_the_daemon_cleanly(tmp_path, hanging_remote, sig, cleanup_nodes):
    """Observed on a loaded CI machine: SIGINT while the daemon was still starting ended it with
    exit code 1 ('Aborted!'); a stop at any moment is a clean stop."""
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(hanging_remote.url, db, "--http", "off")
    try:
        assert hanging_remote.held.wait(20), "the first clone never reached the server"
    finally:
        code = daemon.stop(sig)
    assert code == 0, daemon.log.read_text()
    assert "stopped during start-up" in daemon.log.read_text()
