"""One controller per state: a second `gitopsq serve` on the same database exits 1 at once,
naming the one that holds it; read-only commands still work; a killed holder leaves no lock."""

from __future__ import annotations

import re
import subprocess
import sys

from gitopsq.store import FINISHED, Store
from tests.helpers import GitRepo, task
from tests.test_daemon import Daemon, wait_for

NAMES = [f"job{i}" for i in range(10)]


def gitopsq(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gitopsq", *args], capture_output=True, text=True, timeout=60)


def held_by(pid: int, db) -> re.Pattern:
    return re.compile(rf"another gitopsq controller \(pid {pid}, started [0-9:\- ]+\) holds {re.escape(str(db))}; stop it first")


def test_two_controllers_started_together_launch_every_run_once(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    ran = tmp_path / "ran.txt"
    for name in NAMES:
        repo.write(f"runs/{name}.yml", task(name, f"echo {name} >> {ran}; sleep 0.5"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    first = Daemon(repo.path, db, "--http", "off", "--local-slots", "10")
    second = Daemon(repo.path, db, "--http", "off", "--local-slots", "10")
    try:
        finished = lambda: len(rows := first.rows()) == len(NAMES) and all(r["status"] in FINISHED for r in rows)
        wait_for(finished, timeout=30, what="every run finished")
        assert sorted(ran.read_text().split() if ran.exists() else []) == NAMES, "a run was launched by both controllers"
        assert {r["status"] for r in first.rows()} == {"done"}
        exited = [d for d in (first, second) if d.proc.poll() is not None]
        assert len(exited) == 1, "exactly one controller holds the state"
        loser = exited[0]
        winner = second if loser is first else first
        assert loser.proc.returncode == 1
        assert held_by(winner.proc.pid, db).search(loser.log.read_text())
    finally:
        for daemon in (first, second):
            daemon.stop()


def test_the_lock_refuses_serve_once_allows_reads_and_dies_with_its_holder(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/hello.yml", task("hello", "echo hi"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", "off")
    try:
        wait_for(lambda: daemon.rows() and daemon.rows()[0]["status"] == "done", what="hello done")
        once = gitopsq("serve", "--once", "--repo", str(repo.path), "--db", str(db))
        assert once.returncode == 1 and held_by(daemon.proc.pid, db).search(once.stderr), once.stderr
        again = gitopsq("serve", "--repo", str(repo.path), "--db", str(db), "--http", "off")
        assert again.returncode == 1 and held_by(daemon.proc.pid, db).search(again.stderr), again.stderr

        ps = gitopsq("ps", "--db", str(db))
        assert ps.returncode == 0 and "hello" in ps.stdout
        assert gitopsq("history", "hello", "--db", str(db)).returncode == 0
        assert gitopsq("logs", "hello", "--db", str(db)).stdout == "hi\n"
    finally:
        daemon.proc.kill()  # kill -9: no chance to release anything itself
        daemon.proc.wait()
    once = gitopsq("serve", "--once", "--repo", str(repo.path), "--db", str(db))
    assert once.returncode == 0, once.stderr
    store = Store(db)
    try:
        assert [(r["number"], r["status"]) for r in store.history("hello")] == [(1, "done")]
    finally:
        store.close()


def test_a_controller_that_just_took_the_lock_is_named_once_it_has_written_itself(tmp_path):
    """Between taking the flock and writing its pid, a holder's file is empty: the one refused in
    that moment waits for the name instead of saying 'pid unknown'."""
    import fcntl
    import json
    import os
    import threading
    import time

    from gitopsq.store import StateLocked, controller_lock, lock_path

    db = tmp_path / "gitopsq.db"
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken, nothing written yet
    started = time.time()
    writer = threading.Timer(0.3, lambda: os.pwrite(fd, json.dumps({"pid": 4242, "started_at": started}).encode(), 0))
    writer.start()
    try:
        with controller_lock(db):
            raise AssertionError("the lock is held")
    except StateLocked as refused:
        assert refused.pid == 4242 and refused.started_at == started
    finally:
        writer.join()
        os.close(fd)
