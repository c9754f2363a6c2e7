"""Tests for gitopsq.queue: one table per rule, then properties over random queues."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitopsq.queue import (
    NO_CAPACITY,
    RETRY_LIMIT_EXCEEDED,
    Decision,
    Tick,
    Waiting,
    admit,
    backoff_delay,
    cron_problem,
    due_tick,
    fits,
    last_tick,
    next_tick,
    queue_order,
    retry_after_end,
)

NOW = 1000.0


def w(sid, priority=50, queued_at=0.0, demand=None, retry=True, **kw):
    return Waiting(
        submission_id=sid,
        run=f"run-{sid}",
        priority=priority,
        queued_at=queued_at,
        demand={"slots": 1} if demand is None else demand,
        retry_on_no_capacity=retry,
        **kw,
    )


# --- queue order -------------------------------------------------------------


@pytest.mark.parametrize(
    "items, expected",
    [
        # priority descending
        ([w(1, priority=10), w(2, priority=90), w(3, priority=50)], [2, 3, 1]),
        # same priority: earlier queued_at first
        ([w(1, queued_at=30), w(2, queued_at=10), w(3, queued_at=20)], [2, 3, 1]),
        # priority beats queued_at
        ([w(1, priority=0, queued_at=0), w(2, priority=100, queued_at=99)], [2, 1]),
        # full tie: submission id
        ([w(7), w(3), w(5)], [3, 5, 7]),
    ],
)
def test_queue_order(items, expected):
    assert [x.submission_id for x in queue_order(items)] == expected


def test_launch_follows_queue_order():
    d = admit([w(1, priority=10), w(2, priority=90)], {"slots": 1}, NOW)
    assert d == Decision(launch=(2,), fail=(), wait=(1,), next_check_at=None)


# --- capacity and best effort --------------------------------------------------


@pytest.mark.parametrize(
    "demand, free, expected",
    [
        ({"slots": 1, "gpus": 2}, {"slots": 1, "gpus": 2}, True),
        ({"slots": 1, "gpus": 2}, {"slots": 1, "gpus": 1}, False),
        ({"slots": 1, "gpus": 0}, {"slots": 1, "gpus": 0}, True),
        ({"nodes": 1}, {"slots": 0}, True),  # resource not capped -> unlimited
        ({"nodes": 3}, {"nodes": 2}, False),
        ({}, {"slots": 0}, True),
    ],
)
def test_fits(demand, free, expected):
    assert fits(demand, free) is expected


def test_big_run_does_not_block_smaller_runs_behind_it():
    big = w(1, priority=90, demand={"slots": 1, "gpus": 4})
    small = w(2, priority=50, demand={"slots": 1, "gpus": 1})
    smaller = w(3, priority=10, demand={"slots": 1, "gpus": 0})
    d = admit([small, big, smaller], {"slots": 2, "gpus": 2}, NOW)
    assert d.launch == (2, 3)
    assert d.wait == (1,)
    assert d.fail == ()


def test_admitting_subtracts_demand_for_the_rest_of_the_decision():
    runs = [w(i, queued_at=i, demand={"nodes": 1}) for i in range(1, 5)]
    d = admit(runs, {"nodes": 2}, NOW)
    assert d.launch == (1, 2)
    assert d.wait == (3, 4)


def test_missing_resource_is_unlimited():
    runs = [w(i, demand={"nodes": 1}) for i in range(1, 4)]
    d = admit(runs, {}, NOW)
    assert d.launch == (1, 2, 3)


# --- no retry / deadlines ----------------------------------------------------------


def test_no_retry_policy_fails_with_no_capacity_at_once():
    d = admit([w(1), w(2, retry=False), w(3)], {"slots": 1}, NOW)
    assert d.launch == (1,)
    assert d.fail == ((2, NO_CAPACITY),)
    assert d.wait == (3,)


def test_no_retry_policy_launches_when_it_fits():
    d = admit([w(1, retry=False)], {"slots": 1}, NOW)
    assert d.launch == (1,) and d.fail == ()


@pytest.mark.parametrize(
    "deadline, free, expected",
    [
        # deadline passed: fails whether or not it fits
        (NOW - 1, 0, "fail"),
        (NOW - 1, 1, "fail"),
        (NOW, 1, "fail"),  # now >= deadline counts as passed
        # deadline ahead: launches if it fits, otherwise keeps waiting
        (NOW + 1, 1, "launch"),
        (NOW + 1, 0, "wait"),
        # forever
        (None, 0, "wait"),
        (None, 1, "launch"),
    ],
)
def test_deadline(deadline, free, expected):
    d = admit([w(1, deadline=deadline)], {"slots": free}, NOW)
    outcome = {
        "fail": Decision((), ((1, RETRY_LIMIT_EXCEEDED),), (), None),
        "launch": Decision((1,), (), (), None),
        "wait": Decision((), (), (1,), deadline),
    }[expected]
    assert d == outcome


def test_expired_run_frees_its_place_for_the_next():
    d = admit([w(1, priority=90, deadline=NOW - 5), w(2, priority=10)], {"slots": 1}, NOW)
    assert d.fail == ((1, RETRY_LIMIT_EXCEEDED),)
    assert d.launch == (2,)


def test_duration_forever_waits_for_any_time():
    d = admit([w(1, queued_at=0.0, deadline=None)], {"slots": 0}, 1e12)
    assert d.wait == (1,) and d.fail == () and d.next_check_at is None


# --- cloud backoff -----------------------------------------------------------------


def test_backoff_skips_and_does_not_consume_capacity():
    backed_off = w(1, priority=90, next_try_at=NOW + 30, last_attempt_at=NOW - 15)
    other = w(2, priority=10)
    d = admit([backed_off, other], {"nodes": 1}, NOW)
    assert d == Decision(launch=(2,), fail=(), wait=(1,), next_check_at=NOW + 30)


def test_backoff_expired_is_tried_again():
    d = admit([w(1, next_try_at=NOW, last_attempt_at=NOW - 15)], {"slots": 1}, NOW)
    assert d.launch == (1,)


@pytest.mark.parametrize(
    "freed_at, expected_launch",
    [
        (NOW - 5, (1,)),  # freed after the last attempt: wakes it, keeps its priority
        (NOW - 15, (2,)),  # freed exactly at the last attempt: not newer
        (NOW - 20, (2,)),  # freed before the last attempt: still backed off
        (None, (2,)),
    ],
)
def test_capacity_freed_overrides_backoff(freed_at, expected_launch):
    backed_off = w(1, priority=90, next_try_at=NOW + 600, last_attempt_at=NOW - 15)
    newer = w(2, priority=10, queued_at=NOW - 1)
    d = admit([newer, backed_off], {"slots": 1}, NOW, capacity_freed_at=freed_at)
    assert d.launch == expected_launch


def test_backoff_does_not_bypass_deadline():
    d = admit([w(1, deadline=NOW, next_try_at=NOW + 60)], {"slots": 1}, NOW)
    assert d.fail == ((1, RETRY_LIMIT_EXCEEDED),)


# --- next_check_at -------------------------------------------------------------------


@pytest.mark.parametrize(
    "items, free, expected",
    [
        ([], 1, None),
        ([w(1)], 1, None),  # launched: nothing pending
        ([w(1)], 0, None),  # waits forever: no timed event
        ([w(1, deadline=NOW + 50), w(2, deadline=NOW + 20)], 0, NOW + 20),
        ([w(1, deadline=NOW + 50, next_try_at=NOW + 10)], 0, NOW + 10),
        # a past next_try_at is not a future check
        ([w(1, deadline=NOW + 50, next_try_at=NOW - 10)], 0, NOW + 50),
        # the launched run's deadline does not count
        ([w(1, priority=90, deadline=NOW + 5), w(2, deadline=NOW + 40)], 1, NOW + 40),
        # failed runs do not count
        ([w(1, deadline=NOW - 1, next_try_at=NOW + 5)], 0, None),
    ],
)
def test_next_check_at(items, free, expected):
    assert admit(items, {"slots": free}, NOW).next_check_at == expected


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError):
        admit([w(1), w(1)], {"slots": 1}, NOW)


# --- backoff_delay -------------------------------------------------------------------


@pytest.mark.parametrize(
    "attempts, base",
    [(1, 15), (2, 30), (3, 60), (4, 120), (5, 300), (6, 600), (7, 600), (100, 600)],
)
def test_backoff_schedule(attempts, base):
    assert backoff_delay(attempts, 0.5) == pytest.approx(base)
    assert backoff_delay(attempts, 0.0) == pytest.approx(base * 0.9)


@given(attempts=st.integers(1, 50), jitter=st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_jitter_bounds(attempts, jitter):
    base = [15, 30, 60, 120, 300, 600][min(attempts, 6) - 1]
    # Inclusive upper bound: jitter just below 1 can round up to exactly +10%.
    assert base * 0.9 <= backoff_delay(attempts, jitter) <= base * 1.1


@pytest.mark.parametrize("attempts, jitter", [(0, 0.5), (-1, 0.5), (1, 1.0), (1, -0.1)])
def test_backoff_rejects_bad_input(attempts, jitter):
    with pytest.raises(ValueError):
        backoff_delay(attempts, jitter)


# --- retry_after_end ---------------------------------------------------------------


@pytest.mark.parametrize(
    "event, on_events, duration_s, window_start, now, expected",
    [
        ("interruption", ("interruption",), 3600, 0, 100, True),
        ("error", ("interruption",), 3600, 0, 100, False),
        ("error", ("interruption", "error"), 3600, 0, 100, True),
        ("no-capacity", ("no-capacity",), 60, 0, 59.9, True),
        ("interruption", ("interruption",), 3600, 0, 3600, False),  # window closed
        ("interruption", ("interruption",), 3600, 500, 3700, True),  # window reopened
        ("interruption", ("interruption",), None, 0, 1e12, True),  # forever
        ("interruption", (), None, 0, 1, False),
        ("interruption", None, None, 0, 1, False),
    ],
)
def test_retry_after_end(event, on_events, duration_s, window_start, now, expected):
    assert retry_after_end(event, on_events, duration_s, window_start, now) is expected


# --- properties ----------------------------------------------------------------------

RESOURCES = ("slots", "gpus", "nodes")
demands = st.dictionaries(st.sampled_from(RESOURCES), st.integers(0, 4), max_size=3)
capacities = st.dictionaries(st.sampled_from(RESOURCES), st.integers(0, 6), max_size=3)
maybe_time = st.one_of(st.none(), st.floats(NOW - 100, NOW + 100))


@st.composite
def queues(draw, demand=demands):
    n = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    return [
        Waiting(
            submission_id=sid,
            run=f"run-{sid}",
            priority=draw(st.integers(0, 100)),
            queued_at=draw(st.floats(0, NOW)),
            demand=draw(demand),
            retry_on_no_capacity=draw(st.booleans()),
            deadline=draw(maybe_time),
            next_try_at=draw(maybe_time),
            last_attempt_at=draw(maybe_time),
        )
        for sid in ids
    ]


def _used(items, ids, resource):
    return sum(x.demand.get(resource, 0) for x in items if x.submission_id in ids)


@settings(max_examples=300)
@given(items=queues(), capacity=capacities, freed_at=maybe_time)
def test_every_id_appears_exactly_once(items, capacity, freed_at):
    d = admit(items, capacity, NOW, freed_at)
    out = list(d.launch) + [sid for sid, _ in d.fail] + list(d.wait)
    assert sorted(out) == sorted(x.submission_id for x in items)
    assert {reason for _, reason in d.fail} <= {NO_CAPACITY, RETRY_LIMIT_EXCEEDED}


@settings(max_examples=300)
@given(items=queues(), capacity=capacities, freed_at=maybe_time)
def test_launched_demand_never_exceeds_capacity(items, capacity, freed_at):
    d = admit(items, capacity, NOW, freed_at)
    for resource, free in capacity.items():
        assert _used(items, set(d.launch), resource) <= free


@settings(max_examples=300)
@given(items=queues(), capacity=capacities, freed_at=maybe_time)
def test_no_skipped_run_would_have_fit(items, capacity, freed_at):
    # Every run passed over for lack of capacity really did not fit in what was
    # left after the runs launched ahead of it in queue order.
    d = admit(items, capacity, NOW, freed_at)
    ordered = queue_order(items)
    launched = set(d.launch)
    no_capacity = {sid for sid, r in d.fail if r == NO_CAPACITY}
    for i, x in enumerate(ordered):
        backed_off = (
            x.next_try_at is not None
            and x.next_try_at > NOW
            and not (
                freed_at is not None
                and (x.last_attempt_at is None or freed_at > x.last_attempt_at)
            )
        )
        passed_over = x.submission_id in no_capacity or (
            x.submission_id in d.wait and not backed_off
        )
        if not passed_over:
            continue
        ahead = {y.submission_id for y in ordered[:i]} & launched
        left = {r: f - _used(items, ahead, r) for r, f in capacity.items()}
        assert not fits(x.demand, left)
    assert list(d.launch) == [y.submission_id for y in ordered if y.submission_id in launched]
    assert list(d.wait) == [y.submission_id for y in ordered if y.submission_id in d.wait]


@settings(max_examples=300)
@given(items=queues(demand=st.just({"slots": 1})))
def test_one_slot_launches_first_not_failed(items):
    # No backoff here, so the only way to be skipped is to fail or not fit.
    items = [
        Waiting(**{**x.__dict__, "next_try_at": None, "last_attempt_at": None}) for x in items
    ]
    d = admit(items, {"slots": 1}, NOW)
    failed = {sid for sid, _ in d.fail}
    remaining = [x.submission_id for x in queue_order(items) if x.submission_id not in failed]
    assert list(d.launch) == remaining[:1]


def test_freed_capacity_does_not_cut_short_an_error_backoff():
    # A run that failed frees its own slot: if that woke it, a crashing run would relaunch at once.
    failing = w(1, priority=90, next_try_at=NOW + 15, last_attempt_at=NOW - 1, wakes_on_free=False)
    d = admit([failing], {"slots": 1}, NOW, capacity_freed_at=NOW - 0.5)
    assert d.launch == () and d.wait == (1,) and d.next_check_at == NOW + 15


# --- gangs (nodes: N): all or nothing, freed capacity set aside for them ------------------------


def gang(sid, nodes, priority=50, demand=None, **kw):
    return w(sid, priority=priority, demand=demand or {"slots": nodes}, nodes=nodes, **kw)


def test_a_gang_that_fits_launches_whole():
    d = admit([gang(1, 3), w(2, priority=10)], {"slots": 4}, NOW)
    assert d.launch == (1, 2) and d.reserved == {}


def test_a_waiting_gang_keeps_freed_slots_from_smaller_runs_behind_it():
    runs = [gang(1, 3, priority=50), w(2, priority=10), w(3, priority=10, queued_at=1)]
    d = admit(runs, {"slots": 2}, NOW)
    assert d == Decision(launch=(), fail=(), wait=(1, 2, 3), next_check_at=None, reserved={"slots": 2})
    assert admit(runs, {"slots": 3}, NOW).launch == (1,)


def test_runs_ahead_of_a_waiting_gang_are_not_held_back():
    d = admit([w(1, priority=90), gang(2, 3, priority=50), w(3, priority=10)], {"slots": 2}, NOW)
    assert d.launch == (1,) and d.wait == (2, 3) and d.reserved == {"slots": 1}


def test_runs_behind_a_gang_backfill_what_it_does_not_need():
    # It waits for GPUs; its slots are set aside, the third is free for a CPU-only run.
    waiting = gang(1, 2, demand={"slots": 2, "gpus": 4})
    d = admit([waiting, w(2, priority=10, demand={"slots": 1, "gpus": 0}),
               w(3, priority=5, demand={"slots": 1, "gpus": 1})], {"slots": 3, "gpus": 2}, NOW)
    assert d.launch == (2,) and d.wait == (1, 3) and d.reserved == {"slots": 2, "gpus": 2}


def test_a_second_gang_uses_only_what_the_first_leaves():
    first, second = gang(1, 4, priority=50), gang(2, 2, priority=40)
    assert admit([first, second, w(3, priority=10)], {"slots": 3}, NOW).launch == ()
    d = admit([first, second], {"slots": 6}, NOW)
    assert d.launch == (1, 2)
    d = admit([gang(1, 4, demand={"slots": 4, "gpus": 1}), second], {"slots": 6, "gpus": 0}, NOW)
    assert d.launch == (2,) and d.reserved == {"slots": 4}  # the first waits for a GPU, the second fits beside it


@pytest.mark.parametrize("kw, outcome", [
    ({"retry": False}, "fail"),  # no retry on no-capacity: fails, sets nothing aside
    ({"next_try_at": NOW + 30, "last_attempt_at": NOW - 1}, "wait"),  # backing off: sets nothing aside
    ({"deadline": NOW}, "fail"),
])
def test_a_gang_sets_capacity_aside_only_while_it_really_waits(kw, outcome):
    d = admit([gang(1, 3, **kw), w(2, priority=10)], {"slots": 2}, NOW)
    assert d.launch == (2,) and d.reserved == {}
    assert (1 in d.wait) == (outcome == "wait")


def test_unknown_resources_are_never_set_aside():
    d = admit([gang(1, 3, demand={"nodes": 3}), w(2, priority=10, demand={"nodes": 1})], {}, NOW)
    assert d.launch == (1, 2)


RESOURCES_G = ("slots", "gpus")


@st.composite
def mixed_queues(draw):
    n = draw(st.integers(0, 10))
    ids = draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    out = []
    for sid in ids:
        nodes = draw(st.sampled_from([1, 1, 2, 3, 4]))
        per = draw(st.dictionaries(st.sampled_from(RESOURCES_G), st.integers(0, 2), max_size=2))
        out.append(Waiting(sid, f"run-{sid}", draw(st.integers(0, 100)), draw(st.floats(0, NOW)),
                           {k: v * nodes for k, v in per.items()}, draw(st.booleans()),
                           deadline=draw(maybe_time), next_try_at=draw(st.one_of(st.none(), st.just(NOW + 10))),
                           nodes=nodes))
    return out


@settings(max_examples=400)
@given(items=mixed_queues(), capacity=st.dictionaries(st.sampled_from(RESOURCES_G), st.integers(0, 8), max_size=2))
def test_with_gangs_every_id_once_and_capacity_never_exceeded(items, capacity):
    d = admit(items, capacity, NOW)
    out = list(d.launch) + [sid for sid, _ in d.fail] + list(d.wait)
    assert sorted(out) == sorted(x.submission_id for x in items)
    for resource, free in capacity.items():
        assert _used(items, set(d.launch), resource) + d.reserved.get(resource, 0) <= free


@settings(max_examples=400)
@given(items=mixed_queues(), capacity=st.dictionaries(st.sampled_from(RESOURCES_G), st.integers(0, 8), max_size=2))
def test_nothing_behind_a_waiting_gang_takes_what_it_needs(items, capacity):
    # The first gang that waits for room: whatever launched behind it fits in what was free at
    # its turn less its whole demand, so nothing behind it can delay it.
    d = admit(items, capacity, NOW)
    ordered = queue_order(items)
    launched = set(d.launch)
    for i, g in enumerate(ordered):
        if g.gang and g.submission_id in d.wait and g.next_try_at is None:
            ahead = {y.submission_id for y in ordered[:i]} & launched
            behind = {y.submission_id for y in ordered[i + 1:]} & launched
            for r, total in capacity.items():
                at_its_turn = total - _used(items, ahead, r)
                assert _used(items, behind, r) <= at_its_turn - min(at_its_turn, g.demand.get(r, 0))
            break


@settings(max_examples=300, deadline=None)
@given(data=st.data(), slots=st.integers(2, 6))
def test_a_gang_at_the_head_starts_once_the_capacity_it_needs_is_freed(data, slots):
    """Under any arrival of smaller, lower-priority runs, a gang at the head of the queue starts at
    the first step at which the runs that held the machine when it began to wait have freed what
    it needs: no run started after it began to wait ever delays it."""
    size = data.draw(st.integers(2, slots), label="gang nodes")
    holding = data.draw(st.lists(st.integers(1, 20), max_size=slots), label="end times of the runs already running")
    running = {1000 + i: end for i, end in enumerate(holding)}  # submission id -> step at which it ends
    bound = next(t for t in range(0, 22) if slots - sum(1 for end in running.values() if end > t) >= size)
    waiting = [gang(1, size, priority=50, queued_at=0.0)]
    next_id, started = 2, None
    for t in range(0, 25):
        running = {sid: end for sid, end in running.items() if end > t}
        for _ in range(data.draw(st.integers(0, 3), label=f"arrivals at {t}")):
            waiting.append(w(next_id, priority=data.draw(st.integers(0, 49)), queued_at=float(t)))
            next_id += 1
        d = admit(waiting, {"slots": slots - len(running)}, float(t))
        for sid in d.launch:
            if sid == 1:
                started = t
            running[sid] = t + data.draw(st.integers(1, 5), label="duration")
        waiting = [x for x in waiting if x.submission_id in d.wait]
        if started is not None:
            break
    assert started == bound


# --- schedules -----------------------------------------------------------------------------------

def utc(*args) -> float:
    return dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp()


@pytest.mark.parametrize("crons, after, expected", [
    (["0 3 * * *"], utc(2024, 1, 1, 2, 59), utc(2024, 1, 1, 3, 0)),
    (["0 3 * * *"], utc(2024, 1, 1, 3, 0), utc(2024, 1, 2, 3, 0)),  # strictly after
    (["0 3 * * *", "30 1 * * *"], utc(2024, 1, 1, 0, 0), utc(2024, 1, 1, 1, 30)),  # the earliest of a list
    (["0 8 * * mon-fri"], utc(2024, 1, 5, 9, 0), utc(2024, 1, 8, 8, 0)),  # Friday 9:00 -> Monday
    (["* * * * *"], utc(2024, 1, 1, 0, 0) + 0.5, utc(2024, 1, 1, 0, 1)),
])
def test_next_tick(crons, after, expected):
    assert next_tick(crons, after) == expected


@pytest.mark.parametrize("now, active, expected", [
    (utc(2024, 1, 1, 2, 59, 59), False, None),  # not yet
    (utc(2024, 1, 1, 3, 0), False, Tick(utc(2024, 1, 1, 3, 0), "submit", None, utc(2024, 1, 2, 3, 0))),
    (utc(2024, 1, 1, 3, 0, 2), True, Tick(utc(2024, 1, 1, 3, 0), "skip", None, utc(2024, 1, 2, 3, 0))),
    # down for three days: one decision for the latest tick, saying since when ticks were missed
    (utc(2024, 1, 4, 4, 0), False, Tick(utc(2024, 1, 4, 3, 0), "submit", utc(2024, 1, 1, 3, 0), utc(2024, 1, 5, 3, 0))),
])
def test_due_tick(now, active, expected):
    assert due_tick(["0 3 * * *"], utc(2024, 1, 1, 3, 0), now, active) == expected


@settings(max_examples=200, deadline=None)
@given(start=st.floats(utc(2020, 1, 1), utc(2030, 1, 1)), late=st.floats(0, 10 * 86400),
       crons=st.lists(st.sampled_from(["* * * * *", "*/7 * * * *", "0 3 * * *", "15 23 * * mon-fri", "0 0 1 * *"]),
                      min_size=1, max_size=3))
def test_ticks_are_ordered_and_one_decision_covers_every_missed_tick(start, late, crons):
    first = next_tick(crons, start)
    assert first > start and last_tick(crons, first) == first
    now = first + late
    tick = due_tick(crons, first, now, active=False)
    assert tick.action == "submit" and first <= tick.at <= now < tick.next_at
    assert last_tick(crons, now) == tick.at  # the latest due tick, never a later or an earlier one
    assert (tick.missed_since is None) == (tick.at == first)


@pytest.mark.parametrize("expr", ["0 3 * * *", "*/15 8-18 * * mon-fri", "0 0 1,15 * *", "0 12 * jan,jul sun", "0 0 L * *"])
def test_cron_expressions_cron_accepts(expr):
    assert cron_problem(expr) is None


@pytest.mark.parametrize("expr, says", [
    ("61 * * * *", "bad minute"), ("* 24 * * *", "bad hour"), ("* * 32 * *", "bad day-of-month"),
    ("* * * 13 *", "bad month"), ("* * * * funday", "bad day-of-week"), ("@daily", "1 field(s)"),
    ("0 0 3 * * *", "6 field(s)"),
])
def test_cron_expressions_cron_refuses(expr, says):
    assert says in cron_problem(expr)
