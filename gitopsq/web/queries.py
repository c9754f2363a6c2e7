"""Store reads the web app needs beyond store.py, and one store connection per thread.

FastAPI runs sync endpoints in a thread pool and an sqlite3 connection must not be shared by
two threads at once, so every thread opens its own `Store` on first use (WAL lets them read
while the controller writes).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterable

from gitopsq.explain import why
from gitopsq.masking import mask, mask_terms

from gitopsq.store import LISTING_SQL, Store, add_nodes, describe_listed, reach

STATUSES = ("queued", "provisioning", "running", "stopping", "done", "failed", "cancelled")
LOG_TAIL_LINES = 100
LOG_TAIL_BYTES = 256 * 1024  # read at most this much from the end of a log file


class StorePool:
    """One `Store` per thread, all closed by `close()` (the app's shutdown)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[Store] = []
        self._generation = 0

    def get(self) -> Store:
        held = getattr(self._local, "held", None)
        if held is None or held[0] != self._generation:
            store = Store(self.path)
            with self._lock:
                self._opened.append(store)
                held = self._local.held = (self._generation, store)
        return held[1]

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            for store in self._opened:
                store.close()
            self._opened.clear()


def run_detail(store: Store, name: str, now: float) -> dict | None:
    """A run as `listing()` shows it, with its current submission's times, commit and report."""
    row = store.conn.execute(LISTING_SQL.format(where="WHERE r.name = ?"), (name,)).fetchone()
    if row is None:
        return None
    detail = describe_listed(dict(row), reach(store))
    add_nodes(store, [detail])
    extra = store.conn.execute(
        "SELECT commit_sha, submitted_at, last_activity_at, reported_at, stop_reason FROM submissions WHERE id = ?",
        (detail["submission_id"],)).fetchone()
    detail.update(dict(extra) if extra else dict.fromkeys(("commit_sha", "submitted_at", "last_activity_at", "reported_at",
                                                          "stop_reason")))  # scheduled, no tick yet
    detail["ahead"] = detail["free"] = None
    if detail["status"] == "queued":
        detail["ahead"] = queued_ahead(store, detail)
        detail["free"] = json.loads(store.meta("capacity_free") or "null")
    detail["file_invalid"] = store.invalid_file(detail["file"]) if detail.get("present") else None
    detail["why"] = why(detail, now)
    return detail


def queued_ahead(store: Store, row: dict) -> int:
    """Queued submissions before this one in admission order (priority, then first queued, then id)."""
    return store.conn.execute(
        """SELECT COUNT(*) FROM submissions WHERE status = 'queued' AND (priority > :p OR (priority = :p AND
           (queued_at < :q OR (queued_at = :q AND id < :id))))""",
        {"p": row["priority"], "q": row["queued_at"], "id": row["submission_id"]}).fetchone()[0]


def run_exists(store: Store, name: str) -> bool:
    return store.run(name) is not None


def queue_stats(store: Store, now: float) -> dict:
    """What the metrics show: runs per status (the runs `ps` lists), queue length, oldest wait, invalid files."""
    counts = dict.fromkeys(STATUSES, 0)
    for status, count in store.conn.execute(
            """SELECT s.status, COUNT(*) FROM runs r JOIN submissions s ON s.id = r.last_submission
               WHERE r.present = 1 OR s.status IN ('queued', 'provisioning', 'running', 'stopping') GROUP BY s.status"""):
        counts[status] = count
    queued = store.conn.execute("SELECT COUNT(*), MIN(queued_at) FROM submissions WHERE status = 'queued'").fetchone()
    oldest = max(0.0, now - queued[1]) if queued[1] is not None else 0.0
    return {"runs": counts, "queue_length": queued[0], "oldest_wait": oldest, "invalid_files": invalid_file_count(store)}


def invalid_file_count(store: Store) -> int:
    return store.conn.execute("SELECT COUNT(DISTINCT file) FROM problems").fetchone()[0]


def latest_log(store: Store, history_rows: list[dict]) -> tuple[str, int] | None:
    """(path, submission id) of the latest attempt's log of the latest submission that has one."""
    from gitopsq.store import attempt_logs

    for row in reversed(history_rows):
        paths = attempt_logs(store, row["submission_id"])
        if paths:
            return paths[-1], row["submission_id"]
        if row.get("log_path"):
            return row["log_path"], row["submission_id"]
    return None


def masked_log_tail(store: Store, path: str, submission_id: int, lines: int = LOG_TAIL_LINES) -> tuple[str | None, str | None]:
    """log_tail() with every secret value the submission's attempts were given masked; a log
    that cannot be masked (the secrets key is missing) is not shown."""
    from gitopsq.secretstore import SecretKeyError, SecretStore

    try:
        values = SecretStore(store).mask_values(submission_id)
    except SecretKeyError as exc:
        return None, f"log hidden: it may hold secrets that cannot be masked ({exc})"
    return log_tail(path, lines, values)


def log_tail(path: str, lines: int = LOG_TAIL_LINES, secrets: Iterable[str] = ()) -> tuple[str | None, str | None]:
    """The last `lines` lines of a log file, `secrets` masked: (text, None), or (None, why it could not be read)."""
    # Read a little more than the window, so that a value straddling its start is masked whole.
    overlap = max((len(term.encode("utf-8")) for term in mask_terms(secrets)), default=1) - 1
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            start = max(0, size - LOG_TAIL_BYTES - overlap)
            f.seek(start)
            data = f.read()
    except OSError as exc:
        return None, f"log not readable here: {exc.strerror or exc}"
    text = mask(data.decode("utf-8", errors="replace"), secrets)
    every = text.splitlines()
    kept = every[-lines:]
    if start > 0 and len(kept) == len(every):
        kept = kept[1:]  # the first line was cut by the byte limit
    return "\n".join(kept), None
