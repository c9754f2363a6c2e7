"""Rendering problems for people, scripts and CI annotations."""

from __future__ import annotations

import json
from dataclasses import dataclass

from gitopsq.explain import ago, amounts, schedule_reason
from gitopsq.yamlload import Problem


def _escape_github(text: str, property_value: bool = False) -> str:
    # GitHub workflow commands need %, CR and LF escaped (and , and : inside properties).
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property_value:
        text = text.replace(",", "%2C").replace(":", "%3A")
    return text


def github_annotation(problem: Problem) -> str:
    props = f"file={_escape_github(problem.file, True)}"
    if problem.line:
        props += f",line={problem.line}"
    props += ",title=gitopsq"
    message = f"{problem.field}: {problem.message}" if problem.field else problem.message
    return f"::error {props}::{_escape_github(message)}"


def problems_json(problems: list[Problem], **extra) -> str:
    return json.dumps({**extra, "errors": [p.as_dict() for p in problems]}, indent=2)


# --- plans -------------------------------------------------------------------------------------

_SYMBOL = {"submit": "+", "update": "~", "restart": "-/+", "cancel": "-"}
_VERB = {"submit": "submit", "update": "update in place", "restart": "restart", "cancel": "cancel"}


def short_json(value, limit: int = 70) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_summary(actions, problems) -> str:
    counts = {k: sum(1 for a in actions if a.kind == k) for k in _SYMBOL}
    parts = [f"{counts[k]} to {_VERB[k]}" for k in _SYMBOL if counts[k]]
    text = ", ".join(parts) if parts else "no changes"
    if problems:
        text += f"; {len(problems)} validation error(s)"
    return text


@dataclass(frozen=True)
class LiveView:
    """A plan against the controller's state: where that state came from (livestate._source), the
    state, and each action's effect on it (plan.live_effects)."""

    source: dict
    state: object  # plan.LiveState
    effects: dict  # run name -> plan.Effect


GIT_ALONE = ("Planned from git alone: every run valid at the base is taken as running, and the queue is not "
             "known. Plan with --server URL (or --db FILE on the controller's machine) to plan against what the "
             "controller holds.")
MARKER = "<!-- gitopsq-plan -->"  # the pull-request comment a workflow finds and edits (one per pull request)


def plan_text(actions, problems, live: LiveView | None = None) -> str:
    lines = [_planned_against(live)]
    for action in actions:
        priority = (action.spec or {}).get("priority")
        words = f": {_action_words(action, live)}" if live else f" ({_VERB[action.kind]})"
        lines.append(f"{_SYMBOL[action.kind]:>3} {action.run}{words} {action.file or ''}"
                     + (f" priority {priority}" if priority is not None else ""))
        if action.kind in ("update", "restart"):
            for name, (old, new) in action.changes.items():
                lines.append(f"      {name}: {short_json(old)} -> {short_json(new)}")
        lines += [f"      {note}" for note in _notes(action, live)]
    for problem in problems:
        lines.append(f"error: {problem}")
    lines.append(f"Plan: {plan_summary(actions, problems)}.")
    return "\n".join(lines)


def plan_markdown(actions, problems, base: str = "", head: str = "", live: LiveView | None = None) -> str:
    out = [f"### gitopsq plan: {plan_summary(actions, problems)}"]
    if base and head:
        out.append(f"`{base[:12]}` → `{head[:12]}`")
    out += ["", f"_{_planned_against(live, markdown=True)}_"]
    if actions:
        queue = live is not None
        out += ["", "| | run | action | priority |" + (" queue |" if queue else "") + " file |",
                "|---|---|---|---|" + ("---|" if queue else "") + "---|"]
        for a in actions:
            priority = (a.spec or {}).get("priority", "")
            cell = f" {_queue_cell(a, live)} |" if queue else ""
            out.append(f"| `{_SYMBOL[a.kind]}` | **{a.run}** | {_action_words(a, live)} | {priority} |{cell} `{a.file or ''}` |")
        noted = [(a.run, _notes(a, live)) for a in actions]
        if any(notes for _, notes in noted):
            out.append("")
            for run, notes in noted:
                out += [f"- **{run}**: {notes[0]}"] if len(notes) == 1 else [f"- **{run}**"] + [f"  - {n}" for n in notes] if notes else []
        for a in actions:
            if a.kind in ("update", "restart") and a.changes:
                out += ["", f"<details><summary>{a.run}: {len(a.changes)} field(s) changed ({_VERB[a.kind]})</summary>", "",
                        "| field | old | new |", "|---|---|---|"]
                out += [f"| `{k}` | `{short_json(o, 60)}` | `{short_json(n, 60)}` |" for k, (o, n) in a.changes.items()]
                out += ["", "</details>"]
    if problems:
        out += ["", f"#### Validation errors ({len(problems)})", ""]
        out += [f"- `{p.file}:{p.line or ''}` **{p.field or '(file)'}**: {p.message}" for p in problems]
        out += ["", "Runs whose file is invalid keep their last valid spec."]
    out += ["", MARKER]
    return "\n".join(out) + "\n"


def plan_json(actions, problems, base: str = "", head: str = "", live: LiveView | None = None) -> str:
    state = {"source": "git"} if live is None else {**live.source, "free": live.state.free,
                                                    "queued": len(live.state.queue)}
    rows = []
    for action in actions:
        effect = live.effects.get(action.run) if live else None
        rows.append({**action.as_dict(), "live": effect.as_dict() if effect else None})
    return json.dumps({"base": base, "head": head, "state": state, "actions": rows,
                       "errors": [p.as_dict() for p in problems]}, indent=2)


# --- words for the live facts --------------------------------------------------------------------

def _planned_against(live: LiveView | None, markdown: bool = False) -> str:
    if live is None:
        return GIT_ALONE
    source = live.source
    where = f"`{source['where']}`" if markdown else source["where"]
    what = "the controller at" if source["source"] == "server" else "the state file"
    facts = [f"branch {source['branch']}" if source.get("branch") else "",
             f"commit {source['commit'][:12]}" if source.get("commit") else "",
             f"provider {source['provider']}" if source.get("provider") else ""]
    text = f"Planned against {what} {where} ({', '.join(f for f in facts if f)})."
    if source.get("unjudged"):
        text += f" Specs not checked against the provider: {source['unjudged']}."
    return text


def _for(status: str | None, seconds: float | None) -> str:
    """running for 2h10m, queued for 3m05s, done 1h00m ago."""
    if status is None:
        return ""
    if seconds is None:
        return status
    if status in ("queued", "provisioning", "running", "stopping"):
        return f"{status} for {ago(seconds)}"
    return f"{status} {ago(seconds)} ago"


def _action_words(action, live: LiveView | None) -> str:
    effect = live.effects.get(action.run) if live else None
    if effect is None:
        return _VERB[action.kind]
    if action.kind == "submit" and effect.submission is None and effect.next_tick_at is not None:
        return f"scheduled, {_tick(effect, live)}"  # a commit never submits a scheduled run
    if action.kind == "submit":
        return f"submit (new submission {effect.submission})"
    return f"{_VERB[action.kind]} ({_for(effect.status, effect.seconds)})"


def _tick(effect, live: LiveView) -> str:
    """next tick 2025-06-01 03:00 UTC (in 5h10m)"""
    return schedule_reason({"next_tick_at": effect.next_tick_at}, live.state.now)


def _notes(action, live: LiveView | None) -> list[str]:
    """Sentences on what the action does to the live state: what it discards, what it lacks, the queue."""
    effect = live.effects.get(action.run) if live else None
    if effect is None:
        return []
    notes = []
    scheduled = effect.submission is None and effect.next_tick_at is not None
    if action.kind == "submit" and effect.latest is not None:
        by = f" (stopped by {effect.stopped_by})" if effect.stopped_by else ""
        then = "its schedule makes the next submission" if scheduled else "a change to a finished run is a new submission"
        notes.append(f"submission {effect.latest} {_for(effect.status, effect.seconds)}{by}: {then}")
    if effect.discards:
        notes.append(_discards(action, effect))
    if effect.next_tick_at is not None and action.kind != "submit":
        notes.append(f"schedule: {_tick(effect, live)}" + (", which submits anew" if scheduled else ""))
    if effect.unsatisfiable:
        provider = live.source.get("provider") or "controller's"
        notes.append(f"can never run on the {provider} provider: {effect.unsatisfiable} (it fails at once)")
    if effect.missing_secrets:
        names = ", ".join(effect.missing_secrets)
        notes.append(f"waits for secrets that are not set on the controller: {names} (gitopsq secret set NAME)")
    if effect.placement is not None:
        notes.append("queue: " + _placement_words(action, effect, live))
    return notes


def _discards(action, effect) -> str:
    status, seconds = effect.discards["status"], effect.discards["seconds"]
    took = f" after {ago(seconds)}" if seconds is not None else ""
    anew = action.kind == "restart" and effect.submission is not None  # a scheduled run's next comes at its tick
    if status == "queued":
        text = f"submission {effect.latest} leaves the queue{took} of waiting"
        return text + (f"; submission {effect.submission} queues anew, behind the runs of its priority" if anew else "")
    text = f"stops submission {effect.latest}{took} of {status}: what it has not saved is lost"
    return text + (f"; submission {effect.submission} starts from the beginning" if anew else "")


def _placement_words(action, effect, live: LiveView) -> str:
    placed = effect.placement
    text = f"position {placed.position} of {placed.of}"
    if placed.overtakes:
        text += f", ahead of {', '.join(placed.overtakes)}"
    needs = (live.state.judged.get(action.run).needs if action.run in live.state.judged else None) or {}
    free = live.state.free or {}
    wanted = [k for k, v in needs.items() if v] or list(needs)
    room = f"needs {amounts(needs, wanted)}; free: {amounts(free, [k for k in wanted if k in free])}" if wanted else ""
    if placed.outcome == "starts":
        return text + "; starts at once"
    if placed.outcome == "fails":
        return text + f"; fails at once: {placed.reason} ({room}; its retry does not cover no-capacity)"
    if placed.outcome == "unknown":
        return text + "; whether it starts at once is not known (the provider did not judge it)"
    waits = text + f"; waits for capacity ({room})" if room else text + "; waits for capacity"
    if effect.not_preempted:
        waits += f"; {', '.join(effect.not_preempted)} keep running at a lower priority (gitopsq does not preempt)"
    return waits


def _queue_cell(action, live: LiveView) -> str:
    """The markdown table's queue column: the place and what happens, in a few words."""
    effect = live.effects.get(action.run)
    if effect is None:
        return ""
    if effect.unsatisfiable:
        return "never runs: unsatisfiable"
    if effect.missing_secrets:
        return f"waits for secrets: {', '.join(effect.missing_secrets)}"
    placed = effect.placement
    if placed is None:
        return "queued at its next tick" if effect.submission is None and effect.next_tick_at is not None else ""
    text = f"position {placed.position} of {placed.of}"
    if placed.overtakes:
        text += ", ahead of " + ", ".join(f"**{run}**" for run in placed.overtakes)
    short = {"starts": "starts at once", "waits": "waits", "fails": f"fails: {placed.reason}", "unknown": "?"}
    return f"{text}; {short[placed.outcome]}"
