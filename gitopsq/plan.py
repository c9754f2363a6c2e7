"""Pure: desired run specs + recorded state -> the actions that reconcile them.

Exactly the table of DESIGN.md section 3. No I/O: the controller and `gitopsq plan` feed it.

| change in git                        | run active          | run finished or unknown |
| new file / new name                  | -                   | submit                  |
| edit of in-place fields only         | update, no restart  | submit                  |
| any other edit                       | restart             | submit                  |
| file deleted                         | cancel              | nothing                 |
| file now invalid                     | nothing (kept)      | nothing                 |
| file unchanged                       | nothing             | nothing                 |
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

# `schedule` changes when the next submissions come, not the one that is active.
IN_PLACE_FIELDS = frozenset({"priority", "inactivity_duration", "max_duration", "retry", "schedule"})
ACTIVE = ("queued", "provisioning", "running", "stopping")  # the statuses of a run that has a live submission


@dataclass(frozen=True)
class Desired:
    """A valid run file at the head commit."""

    name: str
    file: str
    blob: str
    spec: Mapping[str, Any]  # RunSpec.to_dict()


@dataclass(frozen=True)
class Known:
    """What has been recorded of a run."""

    name: str
    file: str | None
    spec: Mapping[str, Any] | None
    present: bool  # its file was in the last reconciled tree
    status: str | None  # latest submission's status, None if never submitted

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class Action:
    kind: str  # submit | update | restart | cancel
    run: str
    file: str | None
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (old, new)
    spec: Mapping[str, Any] | None = None  # the new spec (submit, update, restart)

    def as_dict(self) -> dict:
        return {"run": self.run, "action": self.kind, "file": self.file,
                "priority": (self.spec or {}).get("priority"),
                "changes": {k: [old, new] for k, (old, new) in self.changes.items()}}


def field_changes(old: Mapping | None, new: Mapping) -> dict[str, tuple[Any, Any]]:
    """Top-level fields whose normalised value differs.

    A spec recorded by an older gitopsq lacks the fields added since: there they have their
    default (no `ports`, shell bash), not a value that changed, which would restart the run."""
    if old is None:
        return {k: (None, new[k]) for k in sorted(new) if new[k] is not None}
    keys = sorted(set(old) | set(new))
    both = [(k, _field(old, k), _field(new, k)) for k in keys]
    return {k: (was, now) for k, was, now in both if was != now}


def _field(spec: Mapping, key: str) -> Any:
    return spec[key] if key in spec else _defaults().get(key)


@functools.cache
def _defaults() -> dict[str, Any]:
    """Every field's default, in the JSON form specs are stored and compared in."""
    import json

    from gitopsq.spec import RunSpec

    return json.loads(json.dumps(RunSpec(name="", type="task").to_dict()))


def plan(desired: Mapping[str, Desired], invalid_files: set[str], known: Mapping[str, Known]) -> list[Action]:
    """The actions that make the recorded state match the desired one, sorted by run name.

    desired: run name -> its valid file at head. invalid_files: paths at head that hold a run
    file that did not validate (their runs keep their last valid spec). known: run name -> record.
    """
    actions: list[Action] = []
    stuck = held(desired, invalid_files, known)
    for name, want in desired.items():
        if name in stuck:
            continue
        have = known.get(name)
        if have is None or have.spec is None:
            actions.append(Action("submit", name, want.file, field_changes(None, want.spec), want.spec))
            continue
        changes = field_changes(have.spec, want.spec)
        if have.active:
            if not changes:
                continue
            kind = "update" if set(changes) <= IN_PLACE_FIELDS else "restart"
            actions.append(Action(kind, name, want.file, changes, want.spec))
        elif changes or not have.present:
            # Finished (or never run): an edit or a re-added file is a new submission.
            actions.append(Action("submit", name, want.file, changes, want.spec))
    for name, have in known.items():
        if name in desired or not have.present:
            continue
        if have.file in invalid_files:
            continue  # its file is broken, not gone: the last valid spec keeps running
        if have.active:
            actions.append(Action("cancel", name, have.file))
    return sorted(actions, key=lambda a: a.run)


def held(desired: Mapping[str, Desired], invalid_files: set[str], known: Mapping[str, Known]) -> dict[str, str]:
    """Runs another file now claims while the file that defines them does not validate.

    The broken file still holds the name (as with two files claiming one name): the run keeps
    its last valid spec until that file is fixed or deleted. Returns run name -> the reason.
    """
    out = {}
    for name, want in desired.items():
        have = known.get(name)
        if have and have.present and have.file != want.file and have.file in invalid_files:
            out[name] = f"run {name!r} is defined by {have.file}, which does not validate: fix or delete that file first"
    return out


def absent(desired: Mapping[str, Desired], invalid_files: set[str], known: Mapping[str, Known]) -> list[str]:
    """Runs whose file is gone from head (to be marked absent, whatever their status)."""
    return sorted(name for name, have in known.items()
                  if name not in desired and have.present and have.file not in invalid_files)


# --- the same plan against the live state (`gitopsq plan --server/--db`) --------------------------

PROVISIONAL_ID = 1 << 62  # ids for submissions a plan would make: after every real one, in the order made


@dataclass(frozen=True)
class LiveRun:
    """What the controller holds of a run: its recorded spec and its latest submission."""

    name: str
    file: str | None
    spec: Mapping[str, Any] | None
    present: bool
    status: str | None = None  # the latest submission's (None: never submitted)
    submission: int | None = None  # its number
    submission_id: int | None = None
    priority: int | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    reason: str | None = None
    stopped_by: str | None = None
    needs: Mapping[str, int] | None = None  # what its active submission takes (or asks) from the provider

    @property
    def known(self) -> Known:
        return Known(self.name, self.file, self.spec, self.present, self.status)


@dataclass(frozen=True)
class Judgment:
    """What the controller's provider says of a spec: what it needs, and why it can never run (None: it can)."""

    needs: Mapping[str, int] | None = None  # None: not known (the provider was not asked)
    unsatisfiable: str | None = None


@dataclass(frozen=True)
class LiveState:
    """The controller's state as a plan needs it (gitopsq.livestate reads it from the store or the API)."""

    runs: Mapping[str, LiveRun]  # the runs the change touches
    queue: tuple  # queue.Waiting of every submission waiting for capacity
    running: tuple[tuple[str, int], ...]  # (run, priority) of each submission holding capacity
    secrets: frozenset[str]  # the names of the secrets that are set
    free: Mapping[str, int] | None  # what the provider had free after the last step (None: not known)
    judged: Mapping[str, Judgment]  # run name -> its new spec, as the provider judges it
    now: float


@dataclass(frozen=True)
class Effect:
    """What an action does to the live state, beyond the action itself."""

    run: str
    submission: int | None  # the submission it makes (submit, restart), else the one it acts on
    latest: int | None  # the run's latest submission now (None: never submitted)
    status: str | None  # its status now
    seconds: float | None  # for how long: running (or provisioning, stopping), queued, or ended ago
    stopped_by: str | None = None
    discards: Mapping[str, Any] | None = None  # restart/cancel: {"status", "seconds"} of the submission it stops
    placement: Any = None  # queue.Placement of the submission it makes or reorders
    missing_secrets: tuple[str, ...] = ()  # it waits for these, outside the queue
    unsatisfiable: str | None = None  # the provider can never run it: it fails at once
    not_preempted: tuple[str, ...] = ()  # lower-priority runs that keep their capacity while it waits
    next_tick_at: float | None = None  # a scheduled run: when its next submission comes (a commit makes none)

    def as_dict(self) -> dict:
        return {"submission": self.submission, "latest": self.latest, "status": self.status, "seconds": self.seconds,
                "stopped_by": self.stopped_by, "discards": dict(self.discards) if self.discards else None,
                "queue": self.placement.as_dict() if self.placement else None,
                "missing_secrets": list(self.missing_secrets), "unsatisfiable": self.unsatisfiable,
                "not_preempted": list(self.not_preempted), "next_tick_at": self.next_tick_at}


HOLDING = ("provisioning", "running")  # statuses of a submission that holds provider capacity


def live_effects(actions: list[Action], state: LiveState) -> dict[str, Effect]:
    """Each action's effect on the live state: the submission it makes, how long what it stops has been
    running, and what it does to the queue (position, runs passed, whether it starts, no preemption)."""
    from gitopsq import queue as q

    queue = {w.run: w for w in state.queue}
    entering: dict[str, int] = {}  # run -> the id of the queue entry this change makes or moves
    freed = False
    free = dict(state.free) if state.free is not None else None
    facts: dict[str, dict] = {}
    for action in actions:
        have = state.runs.get(action.run)
        fact = facts[action.run] = _now_facts(have, state.now)
        stops = action.kind in ("restart", "cancel") and have is not None and have.known.active
        if stops:
            fact["discards"] = {"status": have.status, "seconds": fact["seconds"]}
            queue.pop(action.run, None)
            if have.status in HOLDING and free is not None:
                freed = True
                for key, amount in (have.needs or {}).items():
                    free[key] = free.get(key, 0) + amount
        schedule = (action.spec or {}).get("schedule")
        if schedule and (action.kind in ("submit", "restart") or "schedule" in action.changes):
            fact["next_tick_at"] = q.next_tick(schedule, state.now)  # counted from the merge, as the controller does
        if action.kind in ("submit", "restart") and schedule:
            fact["submission"] = None  # a commit never submits a scheduled run: its next tick does
            continue
        if action.kind in ("submit", "restart"):
            fact["submission"] = (have.submission or 0) + 1 if have else 1
            judged = state.judged.get(action.run, Judgment())
            fact["missing_secrets"] = _missing_secrets(action.spec, state.secrets)
            fact["unsatisfiable"] = judged.unsatisfiable
            if judged.unsatisfiable or fact["missing_secrets"]:
                continue  # not a capacity question: it takes no place in the queue
            entry = _entering(action, judged, PROVISIONAL_ID + len(entering), state.now)
        elif action.kind == "update" and have is not None and have.status == "queued" and action.run in queue:
            fact["submission"] = have.submission
            if "priority" not in action.changes:
                continue
            entry = replace(queue[action.run], priority=action.spec["priority"])
        else:
            fact["submission"] = have.submission if have else None
            continue
        queue[action.run] = entry
        entering[action.run] = entry.submission_id
        if free is not None and entry.demand is None:
            free = None  # what it needs is not known: whether it starts is not either
    placed = q.placements(state.queue, [replace(w, demand=w.demand or {}) for w in queue.values()],
                          entering.values(), free, state.now, freed)
    out = {}
    for action in actions:
        fact = facts[action.run]
        placement = placed.get(entering.get(action.run))
        waits = placement is not None and placement.outcome == "waits"
        priority = (action.spec or {}).get("priority", 0)
        held_by = tuple(sorted(run for run, p in state.running if p < priority and run != action.run)) if waits else ()
        out[action.run] = Effect(action.run, fact.get("submission"), fact["latest"], fact["status"], fact["seconds"],
                                 fact["stopped_by"], fact.get("discards"), placement, tuple(fact.get("missing_secrets", ())),
                                 fact.get("unsatisfiable"), held_by, fact.get("next_tick_at"))
    return out


def _now_facts(have: LiveRun | None, now: float) -> dict:
    """The run's latest submission: its number, status, and for how long it has been in it."""
    if have is None or have.status is None:
        return {"latest": None, "status": None, "seconds": None, "stopped_by": None}
    if have.status in ("provisioning", "running", "stopping"):
        since = have.started_at or have.queued_at
    elif have.status == "queued":
        since = have.queued_at
    else:
        since = have.finished_at
    return {"latest": have.submission, "status": have.status, "seconds": now - since if since is not None else None,
            "stopped_by": have.stopped_by}


def _missing_secrets(spec: Mapping[str, Any] | None, known: frozenset[str]) -> tuple[str, ...]:
    from gitopsq.spec import RunSpec

    return tuple(sorted(RunSpec.from_dict(spec).secrets - known)) if spec else ()


def _entering(action: Action, judged: Judgment, submission_id: int, now: float):
    """The queue entry of a submission the plan makes: queued now, its retry window not open yet."""
    from gitopsq import queue as q
    from gitopsq.spec import RunSpec

    retry = RunSpec.from_dict(action.spec).retry
    return q.Waiting(submission_id, action.run, action.spec["priority"], now,
                     dict(judged.needs) if judged.needs is not None else None,
                     bool(retry and retry.covers("no-capacity")), nodes=action.spec.get("nodes", 1))
