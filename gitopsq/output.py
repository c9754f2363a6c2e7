"""Rendering problems for people, scripts and CI annotations."""

from __future__ import annotations

import json

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


def plan_text(actions, problems) -> str:
    lines = []
    for action in actions:
        priority = (action.spec or {}).get("priority")
        lines.append(f"{_SYMBOL[action.kind]:>3} {action.run} ({_VERB[action.kind]}) {action.file or ''}"
                     + (f" priority {priority}" if priority is not None else ""))
        if action.kind in ("update", "restart"):
            for name, (old, new) in action.changes.items():
                lines.append(f"      {name}: {short_json(old)} -> {short_json(new)}")
    for problem in problems:
        lines.append(f"error: {problem}")
    lines.append(f"Plan: {plan_summary(actions, problems)}.")
    return "\n".join(lines)


def plan_markdown(actions, problems, base: str = "", head: str = "") -> str:
    out = [f"### gitopsq plan: {plan_summary(actions, problems)}"]
    if base and head:
        out.append(f"`{base[:12]}` → `{head[:12]}`")
    if actions:
        out += ["", "| | run | action | priority | file |", "|---|---|---|---|---|"]
        for a in actions:
            priority = (a.spec or {}).get("priority", "")
            out.append(f"| `{_SYMBOL[a.kind]}` | **{a.run}** | {_VERB[a.kind]} | {priority} | `{a.file or ''}` |")
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
    return "\n".join(out) + "\n"


def plan_json(actions, problems, base: str = "", head: str = "") -> str:
    return json.dumps({"base": base, "head": head, "actions": [a.as_dict() for a in actions],
                       "errors": [p.as_dict() for p in problems]}, indent=2)
