"""The embedded local compute provider: each node is a process group on this machine.

A node runs a bash script in its own working directory, with stdout+stderr going to a
log file. The controller may be killed at any moment, so everything lives on disk:

    <state>/.lock                     flock taken while creating (capacity check + spawn)
    <state>/nodes/<node id>/meta.json name, tags, pid, start_time, started_at, gpus, image, ...
    <state>/nodes/<node id>/script.sh the user script
    <state>/nodes/<node id>/exit_code reserved (blank) at launch, overwritten in place by the
                                      wrapper with the exit status once everything has ended
    <state>/nodes/<node id>/destroyed marker: node is gone from list_nodes, files are kept
    <state>/ended/<node id>/          where a destroyed node's directory moves, so listing stays
                                      proportional to the live nodes however many have run
    <state>/logs/<node id>.log        stdout+stderr of the run (never moved: users read it later)
    <state>/workdirs/<node id>/work/  working directory of the run (name: ex_workdir_name), at one
                                      path from launch until pruned; a process run's venv is .venv in it
    <state>/workdirs.jsonl            the index of ended nodes' working directories (workdirs.py)
    <state>/pip/                      pip, copied once per interpreter, for the runs' venvs
                                      (pip-<uid>/, the run user's own, when runs have one)

Destroyed nodes keep their log (capped) and their working directory (outputs, checkpoints):
the working directories of ended nodes are pruned by a retention policy (keep_workdirs per
run, workdirs_max_size in total; see workdirs.py), never a running node's. The state holds
env values, so directories are 0700 and files 0600 whatever the umask.

With a run user (runuser.py; the controller is root), a process run's command executes as that
user: its folder under workdirs/ (working directory, script.sh, a home/ of its own) becomes the
user's, <state> and workdirs/ are 0711 so that the user passes through them to it, and everything
else (nodes/, ended/, logs/, the database and key beside <state>) stays root's and unreadable.

Process tree: the controller starts a short-lived launcher (reaped at once), which starts
the wrapper (node_wrapper.py) in a new session and exits. The wrapper is therefore adopted
by init (or by the controller when it is a subreaper / PID 1 in a container, in which case
this driver reaps it) and keeps running when the controller dies. The wrapper is itself a
child subreaper: it runs the user script as a child, keeps everything the script starts
below it (setsid and double forks included), writes the log through a pipe (capped at
max_log_size, keeping the tail), and when the script ends or it gets SIGTERM, ends all of
that before recording the exit status, so the status is saved without the controller and
a slot is free only once nothing of its run is left. Every process of a node carries
GITOPSQ_NODE_ID in its environment: what a SIGKILLed wrapper left behind is found by it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

from libcloud.common.types import LibcloudError
from libcloud.compute.base import Node, NodeDriver, NodeImage, NodeSize
from libcloud.compute.types import NodeState

from gitopsq.providers import runuser, volumes
from gitopsq.providers.base import image_registry
from gitopsq.providers.runuser import RunUser
from gitopsq.providers.workdirs import PRUNE_INTERVAL, Retention, ended_record


__all__ = [
    "LocalNodeDriver",
    "LocalError",
    "LocalCapacityError",
    "LocalImageError",
    "PROVIDER",
    "register",
]

log = logging.getLogger("gitopsq.providers.local")

PROVIDER = "gitopsq-local"
DEFAULT_MAX_LOG_SIZE = 16 * 1024**2
MIN_LOG_SIZE = 4096  # room for the cut line and some output
NODE_ENV = "GITOPSQ_NODE_ID"  # in the environment of every process of a node
_WRAPPER = str(Path(__file__).with_name("node_wrapper.py"))
_PYTHON_PRELUDE = str(Path(__file__).with_name("node_python.py"))  # makes the run's venv, then becomes the run
VENV_NAME = ".venv"  # the run's own Python, in its working directory
_EXIT_RESERVED = b" " * 31 + b"\n"  # the exit file's space, taken at launch: a full disk cannot lose the status


class LocalError(LibcloudError):
    """Base error of the local provider; str() is the plain message."""

    def __str__(self) -> str:
        return str(self.value)


class LocalCapacityError(LocalError):
    """Not enough free slots or GPUs on this machine right now."""


class LocalImageError(LocalError):
    """A container image was asked for but no container engine answers."""


def register() -> None:
    """Make get_driver("gitopsq-local") return LocalNodeDriver (safe to call repeatedly)."""
    from libcloud.compute.providers import DRIVERS, set_driver

    if PROVIDER in DRIVERS:
        return
    try:
        set_driver(PROVIDER, "gitopsq.providers.local", "LocalNodeDriver")
    except AttributeError:  # registered concurrently: that is what we wanted
        pass


# Runs as a separate short-lived process so the wrapper is not our child: its parent
# exits right away and init adopts the wrapper. It records pid and start time in
# meta.json itself, so they reach disk even if the controller dies meanwhile. It inherits
# the driver's lock and holds it until the pid is on disk: a controller restarted meanwhile
# waits in list_nodes instead of taking a starting node for a lost one and launching again.
# The wrapper's own stdout/stderr go to the log too: a crash of the wrapper shows there.
_LAUNCHER = r"""
import json, os, subprocess, sys
lock_fd, meta_path, log_path, *argv = sys.argv[1:]
with open(log_path, "ab", buffering=0) as log:
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
with open(f"/proc/{p.pid}/stat") as f:
    start = int(f.read().rsplit(")", 1)[1].split()[19])
with open(meta_path) as f:
    meta = json.load(f)
meta.update(pid=p.pid, start_time=start)
fd = os.open(meta_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.fchmod(fd, 0o600)
with open(fd, "w") as f:
    json.dump(meta, f, indent=2)
os.replace(meta_path + ".tmp", meta_path)
os.close(int(lock_fd))
"""

_UNSET = object()
_RESERVED_NAMES = {".", "..", "log", "meta.json", "meta.json.tmp", "script.sh", "exit_code",
                   "exit_code.tmp", "destroyed", "home"}


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, pgrp, start time in clock ticks) of a process, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[0], int(fields[2]), int(fields[19])


def _alive(pid: int | None, start_time: int | None) -> bool:
    """True if pid is still the process we started (start time guards pid reuse)."""
    if not pid or start_time is None:
        return False
    st = _proc_stat(pid)
    return st is not None and st[0] not in "ZX" and st[2] == start_time


def _process_table() -> dict[int, tuple[int, int, int]]:
    """(parent, group, start time) of every live process."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] not in "ZX":
                    table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[19]))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return table


def _descendants(table: dict[int, tuple[int, int, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = set(), [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            found.add(pid)
            todo.append(pid)
    return found


def _marked(node_id: str, pids) -> set[int]:
    """The processes whose environment carries the node's id."""
    marker, found = f"{NODE_ENV}={node_id}".encode(), set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.add(pid)
        except OSError:
            continue  # gone, or not ours to read
    return found


def _node_processes(meta: dict) -> tuple[set[int], int | None]:
    """The live processes of a node, and its wrapper's pid if the wrapper is one of them.

    While the wrapper lives, everything its run started is below it (it is a subreaper); once
    it is gone (SIGKILLed), what is left is found by the node id in its environment. The group
    covers nodes started by an older wrapper, which ran the script in its own process group.
    """
    pid, start = meta.get("pid"), meta.get("start_time")
    table = _process_table()
    found, wrapper = set(), None
    if pid and start is not None:
        leader = table.get(pid)
        if leader and leader[2] == start:
            wrapper = pid
            found |= {pid} | _descendants(table, pid)
        if not leader or leader[2] == start:  # the pid was not reused: its group is the node's
            found |= {p for p, (_, group, since) in table.items() if group == pid and since >= start}
    if wrapper is None:
        found |= _marked(meta["id"], table)
    found.discard(os.getpid())
    return found, wrapper


def _signal(pids, sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap(pid: int | None, start_time: int | None) -> None:
    """Reap the wrapper if it was re-parented to us (controller is PID 1 or a subreaper)."""
    if not pid:
        return
    st = _proc_stat(pid)
    if st and st[0] == "Z" and st[2] == start_time:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not our child: init reaps it
            pass


def _exit_status(path: Path) -> tuple[int | None, str | None]:
    """The recorded exit code and when it was written; (None, None) while the file is still blank."""
    try:
        text, written = path.read_text().strip(), path.stat().st_mtime
        code = int(text) if text else None
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None, None
    if code is None:
        return None, None
    return code, dt.datetime.fromtimestamp(written, dt.timezone.utc).isoformat(timespec="milliseconds")


# The state holds env values and tokens: directories 0700, files 0600, whatever the umask
# (which mkdir and open only ever narrow, hence the chmod).


def _private_dir(path: Path) -> None:
    """The owner's alone: nobody else may list or write it. Passing through (x, as a run user's
    way to its own folders: runuser.make_traversable) is left as it is, so that a driver made
    while runs are going never closes their way for a moment."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~0o711 or (mode & 0o700) != 0o700:
        path.chmod(0o700 | (mode & 0o011))


def _open_private(path: Path, flags: int) -> int:
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    return fd


def _write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _write_file(tmp, text.encode())
    os.replace(tmp, path)


def _with_registry_login(command: list[str], tool: str, node_dir: Path, image: str, username: str, password: str) -> list[str]:
    """The container command, pulling with a login of its own (docker --config / podman --authfile)."""
    folder = node_dir / "registry"
    _private_dir(folder)
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    config = folder / ("config.json" if tool == "docker" else "auth.json")
    _write_file(config, json.dumps({"auths": {image_registry(image): {"auth": token}}}).encode())
    if tool == "docker":
        return [command[0], "--config", str(folder), *command[1:]]
    return [command[0], command[1], "--authfile", str(config), *command[2:]]


def _outside_mounts(outside: tuple[tuple[str, str], ...]) -> list[str]:
    """A container run's repos and files placed outside its working directory: read-only mounts."""
    args = []
    for source, path in outside:
        args += ["-v", f"{source}:{path}:ro"]
    return args


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _count_gpus() -> int:
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class LocalNodeDriver(NodeDriver):
    """Runs nodes as process groups on this machine; all state lives under `key`."""

    type = PROVIDER
    name = "gitopsq local"
    website = ""
    features = {"create_node": []}

    container_tools = ("docker", "podman")

    def __init__(
        self, key: str | Path, slots: int | None = None, gpus: int | None = None,
        max_log_size: int | None = None, stop_grace: float = 5.0, keep_workdirs: int | None = None,
        workdirs_max_size: int | None = None, prune_interval: float = PRUNE_INTERVAL,
        run_user: RunUser | None = None,
    ) -> None:
        """max_log_size: bytes of a node's log kept (its tail); stop_grace: seconds a node's
        leftover processes get between TERM and KILL when its script ends or it is stopped;
        keep_workdirs: ended working directories kept per run (its last submissions'), and
        workdirs_max_size: bytes they may take in total (oldest pruned first), checked at most
        every prune_interval seconds (see workdirs.py for the defaults); run_user: the user process
        runs execute as (this process must be root), None for this process's own."""
        # No super().__init__(): it would build a network connection we have no use for.
        self.state_dir = Path(key).expanduser().resolve()
        self.key, self.secret, self.secure = str(self.state_dir), None, False
        self.api_version = self.region = self.connection = None
        self.slots = (os.cpu_count() or 1) if slots is None else slots
        self.gpus = _count_gpus() if gpus is None else gpus
        self.max_log_size = DEFAULT_MAX_LOG_SIZE if max_log_size is None else int(max_log_size)
        if self.max_log_size < MIN_LOG_SIZE:
            raise LocalError(f"max_log_size must be at least {MIN_LOG_SIZE} bytes, got {self.max_log_size}",
                             driver=self)
        self.stop_grace = stop_grace
        self.nodes_dir = self.state_dir / "nodes"
        self.ended_dir = self.state_dir / "ended"
        self.logs_dir = self.state_dir / "logs"
        self.workdirs_dir = self.state_dir / "workdirs"
        for folder in (self.state_dir, self.nodes_dir, self.ended_dir, self.logs_dir, self.workdirs_dir):
            _private_dir(folder)
        self.run_user = run_user
        self.pip_dir = self.state_dir / ("pip" if run_user is None else f"pip-{run_user.uid}")
        self.prelude = _PYTHON_PRELUDE
        if run_user is not None:
            self._open_the_way(run_user)
        try:
            self.retention = Retention(self.state_dir, self._lock, keep_workdirs, workdirs_max_size, prune_interval)
        except ValueError as exc:
            raise LocalError(str(exc), driver=self) from None
        self.retention.start(self.ended_dir)
        self._container_tool_cache: object = _UNSET

    def _open_the_way(self, user: RunUser) -> None:
        """Let the run user reach its runs' folders (and nothing else), and own its pip copy."""
        for folder in (self.state_dir, self.workdirs_dir):
            runuser.make_traversable(folder)
        _private_dir(self.pip_dir)
        os.chown(self.pip_dir, user.uid, user.gid)
        # The venv maker runs as the user, who may not read where gitopsq is installed: a copy it can.
        self.prelude = str(self.state_dir / "node_python.py")
        _write_file(Path(self.prelude), Path(_PYTHON_PRELUDE).read_bytes(), 0o644)
        blocked = runuser.blocked_at(self.workdirs_dir, user)
        if blocked:
            raise LocalError(f"the run user {user.name} cannot reach the runs' working directories in "
                             f"{self.workdirs_dir}: it may not pass through {blocked} (let it, e.g. chmod o+x, "
                             f"or put the state where it may, with --db)", driver=self)

    # ---- catalog -------------------------------------------------------------------

    def list_sizes(self, location=None) -> list[NodeSize]:
        ram_mb = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram_mb = int(line.split()[1]) // 1024
        disk_gb = shutil.disk_usage(self.state_dir).total // 1024**3
        extra = {"cpus": self.slots, "gpus": self.gpus}
        return [NodeSize("local", "local", ram_mb, disk_gb, None, 0, self, extra=extra)]

    def list_images(self, location=None, ex_only_active=True) -> list[NodeImage]:
        # Container images are not listed: create_node takes them by name (ex_image).
        return [NodeImage("host", "host", self, extra={"description": "run on the host"})]

    # ---- nodes ---------------------------------------------------------------------

    def create_node(
        self,
        name: str,
        size: NodeSize | None = None,
        image: NodeImage | None = None,
        ex_script: str = "",
        ex_env: dict[str, str] | None = None,
        ex_gpus: int = 0,
        ex_image: str | None = None,
        ex_tags: dict[str, str] | None = None,
        ex_workdir_name: str | None = None,
        ex_container_args: tuple[str, ...] = (),
        ex_python: str | None = None,
        ex_retention_key: tuple[str, str] | None = None,
        ex_volumes: tuple[tuple[str, str, bool], ...] = (),
        ex_tree: str | None = None,
        ex_outside: tuple[tuple[str, str], ...] = (),
        ex_registry_auth: tuple[str, str] | None = None,
        **kwargs,
    ) -> Node:
        """ex_python: an interpreter; the run gets a venv of it in its working directory (VENV_NAME),
        made by the node before the script starts, first on PATH and as VIRTUAL_ENV (no image).
        ex_retention_key: (run, submission) the working directory is kept for once the node ends
        (the retention policy keeps the last keep_workdirs submissions of each run).
        ex_volumes: (instance_path, path, optional) of each instance volume (see volumes.py).
        ex_tree: a folder on this filesystem holding the run's working tree (its repos and files),
        moved into place as the working directory. ex_outside: (source, absolute path) of what the
        tree puts outside the working directory: bind-mounted (read-only) in a container; a
        process run cannot have them. ex_registry_auth: (username, password) for pulling ex_image,
        written for this node's engine only (a config of its own, 0600 in the node's private folder),
        never into the machine's docker or podman login."""
        workdir_name = ex_workdir_name or "work"
        # One plain name that cannot clash with the driver's own files in the node dir.
        if "/" in workdir_name or workdir_name in _RESERVED_NAMES:
            raise LocalError(f"invalid ex_workdir_name {workdir_name!r}", driver=self)
        if ex_gpus < 0:
            raise LocalError(f"ex_gpus must be >= 0, got {ex_gpus}", driver=self)
        if ex_python and ex_image:
            raise LocalError("ex_python is for process runs: an image brings its own Python", driver=self)
        if ex_outside and not ex_image:
            raise LocalError("a process run has no filesystem of its own: its repos and files stay in its "
                             "working directory", driver=self)
        try:  # before anything is made
            volumes.check([path for _, path, _ in ex_volumes], container=bool(ex_image))
        except ValueError as exc:
            raise LocalError(str(exc), driver=self) from None
        # Decide on the container engine before taking a slot or writing anything.
        tool = self._container_tool() if ex_image else None
        if ex_image and tool is None:
            raise LocalImageError(
                f"image {ex_image!r} needs docker or podman, and neither answered "
                f"'docker info' / 'podman info' (not installed or no engine running)",
                driver=self,
            )

        with self._lock(fcntl.LOCK_EX) as lock_fd:
            free_slots, free_gpus = self._free()
            missing = []
            if free_slots < 1:
                missing.append(f"no free slot (all {self.slots} in use)")
            if ex_gpus > len(free_gpus):
                missing.append(
                    f"{ex_gpus} GPU(s) requested, {len(free_gpus)} of {self.gpus} free"
                )
            if missing:
                raise LocalCapacityError("; ".join(missing), driver=self)
            gpu_ids = free_gpus[:ex_gpus]
            as_user = self.run_user if not ex_image else None  # a container's user is the image's business
            try:
                mounts = volumes.prepare(ex_volumes, owner=as_user)
            except OSError as exc:
                raise LocalError(str(exc), driver=self) from None

            node_id = f"local-{uuid.uuid4().hex}"
            node_dir = self.nodes_dir / node_id
            outputs = self.workdirs_dir / node_id  # kept after the node ends, until pruned
            workdir = outputs / workdir_name
            _private_dir(node_dir)
            _private_dir(outputs)
            # A run user cannot read the node's folder: its script is in its own.
            script = (outputs if as_user else node_dir) / "script.sh"
            home = outputs / "home" if as_user else None
            if ex_tree:
                os.rename(ex_tree, workdir)  # the staged tree is on this filesystem: a move, not a copy
            if ex_image:
                # Mounted into the container, whose user may not be ours; `outputs` keeps others out.
                workdir.mkdir(exist_ok=True)
                os.chmod(workdir, 0o755)
                _write_file(script, ex_script.encode(), 0o644)
            else:
                _private_dir(workdir)
                _write_file(script, ex_script.encode())
                try:
                    volumes.link(workdir, mounts)
                except OSError as exc:
                    self.retention.ended(ended_record(node_id, *(ex_retention_key or (name, name)), time.time(), outputs))
                    shutil.rmtree(node_dir, ignore_errors=True)
                    raise LocalError(str(exc), driver=self) from None
                if as_user:
                    _private_dir(home)
                    runuser.give(outputs, as_user)  # links as links: never what a link of the tree points to
            _write_file(self._log(node_id), b"")
            _write_file(node_dir / "exit_code", _EXIT_RESERVED)
            meta = {
                "id": node_id,
                "name": name,
                "tags": dict(ex_tags or {}),
                "pid": None,  # filled in by the launcher
                "start_time": None,
                "started_at": _now(),
                "gpus": gpu_ids,
                "image": ex_image,
                "container_tool": tool,
                "workdir": workdir_name,
                "workdir_path": str(workdir),
                "retention": list(ex_retention_key) if ex_retention_key else None,
                "subreaper": True,  # node_wrapper.py: it stops the run itself on TERM
                "max_log_size": self.max_log_size,
                "python": ex_python,
                "run_user": as_user.name if as_user else None,
            }
            meta_path = node_dir / "meta.json"
            _write_atomic(meta_path, json.dumps(meta, indent=2))

            venv = workdir / VENV_NAME if ex_python else None
            env = self._node_env(ex_env, gpu_ids, node_id, venv, as_user, home)
            container_args = (*volumes.docker_args(mounts), *_outside_mounts(ex_outside), *ex_container_args) if ex_image else ()
            command = self._command(node_id, script, workdir, env, ex_env, ex_image, tool, gpu_ids, container_args)
            if ex_image and ex_registry_auth:
                command = _with_registry_login(command, tool, node_dir, ex_image, *ex_registry_auth)
            if venv:  # made by the node itself: its time is the run's, not this step's
                command = [ex_python, "-I", self.prelude, str(venv), str(self.pip_dir), *command]
            log_path = str(self._log(node_id))
            launch = subprocess.run(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(lock_fd), str(meta_path), log_path,
                 sys.executable, "-I", "-S", _WRAPPER, str(node_dir / "exit_code"), log_path,
                 str(self.max_log_size), str(self.stop_grace), as_user.spec if as_user else "-", *command],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, pass_fds=(lock_fd,),
                capture_output=True, text=True, timeout=60,
            )
            if launch.returncode != 0:
                _write_file(node_dir / "destroyed", b"")
                self.retention.ended(ended_record(node_id, *(ex_retention_key or (name, name)), time.time(), outputs))
                raise LocalError(
                    f"could not start node {node_id}: {launch.stderr.strip()}", driver=self
                )
            return self._node(node_dir)

    def list_nodes(self, *args, **kwargs) -> list[Node]:
        with self._lock(fcntl.LOCK_SH):
            nodes = [self._node(d) for d in self._node_dirs() if not (d / "destroyed").exists()]
        self.retention.maybe_prune(time.monotonic())  # listed every controller step: the policy's clock
        return sorted((n for n in nodes if n), key=lambda n: n.extra["started_at"] or "")

    def destroy_node(self, node: Node | str, ex_timeout: float = 5.0) -> bool:
        """End every process of the node (TERM, then KILL after ex_timeout) and hide it.

        The node directory, with its log and work dir, stays on disk. Returns False for
        an unknown node id.
        """
        node_id = node if isinstance(node, str) else node.id
        node_dir = self.nodes_dir / node_id
        meta = self._meta(node_dir)
        if meta is None:
            return (self.ended_dir / node_id).is_dir()  # destroyed before: nothing left to do
        self._end_processes(meta, ex_timeout)
        if meta.get("image") and meta.get("container_tool"):
            # Killing the client does not always stop the container itself.
            subprocess.run(
                [meta["container_tool"], "rm", "-f", f"gitopsq-{meta['id']}"],
                capture_output=True, timeout=30, check=False,
            )
        _write_file(node_dir / "destroyed", b"")
        with self._lock(fcntl.LOCK_EX):
            with contextlib.suppress(OSError):
                node_dir.rename(self.ended_dir / node_dir.name)
            # From now on its working directory is the retention policy's to keep or prune.
            workdir = self._workdir(node_dir if node_dir.exists() else self.ended_dir / node_id, meta)
            group, unit = meta.get("retention") or (meta.get("name", ""),) * 2  # no key: its name is both
            self.retention.ended(ended_record(node_id, group, unit, time.time(),
                                              workdir.parent if meta.get("workdir_path") else workdir))
        return True

    # ---- extras --------------------------------------------------------------------

    def ex_capacity(self) -> dict[str, int]:
        """Free slots and GPUs, counting nodes whose process is still running."""
        with self._lock(fcntl.LOCK_SH):
            free_slots, free_gpus = self._free()
        return {"slots": free_slots, "gpus": len(free_gpus)}

    def ex_log_path(self, node_or_id: Node | str) -> Path:
        node_id = node_or_id if isinstance(node_or_id, str) else node_or_id.id
        return self._log(node_id)

    def ex_prune_workdirs(self) -> list[str]:
        """Apply the retention policy to ended working directories now; the ids of those pruned."""
        return self.retention.prune()

    def ex_get_node(self, node_id: str) -> Node | None:
        """The node, destroyed ones included (state TERMINATED); None if unknown."""
        node_dir = self.nodes_dir / node_id
        if not node_dir.exists():
            node_dir = self.ended_dir / node_id
        return self._node(node_dir) if node_dir.is_dir() else None

    # ---- internals -----------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self, mode: int):
        # flock is per open file, so a fresh fd per call keeps threads and processes apart.
        fd = _open_private(self.state_dir / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, mode)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _log(self, node_id: str) -> Path:
        return self.logs_dir / f"{node_id}.log"

    def _node_dirs(self) -> list[Path]:
        return [d for d in self.nodes_dir.iterdir() if d.is_dir()]

    @staticmethod
    def _meta(node_dir: Path) -> dict | None:
        try:
            return json.loads((node_dir / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None  # creation died before meta.json was written

    def _free(self) -> tuple[int, list[int]]:
        used_slots, used_gpus = 0, set()
        for d in self._node_dirs():
            meta = self._meta(d)
            if meta is None or (d / "destroyed").exists():
                continue
            if _alive(meta.get("pid"), meta.get("start_time")):
                used_slots += 1
                used_gpus.update(meta.get("gpus", []))
        return self.slots - used_slots, [g for g in range(self.gpus) if g not in used_gpus]

    def _node(self, node_dir: Path) -> Node | None:
        meta = self._meta(node_dir)
        if meta is None:
            return None
        pid, start = meta.get("pid"), meta.get("start_time")
        running = _alive(pid, start)
        if not running:
            _reap(pid, start)
        exit_code = finished_at = None
        if not running:
            exit_code, finished_at = _exit_status(node_dir / "exit_code")
        destroyed = (node_dir / "destroyed").exists()
        if destroyed:
            state = NodeState.TERMINATED
        else:
            state = NodeState.RUNNING if running else NodeState.STOPPED
        extra = {
            "tags": meta.get("tags", {}),
            "pid": pid,
            "exit_code": exit_code,
            # Ended without the wrapper recording a status: killed, or machine rebooted.
            "lost": not running and exit_code is None,
            "log": str(self._log(meta["id"])),
            "workdir": str(self._workdir(node_dir, meta)),
            "gpus": meta.get("gpus", []),
            "image": meta.get("image"),
            "started_at": meta.get("started_at"),
            "finished_at": finished_at,
            "destroyed": destroyed,
        }
        created = dt.datetime.fromisoformat(meta["started_at"]) if meta.get("started_at") else None
        return Node(meta["id"], meta.get("name", ""), state, [], ["127.0.0.1"], self,
                    extra=extra, created_at=created)

    @staticmethod
    def _workdir(node_dir: Path, meta: dict) -> Path:
        # Nodes started before working directories moved out of the node directory have no workdir_path.
        return Path(meta.get("workdir_path") or node_dir / meta.get("workdir", "work"))

    @staticmethod
    def _end_processes(meta: dict, timeout: float) -> None:
        """TERM the node; after `timeout` KILL what is left, and 2 s later the wrapper too.

        The wrapper of a node ends its run's processes itself on TERM and then records the exit
        status, so it is the last thing killed: that way the status of a stopped run is kept.
        """
        pid, start = meta.get("pid"), meta.get("start_time")
        processes, wrapper = _node_processes(meta)
        if wrapper and meta.get("subreaper"):
            _signal([wrapper], signal.SIGTERM)
        else:  # an older wrapper (it traps TERM to the group), or a SIGKILLed one's leftovers
            _signal(processes, signal.SIGTERM)
        kill_at = time.monotonic() + timeout
        while processes:
            now = time.monotonic()
            if now >= kill_at + 4.0:
                log.warning("node %s: processes %s did not end", meta["id"], sorted(processes))
                return
            if now >= kill_at:
                _signal(processes if now >= kill_at + 2.0 else processes - {wrapper}, signal.SIGKILL)
            time.sleep(0.05)
            _reap(pid, start)
            processes, wrapper = _node_processes(meta)

    @staticmethod
    def _node_env(ex_env: dict[str, str] | None, gpu_ids: list[int], node_id: str, venv: Path | None = None,
                  user: RunUser | None = None, home: Path | None = None) -> dict[str, str]:
        # A clean env: the controller's own variables (tokens, credentials) stay out.
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home) if home else os.environ.get("HOME", "/"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",  # so Python scripts' output reaches the log live
        }
        if user:
            env["USER"] = env["LOGNAME"] = user.name
        env.update({str(k): str(v) for k, v in (ex_env or {}).items()})
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
        env[NODE_ENV] = node_id  # finds the node's processes wherever they went (see destroy_node)
        if venv:  # as `source .venv/bin/activate` would, whatever PATH the run set
            env["VIRTUAL_ENV"] = str(venv)
            env["PATH"] = f"{venv}/bin:{env['PATH']}"
        return env

    @staticmethod
    def _command(node_id, script, workdir, env, ex_env, image, tool, gpu_ids, container_args=()) -> list[str]:
        if not image:
            # stdbuf makes C programs line-buffer stdout into the log (stderr is unbuffered).
            stdbuf = shutil.which("stdbuf", path=env["PATH"])
            prefix = [stdbuf, "-oL"] if stdbuf else []
            return [*prefix, shutil.which("bash") or "/bin/bash", str(script)]
        # The host's network, as for a process run and on a cloud node: a service's port and a
        # run's ports are this machine's, where `ps` says they are.
        cmd = [tool, "run", "--rm", "--name", f"gitopsq-{node_id}", "--network", "host",
               "-v", f"{workdir}:/work", "-v", f"{script}:/gitopsq/script.sh:ro", "-w", "/work"]
        # Values come from the CLI's env; CUDA_VISIBLE_DEVICES is the runtime's business
        # inside the container, where the assigned GPUs are renumbered from 0.
        for k in ["LANG", "PYTHONUNBUFFERED", *(ex_env or {})]:
            cmd += ["-e", k]
        if gpu_ids:
            ids = ",".join(map(str, gpu_ids))
            cmd += ["--gpus", f"device={ids}"] if tool == "docker" else [
                a for g in gpu_ids for a in ("--device", f"nvidia.com/gpu={g}")
            ]
        cmd += list(container_args)  # e.g. --shm-size, from the run's resources
        # An empty script means the run gave no commands: the image's own command runs.
        own_command = script.read_text().strip() == ""
        return [*cmd, image] if own_command else [*cmd, image, "bash", "/gitopsq/script.sh"]

    def _container_tool(self) -> str | None:
        """docker or podman, whichever engine answers first; the answer is cached."""
        if self._container_tool_cache is _UNSET:
            self._container_tool_cache = None
            for tool in self.container_tools:
                try:
                    ok = subprocess.run(
                        [tool, "info"], capture_output=True, timeout=3
                    ).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
                if ok:
                    self._container_tool_cache = tool
                    break
        return self._container_tool_cache
