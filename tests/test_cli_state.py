"""`ps`, `history` and `logs` only read the state: they never create, migrate or write it, they
work in a read-only directory, and a wrong --db is an error. `touch` names a run that does not
exist. `history` fits an 80-column terminal."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time

import pytest

from gitopsq.store import Store
from tests.helpers import run_cli, write_first_release_state
from tests.webserver import add_run

NOW = 1_800_000_000.0


@pytest.fixture
def state(tmp_path):
    """A closed state database (WAL mode, so no -wal or -shm file is left) with three runs."""
    db = tmp_path / "state" / "gitopsq.db"
    store = Store(db)
    log = tmp_path / "train.log"
    log.write_text("epoch 1\nepoch 2\n")
    add_run(store, "train", NOW - 100, priority=5, status="running", log=str(log))
    add_run(store, "finished", NOW - 200, status="done", exit_code=0)
    add_run(store, "waiting", NOW - 300)
    store.close()
    return db


@pytest.fixture
def read_only():
    """Makes files and directories read-only, even for root (chattr +i); undone after the test."""
    made = []

    def make(*paths):
        for path in paths:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
            made.append(path)
            if os.geteuid() == 0:
                subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        probe = paths[0] / "probe"
        try:
            probe.touch()
        except OSError:
            return
        probe.unlink()
        pytest.skip("cannot make a directory read-only here")

    yield make
    for path in reversed(made):
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("args", [("ps",), ("history", "train"), ("logs", "train"), ("touch", "train")])
def test_a_wrong_db_is_an_error_and_creates_nothing(tmp_path, args):
    db = tmp_path / "typo" / "gitopsq.db"
    result = run_cli(*args, "--db", str(db))
    assert result.exit_code == 1
    assert f"no gitopsq state at {db}; is --db right?" in result.output
    assert not db.parent.exists()


def test_a_file_that_is_not_a_state_is_an_error(tmp_path):
    junk = tmp_path / "notes.txt"
    junk.write_text("not a database\n" * 100)
    result = run_cli("ps", "--db", str(junk))
    assert result.exit_code == 1 and f"{junk} is not a gitopsq state database" in result.output
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = run_cli("ps", "--db", str(empty))
    assert result.exit_code == 1 and f"{empty} is not a gitopsq state database" in result.output


def test_read_commands_work_in_a_read_only_directory(state, read_only):
    before = sorted(p.name for p in state.parent.iterdir())
    read_only(state.parent, state)
    ps = run_cli("ps", "--db", str(state), env={"COLUMNS": "200"})
    assert ps.exit_code == 0, ps.output
    assert [line.split()[0] for line in ps.output.splitlines()[1:] if line.strip()] == ["train", "waiting", "finished"]
    history = run_cli("history", "train", "--db", str(state))
    assert history.exit_code == 0 and "running" in history.output
    assert run_cli("logs", "train", "--db", str(state)).output == "epoch 1\nepoch 2\n"
    assert sorted(p.name for p in state.parent.iterdir()) == before


def test_read_commands_never_migrate_an_older_state(tmp_path):
    db = tmp_path / "old.db"
    write_first_release_state(db)
    for args in (("ps",), ("history", "x"), ("logs", "x")):
        result = run_cli(*args, "--db", str(db))
        assert result.exit_code == 1
        assert "older gitopsq (schema 1)" in result.output and "start the controller (gitopsq serve) once" in result.output
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    conn.close()


def test_ps_status_must_be_a_real_status(state):
    bogus = run_cli("ps", "--status", "bogus", "--db", str(state))
    assert bogus.exit_code == 2 and "Invalid value for '--status'" in bogus.output
    queued = run_cli("ps", "--status", "queued", "--db", str(state))
    assert queued.exit_code == 0
    assert [line.split()[0] for line in queued.output.splitlines()[1:] if line.strip()] == ["waiting"]


def test_touch_tells_a_missing_run_from_a_finished_one(state):
    missing = run_cli("touch", "nosuch", "--db", str(state))
    assert missing.exit_code == 1 and "no run named 'nosuch'" in missing.output
    finished = run_cli("touch", "finished", "--db", str(state))
    assert finished.exit_code == 1 and "run 'finished' is not active" in finished.output
    assert run_cli("touch", "train", "--db", str(state)).output == "train: activity recorded\n"


def test_history_fits_80_columns_one_line_per_submission(tmp_path):
    now = time.time()  # the table shows times relative to now
    db = tmp_path / "state" / "gitopsq.db"
    store = Store(db)
    log = "/home/someone/.local/state/gitopsq/gitopsq-nodes/nodes/local-3a657d96a81747ee9d1312c15bf1fafb/output.log"
    first = add_run(store, "train", now - 90_000, priority=50, status="failed", reason="exit-code", exit_code=3,
                    log=log, ended_at=now - 85_000)
    spec = json.loads(store.submission(first)["spec"])
    with store.transaction():
        for number in range(2, 5):
            sub = store.add_submission("train", spec, "0123456789abcdef", now - 80_000 + number)
            store.set_status(sub, "running", now - 7000, started_at=now - 7000, log_path=log)
            if number < 4:
                store.set_status(sub, "failed", now - 6000, reason="max-duration-exceeded")
    store.close()
    result = run_cli("history", "train", "--db", str(db), env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 80, result.output
    assert lines[0].split()[:2] == ["SUB", "STATUS"] and "LOG" not in lines[0].split()
    rows = lines[1:5]  # one line each: nothing wrapped onto a second line
    assert [tuple(row.split()[:2]) for row in rows] == [("1", "failed"), ("2", "failed"), ("3", "failed"), ("4", "running")]
    assert "exit-code exit 3" in rows[0] and "c0ffee0" in rows[0]
    assert all("max-duration-exceeded" in row and "0123456" in row for row in rows[1:3])
    assert "ended 1h40m ago" in rows[1] and "up 1h56m" in rows[3]
    assert "gitopsq logs train --submission" in result.output

    wide = run_cli("history", "train", "--db", str(db), env={"COLUMNS": "200"})
    assert "LOG" in wide.output.splitlines()[0].split() and log in wide.output
    data = json.loads(run_cli("history", "train", "--json", "--db", str(db)).output)
    assert [row["log_path"] for row in data] == [log] * 4


def test_ps_offers_every_submission_status():
    from gitopsq.cli import STATUSES
    from gitopsq.plan import ACTIVE
    from gitopsq.store import FINISHED

    assert STATUSES == (*ACTIVE, *FINISHED)
