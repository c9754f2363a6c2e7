"""Stop and rerun: what people ask of a run by hand, recorded as intents the controller applies.

`gitopsq stop NAME` / `gitopsq rerun NAME`, their API routes and the run page's buttons only
record what was asked, by whom (a token's name, or the OS user of a CLI that wrote to the state
itself) and through what, then wake the controller; its next step applies the intents in the
order they were asked (Controller.apply_intents), as it applies commits. Git stays the source
of truth: a stop is scoped to the submission it names (the run stays stopped until its file
changes, and that change reconciles as usual); a rerun submits the spec the branch holds now.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitopsq.store import Store

STOP, RERUN = "stop", "rerun"
STOPPABLE = ("queued", "provisioning", "running")  # a stopping submission is on its way already


class IntentRefused(Exception):
    """Nothing to do: no such run (status 404), or not in a state the action applies to (409)."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Intent:
    id: int
    run: str
    kind: str  # stop | rerun
    submission_id: int | None  # a stop's submission
    actor: str  # who asked: a token's name, or an OS user
    via: str  # api, dashboard or cli
    at: float
    done_at: float | None = None
    outcome: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def request_stop(store: Store, run: str, actor: str, via: str, now: float) -> Intent:
    """Record that `actor` asks to stop the run's active submission; an identical pending ask is returned as is."""
    with store.transaction():
        current = _current(store, run)
        if current is None or current["status"] not in STOPPABLE:
            status = current["status"] if current is not None else "never submitted"
            raise IntentRefused(f"run {run!r} is not active ({_latest(current)}{status}): nothing to stop")
        waiting = _pending(store, run, STOP)
        if waiting is not None and waiting.submission_id == current["id"]:
            return waiting
        return _record(store, run, STOP, current["id"], actor, via, now)


def request_rerun(store: Store, run: str, actor: str, via: str, now: float) -> Intent:
    """Record that `actor` asks for a new submission of the run's current spec (an active one is stopped first)."""
    with store.transaction():
        current = _current(store, run)
        row = store.run(run)
        if not row["present"]:
            raise IntentRefused(f"run {run!r} is gone from the branch: there is no current spec to run again "
                                "(git is the source of truth: add its file back)")
        waiting = _pending(store, run, RERUN)
        if waiting is not None:
            return waiting
        return _record(store, run, RERUN, current["id"] if current is not None else None, actor, via, now)


def pending(store: Store, run: str | None = None) -> list[Intent]:
    """Intents not applied yet, in the order asked (of one run, or of all)."""
    sql = "SELECT * FROM intents WHERE done_at IS NULL" + (" AND run = ?" if run else "") + " ORDER BY id"
    return [_intent(row) for row in store.conn.execute(sql, (run,) if run else ())]


def finish(store: Store, intent: Intent, outcome: str, now: float) -> None:
    """Mark an intent applied (in the controller's transaction), with what it did."""
    store.conn.execute("UPDATE intents SET done_at = ?, outcome = ? WHERE id = ?", (now, outcome, intent.id))


def local_actor() -> str:
    """The OS user running the CLI, for an intent it records in the state itself (no token involved)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): the uid says who
        import os

        return f"uid {os.getuid()}"


def _current(store: Store, run: str):
    if store.run(run) is None:
        raise IntentRefused(f"no run named {run!r}", 404)
    return store.current_submission(run)


def _latest(current) -> str:
    return f"submission {current['number']} is " if current is not None else ""


def _pending(store: Store, run: str, kind: str) -> Intent | None:
    """The run's latest pending intent of this kind: asking twice (a double click) records it once."""
    row = store.conn.execute("SELECT * FROM intents WHERE done_at IS NULL AND run = ? AND kind = ? ORDER BY id DESC "
                             "LIMIT 1", (run, kind)).fetchone()
    return _intent(row) if row else None


def _record(store: Store, run: str, kind: str, submission_id: int | None, actor: str, via: str, now: float) -> Intent:
    cursor = store.conn.execute("INSERT INTO intents(run, kind, submission_id, actor, via, at) VALUES(?, ?, ?, ?, ?, ?)",
                                (run, kind, submission_id, actor, via, now))
    store.event(run, submission_id, f"{kind}-requested", {"by": actor, "via": via}, None, now)
    return Intent(cursor.lastrowid, run, kind, submission_id, actor, via, now)


def _intent(row) -> Intent:
    return Intent(row["id"], row["run"], row["kind"], row["submission_id"], row["actor"], row["via"], row["at"],
                  row["done_at"], row["outcome"])
