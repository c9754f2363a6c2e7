"""A Slurm partition as a gitopsq provider: how runs map onto gitopsq.providers.slurm's driver.

- Resources: `cpu` -> `--cpus-per-task` (one task per node), `memory` -> `--mem` (per node),
  `gpu` -> `--gres=gpu[:type]:N` (the type from the names asked for, among the partition's GPU
  types), `disk` -> `--tmp`, `max_duration` -> `--time` in whole minutes rounded up.
- Capacity: the partition's idle CPUs, unallocated memory and free GPUs (`sinfo`), so gitopsq's
  queue keeps deciding the order among its runs; what Slurm leaves pending past the grace comes
  back to gitopsq's queue as a capacity error (a job a restarted controller finds still
  pending is left to Slurm: it is the submission's, already queued there). A request no node
  of the partition could ever hold is `unsatisfiable` at once, with the reason.
- Ends, from Slurm's job states: COMPLETED -> exit 0; FAILED / OUT_OF_MEMORY -> the exit code;
  CANCELLED (by anyone but gitopsq), NODE_FAIL, PREEMPTED -> lost (an interruption). A TIMEOUT
  is reported as still running for a short hold, so the controller's own max_duration deadline
  (which Slurm's `--time`, rounded up to minutes, never precedes) ends it as
  `max-duration-exceeded`; past the hold (max_duration raised or turned off in place after
  the job was submitted) it is lost.

- Inputs: the run's tree (`repos`, `files`, staged by the controller) becomes the job's working
  directory under workdir_root; `env` is written into the batch script and secrets reach the
  job through sbatch's environment only; `volumes` are links in the working directory to a
  folder of the node; the run gets a venv (`.venv`) of its `python` (else the node's python3).
  Nothing can be placed outside the working directory: a job has no filesystem of its own.

`nodes: N` runs (not in the run file format yet) plug in through the driver's `ex_nodes`
(`--nodes N`, one task per node, dstack's DSTACK_* variables from Slurm's); demand and the size
checks then count per node.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
import time
from pathlib import Path

from libcloud.compute.base import Node
from libcloud.compute.types import NodeState

from gitopsq.providers.base import (
    AUTH,
    CAPACITY,
    ERROR,
    TAG_CONTROLLER,
    THROTTLE,
    UNSATISFIABLE,
    Isolation,
    Launch,
    LibcloudProvider,
    ProviderConfigError,
    ProviderError,
    placement_problem,
    run_env,
    run_script,
    secret_env,
)
from gitopsq.providers.slurm import (
    PROVIDER,
    SlurmAuthError,
    SlurmCapacityError,
    SlurmError,
    SlurmNodeDriver,
    SlurmUnavailableError,
    SlurmUnsatisfiableError,
    register,
)
from gitopsq.providers.slurm_output import PartitionNode, minutes_for, slurm_minutes
from gitopsq.providers.volumes import overlap, process_path_problem
from gitopsq.spec import RunSpec

__all__ = ["SLURM_OPTIONS", "SlurmAdapter", "make_slurm_provider"]

# --provider-opt KEY=VALUE for --provider slurm (shown by `gitopsq serve --help`).
SLURM_OPTIONS = {
    "partition": "the partition jobs go to (default: the cluster's default partition)",
    "account": "sbatch --account",
    "qos": "sbatch --qos",
    "bin_dir": "folder holding sbatch, squeue, scontrol, scancel and sinfo (default: PATH)",
    "login": "user@host: run the Slurm commands there over ssh (workdir_root must then be shared with this machine)",
    "ssh": "the ssh command for login (default: ssh -o BatchMode=yes)",
    "slurm_conf": "SLURM_CONF for the commands (default: the environment's)",
    "sbatch_args": "extra sbatch arguments, shell-quoted, e.g. '--constraint=ib --exclusive'",
    "pending_grace": "seconds a new job may stay pending before it goes back to gitopsq's queue (default 10)",
    "workdir_root": "where jobs' working directories and logs go, on a filesystem the nodes mount "
                    "(default: beside the state database)",
}
CONFIG_TTL = 30.0  # seconds the partition's nodes and limits are taken as known (they change rarely)
TIMEOUT_HOLD = 60.0  # seconds a TIMEOUT job is shown as running, for the controller's deadline to end it


class SlurmAdapter:
    """What runs need from a partition, and what its jobs say about how they ended."""

    name = "slurm"
    reports_exit_codes = False  # the job's state in Slurm (and its exit_code file) tells
    # Jobs run as the user who submits them, on nodes that mount workdir_root.
    isolation = Isolation(False, "Slurm jobs run as the user who submits them (the controller's, or the login host's), "
                                 "so a job on a node that mounts the state directory can read it; keep the state "
                                 "directory off the filesystem the cluster's nodes mount (workdir_root)")

    def __init__(self, driver: SlurmNodeDriver, clock=time.monotonic, max_nodes: int | None = None):
        self.driver = driver
        self.clock = clock
        self.max_nodes = max_nodes  # --max-nodes: at most that many of the partition's nodes for gitopsq's runs
        self._timed_out_since: dict[str, float] = {}  # job id -> when this process first saw it TIMEOUT
        self._nodes_cache: tuple[float, list[PartitionNode]] | None = None
        self._defaults_cache: tuple[float, dict[str, str]] | None = None

    # --- what runs need -------------------------------------------------------------------------

    def demand(self, spec: RunSpec) -> dict[str, int]:
        cpus = self._cpus(spec) or 1
        memory = self._memory_mb(spec) or self._default_memory_mb(cpus)
        demand = {"nodes": 1, "cpus": cpus, "memory_mb": memory, "gpus": spec.resources.gpu_count}
        gpu_type = self._gpu_type(spec)
        if gpu_type:
            demand[f"gpus:{gpu_type}"] = spec.resources.gpu_count
        return demand

    def capacity(self, owned_running: int) -> dict[str, int]:
        free = self.driver.ex_capacity()
        if self.max_nodes:
            free["nodes"] = self.max_nodes - owned_running
        return free

    def unsatisfiable(self, spec: RunSpec) -> str | None:
        """Why no node of the partition can ever run the spec, or None (also when Slurm does not answer now)."""
        for check in (self._placement, self._runtime, self._inputs, self._volumes):
            why = check(spec)
            if why:
                return why
        try:
            nodes = self._partition_nodes()
            info = self._partition_defaults()
        except SlurmError:
            return None  # the launch will say what is wrong, as a classified error
        for check in (self._sizes, self._gpus, self._time):
            why = check(spec, nodes, info)
            if why:
                return why
        return None

    def _placement(self, spec: RunSpec) -> str | None:
        return placement_problem(spec, "slurm", "Slurm", "a Slurm partition")

    def _runtime(self, spec: RunSpec) -> str | None:
        if spec.image:
            return ("image: the slurm provider runs commands on the cluster's nodes themselves; "
                    "container images are not supported there")
        if spec.resources.shm_size is not None:
            return "resources.shm_size: a job on a Slurm node shares the node's /dev/shm; the slurm provider cannot size it"
        if spec.nvcc:
            return ("nvcc: the CUDA toolkit of the cluster's nodes is not known to the slurm provider; "
                    "load it in commands (e.g. module load cuda)")
        if spec.nodes > 1:
            return (f"nodes: {spec.nodes}: the slurm provider does not run multi-node tasks yet (they need one "
                    f"allocation, --nodes {spec.nodes}, which the controller does not hand over as one)")
        return None

    def _inputs(self, spec: RunSpec) -> str | None:
        """Repos and files land in the job's working directory: a job has no filesystem of its own."""
        places = [(f"repos[{i}].path", r.path) for i, r in enumerate(spec.repos)]
        places += [(f"files[{i}]", f.dst) for i, f in enumerate(spec.files)]
        for field, path in places:
            normal = posixpath.normpath(path)
            if path.startswith(("/", "~")) or normal == ".." or normal.startswith("../"):
                return (f"{field}: {path!r} is outside the working directory; a job on the slurm provider has no "
                        f"filesystem of its own (use a relative path)")
        return None

    def _volumes(self, spec: RunSpec) -> str | None:
        """A job's volumes are links in its working directory to a folder of the node."""
        for index, volume in enumerate(spec.volumes):
            problem = process_path_problem(volume.path)
            if problem:
                return (f"volumes[{index}]: {volume.path!r} {problem}; a job on the slurm provider has no filesystem "
                        f"of its own, so a volume is a link in its working directory (use a relative path)")
        clash = overlap([posixpath.normpath(v.path) for v in spec.volumes])
        if clash:
            i, j, how = clash
            return (f"volumes[{j}]: {spec.volumes[j].path!r} {how} volumes[{i}]'s path {spec.volumes[i].path!r} "
                    f"(slurm provider)")
        return None

    def _sizes(self, spec: RunSpec, nodes: list[PartitionNode], info: dict[str, str]) -> str | None:
        where = f"partition {self.driver.partition}"
        cpus, memory_mb, tmp_mb = self._cpus(spec), self._memory_mb(spec), self._tmp_mb(spec)
        if cpus and not any(n.cpus_total >= cpus for n in nodes):
            most = max((n.cpus_total for n in nodes), default=0)
            return f"resources.cpu: needs {cpus} CPUs on a node; the largest node of {where} has {most} (slurm provider)"
        limit = _mb(info.get("MaxMemPerNode"))
        if memory_mb and (not any(n.memory_mb >= memory_mb for n in nodes) or (limit and memory_mb > limit)):
            most = min(max((n.memory_mb for n in nodes), default=0), limit or math.inf)
            return (f"resources.memory: needs {memory_mb / 1024:g}GB on a node; {where} allows "
                    f"{most / 1024:.1f}GB at most (slurm provider)")
        if tmp_mb and not any(n.tmp_disk_mb >= tmp_mb for n in nodes):
            most = max((n.tmp_disk_mb for n in nodes), default=0)
            return (f"resources.disk: needs {tmp_mb / 1024:g}GB of node-local disk (--tmp); the nodes of {where} "
                    f"have {most / 1024:.0f}GB at most (TmpDisk) (slurm provider)")
        return None

    def _gpus(self, spec: RunSpec, nodes: list[PartitionNode], info: dict[str, str]) -> str | None:
        gpu, count = spec.resources.gpu, spec.resources.gpu_count
        if gpu is None or count == 0:
            return None
        where = f"partition {self.driver.partition}"
        if gpu.memory or gpu.total_memory:
            return ("resources.gpu: Slurm's gres does not say how much memory a GPU has; "
                    "ask for a model or a count (slurm provider)")
        types = _gpu_types(nodes)
        if gpu.vendor and not any(gpu.vendor.lower() in _words(t) for t in types):
            return (f"resources.gpu: no GPU type of {where} names the vendor {gpu.vendor} "
                    f"(types: {', '.join(types) or 'none'}); name a model instead (slurm provider)")
        if gpu.names:
            fitting = [t for t in types if _type_matches(t, gpu.names)]
            if not any(n.gres.get(f"gpu:{t}", 0) >= count for n in nodes for t in fitting):
                have = ", ".join(f"{t}" for t in types) or "no typed GPUs"
                return f"resources.gpu: needs {count}x {'/'.join(gpu.names)} on a node; {where} has {have} (slurm provider)"
        elif not any(n.gres.get("gpu", 0) >= count for n in nodes):
            most = max((n.gres.get("gpu", 0) for n in nodes), default=0)
            return f"resources.gpu: needs {count} GPU(s) on a node; the nodes of {where} have {most} at most (slurm provider)"
        return None

    def _time(self, spec: RunSpec, nodes: list[PartitionNode], info: dict[str, str]) -> str | None:
        limit = slurm_minutes(info.get("MaxTime", "UNLIMITED"))
        if spec.max_duration is not None and limit is not None and minutes_for(spec.max_duration) > limit:
            return (f"max_duration: {minutes_for(spec.max_duration)} minutes is more than partition "
                    f"{self.driver.partition}'s MaxTime of {limit:g} minutes (slurm provider)")
        return None

    # --- the request ----------------------------------------------------------------------------

    @staticmethod
    def _cpus(spec: RunSpec) -> int | None:
        cpu = spec.resources.cpu
        return int(math.ceil(cpu.min)) if cpu and cpu.min else None

    @staticmethod
    def _memory_mb(spec: RunSpec) -> int | None:
        memory = spec.resources.memory
        return int(math.ceil(memory.min * 1024)) if memory and memory.min else None

    @staticmethod
    def _tmp_mb(spec: RunSpec) -> int | None:
        disk = spec.resources.disk
        return int(math.ceil(disk.min * 1024)) if disk and disk.min else None

    def _gpu_type(self, spec: RunSpec) -> str | None:
        """The partition's GPU type for the names asked for; the one with most free GPUs when several fit."""
        gpu = spec.resources.gpu
        if gpu is None or not gpu.names or spec.resources.gpu_count == 0:
            return None
        try:
            nodes = self._partition_nodes()
        except SlurmError:
            return None
        fitting = [t for t in _gpu_types(nodes) if _type_matches(t, gpu.names)]
        if not fitting:
            return None
        return max(fitting, key=lambda t: sum(n.free(f"gpu:{t}") for n in nodes if n.usable))

    def _default_memory_mb(self, cpus: int) -> int:
        """What Slurm gives a job that does not say: DefMemPerCPU, DefMemPerNode, else a whole node."""
        try:
            info = self._partition_defaults()
            nodes = self._partition_nodes()
        except SlurmError:
            return 0
        per_cpu, per_node = _mb(info.get("DefMemPerCPU")), _mb(info.get("DefMemPerNode"))
        if per_cpu:
            return per_cpu * cpus
        if per_node:
            return per_node
        return max((n.memory_mb for n in nodes), default=0)

    def _partition_nodes(self) -> list[PartitionNode]:
        """The partition's nodes for sizing (they change rarely: re-read every half minute)."""
        now = self.clock()
        if self._nodes_cache is None or now - self._nodes_cache[0] > CONFIG_TTL:
            self._nodes_cache = (now, self.driver.ex_partition_nodes())
        return self._nodes_cache[1]

    def _partition_defaults(self) -> dict[str, str]:
        """MaxTime and memory defaults and limits: the partition's own, else the cluster's."""
        now = self.clock()
        if self._defaults_cache is None or now - self._defaults_cache[0] > CONFIG_TTL:
            info = self.driver.ex_partition_info()
            config = self.driver.ex_config()
            for key in ("DefMemPerCPU", "DefMemPerNode", "MaxMemPerNode"):
                if not _mb(info.get(key)) and _mb(config.get(key)):
                    info[key] = config[key]
            self._defaults_cache = (now, info)
        return self._defaults_cache[1]

    def create_args(self, launch: Launch, tags: dict[str, str]) -> dict:
        spec = launch.spec
        script = run_script(spec) if spec.commands or spec.type == "dev-environment" else ""
        return dict(
            name=f"gq-{launch.run}-{launch.submission_id}", ex_script=script, ex_tags=tags,
            ex_env=run_env(spec, launch, with_secrets=False), ex_secret_env=secret_env(spec, launch.secrets),
            ex_cpus=self._cpus(spec), ex_memory_mb=self._memory_mb(spec), ex_gpus=spec.resources.gpu_count,
            ex_gpu_type=self._gpu_type(spec), ex_tmp_mb=self._tmp_mb(spec),
            ex_time_minutes=minutes_for(spec.max_duration) if spec.max_duration is not None else None,
            ex_python=spec.python, ex_venv=True, ex_tree=str(launch.tree) if launch.tree else None,
            ex_volumes=tuple((v.instance_path, v.path, v.optional) for v in spec.volumes))

    def classify(self, exc: Exception) -> ProviderError:
        """Every driver failure as one of the provider's kinds, in one place."""
        if isinstance(exc, ProviderError):
            return exc
        for cls, kind, code in ((SlurmCapacityError, CAPACITY, "slurm-busy"),
                                (SlurmUnsatisfiableError, UNSATISFIABLE, "slurm-never"),
                                (SlurmUnavailableError, THROTTLE, "slurm-unavailable"),
                                (SlurmAuthError, AUTH, "slurm-refused"),
                                (SlurmError, ERROR, "slurm-error")):
            if isinstance(exc, cls):
                return ProviderError(kind, code, str(exc))
        return ProviderError(ERROR, type(exc).__name__, str(exc))

    # --- watching jobs --------------------------------------------------------------------------

    def list_owned(self, driver: SlurmNodeDriver, controller_id: str) -> list[Node]:
        nodes = [n for n in driver.list_nodes() if (n.extra.get("tags") or {}).get(TAG_CONTROLLER) == controller_id]
        listed = {n.id for n in nodes}
        self._timed_out_since = {k: v for k, v in self._timed_out_since.items() if k in listed}
        return nodes

    def exit_code(self, node: Node):
        """(running, exit code, lost, log) of a job."""
        extra = node.extra
        log = extra.get("log")
        if extra.get("timed_out"):
            first = self._timed_out_since.setdefault(node.id, self.clock())
            if self.clock() - first < TIMEOUT_HOLD:
                return True, None, False, log  # for the controller's max_duration deadline to end
            return False, None, True, log
        if node.state in (NodeState.RUNNING, NodeState.PENDING):
            return True, None, False, log
        return False, extra.get("exit_code"), bool(extra.get("lost")), log


def _mb(value: str | None) -> int:
    """A Slurm memory setting in MB (0 when unset or UNLIMITED)."""
    if not value:
        return 0
    match = re.fullmatch(r"(\d+)([MGT]?)", value.strip())
    if not match:
        return 0
    return int(match.group(1)) * {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[match.group(2)]


def _gpu_types(nodes: list[PartitionNode]) -> list[str]:
    return sorted({key[4:] for n in nodes for key in n.gres if key.startswith("gpu:")})


def _words(gpu_type: str) -> set[str]:
    """nvidia_a100-sxm4-80gb -> {nvidia, a100, sxm4, 80gb} (and the whole name)."""
    lowered = gpu_type.lower()
    return {lowered, *re.split(r"[^a-z0-9]+", lowered)}


def _type_matches(gpu_type: str, names) -> bool:
    words = _words(gpu_type)
    return any(name.lower() in words for name in names)


def make_slurm_provider(state_dir: Path, options: dict, controller_id: str,
                        max_nodes: int | None = None) -> LibcloudProvider:
    """--provider slurm through Libcloud's driver registry; raises ProviderConfigError on bad options."""
    from libcloud.compute.providers import get_driver

    options = dict(options)
    unknown = sorted(set(options) - set(SLURM_OPTIONS))
    if unknown:
        known = "; ".join(f"{k} ({v})" for k, v in SLURM_OPTIONS.items())
        raise ProviderConfigError(f"--provider-opt {', '.join(unknown)}: not a slurm option; slurm takes {known}")
    try:
        grace = float(options.get("pending_grace", 10))
    except ValueError:
        raise ProviderConfigError(f"--provider-opt pending_grace must be seconds, got {options['pending_grace']!r}") from None
    if grace < 0:
        raise ProviderConfigError("--provider-opt pending_grace must not be negative")
    try:
        extra = tuple(shlex.split(options.get("sbatch_args", "")))
    except ValueError as exc:
        raise ProviderConfigError(f"--provider-opt sbatch_args: {exc}") from None
    register()
    driver = get_driver(PROVIDER)(
        options.get("workdir_root") or state_dir, partition=options.get("partition"), account=options.get("account"),
        qos=options.get("qos"), bin_dir=options.get("bin_dir"), login=options.get("login"),
        ssh=options.get("ssh", "ssh -o BatchMode=yes"), slurm_conf=options.get("slurm_conf"), sbatch_args=extra,
        pending_grace=grace)
    return LibcloudProvider(driver, SlurmAdapter(driver, max_nodes=max_nodes), controller_id)
