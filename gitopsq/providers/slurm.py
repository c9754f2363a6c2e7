"""Slurm as a Libcloud compute driver: each "node" is one batch job.

`create_node` submits the run with `sbatch`, `list_nodes` reads the jobs with `squeue`,
`destroy_node` cancels with `scancel`, and `ex_partition_nodes` reads what the partition has and
holds with `sinfo`. The adapter that maps runs onto this driver is gitopsq.providers.slurm_adapter.

Why the command line and not slurmrestd: every cluster that runs Slurm has its commands on the
login nodes, authenticated by munge as the user who runs them; slurmrestd is an optional daemon
that many sites do not run, needs JWT or socket authentication set up by the administrators, and
its API version changes with Slurm's (v0.0.38 in 22.05, gone by 24.05). The commands are also
what a login host reached over ssh offers. Only machine-readable output is parsed: `sbatch
--parsable`, `squeue -O` and `sinfo -O` with a `|` after each field (the one free-text field,
the job comment, comes last), and `scontrol show ... -o` key=value lines; times come as epoch
seconds (SLURM_TIME_FORMAT=%s). `squeue --json` exists in 22.05 but ignores `--me`,
`--partition` and `--states`, so it would ship every job of every user on each poll.

Everything a job needs lives under the driver's root, which must be on a filesystem the
cluster's nodes mount at the same path (and, with a login host, this machine too):

    <root>/nodes/<key>/meta.json   name, tags, job id, node count
    <root>/nodes/<key>/run.sh      the run's commands (after making its volumes' folders, on each node)
    <root>/nodes/<key>/batch.sh    the batch script sbatch got (kept for people): never a secret's value
    <root>/work/<key>/             the run's working directory: its tree (repos, files), its volumes'
                                   links and its venv (.venv), or fresh and empty; never moved, so
                                   what `ps` and the API show stays where the run left it
    <root>/node_python.py          makes a run's venv on the node (gitopsq.providers.node_python)
    <root>/pip/                    pip, copied once per interpreter, for the runs' venvs
    <root>/nodes/<key>/exit_code   written by the batch script when the commands end
    <root>/ended/<key>/            where a destroyed job's files move (kept, like its log)
    <root>/logs/<key>.log          the job's output (-o), never moved: users read it later

Secrets reach a job through sbatch's own environment, never a file or a command line: sbatch
exports the environment it runs in to the job (its default `--export=ALL`), so each value goes in
under a neutral name (GITOPSQ_SECRET_<i>, which sbatch does not read as an option) and the batch
script moves it to the run's name; batch.sh on the shared filesystem holds only the names. Over
ssh the values travel on sbatch's standard input, ahead of the script, base64 per line. Like
every job's environment, Slurm keeps them in slurmctld's state directory (SlurmUser's alone)
while it knows the job.

A job carries gitopsq's tags in its comment (`gitopsq:controller=...;run=...;submission=...;
key=...`), so a restarted controller finds its jobs in Slurm; the exit code on the shared
filesystem outlives Slurm's memory of the job (MinJobAge, 300 s by default).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable

from libcloud.common.types import LibcloudError
from libcloud.compute.base import Node, NodeDriver, NodeSize
from libcloud.compute.types import NodeState

from gitopsq.providers import volumes as vols
from gitopsq.providers.slurm_output import (
    JOB_FIELDS,
    NEVER_STARTS,
    NODE_FIELDS,
    TIMED_OUT,
    WORKING,
    Job,
    PartitionNode,
    job_outcome,
    parse_config,
    parse_jobs,
    parse_key_values,
    parse_nodes,
    tags_comment,
)

__all__ = [
    "PROVIDER",
    "SlurmNodeDriver",
    "SlurmError",
    "SlurmCapacityError",
    "SlurmUnavailableError",
    "SlurmAuthError",
    "SlurmUnsatisfiableError",
    "batch_script",
    "register",
]

PROVIDER = "gitopsq-slurm"
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


class SlurmError(LibcloudError):
    """A Slurm command failed; str() is the plain message (the command's own words)."""

    def __str__(self) -> str:
        return str(self.value)


class SlurmCapacityError(SlurmError):
    """The job would have to wait for room Slurm gives to others first."""


class SlurmUnavailableError(SlurmError):
    """slurmctld (or the login host) does not answer now."""


class SlurmAuthError(SlurmError):
    """Slurm or the login host refused us: munge, ssh keys, or an account/partition not ours."""


class SlurmUnsatisfiableError(SlurmError):
    """No node of the partition can ever run the request."""


def register() -> None:
    """Make get_driver("gitopsq-slurm") return SlurmNodeDriver (safe to call repeatedly)."""
    from libcloud.compute.providers import DRIVERS, set_driver

    if PROVIDER in DRIVERS:
        return
    try:
        set_driver(PROVIDER, "gitopsq.providers.slurm", "SlurmNodeDriver")
    except AttributeError:  # registered concurrently
        pass


# --- the batch script ---------------------------------------------------------------------------

# Runs on the first node of the job. The run's own commands are run.sh, started once per node (srun
# for more than one node) with dstack's variables for that node, so torchrun works unchanged.
_BATCH = r"""#!/bin/bash
# gitopsq: {name} ({key}); the commands are in run.sh beside this script, the output in the -o file.
unset SLURM_TIME_FORMAT  # gitopsq's, for reading the commands' output: not the run's
GITOPSQ_NODE_DIR={node_dir}
printf '%s\n' "$SLURM_JOB_ID" > "$GITOPSQ_NODE_DIR/job_id"
{exports}export PYTHONUNBUFFERED=1
export DSTACK_NODES_NUM="${{SLURM_JOB_NUM_NODES:-1}}"
export DSTACK_GPUS_PER_NODE={gpus}
export DSTACK_GPUS_NUM=$(( {gpus} * DSTACK_NODES_NUM ))
gitopsq_hosts=$(scontrol show hostnames "${{SLURM_JOB_NODELIST:-$(hostname)}}" 2>/dev/null || hostname)
gitopsq_ips=
for gitopsq_host in $gitopsq_hosts; do
  gitopsq_ip=$(getent ahostsv4 "$gitopsq_host" 2>/dev/null | awk 'NR==1 {{print $1}}')
  gitopsq_ips="$gitopsq_ips${{gitopsq_ips:+
}}${{gitopsq_ip:-$gitopsq_host}}"
done
export DSTACK_NODES_IPS="$gitopsq_ips"
export DSTACK_MASTER_NODE_IP="${{gitopsq_ips%%
*}}"
{secrets}{python}{volumes}{launch}
code=$?
printf '%s\n' "$code" > "$GITOPSQ_NODE_DIR/exit_code.tmp" && mv -f "$GITOPSQ_NODE_DIR/exit_code.tmp" "$GITOPSQ_NODE_DIR/exit_code"
exit "$code"
"""

SECRET_PREFIX = "GITOPSQ_SECRET_"  # how a secret's value reaches the job (sbatch's environment)
VENV_NAME = ".venv"  # the run's own Python, in its working directory (as on the local provider)
NODE_PYTHON = Path(__file__).with_name("node_python.py")  # makes that venv on the node

# The run's venv, made on the first node in the shared working directory: of `python: X.Y` (the
# node's pythonX.Y, from its PATH: the run fails saying so when it has none), else of the node's
# python3 when it has one. First on PATH, with pip, as on the local provider.
_VENV = r"""{find}"$gitopsq_python" -I {prelude} {venv} {pip} true || exit 1
  export VIRTUAL_ENV={venv} PATH={venv}/bin:"$PATH"
{end}
"""
_FIND_VERSION = r"""gitopsq_python=$(command -v python{version}) || {{
  echo "gitopsq: no python{version} on $(hostname)'s PATH" >&2; exit 127; }}
{{
  """
_FIND_ANY = r"""if gitopsq_python=$(command -v python3); then
  """


def _venv_block(python: str | None, work_dir: str, prelude: str, pip_dir: str) -> str:
    find = _FIND_VERSION.format(version=python) if python else _FIND_ANY
    return _VENV.format(find=find, prelude=shlex.quote(prelude), venv=shlex.quote(f"{work_dir}/{VENV_NAME}"),
                        pip=shlex.quote(pip_dir), end="}" if python else "fi")


def _secret_block(names: list[str]) -> str:
    """Each secret from its neutral name in sbatch's environment to the run's name."""
    return "".join(f'export {name}="${{{SECRET_PREFIX}{i}}}"; unset {SECRET_PREFIX}{i}\n' for i, name in enumerate(names))


def _optional_volumes_block(work_dir: str, volumes) -> str:
    """An optional volume whose folder the (first) node lacks is left out, as on the local provider."""
    lines = []
    for instance_path, path, optional in volumes:
        if optional:
            link = shlex.quote(f"{work_dir}/{os.path.normpath(path)}")
            lines.append(f"[ -e {shlex.quote(instance_path)} ] || rm -f -- {link}\n")
    return "".join(lines)


def volumes_prelude(volumes) -> str:
    """run.sh's first lines, on each node: the folders of the volumes that are not optional (made
    when missing, as dstack does)."""
    lines = []
    for instance_path, _, optional in volumes:
        if not optional:
            quoted = shlex.quote(instance_path)
            lines.append(f"mkdir -p -- {quoted} || {{ echo \"gitopsq: volumes: cannot create {quoted} on $(hostname)\" >&2; "
                         f"exit 1; }}\n")
    return "".join(lines)


def batch_script(name: str, key: str, node_dir: str, env: dict[str, str], gpus: int, nodes: int,
                 cpus_per_node: int | None, python: str | None, secret_names: tuple[str, ...] = (),
                 venv: bool = False, prelude: str = "", pip_dir: str = "", volumes=(), work_dir: str | None = None) -> str:
    """The script sbatch gets. `env` is written into it; the secrets are only named (their values
    come from sbatch's environment, see SECRET_PREFIX). venv: make the run's venv (of `python`,
    else of the node's python3) with `prelude` (node_python.py) and `pip_dir`."""
    work_dir = work_dir or f"{node_dir}/work"
    exports = "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in env.items())
    run = shlex.quote(f"{node_dir}/run.sh")
    if nodes > 1:
        cpus = f" --cpus-per-task={cpus_per_node}" if cpus_per_node else ""
        launch = (f"srun --nodes={nodes} --ntasks-per-node=1{cpus} --kill-on-bad-exit=1 "
                  f"bash -c 'export DSTACK_NODE_RANK=$SLURM_NODEID; exec bash \"$0\"' {run}")
    else:
        launch = f"DSTACK_NODE_RANK=0 bash {run}"
    return _BATCH.format(name=name, key=key, node_dir=shlex.quote(node_dir), exports=exports, gpus=int(gpus),
                         secrets=_secret_block(list(secret_names)),
                         python=_venv_block(python, work_dir, prelude, pip_dir) if venv or python else "",
                         volumes=_optional_volumes_block(work_dir, volumes), launch=launch)


# --- the driver ---------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class SlurmNodeDriver(NodeDriver):
    """Submits, lists and cancels batch jobs in one partition; the job files live under `key`."""

    type = PROVIDER
    name = "gitopsq slurm"
    website = "https://slurm.schedmd.com"
    features = {"create_node": []}

    def __init__(self, key: str | Path, partition: str | None = None, account: str | None = None,
                 qos: str | None = None, bin_dir: str | None = None, login: str | None = None,
                 ssh: str = "ssh -o BatchMode=yes", slurm_conf: str | None = None, sbatch_args: tuple[str, ...] = (),
                 pending_grace: float = 10.0, command_timeout: float = 30.0) -> None:
        # No super().__init__(): there is no HTTP connection to build.
        self.root = Path(key).expanduser().resolve()
        self.key, self.secret, self.secure = str(self.root), None, False
        self.api_version = self.region = self.connection = None
        self.account, self.qos = account, qos
        self.bin_dir, self.login, self.ssh = bin_dir, login, shlex.split(ssh)
        self.slurm_conf = slurm_conf if slurm_conf is not None else os.environ.get("SLURM_CONF")
        self.sbatch_args = tuple(sbatch_args)
        self.pending_grace = pending_grace
        self.command_timeout = command_timeout
        self.nodes_dir, self.ended_dir, self.logs_dir = self.root / "nodes", self.root / "ended", self.root / "logs"
        self.work_dir = self.root / "work"
        for folder in (self.nodes_dir, self.ended_dir, self.logs_dir, self.work_dir):
            # The user's alone: scripts hold the run's env, logs its output.
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._partition: str | None = partition

    # ---- running the commands --------------------------------------------------------------

    # What a login host's shell runs ahead of the command: the secrets' values, one NAME=base64
    # line each up to an empty line on standard input, into its environment (sbatch then reads
    # the rest, its script). The values never appear on a command line, here or there.
    _READ_ENV = ('while IFS= read -r gitopsq_l && [ -n "$gitopsq_l" ]; do '
                 'gitopsq_v=$(printf %s "${gitopsq_l#*=}" | base64 -d; echo x); '
                 'export "${gitopsq_l%%=*}=${gitopsq_v%x}"; done; ')

    def _argv(self, command: str, args: tuple[str, ...], with_env: bool = False) -> list[str]:
        program = str(Path(self.bin_dir) / command) if self.bin_dir else command
        if not self.login:
            return [program, *args]
        env = "SLURM_TIME_FORMAT=%s " + (f"SLURM_CONF={shlex.quote(self.slurm_conf)} " if self.slurm_conf else "")
        return [*self.ssh, self.login, (self._READ_ENV if with_env else "") + env + shlex.join([program, *args])]

    def _env(self) -> dict[str, str]:
        # Only what the commands need: the controller's own variables (tokens, credentials, a
        # SLURM_JOB_ID of its own) stay out of the commands and so out of the jobs they submit.
        names = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ") + (("SSH_AUTH_SOCK",) if self.login else ())
        env = {k: os.environ[k] for k in names if k in os.environ}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["SLURM_TIME_FORMAT"] = "%s"
        if self.slurm_conf and not self.login:
            env["SLURM_CONF"] = self.slurm_conf
        return env

    def ex_run(self, command: str, *args: str, input: str | None = None, env: dict[str, str] | None = None) -> str:
        """Run one Slurm command (here, or on the login host); its stdout, or a classified SlurmError.

        env: variables to add to the command's environment (sbatch passes them on to the job)."""
        argv = self._argv(command, args, with_env=bool(env))
        environment = self._env()
        if env and self.login:
            lines = "".join(f"{k}={base64.b64encode(v.encode()).decode()}\n" for k, v in env.items())
            input = lines + "\n" + (input or "")
        elif env:
            environment.update(env)
        try:
            out = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=self.command_timeout,
                                 env=environment)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]}: not found (set --provider-opt bin_dir=... or install Slurm's commands)",
                             driver=self) from None
        except subprocess.TimeoutExpired:
            raise SlurmUnavailableError(f"{command}: no answer within {self.command_timeout:g}s", driver=self) from None
        if out.returncode != 0:
            raise _command_error(command, out.returncode, out.stderr.strip() or out.stdout.strip(), bool(self.login),
                                 self)
        return out.stdout

    # ---- the partition -----------------------------------------------------------------------

    @property
    def partition(self) -> str:
        """The partition jobs go to: the option, else the cluster's default partition."""
        if self._partition is None:
            for line in self.ex_run("scontrol", "show", "partition", "-o").splitlines():
                values = parse_key_values(line)
                if values.get("Default") == "YES":
                    self._partition = values["PartitionName"]
                    break
            else:
                raise SlurmError("the cluster has no default partition: set --provider-opt partition=NAME", driver=self)
        return self._partition

    def ex_partition_info(self) -> dict[str, str]:
        """`scontrol show partition <name> -o` as a dict (MaxTime, DefMemPerCPU, State, ...)."""
        for line in self.ex_run("scontrol", "show", "partition", self.partition, "-o").splitlines():
            values = parse_key_values(line)
            if values.get("PartitionName") == self.partition:
                return values
        raise SlurmError(f"partition {self.partition}: not found", driver=self)

    def ex_config(self) -> dict[str, str]:
        """The cluster's configuration (`scontrol show config`)."""
        return parse_config(self.ex_run("scontrol", "show", "config"))

    def ex_partition_nodes(self) -> list[PartitionNode]:
        fmt = ",".join(f"{f}:|" for f in NODE_FIELDS)
        return parse_nodes(self.ex_run("sinfo", "-h", "-N", "-p", self.partition, "-O", fmt))

    def ex_capacity(self) -> dict[str, int]:
        """What the partition's usable nodes have free now: CPUs, memory (MB), GPUs (also per type)."""
        free = {"cpus": 0, "memory_mb": 0, "gpus": 0}
        for node in self.ex_partition_nodes():
            if not node.usable:
                continue
            free["cpus"] += node.cpus_idle
            free["memory_mb"] += max(0, node.memory_mb - node.memory_allocated_mb)
            for key in node.gres:
                if key == "gpu" or key.startswith("gpu:"):
                    name = "gpus" if key == "gpu" else f"gpus:{key[4:]}"
                    free[name] = free.get(name, 0) + node.free(key)
        return free

    # ---- catalog -------------------------------------------------------------------------------

    def list_sizes(self, location=None) -> list[NodeSize]:
        """One size per node of the partition (what a job on it can have)."""
        return [NodeSize(n.name, n.name, n.memory_mb, n.tmp_disk_mb // 1024, None, 0, self,
                         extra={"cpus": n.cpus_total, "gres": n.gres, "state": n.state})
                for n in self.ex_partition_nodes()]

    def list_images(self, location=None, ex_only_active=True):
        return []

    def list_locations(self):
        return []

    # ---- nodes -------------------------------------------------------------------------------

    def create_node(self, name: str, ex_script: str = "", ex_env: dict[str, str] | None = None,
                    ex_tags: dict[str, str] | None = None, ex_cpus: int | None = None,
                    ex_memory_mb: int | None = None, ex_gpus: int = 0, ex_gpu_type: str | None = None,
                    ex_tmp_mb: int | None = None, ex_time_minutes: int | None = None, ex_nodes: int = 1,
                    ex_python: str | None = None, ex_venv: bool = False,
                    ex_secret_env: dict[str, str] | None = None, ex_tree: str | None = None,
                    ex_volumes: tuple[tuple[str, str, bool], ...] = (),
                    ex_prepare_workdir: Callable[[Path], None] | None = None) -> Node:
        """Submit one batch job and wait up to the pending grace for Slurm to start it.

        ex_cpus, ex_memory_mb and ex_gpus are per node; ex_nodes nodes get one task each.
        ex_python: a version (3.12): the node's pythonX.Y makes the run's venv (.venv in its working
        directory, first on PATH); ex_venv: without ex_python, one of the node's python3 when it has
        one. ex_secret_env: variables whose values are secrets: they reach the job through sbatch's
        environment, never a file (see the module's doc). ex_tree: a folder holding the run's working
        tree (its repos and files), moved (or copied, from another filesystem) into place as the
        working directory. ex_volumes: (instance_path, path, optional): links in the working
        directory to a folder of the node (made when missing; an optional one missing on the first
        node is left out). ex_prepare_workdir(path) fills the working directory further before the
        job is submitted. A job still pending after the grace is cancelled and SlurmCapacityError
        raised: other jobs hold the room, and the run goes back to gitopsq's queue instead of Slurm's.
        """
        if ex_python and not re.fullmatch(r"[0-9]+(\.[0-9]+)*", ex_python):
            raise SlurmError(f"python: {ex_python!r} is not a version such as 3.12", driver=self)
        key = uuid.uuid4().hex[:12]
        node_dir = self.nodes_dir / key
        work = self.work_dir / key
        node_dir.mkdir(mode=0o700)
        tags = {**(ex_tags or {}), "key": key}
        meta = {"key": key, "name": name, "tags": tags, "nodes": ex_nodes, "created_at": time.time()}
        secret_env = dict(ex_secret_env or {})
        try:
            self._place_tree(ex_tree, work)
            try:
                vols.check([path for _, path, _ in ex_volumes], container=False)
                vols.link(work, [(instance_path, path) for instance_path, path, _ in ex_volumes])
            except (OSError, ValueError) as exc:
                raise SlurmError(str(exc), driver=self) from None
            if ex_prepare_workdir is not None:
                ex_prepare_workdir(work)
            (node_dir / "run.sh").write_text(volumes_prelude(ex_volumes) + ex_script)
            batch = batch_script(name, key, str(node_dir), dict(ex_env or {}), ex_gpus, ex_nodes, ex_cpus, ex_python,
                                 secret_names=tuple(secret_env), venv=ex_venv, prelude=str(self._node_python()),
                                 pip_dir=str(self.root / "pip"), volumes=ex_volumes, work_dir=str(work))
            (node_dir / "batch.sh").write_text(batch)
            _write_atomic(node_dir / "meta.json", json.dumps(meta, indent=2))
            args = self._sbatch_args(name, key, tags, ex_cpus, ex_memory_mb, ex_gpus, ex_gpu_type, ex_tmp_mb,
                                     ex_time_minutes, ex_nodes)
            values = {f"{SECRET_PREFIX}{i}": value for i, value in enumerate(secret_env.values())}
            out = self.ex_run("sbatch", *args, input=batch, env=values)
        except SlurmUnavailableError:
            raise  # sbatch may have got through: keep the directory, so list_nodes finds the job by its key
        except BaseException:
            for folder in (node_dir, work):  # refused: nothing was submitted, nothing to keep
                shutil.rmtree(folder, ignore_errors=True)
            raise
        job_id = out.strip().split(";", 1)[0]
        meta["job_id"] = job_id
        _write_atomic(node_dir / "meta.json", json.dumps(meta, indent=2))
        try:
            job = self._wait_started(job_id)
        except SlurmUnavailableError:
            # Submitted, but Slurm does not say more now: the job is ours; the next listing tells how it goes.
            job = Job(job_id, "PENDING", "NotYetKnown", 0, "", None, None, None, "", 1, self.partition, "")
            return self._node(node_dir, meta, job)
        if job is not None and job.state == "PENDING":
            self._cancel(job_id)
            self._retire(node_dir)
            shutil.rmtree(work, ignore_errors=True)  # never started: nothing of the run's is in it
            why = f"job {job_id} pending ({job.reason})"
            if job.reason.startswith(NEVER_STARTS):
                raise SlurmUnsatisfiableError(f"{why}: partition {self.partition} will never start it", driver=self)
            raise SlurmCapacityError(f"{why} after {self.pending_grace:g}s: partition {self.partition} is busy "
                                     f"with other jobs", driver=self)
        return self._node(node_dir, meta, job)

    @staticmethod
    def _place_tree(tree: str | None, work: Path) -> None:
        """The run's staged tree becomes its working directory (else a fresh empty one)."""
        if not tree:
            work.mkdir()
            return
        try:
            os.rename(tree, work)  # the staging folder is on this filesystem: a move, not a copy
        except OSError:  # workdir_root on another filesystem (the cluster's): a copy; the controller drops the staged one
            shutil.copytree(tree, work, symlinks=True)

    def _node_python(self) -> Path:
        """node_python.py where every node reads it (the shared root), refreshed when gitopsq's changes."""
        target = self.root / NODE_PYTHON.name
        source = NODE_PYTHON.read_bytes()
        if not target.exists() or target.read_bytes() != source:
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}")
            tmp.write_bytes(source)
            os.replace(tmp, target)
        return target

    def _sbatch_args(self, name, key, tags, cpus, memory_mb, gpus, gpu_type, tmp_mb, minutes, nodes) -> list[str]:
        args = ["--parsable", f"--job-name={name}", f"--comment={tags_comment(tags)}", f"--partition={self.partition}",
                f"--output={self.logs_dir / (key + '.log')}", f"--chdir={self.work_dir / key}",
                f"--nodes={nodes}", "--ntasks-per-node=1", "--no-requeue"]
        if self.account:
            args.append(f"--account={self.account}")
        if self.qos:
            args.append(f"--qos={self.qos}")
        if cpus:
            args.append(f"--cpus-per-task={cpus}")
        if memory_mb:
            args.append(f"--mem={memory_mb}M")
        if gpus:
            args.append(f"--gres=gpu:{gpu_type + ':' if gpu_type else ''}{gpus}")
        if tmp_mb:
            args.append(f"--tmp={tmp_mb}M")
        if minutes:
            args.append(f"--time={minutes}")
        return [*args, *self.sbatch_args]

    def _wait_started(self, job_id: str) -> Job | None:
        """The job once Slurm has placed it (or ended it), else as it is when the grace is over."""
        deadline = time.monotonic() + self.pending_grace
        pause = 0.02
        while True:
            job = self._job(job_id)
            if job is None or job.state != "PENDING":
                return job
            if job.reason.startswith(NEVER_STARTS) or time.monotonic() >= deadline:
                return job
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def list_nodes(self) -> list[Node]:
        """Our jobs that are not destroyed: the ones Slurm lists, and those it has already forgotten."""
        listed = {}
        for job in self._squeue():
            key = job.tags.get("key")
            if key and key not in listed:  # a job that is not ours, or whose directory moved to ended/, is skipped
                listed[key] = job
        nodes = []
        for node_dir in self.nodes_dir.iterdir():
            meta = self._meta(node_dir)
            if meta is None:
                continue
            job = listed.get(node_dir.name)
            if job is None and not meta.get("job_id"):
                meta["job_id"] = self._read(node_dir / "job_id")  # the job wrote it: the submission got through
                if not meta["job_id"]:
                    continue  # never submitted (the process died before sbatch answered and the job ran)
            nodes.append(self._node(node_dir, meta, job))
        return nodes

    def destroy_node(self, node: Node) -> bool:
        """Cancel the job if Slurm still runs it; its directory moves to ended/, its log stays."""
        job_id = node.extra.get("job_id") or node.id
        if node.extra.get("slurm_state") in WORKING:
            self._cancel(job_id)
        key = node.extra.get("key")
        if key:
            self._retire(self.nodes_dir / key)
        return True

    def ex_get_node(self, job_id: str) -> Node | None:
        return next((n for n in self.list_nodes() if n.id == job_id), None)

    # ---- internals ---------------------------------------------------------------------------

    def _squeue(self, *select: str) -> list[Job]:
        fmt = ",".join(f"{f}:|" for f in JOB_FIELDS)  # no width: no field is cut short
        where = list(select) or ["--me", f"--partition={self.partition}"]
        return parse_jobs(self.ex_run("squeue", "-h", "--states=all", *where, "-O", fmt))

    def _job(self, job_id: str) -> Job | None:
        try:
            jobs = self._squeue(f"--jobs={job_id}")
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return None  # Slurm has forgotten it
            raise
        return next((j for j in jobs if j.job_id == job_id), None)

    def _cancel(self, job_id: str) -> None:
        try:
            self.ex_run("scancel", job_id)
        except SlurmError as exc:  # already ended, or long forgotten: cancelled is what we wanted
            if not re.search(r"already completing or completed|Invalid job id", str(exc)):
                raise

    def _retire(self, node_dir: Path) -> None:
        target = self.ended_dir / node_dir.name
        try:
            os.replace(node_dir, target)
        except FileNotFoundError:
            pass  # already retired
        except OSError:  # ended/<key> exists (retired once, then re-created): keep the newer copy apart
            os.replace(node_dir, self.ended_dir / f"{node_dir.name}-{uuid.uuid4().hex[:6]}")

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            return path.read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    @staticmethod
    def _meta(node_dir: Path) -> dict | None:
        try:
            return json.loads((node_dir / "meta.json").read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None

    def _node(self, node_dir: Path, meta: dict, job: Job | None) -> Node:
        key = meta["key"]
        if job is not None and not meta.get("job_id"):  # the controller died between sbatch and this record
            meta["job_id"] = job.job_id
            _write_atomic(node_dir / "meta.json", json.dumps(meta, indent=2))
        job_id = meta.get("job_id") or (job.job_id if job else "")
        recorded = self._read(node_dir / "exit_code")
        recorded_code = int(recorded) if recorded and recorded.lstrip("-").isdigit() else None
        if job is None:
            slurm_state = "FORGOTTEN"  # past MinJobAge: only the shared filesystem knows how it ended
            exit_code, lost = recorded_code, recorded_code is None
        else:
            slurm_state = job.state
            exit_code, lost = job_outcome(job, recorded_code)
        if slurm_state in WORKING:
            state = NodeState.PENDING if slurm_state == "PENDING" else NodeState.RUNNING
        else:
            state = NodeState.STOPPED
        extra = {
            "key": key,
            "tags": meta.get("tags", {}),
            "job_id": job_id,
            "slurm_state": slurm_state,
            "reason": job.reason if job else None,
            "nodelist": job.nodelist if job else None,
            "partition": job.partition if job else self._partition,
            "exit_code": exit_code,
            "lost": lost,
            "timed_out": slurm_state in TIMED_OUT,
            "log": str(self.logs_dir / f"{key}.log"),
            "workdir": str(self.work_dir / key),
            "submitted_at": job.submit_time if job else meta.get("created_at"),
            "started_at": job.start_time if job else None,
            "ended_at": job.end_time if job else None,
            "time_limit": job.time_limit if job else None,
            "destroyed": False,
        }
        return Node(job_id, meta.get("name", ""), state, [], [], self, extra=extra)


_UNAVAILABLE = re.compile(r"Unable to contact slurm controller|Socket timed out|Connection refused|temporarily unable|"
                          r"Slurm backup controller in standby|Transport endpoint|Communication connection failure|"
                          r"Zero Bytes were transmitted", re.I)
_AUTH = re.compile(r"Invalid authentication credential|Protocol authentication error|munge|Invalid user id|"
                   r"Access/permission denied|Permission denied|Invalid account|Invalid qos|invalid partition|"
                   r"not allowed to use|User's group not permitted", re.I)
_UNSATISFIABLE = re.compile(r"Requested node configuration is not available|Invalid generic resource|"
                            r"Requested time limit is invalid|Node count specification invalid|"
                            r"More processors requested than permitted|Memory required by task is not available|"
                            r"Temporary disk specification can not be satisfied|Invalid feature specification", re.I)
_CAPACITY = re.compile(r"Job violates accounting/QOS policy|MaxSubmitJob|job submit limit", re.I)


def _command_error(command: str, code: int, message: str, over_ssh: bool, driver) -> SlurmError:
    """A failed command's error, classified once here by what it said."""
    text = f"{command}: {message or f'exited {code}'}"
    if over_ssh and code == 255:  # ssh itself failed
        return (SlurmAuthError if re.search(r"Permission denied|Host key verification", message) else SlurmUnavailableError)(
            text, driver=driver)
    for pattern, cls in ((_UNAVAILABLE, SlurmUnavailableError), (_UNSATISFIABLE, SlurmUnsatisfiableError),
                         (_CAPACITY, SlurmCapacityError), (_AUTH, SlurmAuthError)):
        if pattern.search(message):
            return cls(text, driver=driver)
    return SlurmError(text, driver=driver)
