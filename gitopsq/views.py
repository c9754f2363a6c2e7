"""Tables for people (rich) and JSON for scripts, for `ps`, `history`, `secret list` and `token list`."""

from __future__ import annotations

import json
import time

import click

from gitopsq.explain import BY_HAND, ago, time_column, why

STATUS_STYLE = {"scheduled": "blue", "queued": "yellow", "provisioning": "cyan", "running": "green", "stopping": "magenta",
                "done": "bold green", "failed": "bold red", "cancelled": "dim"}


def print_json(rows: list[dict]) -> None:
    click.echo(json.dumps(rows, indent=2, default=str))


def _retry_state(row: dict, now: float) -> str:
    retry = row.get("retry")
    if not retry:
        return "no retry"
    parts = [f"#{row['attempts']}" if row.get("attempts") else ""]
    if row["status"] == "queued" and row.get("deadline"):
        parts.append(f"gives up in {ago(row['deadline'] - now)}")
    elif row["status"] == "queued" and retry["duration"] is None and "no-capacity" in retry["on_events"]:
        parts.append("waits forever")
    if row["status"] == "queued" and row.get("next_try_at") and row["next_try_at"] > now:
        parts.append(f"next try in {ago(row['next_try_at'] - now)}")
    return " ".join(p for p in parts if p) or ",".join(retry["on_events"])


def runs_table(rows: list[dict]) -> None:
    """The runs, one line each; a CONNECT column (URL, host:port, IDE command) while one is running
    and the terminal is wide enough (else a hint: --json has it)."""
    from rich.console import Console

    from gitopsq.connect import connection_text

    console = Console()
    if not rows:
        console.print("No runs. Commit a run file to the config repo, then run gitopsq serve.")
        return
    now = time.time()
    reachable = any(connection_text(row.get("connect")) for row in rows)
    table = _runs(rows, now, reachable)
    if reachable and console.measure(table, options=console.options.update_width(10_000)).maximum > console.width:
        console.print(_runs(rows, now, False))
        console.print("how to reach running runs: gitopsq ps --json (connect)", style="dim")
        return
    console.print(table)


def _runs(rows: list[dict], now: float, connect: bool):
    from rich.table import Table

    from gitopsq.connect import connection_text

    table = Table(box=None, header_style="bold")
    for column in ("NAME", "STATUS", "PRIORITY", "SUB", "TIME", "RETRY", "REASON", *(("CONNECT",) if connect else ())):
        table.add_column(column, justify="right" if column in ("PRIORITY", "SUB") else "left",
                         no_wrap=column == "CONNECT")
    for row in rows:
        status = row["status"]
        cells = [row["name"], _status(status), _shown(row["priority"]), _shown(row["submission"]), time_column(row, now)[1], _retry_state(row, now), why(row, now)]
        if connect:
            cells.append(connection_text(row.get("connect")))
        _add_row(table, cells)
    return table


def history_table(rows: list[dict]) -> None:
    """The submissions of one run, one line each; the LOG and WORKDIR columns only when the
    terminal is wide enough for them (else a hint: `gitopsq logs` prints a log, --json has every path)."""
    from rich.console import Console

    console = Console()
    now = time.time()
    for paths in (("LOG", "WORKDIR"), ("LOG",)):
        table = _history(rows, now, paths)
        if console.measure(table, options=console.options.update_width(10_000)).maximum <= console.width:
            console.print(table)
            return
    console.print(_history(rows, now, ()))
    name = rows[0]["name"]
    console.print(f"logs: gitopsq logs {name} --submission N (paths: --json)", style="dim")


def _workdir_cell(row: dict) -> str:
    return "pruned" if row.get("workdir_pruned") else row.get("workdir") or ""


def _history(rows: list[dict], now: float, paths: tuple[str, ...]):
    from rich.table import Table

    narrow = not paths  # single spaces between columns, 7-digit commits (as git abbreviates), no paths
    table = Table(box=None, header_style="bold", pad_edge=not narrow, collapse_padding=narrow)
    for column in ("SUB", "STATUS", "PRIORITY", "SUBMITTED", "TIME", "REASON", "COMMIT", *paths):
        # only REASON may take a second line (folded, never cut)
        table.add_column(column, no_wrap=column != "REASON", overflow="fold" if column == "REASON" else "ellipsis")
    for row in rows:
        reason = row.get("reason") or ""
        if reason in BY_HAND and row.get("stopped_by"):
            reason = f"{BY_HAND[reason]} {row['stopped_by']}"
        if row.get("exit_code") is not None:
            reason = f"{reason} exit {row['exit_code']}".strip()
        submitted = f"{ago(now - row['queued_at'])} ago" + (f", rerun by {row['submitted_by']}" if row.get("submitted_by") else "")
        cells = [str(row["submission"]), _status(row["status"]),
                 str(row["priority"]), submitted, time_column(row, now)[1], reason,
                 (row.get("commit_sha") or "")[:7 if narrow else 10]]
        shown = {"LOG": row.get("log_path") or "", "WORKDIR": _workdir_cell(row)}
        _add_row(table, [*cells, *(shown[column] for column in paths)])
    return table


def _shown(value) -> str:
    """A number, or '-' where there is none yet (a scheduled run before its first tick)."""
    return "-" if value is None else str(value)


def _status(status: str):
    from rich.text import Text

    return Text(status, style=STATUS_STYLE.get(status, ""))


def _add_row(table, cells: list) -> None:
    """Cells as Text, never markup: names, reasons, actors and providers' messages may hold brackets."""
    from rich.text import Text

    table.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in cells))


def secrets_table(rows: list[dict]) -> None:
    """Secret names, when set and updated, and the runs that reference them; never values."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print("No secrets. Set one with: gitopsq secret set NAME")
        return
    now = time.time()
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "SET", "UPDATED", "RUNS"):
        table.add_column(column, overflow="fold" if column == "RUNS" else "ellipsis")
    for row in rows:
        if row["set"]:
            set_at, updated = f"{ago(now - row['created_at'])} ago", f"{ago(now - row['updated_at'])} ago"
        else:
            set_at, updated = "[bold red]missing[/]", ""
        table.add_row(row["name"], set_at, updated, ", ".join(row["runs"]) or "-")
    console.print(table)


def tokens_table(rows: list) -> None:
    """API tokens by name: read-only or write, created, last used; never the tokens."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not rows:
        console.print("No tokens. Create one with: gitopsq token create NAME (serve creates one named admin)")
        return
    now = time.time()
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "ACCESS", "CREATED", "LAST USED"):
        table.add_column(column)
    for row in rows:
        used = f"{ago(now - row.last_used_at)} ago" if row.last_used_at else "never"
        table.add_row(row.name, row.access, f"{ago(now - row.created_at)} ago", used)
    console.print(table)
