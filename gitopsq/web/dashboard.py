"""Server-rendered dashboard pages (Jinja2 templates shipped in gitopsq/web/templates)."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, select_autoescape

from gitopsq import intents
from gitopsq.plan import ACTIVE
from gitopsq.store import Store, listing, submissions
from gitopsq.explain import ago, schedule_reason, time_column, why
from gitopsq.web import queries

ENV = Environment(loader=PackageLoader("gitopsq.web", "templates"), autoescape=select_autoescape(["html"]))
ENV.filters["ago"] = ago
ENV.filters["short"] = lambda sha: (sha or "")[:12]


def retry_state(row: dict, now: float) -> tuple[str, str]:
    """(kind, text): how a run's retry policy stands — none, gives-up, forever, backoff or policy."""
    retry = row.get("retry")
    if not retry:
        return "none", "no retry"
    queued = row["status"] == "queued"
    attempts = f"{row['attempts']} attempt(s) failed" if row.get("attempts") else ""
    kind, parts = "policy", [attempts]
    if queued and row.get("deadline"):
        left = row["deadline"] - now
        kind = "gives-up"
        parts.append(f"gives up in {ago(left)}" if left > 0 else "giving up")
    elif queued and retry["duration"] is None and "no-capacity" in retry["on_events"]:
        kind = "forever"
        parts.append("waits forever")
    if queued and row.get("next_try_at") and row["next_try_at"] > now:
        kind = "backoff" if kind == "policy" else kind
        parts.append(f"next try in {ago(row['next_try_at'] - now)}")
    if kind == "policy":
        limit = "forever" if retry["duration"] is None else f"for {ago(retry['duration'])}"
        parts.append(f"retries on {', '.join(retry['on_events'])} {limit}")
    return kind, "; ".join(p for p in parts if p)


def _shown(row: dict, now: float) -> dict:
    retry_kind, retry_text = retry_state(row, now)
    seconds, time_text = time_column(row, now)
    return {**row, "retry_kind": retry_kind, "retry_text": retry_text, "seconds": seconds, "time_text": time_text,
            "reason_text": why(row, now)}


def render_index(store: Store, status: dict, now: float, user: str | None = None) -> str:
    rows = [_shown(row, now) for row in listing(store, now=now)]
    return ENV.get_template("index.html").render(
        rows=rows, info=status, now=now, problems=store.file_problems(), user=user,
        since_step=(now - status["last_step_at"]) if status.get("last_step_at") else None)


def render_run(store: Store, name: str, now: float, user: str | None = None, csrf: str | None = None,
               notice: str | None = None) -> str | None:
    """A run's page; csrf (a write token's session) adds the stop and rerun buttons, notice says why one was refused."""
    if not queries.run_exists(store, name):
        return None
    history = [_shown(row, now) for row in submissions(store, run=name)]
    latest = queries.latest_log(store, history)
    path = latest[0] if latest else None
    tail, log_problem = queries.masked_log_tail(store, *latest) if latest else (None, "no log yet")
    run = store.run(name)
    detail = queries.run_detail(store, name, now)
    return ENV.get_template("run.html").render(
        name=name, run=run, history=list(reversed(history)), now=now, log_path=path, log_tail=tail, user=user,
        connect=detail["connect"] if detail else None, csrf=csrf, notice=notice, pending=intents.pending(store, name),
        log_problem=log_problem, lines=queries.LOG_TAIL_LINES,
        invalid=store.invalid_file(run["file"]) if run["present"] else None,
        active=bool(history) and history[-1]["status"] in ACTIVE, latest=history[-1]["submission"] if history else None,
        nodes=store.submission_nodes(history[-1]["submission_id"]) if history and history[-1]["nodes_num"] > 1 else [],
        schedule=schedule_reason(dict(run), now))


def render_missing(name: str, user: str | None = None) -> str:
    return ENV.get_template("missing.html").render(name=name, user=user)


def render_login(next_path: str, error: str | None = None) -> str:
    return ENV.get_template("login.html").render(next=next_path, error=error)
