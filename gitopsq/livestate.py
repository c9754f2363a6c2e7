"""The controller's state as `gitopsq plan --server/--db` needs it, read from the store.

One reader for both: `POST /api/state` answers with `state_json` (the daemon judges the new specs
with its own provider), and `plan --db` calls it on the state file itself, judging with the
provider `serve` recorded there (`record_provider`). `live_state` turns that JSON into the pure
plan.LiveState that plan.live_effects works on. Nothing here writes, except `record_provider`.
"""

from __future__ import annotations

import json
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable, Iterator, Mapping

from gitopsq.plan import Judgment, LiveRun, LiveState
from gitopsq.queue import Waiting
from gitopsq.store import Store, reach

MAX_RUNS = 10_000  # runs one request may ask about (a pull request touches a few)
_PROVIDER_KEY = "provider_setup"

Judge = Callable[[dict], dict]  # a spec (RunSpec.to_dict() form) -> {"needs", "unsatisfiable"}

_RUN_SQL = """
SELECT r.name, r.file, r.spec, r.present, s.status, s.number AS submission, s.id AS submission_id, s.priority,
       s.queued_at, s.started_at, s.finished_at, s.reason, s.stopped_by, s.demand
FROM runs r LEFT JOIN submissions s ON s.id = r.last_submission WHERE r.name = ?
"""
_QUEUE_SQL = """
SELECT id, run, priority, queued_at, demand, deadline, next_try_at, last_attempt_at, backoff_event, spec
FROM submissions WHERE status = 'queued' ORDER BY priority DESC, queued_at, id
"""


def state_json(store: Store, names: Iterable[str], specs: Mapping[str, dict], judge: Judge | None, now: float,
               unjudged: str | None = None, branch: str | None = None, commit: str | None = None) -> dict:
    """The state for a plan: the runs `names` as recorded, the queue, what holds capacity, the secret
    names that are set, what is free; and `specs` (the change's new specs) as the provider judges them.

    unjudged: why there is no judge (said in the answer). branch, commit: the daemon's own; else
    the cursor last moved."""
    if branch is None:
        row = store.conn.execute("SELECT branch, commit_sha FROM cursors ORDER BY at DESC LIMIT 1").fetchone()
        branch, commit = (row[0], row[1]) if row else (None, None)
    runs = {}
    for name in sorted(set(names)):
        row = store.conn.execute(_RUN_SQL, (name,)).fetchone()
        if row is not None:
            runs[name] = _run(row)
    judged, problems = {}, {}
    for name, spec in specs.items():
        try:
            judged[name] = judge(spec) if judge else {"needs": None, "unsatisfiable": None}
        except Exception as exc:  # a spec the provider cannot read is not this answer's failure
            problems[name] = f"{type(exc).__name__}: {exc}"
            judged[name] = {"needs": None, "unsatisfiable": None}
    queue, unknown_needs = _queue(store, judge)
    free = json.loads(store.meta("capacity_free") or "null")
    return {
        "at": now, "branch": branch, "commit": commit, "provider": reach(store).provider,
        "runs": runs, "queue": queue,
        "running": [{"run": r, "priority": p} for r, p in store.conn.execute(
            "SELECT run, priority FROM submissions WHERE status IN ('provisioning', 'running') ORDER BY priority DESC, id")],
        "secrets": [row[0] for row in store.conn.execute("SELECT name FROM secrets ORDER BY name")],
        "free": None if unknown_needs else free,
        "judged": judged,
        "unjudged": unjudged if judge is None else ("; ".join(f"{n}: {why}" for n, why in sorted(problems.items())) or None),
    }


def live_state(data: Mapping) -> LiveState:
    """plan.LiveState from state_json's answer (over HTTP, or as is)."""
    runs = {name: LiveRun(**row) for name, row in data["runs"].items()}
    queue = tuple(Waiting(**entry) for entry in data["queue"])
    running = tuple((entry["run"], entry["priority"]) for entry in data["running"])
    judged = {name: Judgment(j.get("needs"), j.get("unsatisfiable")) for name, j in data["judged"].items()}
    return LiveState(runs, queue, running, frozenset(data["secrets"]), data["free"], judged, data["at"])


# --- where a plan reads it from ---------------------------------------------------------------------

class StateUnavailable(Exception):
    """The state cannot be read: the server refused or is unreachable, or the file is not a state."""


def from_server(url: str, token: str | None) -> Callable[[Iterable[str], Mapping[str, dict]], tuple[LiveState, dict]]:
    """read_state for desired.plan_refs_live over a running controller's API (a read token is enough)."""
    from gitopsq.client import Api, ApiError

    try:
        api = Api(url, token)
    except ApiError as exc:
        raise StateUnavailable(str(exc)) from None

    def read(names, specs):
        try:
            data = api.post("/api/state", {"runs": sorted(names), "specs": dict(specs)})
            return live_state(data), _source(data, "server", api.shown)
        except ApiError as exc:
            if exc.status in (404, 405):  # a controller from before plans read its state
                raise StateUnavailable(f"{api.shown} has no /api/state ({exc}): is --server a gitopsq controller "
                                       "of this version?") from None
            raise StateUnavailable(str(exc)) from None
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StateUnavailable(f"{api.shown}/api/state did not answer a gitopsq state: is --server a gitopsq "
                                   "controller of this version?") from None
    return read


def from_db(path: str):
    """read_state for desired.plan_refs_live over the state file on this machine (opened read-only)."""
    import time

    from gitopsq.store import StateError, open_readonly

    def read(names, specs):
        try:
            store = open_readonly(path)
        except StateError as exc:
            raise StateUnavailable(str(exc)) from None
        try:
            with recorded_judge(store) as (judge, why):
                data = state_json(store, names, specs, judge, time.time(), unjudged=why)
        finally:
            store.close()
        return live_state(data), _source(data, "db", str(path))
    return read


def _source(data: Mapping, kind: str, where: str) -> dict:
    """Where a plan's state came from, for its header and its JSON."""
    return {"source": kind, "where": where, "branch": data.get("branch"), "commit": data.get("commit"),
            "at": data.get("at"), "provider": data.get("provider"), "unjudged": data.get("unjudged")}


# --- the provider, for plan --db -------------------------------------------------------------------

def record_provider(store: Store, check) -> None:
    """What `serve` runs with (a providercheck.ProviderCheck: name, options, local slots and GPUs), so
    `plan --db` can ask the same provider; never credentials."""
    with store.transaction():
        store.set_meta(_PROVIDER_KEY, json.dumps(check.as_dict(), sort_keys=True))


@contextmanager
def recorded_judge(store: Store) -> Iterator[tuple[Judge | None, str | None]]:
    """(judge, None) over the provider `serve` recorded, or (None, why not) where it cannot be rebuilt here."""
    from gitopsq.providercheck import ProviderCheck, ProviderUnavailable, judgment

    check = ProviderCheck.from_text(store.meta(_PROVIDER_KEY))
    if check is None:
        yield None, "no provider is recorded in this state (start gitopsq serve on it once)"
        return
    with ExitStack() as stack:
        try:
            provider = stack.enter_context(check.provider())
        except ProviderUnavailable as exc:
            yield None, f"the {check.name} provider cannot be asked from here: {exc}"
            return
        yield (lambda spec: judgment(provider, spec)), None


# --- rows -----------------------------------------------------------------------------------------

def _run(row) -> dict:
    return {"name": row["name"], "file": row["file"], "spec": json.loads(row["spec"]) if row["spec"] else None,
            "present": bool(row["present"]), "status": row["status"], "submission": row["submission"],
            "submission_id": row["submission_id"], "priority": row["priority"], "queued_at": row["queued_at"],
            "started_at": row["started_at"], "finished_at": row["finished_at"], "reason": row["reason"],
            "stopped_by": row["stopped_by"], "needs": json.loads(row["demand"]) if row["demand"] else None}


def _queue(store: Store, judge: Judge | None) -> tuple[list[dict], bool]:
    """The submissions waiting for capacity, as queue.Waiting's fields (those waiting for secrets take
    no place: the controller leaves them out of admission); and whether one's needs are unknown."""
    entries, unknown = [], False
    for row in store.conn.execute(_QUEUE_SQL):
        if row["backoff_event"] == "secret-missing":
            continue
        spec = json.loads(row["spec"])
        retry = spec.get("retry")
        on_capacity = bool(retry and "no-capacity" in retry["on_events"])
        needs = json.loads(row["demand"]) if row["demand"] else None
        if needs is None and judge is not None:  # never decided on yet: the provider says now
            try:
                needs = judge(spec)["needs"]
            except Exception:
                needs = None
        unknown = unknown or needs is None
        entries.append({"submission_id": row["id"], "run": row["run"], "priority": row["priority"],
                        "queued_at": row["queued_at"], "demand": needs or {}, "retry_on_no_capacity": on_capacity,
                        "deadline": row["deadline"] if on_capacity else None, "next_try_at": row["next_try_at"],
                        "last_attempt_at": row["last_attempt_at"],
                        "wakes_on_free": row["backoff_event"] in (None, "no-capacity"),
                        "nodes": spec.get("nodes", 1)})  # a gang: admission sets free room aside for it
    return entries, unknown
