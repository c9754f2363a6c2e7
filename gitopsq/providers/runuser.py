"""The unprivileged user local process runs execute as, so that they cannot read the controller.

A controller running as root starts each process run's commands as the run user (`--run-user`,
default `gitopsq-run` when that user exists): the node wrapper stays root (it writes the log and
the exit status, which stay root's), and the run's process drops to the user before it execs
(setgroups, setgid, setuid). The run user owns only what belongs to the run (its working
directory, a home of its own, the pip copy its venvs use); the state directory's database, key,
node metadata and logs stay root's, 0600 in 0700 folders. The folders on the way to the runs'
working directories are 0711: the run user may pass through them, never list or read them.

Without root, or with `--no-run-user`, runs execute as the controller's own user and can read all
of that: the daemon says so at start, and /healthz and the dashboard show it.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RUN_USER = "gitopsq-run"
TRAVERSE = 0o711  # the folders on the way to the runs' working directories


class RunUserError(Exception):
    """A run user that cannot be used (unknown, root, or unreachable working directories)."""


@dataclass(frozen=True)
class RunUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # its supplementary groups, as a login would give them

    @property
    def spec(self) -> str:
        """How the node wrapper is told: uid:gid:group,group."""
        return f"{self.uid}:{self.gid}:{','.join(map(str, self.groups))}"


def lookup(name: str) -> RunUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RunUserError(f"--run-user {name}: no such user on this machine") from None
    if entry.pw_uid == 0:
        raise RunUserError(f"--run-user {name}: uid 0 is not an unprivileged user")
    return RunUser(name, entry.pw_uid, entry.pw_gid, tuple(sorted(set(os.getgrouplist(name, entry.pw_gid)))))


@dataclass(frozen=True)
class Choice:
    """The run user `serve` settled on, or why runs execute as the controller's own user."""

    user: RunUser | None
    why_not: str | None = None


def choose(name: str | None, disabled: bool) -> Choice:
    """The run user from --run-user / --no-run-user, the controller's own user and the machine.

    Raises RunUserError for a --run-user that cannot be used; a missing default user is not an
    error: runs then execute as the controller's user, and why is said."""
    me = _user_name(os.geteuid())
    if disabled:
        return Choice(None, f"--no-run-user: runs execute as the controller's user ({me})")
    if os.geteuid() != 0:
        if name and name != me:
            raise RunUserError(f"--run-user {name}: switching users needs the controller to run as root "
                               f"(it runs as {me})")
        return Choice(None, f"the controller runs as {me}, not root, so runs execute as that user too")
    if name == me:
        return Choice(None, f"--run-user {name} is the controller's own user")
    if name:
        return Choice(lookup(name))
    try:
        return Choice(lookup(DEFAULT_RUN_USER))
    except RunUserError:
        return Choice(None, f"no run user: {DEFAULT_RUN_USER} does not exist on this machine (create it, or give "
                            f"--run-user), so runs execute as the controller's user ({me})")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _allows(info: os.stat_result, user: RunUser, bits: int) -> bool:
    """bits (r=4, w=2, x=1) for the user by the mode (ACLs aside)."""
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid == user.uid:
        return mode & (bits << 6) == bits << 6
    if info.st_gid in user.groups or info.st_gid == user.gid:
        return mode & (bits << 3) == bits << 3
    return mode & bits == bits


def blocked_at(path: str | Path, user: RunUser, last: int = 1) -> str | None:
    """The first folder on the way to `path` the user cannot pass (x), or `path` itself when it lacks
    the `last` bits (default x); None when the user reaches it."""
    path = Path(os.path.realpath(path))
    for folder in reversed(path.parents):
        if not _allows(folder.stat(), user, 1):
            return str(folder)
    return None if _allows(path.stat(), user, last) else str(path)


def give(top: Path, user: RunUser) -> None:
    """Make the tree at `top` the user's (links themselves, never what they point to)."""
    os.chown(top, user.uid, user.gid, follow_symlinks=False)
    for folder, dirs, files in os.walk(top):  # walk does not follow links to folders
        for name in dirs + files:
            os.chown(os.path.join(folder, name), user.uid, user.gid, follow_symlinks=False)


def make_traversable(folder: Path) -> None:
    """A folder the run user passes through: 0711 (listed and read by its owner alone)."""
    if stat.S_IMODE(folder.stat().st_mode) != TRAVERSE:
        folder.chmod(TRAVERSE)
