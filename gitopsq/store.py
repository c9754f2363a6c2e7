"""gitopsq's state in SQLite: runs, submissions, the event log, the git cursor, the parse cache.

Every state change is a row written in a transaction before the side effect it announces.
History is append-only: name reuse adds submission N+1, nothing is overwritten.
The schema is created with sqlite-utils; hot paths (the queue, status changes) use raw SQL.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import sqlite_utils

from gitopsq.connect import Reach, connection
from gitopsq.plan import ACTIVE, Known
from gitopsq.yamlload import Problem

log = logging.getLogger("gitopsq.store")

SCHEMA_VERSION = 10  # the last of MIGRATIONS
FINISHED = ("done", "failed", "cancelled")
# The columns of a queued submission that admission and launch read: the queue's head is read
# every step, and turning all of a row's columns into Python objects cost more than the read.
QUEUED_COLUMNS = ("id, run, number, spec, priority, status, message, commit_sha, queued_at, started_at, attempts, deadline, "
                  "next_try_at, last_attempt_at, window_start, token, backoff_event, demand")


def _migrate_1(db: sqlite_utils.Database) -> None:
    db["runs"].create({
        "name": str, "file": str, "blob": str, "spec": str, "priority": int, "present": int,
        "last_submission": int, "created_at": float, "updated_at": float,
    }, pk="name")
    db["submissions"].create({
        "id": int, "run": str, "number": int, "spec": str, "priority": int, "status": str,
        "reason": str, "message": str, "exit_code": int, "commit_sha": str,
        "submitted_at": float, "queued_at": float, "started_at": float, "finished_at": float,
        "node_id": str, "node_name": str, "attempts": int, "deadline": float, "next_try_at": float,
        "last_attempt_at": float, "window_start": float, "last_activity_at": float,
        "stop_reason": str, "token": str, "log_path": str, "reported_at": float,
    }, pk="id", not_null={"run", "number", "status"}, defaults={"attempts": 0})
    db["submissions"].create_index(["run", "number"], unique=True)
    # The queue is read in admission order: this index makes that a range scan.
    db.execute("CREATE INDEX submissions_queue ON submissions(status, priority DESC, queued_at, id)")
    db["events"].create({
        "id": int, "at": float, "run": str, "submission_id": int, "kind": str, "detail": str, "commit_sha": str,
    }, pk="id")
    db["events"].create_index(["run"])
    db["events"].create_index(["submission_id"])
    db["cursors"].create({"branch": str, "commit_sha": str, "at": float}, pk="branch")
    # The run files of the last reconciled tree with their parse result, so an unchanged blob is
    # never parsed again, even after a restart.
    db["files"].create({"path": str, "blob": str, "config": str, "name": str, "spec": str, "problems": str}, pk="path")
    # Every validation problem of the last reconciled tree (parse errors, duplicate names, config).
    db["problems"].create({"id": int, "file": str, "line": int, "field": str, "message": str}, pk="id")


def _migrate_2(db: sqlite_utils.Database) -> None:
    # The queue is no longer read whole every step: these find what needs a decision by index.
    db.execute("CREATE INDEX submissions_fresh ON submissions(status, window_start)")
    db.execute("CREATE INDEX submissions_deadline ON submissions(status, deadline)")
    db.execute("CREATE INDEX submissions_backoff ON submissions(status, next_try_at)")
    db.execute("CREATE INDEX runs_file ON runs(file)")


def _migrate_3(db: sqlite_utils.Database) -> None:
    # Why a queued submission backs off: "no-capacity" ends early when capacity frees, an
    # "error" or "interruption" backoff does not.
    db.execute("ALTER TABLE submissions ADD COLUMN backoff_event TEXT")
    # What a queued submission needs from the provider (JSON), written at its first decision, so
    # `ps` can say what it waits for.
    db.execute("ALTER TABLE submissions ADD COLUMN demand TEXT")


def _migrate_4(db: sqlite_utils.Database) -> None:
    # The commit from which a file has been invalid: shown for as long as it stays so.
    db.execute("ALTER TABLE problems ADD COLUMN since TEXT")


def _migrate_5(db: sqlite_utils.Database) -> None:
    # Secrets as Fernet tokens (gitopsq.secretstore), under a key kept outside the database.
    db.execute("CREATE TABLE secrets (name TEXT PRIMARY KEY, token TEXT NOT NULL, created_at REAL NOT NULL, "
               "updated_at REAL NOT NULL)")
    # The values each attempt of a submission was given (one token: a JSON list), so its logs stay
    # masked after a secret is changed or removed.
    db.execute("CREATE TABLE attempt_secrets (submission_id INTEGER NOT NULL, attempt INTEGER NOT NULL, "
               "token TEXT NOT NULL, at REAL, PRIMARY KEY (submission_id, attempt))")


def _migrate_6(db: sqlite_utils.Database) -> None:
    # Where the submission's (latest attempt's) working directory is on this machine, kept after
    # it ends until the provider's retention policy prunes it.
    db.execute("ALTER TABLE submissions ADD COLUMN workdir TEXT")


def _migrate_7(db: sqlite_utils.Database) -> None:
    # API tokens (gitopsq.tokens): only a hash of each, looked up by that hash at every request.
    db.execute("CREATE TABLE api_tokens (name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, read_only INTEGER NOT NULL, "
               "created_at REAL NOT NULL, last_used_at REAL)")


def _migrate_8(db: sqlite_utils.Database) -> None:
    # Stop and rerun as people ask for them (gitopsq.intents): recorded with who asked, applied by
    # the controller's next step in the order asked. A stop names the submission it stops.
    db.execute("CREATE TABLE intents (id INTEGER PRIMARY KEY, run TEXT NOT NULL, kind TEXT NOT NULL, "
               "submission_id INTEGER, actor TEXT NOT NULL, via TEXT NOT NULL, at REAL NOT NULL, done_at REAL, "
               "outcome TEXT)")
    db.execute("CREATE INDEX intents_pending ON intents(done_at, id)")
    # Who made a submission by hand (a rerun; NULL: a commit), and who stopped one.
    db.execute("ALTER TABLE submissions ADD COLUMN submitted_by TEXT")
    db.execute("ALTER TABLE submissions ADD COLUMN stopped_by TEXT")


def _migrate_9_cluster_nodes_and_schedules(db: sqlite_utils.Database) -> None:
    # The nodes of a cluster run (nodes: N), one row per node of each attempt: recovery adopts a
    # gang only whole, and ps, the API and the dashboard show every node. Single-node runs keep
    # theirs in submissions.node_id.
    db.execute("""CREATE TABLE submission_nodes (
        submission_id INTEGER NOT NULL, attempt INTEGER NOT NULL, rank INTEGER NOT NULL, node_id TEXT, ip TEXT,
        log_path TEXT, workdir TEXT, status TEXT NOT NULL, exit_code INTEGER, reported_at REAL, started_at REAL,
        finished_at REAL, PRIMARY KEY (submission_id, attempt, rank))""")
    # When a scheduled run (schedule: {cron}) gets its next submission; NULL when it has no schedule.
    db.execute("ALTER TABLE runs ADD COLUMN next_tick_at REAL")
    db.execute("CREATE INDEX runs_next_tick ON runs(next_tick_at) WHERE next_tick_at IS NOT NULL")


def _migrate_10_queue_timers_index_only_the_queue(db: sqlite_utils.Database) -> None:
    # The indexes that find queued submissions needing a decision (never decided on, retry window
    # over, backoff over) hold only queued rows: a launch leaves them once, and its later status
    # changes (running, done) write none of their pages. Every query on them says status = 'queued';
    # status stays their first column, else the planner prefers submissions_queue and reads the queue.
    for name, column in (("submissions_fresh", "window_start"), ("submissions_deadline", "deadline"),
                         ("submissions_backoff", "next_try_at")):
        db.execute(f"DROP INDEX {name}")
        db.execute(f"CREATE INDEX {name} ON submissions(status, {column}) WHERE status = 'queued'")


MIGRATIONS = {1: _migrate_1, 2: _migrate_2, 3: _migrate_3, 4: _migrate_4, 5: _migrate_5, 6: _migrate_6, 7: _migrate_7,
              8: _migrate_8, 9: _migrate_9_cluster_nodes_and_schedules, 10: _migrate_10_queue_timers_index_only_the_queue}


# The database holds env values and report tokens: only its owner may read it, whatever the umask
# (mkdir and open only narrow their mode by it, so the modes are set explicitly).


def _create_private(db: Path) -> None:
    """The state directory (0700 when created here) and an empty database file (0600)."""
    try:
        db.parent.mkdir(parents=True, mode=0o700)
        os.chmod(db.parent, 0o700)
    except FileExistsError:
        pass  # a directory someone chose (--db): its mode is theirs
    try:
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _make_private(db: Path) -> None:
    """0600 for the database and its -wal and -shm files (also those an older version made 0644)."""
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            if path.stat().st_mode & 0o777 != 0o600:
                os.chmod(path, 0o600)
        except (FileNotFoundError, PermissionError):
            pass  # absent, or not ours: opened read-only by someone else


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        _create_private(self.path)
        conn = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        _make_private(self.path)  # also the -wal and -shm files the line above created
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self._migrate()

    def close(self) -> None:
        self.conn.close()

    # --- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self.transaction():
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            version = int(self.meta("schema_version") or 0)
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer gitopsq (schema {version}); upgrade gitopsq")
            for number in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[number](self.db)
                self.set_meta("schema_version", str(number))
            if self.meta("controller_id") is None:
                self.set_meta("controller_id", uuid.uuid4().hex[:12])

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    @property
    def controller_id(self) -> str:
        return self.meta("controller_id")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all."""
        if self.conn.in_transaction:  # nested: part of the outer transaction
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- cursor and parse cache ---------------------------------------------------------------

    def cursor(self, branch: str) -> str | None:
        row = self.conn.execute("SELECT commit_sha FROM cursors WHERE branch = ?", (branch,)).fetchone()
        return row[0] if row else None

    def set_cursor(self, branch: str, commit: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO cursors(branch, commit_sha, at) VALUES(?, ?, ?) ON CONFLICT(branch) DO UPDATE SET commit_sha = excluded.commit_sha, at = excluded.at",
            (branch, commit, now),
        )

    def files(self) -> dict[str, sqlite3.Row]:
        return {row["path"]: row for row in self.conn.execute("SELECT * FROM files")}

    def file_specs(self, paths: list[str]) -> dict[str, str]:
        """The spec texts of these run files of the last reconciled tree (the valid ones have one)."""
        return {row[0]: row[1] for chunk in _chunks(sorted(paths)) for row in
                self.conn.execute(f"SELECT path, spec FROM files WHERE path IN ({','.join('?' * len(chunk))})", chunk)
                if row[1] is not None}

    def replace_files(self, rows: list[dict], removed: list[str]) -> None:
        self.conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in removed])
        self.conn.executemany(
            "INSERT OR REPLACE INTO files(path, blob, config, name, spec, problems) VALUES(:path, :blob, :config, :name, :spec, :problems)",
            rows,
        )

    def applied_config(self) -> tuple[str, str] | None:
        """(blob id, text) of the last valid .gitopsq.yml the controller applied ("", "": none in the repo).

        Kept here, not looked up in git: it must outlive its blob (a force-push and a gc)."""
        value = self.meta("applied_config")
        if value is None:
            return None
        stored = json.loads(value)
        return stored["blob"], stored["text"]

    def set_applied_config(self, blob: str, text: str) -> None:
        self.set_meta("applied_config", json.dumps({"blob": blob, "text": text}))

    def file_problems(self) -> list[dict]:
        rows = self.conn.execute("SELECT file, line, field, message, since FROM problems ORDER BY id")
        return [dict(row) for row in rows]

    def invalid_files(self) -> dict[str, dict]:
        """Each invalid file: since which commit, and its first problem."""
        out: dict[str, dict] = {}
        for row in self.conn.execute("SELECT file, line, field, message, since FROM problems ORDER BY id"):
            if row["file"] not in out:
                out[row["file"]] = _invalid(row)
        return out

    def invalid_file(self, path: str | None) -> dict | None:
        """One file's entry of invalid_files(), or None while it is valid (one run's page, not all)."""
        row = self.conn.execute("SELECT file, line, field, message, since FROM problems WHERE file = ? ORDER BY id LIMIT 1",
                                (path,)).fetchone()
        return _invalid(row) if row else None

    def replace_problems(self, problems: list[dict], commit: str | None = None) -> tuple[set[str], set[str]]:
        """The problems of the tree at `commit`. A file invalid before keeps the commit it has been
        invalid since; a newly invalid one is invalid since `commit`. Returns (newly invalid, fixed)."""
        before = {row[0]: row[1] for row in self.conn.execute("SELECT file, MIN(since) FROM problems GROUP BY file")}
        now = {p["file"] for p in problems}
        self.conn.execute("DELETE FROM problems")
        self.conn.executemany(
            "INSERT INTO problems(file, line, field, message, since) VALUES(:file, :line, :field, :message, :since)",
            [{**p, "since": before.get(p["file"]) or commit} for p in problems])
        return now - set(before), set(before) - now

    # --- runs ---------------------------------------------------------------------------------

    def recorded(self, names: set[str] | None = None) -> dict[str, Known]:
        """What is recorded of the given runs (all runs when names is None), as the planner reads it."""
        sql = "SELECT r.name, r.file, r.spec, r.present, s.status FROM runs r LEFT JOIN submissions s ON s.id = r.last_submission"
        if names is None:
            rows = self.conn.execute(sql).fetchall()
        else:
            rows = [row for chunk in _chunks(sorted(names)) for row in
                    self.conn.execute(f"{sql} WHERE r.name IN ({','.join('?' * len(chunk))})", chunk)]
        return {
            row["name"]: Known(row["name"], row["file"], json.loads(row["spec"]) if row["spec"] else None, bool(row["present"]), row["status"])
            for row in rows
        }

    def run_names_at(self, paths: set[str]) -> set[str]:
        """Runs recorded as defined by one of these files (their file may now be broken or gone)."""
        return {row[0] for chunk in _chunks(sorted(paths)) for row in
                self.conn.execute(f"SELECT name FROM runs WHERE present = 1 AND file IN ({','.join('?' * len(chunk))})", chunk)}

    def upsert_run(self, name: str, file: str | None, blob: str | None, spec: dict | None, present: bool, now: float,
                   spec_text: str | None = None) -> None:
        """spec_text: the spec as its sorted JSON text when the caller has it (a sync does), not encoded again."""
        priority = spec["priority"] if spec else 0
        if spec_text is None and spec:
            spec_text = json.dumps(spec, sort_keys=True)
        self.conn.execute(
            """INSERT INTO runs(name, file, blob, spec, priority, present, created_at, updated_at)
               VALUES(?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(name) DO UPDATE SET file = excluded.file, blob = excluded.blob,
                 spec = COALESCE(excluded.spec, runs.spec), priority = excluded.priority,
                 present = excluded.present, updated_at = excluded.updated_at""",
            (name, file, blob, spec_text if spec else None, priority, int(present), now, now),
        )

    def mark_absent(self, name: str, now: float) -> None:
        self.conn.execute("UPDATE runs SET present = 0, updated_at = ? WHERE name = ?", (now, name))

    def run(self, name: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM runs WHERE name = ?", (name,)).fetchone()

    # --- submissions --------------------------------------------------------------------------

    def add_submission(self, run: str, spec: dict, commit: str | None, now: float, submitted_by: str | None = None,
                       spec_text: str | None = None) -> int:
        """Append submission N+1 of a run, queued (submitted_by: who asked for it by hand, None for a commit;
        spec_text: as for upsert_run)."""
        number = self.conn.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM submissions WHERE run = ?", (run,)).fetchone()[0]
        cur = self.conn.execute(
            """INSERT INTO submissions(run, number, spec, priority, status, commit_sha, submitted_at, queued_at, attempts, token,
                                       submitted_by)
               VALUES(?, ?, ?, ?, 'queued', ?, ?, ?, 0, ?, ?)""",
            (run, number, spec_text or json.dumps(spec, sort_keys=True), spec["priority"], commit, now, now, secrets.token_urlsafe(24),
             submitted_by),
        )
        sub_id = cur.lastrowid
        self.conn.execute("UPDATE runs SET last_submission = ? WHERE name = ?", (sub_id, run))
        self.event(run, sub_id, "submitted", {"number": number}, commit, now)
        return sub_id

    def submission(self, sub_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM submissions WHERE id = ?", (sub_id,)).fetchone()

    def current_submission(self, run: str) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT s.* FROM submissions s JOIN runs r ON r.last_submission = s.id WHERE r.name = ?", (run,)
        ).fetchone()

    def submissions_with_status(self, *statuses: str) -> list[sqlite3.Row]:
        marks = ",".join("?" * len(statuses))
        return self.conn.execute(
            f"SELECT * FROM submissions WHERE status IN ({marks}) ORDER BY priority DESC, queued_at, id", statuses
        ).fetchall()

    def submission_ids_with_status(self, *statuses: str) -> set[int]:
        """The ids alone: knowing which of 10,000 queued submissions are live needs none of their specs."""
        marks = ",".join("?" * len(statuses))
        return {row[0] for row in self.conn.execute(f"SELECT id FROM submissions WHERE status IN ({marks})", statuses)}

    def update_submission(self, sub_id: int, **fields: Any) -> None:
        if not fields:
            return
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE submissions SET {sets} WHERE id = ?", (*fields.values(), sub_id))

    def set_status(self, sub_id: int, status: str, now: float, reason: str | None = None, commit: str | None = None,
                   detail: dict | None = None, **fields: Any) -> bool:
        """The one place a submission changes status: no-op when unchanged, else a past-tense event."""
        row = self.conn.execute("SELECT run, number, status FROM submissions WHERE id = ?", (sub_id,)).fetchone()
        if row is None or (row["status"] == status and not fields):
            return False
        changes = dict(fields, status=status)
        if reason is not None:
            changes["reason"] = reason
        if status in FINISHED:
            changes.setdefault("finished_at", now)
        self.update_submission(sub_id, **changes)
        if row["status"] != status:
            info = {"from": row["status"], "to": status, **({"reason": reason} if reason else {}), **(detail or {})}
            self.event(row["run"], sub_id, status, info, commit, now)
            log.info("%s #%s: %s -> %s%s", row["run"], row["number"], row["status"], status, f" ({reason})" if reason else "")
        return True

    # --- the nodes of cluster runs ------------------------------------------------------------

    def record_nodes(self, sub_id: int, attempt: int, nodes: list[dict], now: float) -> None:
        """The nodes an attempt of a cluster run was given (rank, node_id, ip, log_path, workdir): running."""
        self.conn.executemany(
            """INSERT OR REPLACE INTO submission_nodes(submission_id, attempt, rank, node_id, ip, log_path, workdir, status,
               started_at) VALUES(?, ?, ?, ?, ?, ?, ?, 'running', ?)""",
            [(sub_id, attempt, n["rank"], n["node_id"], n.get("ip"), n.get("log_path"), n.get("workdir"), now) for n in nodes])

    def submission_nodes(self, sub_id: int, attempt: int | None = None) -> list[sqlite3.Row]:
        """The nodes of an attempt of a cluster run (its current attempt by default), by rank."""
        if attempt is None:
            return self.conn.execute(
                """SELECT n.* FROM submission_nodes n JOIN submissions s ON s.id = n.submission_id AND n.attempt = s.attempts
                   WHERE n.submission_id = ? ORDER BY n.rank""", (sub_id,)).fetchall()
        return self.conn.execute("SELECT * FROM submission_nodes WHERE submission_id = ? AND attempt = ? ORDER BY rank",
                                 (sub_id, attempt)).fetchall()

    def update_node(self, sub_id: int, attempt: int, rank: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE submission_nodes SET {sets} WHERE submission_id = ? AND attempt = ? AND rank = ?",
                          (*fields.values(), sub_id, attempt, rank))

    def forget_nodes(self, sub_id: int, attempt: int) -> None:
        """An attempt whose gang was never made whole (rolled back): it had no nodes."""
        self.conn.execute("DELETE FROM submission_nodes WHERE submission_id = ? AND attempt = ?", (sub_id, attempt))

    # --- schedules ----------------------------------------------------------------------------

    def set_next_tick(self, run: str, at: float | None) -> None:
        self.conn.execute("UPDATE runs SET next_tick_at = ? WHERE name = ?", (at, run))

    def due_schedules(self, now: float) -> list[sqlite3.Row]:
        """Scheduled runs whose next tick has come (their file is in the tree)."""
        return self.conn.execute("SELECT * FROM runs WHERE next_tick_at <= ? AND present = 1 ORDER BY next_tick_at, name",
                                 (now,)).fetchall()

    def next_schedule_tick(self) -> float | None:
        return self.conn.execute("SELECT MIN(next_tick_at) FROM runs WHERE next_tick_at IS NOT NULL AND present = 1").fetchone()[0]

    # --- the queue, read by index (100,000 queued runs must not cost a full read per step) ----------

    def queued_needing_decision(self, now: float, limit: int = -1) -> list[sqlite3.Row]:
        """Queued submissions never decided on yet, and those whose retry window has ended
        (QUEUED_COLUMNS); at most `limit` (-1: all), the ended windows first, then the oldest."""
        return self.conn.execute(  # one statement (each half on its own index): it runs at every step
            f"SELECT {QUEUED_COLUMNS} FROM submissions WHERE status = 'queued' AND deadline <= ? UNION ALL "
            f"SELECT {QUEUED_COLUMNS} FROM submissions WHERE status = 'queued' AND window_start IS NULL LIMIT ?",
            (now, limit)).fetchall()

    def queued_in_order(self, first: int = 2) -> Iterator[list[sqlite3.Row]]:
        """The queue in admission order (priority, then first queued), in chunks growing 4x: the
        head is usually enough (a step launches one run or none: each row read is decided on, so
        the first chunk is small), a long scan stays a few round trips. Rows of QUEUED_COLUMNS."""
        cursor = self.conn.execute(f"SELECT {QUEUED_COLUMNS} FROM submissions WHERE status = 'queued' ORDER BY priority DESC, queued_at, id")
        size = first
        while rows := cursor.fetchmany(size):
            yield rows
            size *= 4

    def queue_timers(self, now: float) -> tuple[float | None, float | None]:
        """The next retry-window end and the next backoff expiry among queued submissions."""
        deadline = self.conn.execute("SELECT MIN(deadline) FROM submissions WHERE status = 'queued' AND deadline > ?", (now,)).fetchone()[0]
        backoff = self.conn.execute("SELECT MIN(next_try_at) FROM submissions WHERE status = 'queued' AND next_try_at > ?", (now,)).fetchone()[0]
        return deadline, backoff

    def has_active_nodes(self) -> bool:
        return self.conn.execute(
            "SELECT EXISTS(SELECT 1 FROM submissions WHERE status IN ('provisioning', 'running', 'stopping'))").fetchone()[0] == 1

    def history(self, run: str) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM submissions WHERE run = ? ORDER BY number", (run,)).fetchall()

    # --- events -------------------------------------------------------------------------------

    def event(self, run: str | None, sub_id: int | None, kind: str, detail: dict | None, commit: str | None, now: float) -> None:
        self.conn.execute(
            "INSERT INTO events(at, run, submission_id, kind, detail, commit_sha) VALUES(?, ?, ?, ?, ?, ?)",
            (now, run, sub_id, kind, json.dumps(detail or {}, sort_keys=True), commit),
        )

    def events(self, run: str | None = None, limit: int = 200) -> list[sqlite3.Row]:
        if run is None:
            return self.conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return self.conn.execute("SELECT * FROM events WHERE run = ? ORDER BY id DESC LIMIT ?", (run, limit)).fetchall()


# --- opening the state for reading only --------------------------------------------------------

class StateError(Exception):
    """The state database is missing, not one, or of another schema."""


class StateMissing(StateError):
    def __init__(self, path: Path):
        super().__init__(f"no gitopsq state at {path}; is --db right?")


def open_readonly(path: str | Path) -> Store:
    """The state at `path` for commands that only read: never created, written or migrated.

    Works while a controller writes (WAL), and in a directory this user may not write to."""
    path = Path(path)
    if not path.is_file():
        raise StateMissing(path)
    conn = sqlite3.connect(_readonly_uri(path), uri=True, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    store = Store.__new__(Store)  # not __init__: that creates, migrates and writes
    store.path, store.conn = path, conn
    try:
        store.db = sqlite_utils.Database(conn)
        version = int(store.meta("schema_version") or 0)
    except sqlite3.DatabaseError as exc:  # "file is not a database", "no such table: meta"
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and "no such table" not in str(exc):
            raise StateError(f"cannot read the gitopsq state at {path}: {exc}") from None
        raise StateError(f"{path} is not a gitopsq state database") from None
    problem = _schema_problem(path, version)
    if problem:
        conn.close()
        raise StateError(problem)
    return store


def _readonly_uri(path: Path) -> str:
    from urllib.parse import quote

    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    # A WAL reader needs the -shm file, and cannot create it in a directory it may not write to.
    # No -shm means no connection has the database open (a writer always has one): then the
    # file is read as it is, without the shared-memory locks.
    if not path.with_name(path.name + "-shm").exists() and not os.access(path.parent, os.W_OK):
        uri += "&immutable=1"
    return uri


def _schema_problem(path: Path, version: int) -> str | None:
    if version == 0:
        return f"{path} is not a gitopsq state database"
    if version < SCHEMA_VERSION:
        return (f"{path} was written by an older gitopsq (schema {version}); start the controller (gitopsq serve) once "
                "to upgrade it")
    if version > SCHEMA_VERSION:
        return f"{path} was written by a newer gitopsq (schema {version}); upgrade gitopsq"
    return None


# --- one controller per state ------------------------------------------------------------------

class StateLocked(StateError):
    """Another controller holds the state: running a second one would launch every run twice."""

    def __init__(self, db_path: Path, pid: int | None, started_at: float | None):
        self.db_path, self.pid, self.started_at = db_path, pid, started_at
        started = _clock_time(started_at) if started_at else "at an unknown time"
        super().__init__(f"another gitopsq controller (pid {pid or 'unknown'}, started {started}) holds {db_path}; "
                         "stop it first")


def lock_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".lock")


@contextmanager
def controller_lock(db_path: str | Path) -> Iterator[None]:
    """Hold the state's controller lock for the block: an flock on a file beside the database,
    with the holder's pid and start time in it. The kernel drops it when the process dies, even
    by kill -9, so a crash never leaves a stale lock. Raises StateLocked when it is held."""
    import fcntl

    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock_path(db_path), os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by launched nodes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateLocked(db_path, *_lock_holder(fd)) from None
        os.ftruncate(fd, 0)  # a reader that finds it empty waits for the line (_lock_holder)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started_at": time.time()}).encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with the next holder)


def _lock_holder(fd: int, wait: float = 2.0) -> tuple[int | None, float | None]:
    """(pid, started_at) as the holder wrote them. A holder writes them just after taking the lock:
    one caught in between is waited for (up to `wait` seconds), else (None, None)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return int(holder["pid"]), float(holder["started_at"])
        except (ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return None, None
            time.sleep(0.02)


def _clock_time(at: float) -> str:
    """10:02:11 today, 2024-05-01 10:02:11 on another day."""
    stamp = time.localtime(at)
    same_day = stamp[:3] == time.localtime()[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", stamp)


def _invalid(row: sqlite3.Row) -> dict:
    return {"since": row["since"], "problem": str(Problem(row["file"], row["line"], row["field"], row["message"]))}


def _chunks(items: list, size: int = 500):
    """SQLite limits the number of parameters of one statement."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def default_db_path() -> Path:
    """GITOPSQ_DB, else a state directory of the user's."""
    import os

    if os.environ.get("GITOPSQ_DB"):
        return Path(os.environ["GITOPSQ_DB"])
    return state_dir() / "gitopsq.db"


def state_dir() -> Path:
    import os

    if os.environ.get("GITOPSQ_STATE_DIR"):
        return Path(os.environ["GITOPSQ_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gitopsq"


def now() -> float:
    return time.time()


LISTING_SQL = """
SELECT r.name, r.file, r.present, s.id AS submission_id, s.number AS submission, s.status, s.priority,
       s.reason, s.message, s.exit_code, s.attempts, s.queued_at, s.started_at, s.finished_at,
       s.window_start, s.deadline, s.next_try_at, COALESCE(s.spec, r.spec) AS spec, s.log_path, s.node_id, s.demand,
       s.backoff_event, s.workdir, s.submitted_by, s.stopped_by, r.next_tick_at
FROM runs r LEFT JOIN submissions s ON s.id = r.last_submission
{where}
ORDER BY CASE WHEN s.status IN ('queued', 'provisioning', 'running', 'stopping') THEN 0 ELSE 1 END,
         CASE WHEN s.status IN ('queued', 'provisioning', 'running', 'stopping') THEN -s.priority ELSE 0 END,
         CASE WHEN s.status IN ('queued', 'provisioning', 'running', 'stopping') THEN s.queued_at ELSE -s.finished_at END,
         s.id
"""
# A scheduled run that has had no tick yet has no submission: `ps` lists it as scheduled.
SCHEDULED = "scheduled"


def listing(store: Store, include_all: bool = False, status: str | None = None, now: float | None = None) -> list[dict]:
    """Runs with their current submission, active ones first in queue order (priority, then first queued),
    each with why it is where it is (`why`; for queued ones also how many are ahead and what it needs)."""
    from gitopsq.explain import why

    clauses, params = [], []
    if not include_all:
        clauses.append("(r.present = 1 OR s.status IN ('queued', 'provisioning', 'running', 'stopping'))")
    if status:
        clauses.append("s.status = ?")
        params.append(status)
    where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
    where_runs_are = reach(store)
    rows = [describe_listed(dict(row), where_runs_are) for row in store.conn.execute(LISTING_SQL.format(where=where), params)]
    add_nodes(store, rows)
    free = json.loads(store.meta("capacity_free") or "null")
    invalid = store.invalid_files()
    ahead = 0
    now = time.time() if now is None else now
    for row in rows:  # in queue order: the queued rows before a queued row are ahead of it
        row["ahead"] = row["free"] = None
        row["file_invalid"] = invalid.get(row["file"]) if row.get("present") else None
        if row["status"] == "queued":
            row["ahead"], row["free"] = ahead, free
            ahead += 1
        row["why"] = why(row, now)
    return rows


def reach(store: Store) -> Reach:
    """Where runs are reached, as the last `gitopsq serve` recorded it (this machine by default)."""
    raw = store.meta("reach")
    data = json.loads(raw) if raw else {}
    return Reach(data.get("host") or Reach.host, data.get("provider") or Reach.provider)


def set_reach(store: Store, where: Reach) -> None:
    with store.transaction():
        store.set_meta("reach", json.dumps({"host": where.host, "provider": where.provider}))


def describe_listed(row: dict, where: Reach) -> dict:
    """A row of LISTING_SQL as `ps` and the API show it: describe(), and how to reach the run."""
    spec = json.loads(row["spec"]) if row.get("spec") else {}
    workdir = row.pop("workdir", None)
    row = describe(row)
    row["connect"] = connection(spec, row["status"], workdir, where)
    return row


def describe(row: dict) -> dict:
    """A submission row as the API and `ps --json` show it: retry state spelled out."""
    spec = json.loads(row.pop("spec")) if row.get("spec") else {}
    row["retry"] = spec.get("retry")
    row["type"] = spec.get("type")
    row["nodes_num"] = spec.get("nodes", 1)
    row["schedule"] = spec.get("schedule") or None
    if "status" in row and row["status"] is None:
        row["status"] = SCHEDULED
    row["present"] = bool(row.get("present", True))
    if "demand" in row:
        raw = row.pop("demand")
        row["needs"] = json.loads(raw) if raw else None
    return row


_SUBMISSION_SQL = """
SELECT run AS name, id AS submission_id, number AS submission, status, priority, reason, message, exit_code,
       attempts, submitted_at, queued_at, started_at, finished_at, window_start, deadline, next_try_at, last_activity_at,
       reported_at, stop_reason, spec, log_path, workdir, node_id, commit_sha, submitted_by, stopped_by
FROM submissions {where}
"""


def submissions(store: Store, status: str | None = None, run: str | None = None) -> list[dict]:
    """Submissions in queue order (priority, then first queued); without a status, the active ones.

    With `run`: every submission of that run, oldest first.
    """
    if run is not None:
        sql, params = _SUBMISSION_SQL.format(where="WHERE run = ? ORDER BY number"), [run]
    else:
        wanted = (status,) if status else ACTIVE
        marks = ",".join("?" * len(wanted))
        sql, params = _SUBMISSION_SQL.format(where=f"WHERE status IN ({marks}) ORDER BY priority DESC, queued_at, id"), list(wanted)
    rows = [describe(dict(row)) for row in store.conn.execute(sql, params)]
    for row in rows:  # a recorded working directory no longer on disk was pruned (retention policy)
        row["workdir_pruned"] = bool(row["workdir"]) and not os.path.isdir(row["workdir"])
    return rows


def attempt_logs(store: Store, submission_id: int) -> list[str]:
    """Log files of every node a submission ran on, oldest first (retries run on new nodes); a
    cluster run's, every node's of each attempt, by rank."""
    return [log.path for log in labelled_logs(store, submission_id)]


class NodeLog(NamedTuple):
    attempt: int  # 1, 2, ... counting the attempts that had a log
    label: str  # "attempt 2", or "attempt 2, node 1" for a node of a cluster run
    path: str


def labelled_logs(store: Store, submission_id: int) -> list[NodeLog]:
    """The log of every node a submission ran on, with which attempt and node it was, oldest first."""
    logs: list[NodeLog] = []
    seen: set[str] = set()
    attempt = 0
    for row in store.conn.execute("SELECT detail FROM events WHERE submission_id = ? AND kind = 'running' ORDER BY id", (submission_id,)):
        detail = json.loads(row["detail"])
        nodes = [n for n in detail.get("nodes") or [{"log": detail.get("log")}] if n.get("log") and n["log"] not in seen]
        attempt += bool(nodes)  # an adoption after a restart names the same files again
        for node in nodes:
            seen.add(node["log"])
            logs.append(NodeLog(attempt, f"attempt {attempt}" + (f", node {node['rank']}" if "rank" in node else ""),
                                node["log"]))
    return logs


def add_nodes(store: Store, rows: list[dict]) -> None:
    """Each cluster run's nodes (of its current attempt) into its row: rank, node, address, status."""
    for row in rows:
        if row.get("nodes_num", 1) == 1 or not row.get("submission_id"):
            row["nodes"] = None
            continue
        row["nodes"] = [{k: node[k] for k in ("rank", "node_id", "ip", "status", "exit_code", "log_path", "workdir")}
                        for node in store.submission_nodes(row["submission_id"])]
