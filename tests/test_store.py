"""The state store: migrations, history that is never overwritten, one place for status changes."""

from __future__ import annotations

import pytest

from gitopsq.store import SCHEMA_VERSION, StateLocked, Store, controller_lock
from tests.helpers import write_first_release_state


def test_a_first_release_database_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    write_first_release_state(path)
    store = Store(path)
    assert store.meta("schema_version") == str(SCHEMA_VERSION) and store.controller_id == "abc123"
    indexes = {row[1] for row in store.conn.execute("PRAGMA index_list(submissions)")}
    assert {"submissions_queue", "submissions_fresh", "submissions_deadline", "submissions_backoff"} <= indexes


def test_the_indexes_that_find_queued_work_hold_only_the_queue_and_are_the_ones_read(tmp_path):
    """A launch leaves these indexes once (its later status changes write none of their pages),
    and each query that finds queued work still reads its own index, never the whole queue."""
    path = tmp_path / "old.db"
    write_first_release_state(path)
    store = Store(path)
    spec = {"name": "a", "type": "task", "priority": 3}
    waiting = store.add_submission("a", spec, None, 1.0)
    running = store.add_submission("b", dict(spec, name="b"), None, 1.0)
    store.update_submission(waiting, window_start=1.0, deadline=5.0, next_try_at=4.0)
    store.update_submission(running, status="running", deadline=2.0, next_try_at=3.0)
    for name in ("submissions_fresh", "submissions_deadline", "submissions_backoff"):
        (sql,) = store.conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
        assert sql.endswith("WHERE status = 'queued'"), sql
    read: list[str] = []
    store.conn.set_trace_callback(read.append)
    assert [row["id"] for row in store.queued_needing_decision(6.0)] == [waiting]
    assert store.queue_timers(0.0) == (5.0, 4.0)
    store.conn.set_trace_callback(None)
    plans = [[row["detail"] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql)] for sql in read]
    indexes = [[detail.split(" INDEX ")[1].split()[0] for detail in plan if " INDEX " in detail] for plan in plans]
    assert indexes == [["submissions_deadline", "submissions_fresh"], ["submissions_deadline"], ["submissions_backoff"]], plans


def test_a_newer_database_is_refused(tmp_path):
    store = Store(tmp_path / "s.db")
    store.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    store.close()
    with pytest.raises(RuntimeError, match="newer gitopsq"):
        Store(tmp_path / "s.db")


def test_name_reuse_appends_and_status_changes_write_one_event(tmp_path):
    store = Store(tmp_path / "s.db")
    spec = {"name": "a", "type": "task", "priority": 3}
    with store.transaction():
        store.upsert_run("a", "runs/a.yml", "b1", spec, True, 1.0)
        first = store.add_submission("a", spec, "c1", 1.0)
        assert store.set_status(first, "done", 2.0)
        assert not store.set_status(first, "done", 3.0)  # unchanged: nothing written
        second = store.add_submission("a", spec, "c2", 4.0)
    assert [(r["number"], r["status"]) for r in store.history("a")] == [(1, "done"), (2, "queued")]
    assert store.current_submission("a")["id"] == second
    kinds = [row["kind"] for row in store.events("a")]
    assert kinds.count("done") == 1 and kinds.count("submitted") == 2
    assert store.submission(first)["finished_at"] == 2.0
    assert store.submission(first)["token"] != store.submission(second)["token"]


def test_the_controller_lock_names_its_holder_and_is_free_again_when_released(tmp_path):
    import os

    db = tmp_path / "state" / "gitopsq.db"
    with controller_lock(db):
        with pytest.raises(StateLocked) as held:
            with controller_lock(db):
                pass
        assert held.value.pid == os.getpid()
        assert str(held.value).startswith(f"another gitopsq controller (pid {os.getpid()}, started ")
        assert str(held.value).endswith(f") holds {db}; stop it first")
    with controller_lock(db):  # released at the end of the block
        pass


def test_schema_version_is_the_last_migration():
    from gitopsq.store import MIGRATIONS
    assert SCHEMA_VERSION == max(MIGRATIONS) and sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))
