"""Waking a running controller from another process (`gitopsq secret set`): SIGUSR1 to its pid.

The controller's lock file (store.controller_lock) names its pid and when it took the lock. The
file outlives the controller and pids are reused, and SIGUSR1 kills a process that does not
handle it: so the pid is signalled only when that process is alive and began before the lock
was taken (where /proc tells when a process began).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from gitopsq.store import lock_path

WAKE_SIGNAL = signal.SIGUSR1
_CLOCK_SLACK = 5.0  # seconds: a process start computed from /proc is whole seconds off at worst


def wake_controller(db_path: str | Path) -> int | None:
    """Wake the controller of this state; its pid, or None when none is running."""
    pid = controller_pid(db_path)
    if pid is None:
        return None
    try:
        os.kill(pid, WAKE_SIGNAL)
    except (ProcessLookupError, PermissionError):
        return None
    return pid


def controller_pid(db_path: str | Path) -> int | None:
    """The pid of the controller holding the state's lock, or None when none runs."""
    try:
        holder = json.loads(lock_path(Path(db_path)).read_bytes() or b"{}")
        pid, locked_at = int(holder["pid"]), float(holder["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no lock file: no controller ever ran here
    if pid <= 0 or not _alive(pid):
        return None
    began = process_start_time(pid)
    if began is not None and began > locked_at + _CLOCK_SLACK:
        return None  # a later process got the pid of a controller that has ended
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a controller this user could wake
    return True


def process_start_time(pid: int) -> float | None:
    """When a process began (seconds since the epoch), from /proc; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
