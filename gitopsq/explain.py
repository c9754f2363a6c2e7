"""Sentences that say why a run is where it is: what a queued run waits for, why one ended.

Pure: rows in (as `store.listing` and `store.submissions` give them), text out. `ps`, the API
and the dashboard say the same thing because they all say it through here.
"""

from __future__ import annotations

UNITS = {"slots": ("slot", "slots"), "gpus": ("GPU", "GPUs"), "nodes": ("node", "nodes"), "cpus": ("CPU", "CPUs"),
         "memory_mb": ("MB of memory", "MB of memory")}
BY_HAND = {"stopped": "stopped by", "rerun": "replaced by a rerun by"}  # reasons of gitopsq stop and rerun
AFTER = {"error": "failed", "interruption": "interrupted", "no-capacity": "no capacity",
         "throttle": "the provider is busy", "auth": "the provider refused its credentials"}


def ago(seconds: float | None) -> str:
    """A short human duration: 42s, 3m05s, 2h10m, 3d4h."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def time_column(row: dict, now: float) -> tuple[float | None, str]:
    """(seconds, text): waiting for queued runs, up for running ones, ended ago for finished ones."""
    if row["status"] == "queued" and row.get("queued_at"):
        seconds = now - row["queued_at"]
        return seconds, f"waiting {ago(seconds)}"
    if row["status"] in ("provisioning", "running", "stopping") and row.get("started_at"):
        seconds = now - row["started_at"]
        return seconds, f"up {ago(seconds)}"
    if row.get("finished_at"):
        seconds = now - row["finished_at"]
        return seconds, f"ended {ago(seconds)} ago"
    return None, ""


def amounts(values: dict[str, int], keys=None) -> str:
    """{"slots": 1, "gpus": 2} -> "1 slot, 2 GPUs" (only the given keys; zero demands left out)."""
    out = []
    for key in keys if keys is not None else values:
        amount = values.get(key, 0)
        one, many = UNITS.get(key, (key, key))
        out.append(f"{amount} {one if amount == 1 else many}")
    return ", ".join(out)


def wait_reason(row: dict, now: float) -> str:
    """Why a queued submission is not running: backoff, or what it needs against what is free;
    and how many submissions are ahead of it in the queue."""
    parts = []
    if row.get("backoff_event") == "secret-missing":  # the message names them: secret-missing: NAME
        parts.append(row.get("message") or "secret-missing")
    elif row.get("next_try_at") and row["next_try_at"] > now:
        event = row.get("backoff_event")
        after = AFTER.get(event, "backing off")
        if event == "error" and row.get("exit_code") is not None:
            after = f"exit code {row['exit_code']}"
        parts.append(f"{after}; next attempt in {ago(row['next_try_at'] - now)}")
    elif row.get("needs") is None:
        parts.append("just queued")
    else:
        needs = row["needs"]
        wanted = [k for k, v in needs.items() if v] or list(needs)
        free = row.get("free") or {}
        shown = [k for k in wanted if k in free]
        text = f"needs {amounts(needs, wanted)}"
        if shown:
            text += f"; free: {amounts(free, shown)}"
        parts.append(text)
    if row.get("ahead"):
        parts.append(f"{row['ahead']} ahead")
    return "; ".join(parts)


def end_reason(row: dict) -> str:
    """Why a submission ended (or was requeued), with its exit code and the provider's message."""
    reason = row.get("reason") or ""
    if reason in BY_HAND and row.get("stopped_by"):
        reason = f"{BY_HAND[reason]} {row['stopped_by']}"
    if row.get("exit_code") not in (None, 0):
        reason = f"{reason} (exit {row['exit_code']})".strip()
    if row.get("message") and row.get("status") != "done":
        reason = f"{reason}: {row['message']}" if reason else row["message"]
    return reason


def file_reason(row: dict) -> str:
    """A run whose file no longer validates keeps its last valid spec: say so, and since when."""
    invalid = row.get("file_invalid")
    if not invalid:
        return ""
    since = (invalid.get("since") or "")[:10]
    keeps = "runs its last valid spec: " if row.get("status") in ("queued", "provisioning", "running") else ""
    return f"{keeps}file invalid since {since} ({invalid['problem']})"


def schedule_reason(row: dict, now: float) -> str:
    """When a scheduled run gets its next submission (UTC, as its cron says)."""
    at = row.get("next_tick_at")
    if not at:
        return ""
    import datetime as dt

    stamp = dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"next tick {stamp} (in {ago(at - now)})"


def nodes_reason(row: dict) -> str:
    """A cluster run's nodes, by state: 2 nodes running, or 1 done, 1 failed (exit 3)."""
    nodes = row.get("nodes") or []
    if not nodes:
        return f"{row['nodes_num']} nodes" if row.get("nodes_num", 1) > 1 else ""
    states: dict[str, int] = {}
    for node in nodes:
        state = node["status"] + (f" (exit {node['exit_code']})" if node.get("exit_code") not in (None, 0) else "")
        states[state] = states.get(state, 0) + 1
    return ", ".join(f"{count} {'node' if count == 1 else 'nodes'} {state}" for state, count in states.items())


def why(row: dict, now: float) -> str:
    """The REASON column: what a queued run waits for, else why it ended; a cluster run's nodes;
    a scheduled run's next tick; and a broken file."""
    text = wait_reason(row, now) if row.get("status") == "queued" else end_reason(row)
    parts = [text, nodes_reason(row) if row.get("status") != "queued" else "", schedule_reason(row, now), file_reason(row)]
    return "; ".join(p for p in parts if p)
