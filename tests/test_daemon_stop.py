"""Stopping the daemon: SIGTERM ends it whatever the step is doing, SIGHUP stops it cleanly.

Each test hangs a real step: a fetch from a server that accepts and never answers, or a read of
a ref file that is a FIFO nobody writes (as a hung network file system would).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest

from gitopsq.store import Store
from tests.gitserver import DumbGitServer, processes_mentioning
from tests.helpers import GitRepo, task
from tests.test_daemon import Daemon, wait_for


def cursor(db) -> str | None:
    if not db.exists():
        return None
    store = Store(db)
    try:
        return store.cursor("main")
    finally:
        store.close()


@pytest.fixture
def served(tmp_path):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work = GitRepo(tmp_path / "work")
    work.write("runs/first.yml", task("first", "true"))
    sha = work.commit("first")
    work.git("push", "-q", str(bare), "main")
    server = DumbGitServer(bare)
    yield server, sha
    server.close()


def test_sigterm_during_a_hung_fetch_exits_0_and_leaves_no_git_behind(tmp_path, served, cleanup_nodes):
    server, sha = served
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(server.url, db, "--http", "off", "--interval", "1s")
    try:
        wait_for(lambda: cursor(db) == sha, what="the first reconcile")
        server.hang()
        assert server.held.wait(20), "the next fetch never reached the server"
    finally:
        code = daemon.stop(signal.SIGTERM)  # fails unless the daemon exits within 5 s
    assert code == 0
    log = daemon.log.read_text()
    assert f"fetch of {server.url} cancelled" in log and "stopped;" in log
    assert processes_mentioning(server.url) == []


def hold_ref_open(repo: GitRepo):
    """Replace the branch's ref file by a FIFO; returns a function that waits until someone
    blocks reading it and keeps them blocked (it opens the write end and never writes)."""
    ref = repo.path / ".git" / "refs" / "heads" / "main"
    sha = ref.read_text()
    ref.unlink()
    os.mkfifo(ref)
    held = []

    def wait_for_reader() -> bool:
        try:
            held.append(os.open(ref, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return False

    def restore() -> None:
        for fd in held:
            os.close(fd)
        ref.unlink()
        ref.write_text(sha)

    return wait_for_reader, restore


def test_sigterm_while_a_step_is_stuck_exits_anyway_and_the_next_start_recovers(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/first.yml", task("first", "true"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", "off", "--interval", "1s")
    restore = None
    try:
        wait_for(lambda: cursor(db) == repo.head(), what="the first reconcile")
        wait_for_reader, restore = hold_ref_open(repo)
        wait_for(wait_for_reader, what="a step blocked reading the branch's ref")
    finally:
        code = daemon.stop(signal.SIGTERM)  # fails unless the daemon exits within 5 s
        if restore:
            restore()
    assert code == 1, "a step cut short is a crash, not a clean stop"
    log = daemon.log.read_text()
    assert "SIGTERM received" in log
    assert "exiting without finishing it" in log

    repo.write("runs/second.yml", task("second", "true"))
    repo.commit("second")
    again = Daemon(repo.path, db, "--http", "off")
    try:
        wait_for(lambda: sorted((r["name"], r["status"]) for r in again.rows()) == [("first", "done"), ("second", "done")],
                 what="both runs done after the restart")
    finally:
        assert again.stop() == 0


def test_sighup_stops_cleanly_with_a_log_line(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/first.yml", task("first", "sleep 30"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", "off")
    try:
        wait_for(lambda: [r["status"] for r in daemon.rows()] == ["running"], what="first running")
    finally:
        code = daemon.stop(signal.SIGHUP)
    assert code == 0
    log = daemon.log.read_text()
    assert "SIGHUP received" in log and "stopped;" in log
    assert [r["status"] for r in daemon.rows()] == ["running"], "the node keeps running, adopted at the next start"
