"""Admission decisions for gitopsq's priority queue.

Pure functions only: the controller passes in the clock (`now`), the free
capacity and any jitter, and applies the returned decision itself. That keeps
every scheduling rule testable without a database, a provider or a sleep.

The rule, in queue order (priority descending, then first queued):

- A run that fits in what is free (and not set aside, below) launches and takes its share.
- A single-node run that does not fit is passed over: best effort, smaller runs behind it may
  still launch.
- A cluster run (`nodes: N`, a gang) is admitted whole or not at all: its demand is that of
  all N nodes together, and it never holds part of them while it waits. When it does not fit,
  the free capacity it needs (up to its whole demand) is set aside for it: runs behind it may
  launch only in what is free beyond that, so a stream of smaller, lower-priority runs can never
  take the slots it waits for. It starts as soon as the runs that held its capacity when it began
  to wait have released enough (the property tests show that bound). Runs ahead of it in the
  queue are not affected, and a gang backing off after a provider error sets nothing aside until
  it tries again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

NO_CAPACITY = "no-capacity"
RETRY_LIMIT_EXCEEDED = "retry-limit-exceeded"

# Cloud backoff after a provider capacity error, indexed by attempts - 1;
# the last value is the cap for every later attempt.
BACKOFF_SCHEDULE_S: tuple[float, ...] = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class Waiting:
    """A submission waiting for capacity, as the controller last recorded it."""

    submission_id: int
    run: str
    priority: int
    queued_at: float
    demand: Mapping[str, int]
    retry_on_no_capacity: bool
    deadline: float | None = None  # retry window end; None = forever / not yet waiting
    next_try_at: float | None = None  # backoff: no launch before this
    last_attempt_at: float | None = None
    # A backoff after no capacity ends when capacity frees; one after an error or interruption
    # does not (the failing run frees its own slot: waking it would relaunch it at once).
    wakes_on_free: bool = True
    nodes: int = 1  # a gang when > 1: `demand` is that of all its nodes together

    @property
    def gang(self) -> bool:
        return self.nodes > 1


@dataclass(frozen=True)
class Decision:
    launch: tuple[int, ...]  # submission ids, in queue order
    fail: tuple[tuple[int, str], ...]  # (submission id, reason), in queue order
    wait: tuple[int, ...]  # still waiting, in queue order
    next_check_at: float | None
    reserved: Mapping[str, int] = field(default_factory=dict)  # free capacity set aside for waiting gangs


def _order_key(w: Waiting) -> tuple[int, float, int]:
    # queued_at is when the run *first* entered the queue, so a run that goes
    # back to waiting keeps its place instead of starting over at the end.
    return (-w.priority, w.queued_at, w.submission_id)


def queue_order(waiting: Iterable[Waiting]) -> list[Waiting]:
    """Priority descending, then earliest queued_at, then submission id."""
    return sorted(waiting, key=_order_key)


def fits(demand: Mapping[str, int], free: Mapping[str, int]) -> bool:
    """True when every demanded amount is available; unknown resources are unlimited."""
    for name, amount in demand.items():  # a loop, not all(...): admit asks this of every run it reads
        if name in free and amount > free[name]:
            return False
    return True


def _in_backoff(w: Waiting, now: float, capacity_freed_at: float | None) -> bool:
    if w.next_try_at is None or w.next_try_at <= now:
        return False
    # Freed capacity wakes a run backed off for capacity at once: otherwise a long-waiting
    # run whose backoff grew could be overtaken by newer, lower-priority runs.
    if w.wakes_on_free and capacity_freed_at is not None and (
        w.last_attempt_at is None or capacity_freed_at > w.last_attempt_at
    ):
        return False
    return True


def admit(
    waiting: Iterable[Waiting],
    capacity: Mapping[str, int],
    now: float,
    capacity_freed_at: float | None = None,
) -> Decision:
    """Decide which waiting submissions launch, fail or keep waiting right now.

    Best effort: a submission that does not fit is passed over, and smaller ones behind it
    may still launch with the capacity that is left, except what is set aside for a waiting
    gang ahead of them (see the module's docstring).
    """
    ordered = queue_order(waiting)
    ids = [w.submission_id for w in ordered]
    if len(ids) != len(set(ids)):
        raise ValueError("duplicate submission ids in the queue")

    free = dict(capacity)
    reserved: dict[str, int] = {}  # what waiting gangs ahead have set aside of `free`
    launch: list[int] = []
    fail: list[tuple[int, str]] = []
    still_waiting: list[Waiting] = []

    for w in ordered:
        # Deadline first: once the retry window is over the run fails even if
        # it would fit now, so the outcome does not depend on timing luck.
        if w.deadline is not None and now >= w.deadline:
            fail.append((w.submission_id, RETRY_LIMIT_EXCEEDED))
        elif w.next_try_at is not None and _in_backoff(w, now, capacity_freed_at):
            # Skipped entirely: it consumes no capacity this round.
            still_waiting.append(w)
        elif fits(w.demand, unreserved(free, reserved) if reserved else free):
            for name, amount in w.demand.items():
                if name in free:
                    free[name] -= amount
            launch.append(w.submission_id)
        elif not w.retry_on_no_capacity:
            fail.append((w.submission_id, NO_CAPACITY))
        else:
            still_waiting.append(w)
            if w.gang:
                _set_aside(w.demand, free, reserved)

    return Decision(
        launch=tuple(launch),
        fail=tuple(fail),
        wait=tuple(w.submission_id for w in still_waiting),
        next_check_at=_next_check_at(still_waiting, now),
        reserved={name: amount for name, amount in reserved.items() if amount > 0},
    )


def unreserved(free: Mapping[str, int], reserved: Mapping[str, int]) -> dict[str, int]:
    """What runs behind the waiting gangs may use: the free capacity less what is set aside."""
    return {name: amount - reserved.get(name, 0) for name, amount in free.items()}


def _set_aside(demand: Mapping[str, int], free: Mapping[str, int], reserved: dict[str, int]) -> None:
    """Set aside for a waiting gang what is free of its demand (not what earlier gangs hold)."""
    for name, amount in demand.items():
        if name in free:
            available = max(0, free[name] - reserved.get(name, 0))
            reserved[name] = reserved.get(name, 0) + min(amount, available)


def _next_check_at(still_waiting: Iterable[Waiting], now: float) -> float | None:
    # Only deadlines and backoff expiries change a decision on their own;
    # anything else (a run finishing, a new commit) is an external event.
    times = [
        t
        for w in still_waiting
        for t in (w.deadline, w.next_try_at)
        if t is not None and t > now
    ]
    return min(times, default=None)


def within(moment: float | None, not_before: float | None, now: float) -> float:
    """A time a node reported, kept between `not_before` and now (its clock may differ from ours)."""
    if moment is None:
        return now
    return min(max(moment, not_before if not_before is not None else moment), now)


def backoff_delay(attempts: int, jitter: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (no capacity, error, interruption).

    `jitter` in [0, 1) comes from the caller's RNG and spreads the delay by
    +-10% so that runs refused together do not all retry in the same second.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    if not 0.0 <= jitter < 1.0:
        raise ValueError("jitter must be in [0, 1)")
    base = BACKOFF_SCHEDULE_S[min(attempts, len(BACKOFF_SCHEDULE_S)) - 1]
    return base * (0.9 + 0.2 * jitter)


def retry_after_end(
    event: str,
    on_events: Iterable[str] | None,
    duration_s: float | None,
    window_start: float,
    now: float,
) -> bool:
    """Whether a run that ended with `event` goes back to the queue.

    `window_start` is when the retry window opened (first time the run waited,
    or last time it was running); `duration_s` None means retry forever.
    """
    if not on_events or event not in on_events:
        return False
    return duration_s is None or now - window_start < duration_s


# --- what a change does to the queue (for `gitopsq plan` against the live state) -----------------

@dataclass(frozen=True)
class Placement:
    """Where a submission stands once a change is merged: its place in the queue, the runs it passes,
    and what the next admission does with it."""

    position: int  # 1-based, in queue order after the change
    of: int  # submissions queued after the change
    overtakes: tuple[str, ...]  # runs queued ahead of it before the change that are behind it after
    outcome: str  # starts | waits | fails | unknown (what it needs from the provider is not known)
    reason: str | None = None  # why it fails: no-capacity, retry-limit-exceeded

    def as_dict(self) -> dict:
        return {"position": self.position, "of": self.of, "overtakes": list(self.overtakes), "outcome": self.outcome,
                "reason": self.reason}


def placements(before: Iterable[Waiting], after: Iterable[Waiting], subjects: Iterable[int],
               free: Mapping[str, int] | None, now: float, capacity_freed: bool = False) -> dict[int, Placement]:
    """Where each of `subjects` (submission ids of `after`) stands when the queue `after` replaces `before`.

    The next admission is `admit` itself over `after` with `free` (None: unknown, every outcome is
    then `unknown`); capacity_freed: the change stops runs, which wakes runs backed off for capacity."""
    old, new = queue_order(before), queue_order(after)
    rank_old = {w.submission_id: i for i, w in enumerate(old)}
    rank_new = {w.submission_id: i for i, w in enumerate(new)}
    decision = admit(new, free, now, now if capacity_freed else None) if free is not None else None
    failed = dict(decision.fail) if decision else {}
    out = {}
    for subject in subjects:
        place = rank_new[subject]
        ahead_before = {w.submission_id for w in old[:rank_old.get(subject, len(old))]}
        passed = tuple(w.run for w in new[place + 1:] if w.submission_id in ahead_before)
        if decision is None:
            outcome = "unknown"
        elif subject in decision.launch:
            outcome = "starts"
        elif subject in failed:
            outcome = "fails"
        else:
            outcome = "waits"
        out[subject] = Placement(place + 1, len(new), passed, outcome, failed.get(subject))
    return out


# --- schedules -----------------------------------------------------------------------------------
# A scheduled run (`schedule: {cron: ...}`) gets a new submission at each tick, in UTC (as dstack's;
# it has no timezone field). Cron expressions are read by cronsim, a small maintained library with
# cron's own rules (day-of-month and day-of-week OR'ed, names, ranges, steps), never by hand.

CRON_FIELDS = "minute hour day-of-month month day-of-week"


def cron_problem(expr: str) -> str | None:
    """Why `expr` is not a five-field cron expression, or None when it is one."""
    from cronsim import CronSim, CronSimError

    count = len(expr.split())
    if count != 5:
        return f"{expr!r} is not a cron expression: it has {count} field(s), cron has 5 ({CRON_FIELDS})"
    try:
        CronSim(expr, _utc(0.0))
    except CronSimError as exc:
        return f"{expr!r} is not a cron expression: {str(exc).lower()} ({CRON_FIELDS})"
    return None


def next_tick(crons: Iterable[str], after: float) -> float | None:
    """The first tick of any of the expressions strictly after `after` (epoch seconds, UTC)."""
    from cronsim import CronSim

    ticks = [next(CronSim(expr, _utc(after))).timestamp() for expr in crons]
    return min(ticks, default=None)


def last_tick(crons: Iterable[str], at_or_before: float) -> float | None:
    """The latest tick of any of the expressions at or before `at_or_before`."""
    from cronsim import CronSim

    # cronsim walks backwards from strictly before its start, and ticks fall on whole seconds:
    # start at the next whole second to include a tick at `at_or_before` itself.
    start = math.floor(at_or_before) + 1
    return max((next(CronSim(expr, _utc(start), reverse=True)).timestamp() for expr in crons), default=None)


@dataclass(frozen=True)
class Tick:
    """What a scheduled run does at a step: the tick that is due, what to do with it, the next one."""

    at: float  # the tick acted on: the latest one due
    action: str  # "submit", or "skip" (its previous submission is still active)
    missed_since: float | None  # the first tick passed over when several went by (the controller was down)
    next_at: float | None


def due_tick(crons: Iterable[str], next_at: float, now: float, active: bool) -> Tick | None:
    """The scheduled run's decision at `now`, given the tick it was waiting for (`next_at`).

    None before that tick. Otherwise one decision for every tick that passed: ticks missed
    while the controller was down are not replayed one by one; the latest is acted on once (a
    single catch-up submission), and `missed_since` says from when. A tick that comes while
    the run's previous submission is still active is skipped.
    """
    crons = tuple(crons)
    if now < next_at:
        return None
    latest = last_tick(crons, now)
    at = latest if latest is not None and latest >= next_at else next_at
    missed = next_at if at > next_at else None
    return Tick(at, "skip" if active else "submit", missed, next_tick(crons, now))


def _utc(epoch: float):
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
