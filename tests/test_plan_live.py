"""The plan against the live state, pure: what each action does to what the controller holds, and
to the queue (queue.placements, plan.live_effects). No git, no store."""

from __future__ import annotations

import json

from gitopsq.plan import Desired, Judgment, LiveRun, LiveState, live_effects, plan
from gitopsq.queue import Waiting, placements
from gitopsq.spec import parse_run

NOW = 10_000.0


def spec(text: str) -> dict:
    return json.loads(json.dumps(parse_run(text.encode(), "x.yml").to_dict()))


def task(name: str, command: str = "echo hi", **fields) -> dict:
    extra = "".join(f"{k}: {v}\n" for k, v in fields.items())
    return spec(f"type: task\nname: {name}\ncommands: [{command!r}]\n{extra}")


def waiting(sub_id: int, run: str, priority: int, queued_at: float, gpus: int = 0, retry: bool = True) -> Waiting:
    return Waiting(sub_id, run, priority, queued_at, {"slots": 1, "gpus": gpus}, retry)


def state(runs=(), queue=(), running=(), secrets=(), free=None, judged=None) -> LiveState:
    return LiveState({r.name: r for r in runs}, tuple(queue), tuple(running), frozenset(secrets), free,
                     judged or {}, NOW)


def effects_of(desired: dict[str, dict], live: LiveState):
    wanted = {name: Desired(name, f"runs/{name}.yml", "b", s) for name, s in desired.items()}
    actions = plan(wanted, set(), {name: run.known for name, run in live.runs.items()})
    return actions, live_effects(actions, live)


# --- queue.placements --------------------------------------------------------------------------------

def test_a_new_submission_goes_behind_its_priority_and_passes_the_lower_ones():
    before = [waiting(1, "low", 1, 100.0), waiting(2, "mid", 5, 200.0), waiting(3, "top", 9, 300.0)]
    new = waiting(99, "new", 5, NOW)
    placed = placements(before, [*before, new], [99], {"slots": 0, "gpus": 0}, NOW)[99]
    assert (placed.position, placed.of, placed.overtakes, placed.outcome) == (3, 4, ("low",), "waits")


def test_a_priority_raise_passes_the_runs_between():
    before = [waiting(1, "a", 5, 100.0), waiting(2, "b", 5, 200.0), waiting(3, "c", 1, 50.0)]
    raised = waiting(3, "c", 7, 50.0)
    placed = placements(before, [before[0], before[1], raised], [3], {"slots": 0, "gpus": 0}, NOW)[3]
    assert (placed.position, placed.overtakes) == (1, ("a", "b"))


def test_the_outcome_is_the_admission_itself():
    before = [waiting(1, "gpu", 9, 100.0, gpus=1)]
    fits = waiting(98, "small", 0, NOW)
    no_retry = waiting(99, "big", 0, NOW, gpus=1, retry=False)
    placed = placements(before, [*before, fits, no_retry], [98, 99], {"slots": 3, "gpus": 0}, NOW)
    assert placed[98].outcome == "starts"  # best effort: the GPU run ahead of it does not block it
    assert (placed[99].outcome, placed[99].reason) == ("fails", "no-capacity")
    unknown = placements(before, [*before, fits], [98], None, NOW)[98]
    assert (unknown.outcome, unknown.position) == ("unknown", 2)


# --- plan.live_effects --------------------------------------------------------------------------------

def test_an_edit_of_a_finished_run_is_a_new_submission():
    old = task("hello", priority=1)
    live = state([LiveRun("hello", "runs/hello.yml", old, True, "done", 2, 7, 1, 100.0, 200.0, NOW - 3600)],
                 free={"slots": 2, "gpus": 0}, judged={"hello": Judgment({"slots": 1, "gpus": 0})})
    actions, effects = effects_of({"hello": task("hello", priority=5)}, live)
    assert [(a.kind, a.run) for a in actions] == [("submit", "hello")]
    effect = effects["hello"]
    assert (effect.submission, effect.latest, effect.status, effect.seconds) == (3, 2, "done", 3600)
    assert (effect.placement.position, effect.placement.outcome) == (1, "starts")


def test_an_edit_of_a_running_run_says_how_long_it_ran_and_what_a_restart_discards():
    old = task("train", "python train.py")
    live = state([LiveRun("train", "runs/train.yml", old, True, "running", 1, 5, 0, NOW - 7300, NOW - 7200,
                          needs={"slots": 1, "gpus": 0})],
                 running=[("train", 0)], free={"slots": 0, "gpus": 0},
                 judged={"train": Judgment({"slots": 1, "gpus": 0})})
    actions, effects = effects_of({"train": task("train", "python train.py --lr 3e-4")}, live)
    assert [a.kind for a in actions] == ["restart"]
    effect = effects["train"]
    assert effect.discards == {"status": "running", "seconds": 7200} and effect.submission == 2
    assert effect.placement.outcome == "starts"  # the slot it frees is its own again


def test_an_update_in_place_and_a_deletion_of_active_runs():
    live = state([LiveRun("keep", "runs/keep.yml", task("keep"), True, "running", 1, 1, 0, NOW - 100, NOW - 90),
                  LiveRun("gone", "runs/gone.yml", task("gone"), True, "queued", 4, 2, 0, NOW - 50)],
                 queue=[waiting(2, "gone", 0, NOW - 50)])
    actions, effects = effects_of({"keep": task("keep", priority=9)}, live)
    assert [(a.kind, a.run) for a in actions] == [("cancel", "gone"), ("update", "keep")]
    assert (effects["keep"].status, effects["keep"].seconds, effects["keep"].placement) == ("running", 90, None)
    assert effects["gone"].discards == {"status": "queued", "seconds": 50} and effects["gone"].submission == 4


def test_a_deleted_finished_run_is_no_action():
    live = state([LiveRun("old", "runs/old.yml", task("old"), True, "done", 1, 1, 0, 0.0, 1.0, 2.0)])
    actions, _ = effects_of({}, live)
    assert actions == []


def test_what_the_provider_lacks_and_no_preemption():
    live = state([], queue=[waiting(1, "queued-low", 1, 100.0)], running=[("busy", 0), ("vip", 90)],
                 secrets={"HF_TOKEN"}, free={"slots": 0, "gpus": 0},
                 judged={"big": Judgment({"slots": 1, "gpus": 8}, "resources.gpu: this machine has 0 GPUs"),
                         "hot": Judgment({"slots": 1, "gpus": 0}),
                         "needy": Judgment({"slots": 1, "gpus": 0})})
    hot = spec("type: task\nname: hot\ncommands: [x]\npriority: 50\nretry: {on_events: [no-capacity], duration: off}\n")
    needy = spec("type: task\nname: needy\ncommands: [x]\nenv: [HF_TOKEN, WANDB_KEY]\n")
    _, effects = effects_of({"big": task("big"), "hot": hot, "needy": needy}, live)
    assert effects["big"].unsatisfiable == "resources.gpu: this machine has 0 GPUs" and effects["big"].placement is None
    assert effects["needy"].missing_secrets == ("WANDB_KEY",) and effects["needy"].placement is None
    placed = effects["hot"].placement
    assert (placed.position, placed.of, placed.overtakes, placed.outcome) == (1, 2, ("queued-low",), "waits")
    assert effects["hot"].not_preempted == ("busy",)  # a lower-priority run keeps running: no preemption


def test_without_the_providers_judgment_the_place_is_known_and_the_outcome_is_not():
    live = state([], queue=[waiting(1, "a", 3, 100.0)], free={"slots": 1, "gpus": 0})
    _, effects = effects_of({"b": task("b", priority=4)}, live)
    placed = effects["b"].placement
    assert (placed.position, placed.overtakes, placed.outcome) == (1, ("a",), "unknown")


# --- cluster runs and schedules --------------------------------------------------------------------

def test_a_waiting_gang_keeps_what_it_sets_aside_in_the_plan_as_in_admission():
    """A gang at the head that does not fit reserves the free slots it needs: a lower-priority run
    the change adds does not start in them (queue.admit's rule, so the plan says the same)."""
    gang = Waiting(1, "gang", 50, 100.0, {"slots": 3, "gpus": 0}, True, nodes=3)
    live = state([], queue=[gang], free={"slots": 2, "gpus": 0}, judged={"small": Judgment({"slots": 1, "gpus": 0})})
    _, effects = effects_of({"small": task("small", priority=10, retry="true")}, live)
    placed = effects["small"].placement
    assert (placed.position, placed.outcome) == (2, "waits")
    new_gang = spec("type: task\nname: wide\ncommands: [x]\nnodes: 2\npriority: 60\nretry: true\n")
    live = state([], free={"slots": 1, "gpus": 0}, judged={"wide": Judgment({"slots": 2, "gpus": 0}),
                                                           "small": Judgment({"slots": 1, "gpus": 0})})
    _, effects = effects_of({"wide": new_gang, "small": task("small", priority=10, retry="true")}, live)
    assert effects["wide"].placement.outcome == "waits"
    assert effects["small"].placement.outcome == "waits"  # the slot that is free is set aside for wide


def test_a_new_scheduled_run_plans_its_next_tick_not_a_submission():
    nightly = spec("type: task\nname: nightly\ncommands: [x]\nschedule: {cron: '0 3 * * *'}\n")
    live = state([], free={"slots": 1, "gpus": 0}, judged={"nightly": Judgment({"slots": 1, "gpus": 0})})
    actions, effects = effects_of({"nightly": nightly}, live)
    assert [a.kind for a in actions] == ["submit"]
    effect = effects["nightly"]
    assert effect.next_tick_at == 3 * 3600  # NOW is 10,000 s after the epoch: 03:00 UTC that day
    assert (effect.submission, effect.placement) == (None, None)
    assert effect.as_dict()["next_tick_at"] == 3 * 3600


def test_a_restart_of_a_running_scheduled_run_stops_it_and_waits_for_the_tick():
    old = spec("type: task\nname: nightly\ncommands: [x]\nschedule: {cron: '0 3 * * *'}\n")
    new = spec("type: task\nname: nightly\ncommands: [y]\nschedule: {cron: '0 3 * * *'}\n")
    live = state([LiveRun("nightly", "runs/nightly.yml", old, True, "running", 4, 9, 0, NOW - 600, NOW - 500,
                          needs={"slots": 1, "gpus": 0})], running=[("nightly", 0)], free={"slots": 0, "gpus": 0})
    actions, effects = effects_of({"nightly": new}, live)
    assert [a.kind for a in actions] == ["restart"]
    effect = effects["nightly"]
    assert effect.discards == {"status": "running", "seconds": 500}
    assert (effect.submission, effect.placement, effect.next_tick_at) == (None, None, 3 * 3600)


def test_the_plan_says_a_scheduled_run_waits_for_its_tick():
    from gitopsq.output import LiveView, plan_json, plan_markdown, plan_text

    nightly = spec("type: task\nname: nightly\ncommands: [x]\nschedule: {cron: '0 3 * * *'}\n")
    old = spec("type: task\nname: hourly\ncommands: [x]\nschedule: {cron: '0 * * * *'}\n")
    new = spec("type: task\nname: hourly\ncommands: [y]\nschedule: {cron: '0 * * * *'}\n")
    live = state([LiveRun("hourly", "runs/hourly.yml", old, True, "running", 2, 5, 0, NOW - 100, NOW - 90)],
                 running=[("hourly", 0)], free={"slots": 0, "gpus": 0})
    actions, effects = effects_of({"nightly": nightly, "hourly": new}, live)
    view = LiveView({"source": "db", "where": "state.db", "branch": "main", "commit": "c0ffee", "provider": "local"},
                    live, effects)
    text = plan_text(actions, [], view)
    assert "+ nightly: scheduled, next tick 1970-01-01 03:00 UTC (in 13m20s) runs/nightly.yml" in text
    assert "new submission" not in text and "queue:" not in text
    assert "stops submission 2 after 1m30s of running: what it has not saved is lost\n" in text
    assert "schedule: next tick 1970-01-01 03:00 UTC (in 13m20s), which submits anew" in text
    assert "| queued at its next tick |" in plan_markdown(actions, [], live=view)
    rows = {row["run"]: row["live"] for row in json.loads(plan_json(actions, [], live=view))["actions"]}
    assert (rows["nightly"]["submission"], rows["nightly"]["next_tick_at"], rows["nightly"]["queue"]) == (None, 10800, None)
