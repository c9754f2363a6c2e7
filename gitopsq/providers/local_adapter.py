"""The local machine as a gitopsq provider: how runs map onto the local Libcloud driver.

A slot per run, GPUs by index, logs on disk (gitopsq.providers.local is the driver itself).
What the machine can never run is refused before the run queues, field by field, as the table
in gitopsq.providers.fields says.
"""

from __future__ import annotations

import functools
import math
import os
import posixpath
import shutil
import subprocess
from pathlib import Path

from libcloud.compute.base import Node
from libcloud.compute.types import NodeState

from gitopsq.providers.base import Isolation, placement_problem
from gitopsq.providers.local import PROVIDER, LocalCapacityError, LocalError, LocalImageError, LocalNodeDriver, register
from gitopsq.providers.pythons import default_python, find_python
from gitopsq.providers.volumes import CONTAINER_WORKDIR, container_path, overlap, process_path_problem


class LocalAdapter:
    """The local machine as a gitopsq provider: a slot per run, GPUs by index, logs on disk."""

    name = "local"
    reports_exit_codes = False  # the wrapper records the exit code; list_nodes reports it

    def __init__(self, driver: LocalNodeDriver, why_no_run_user: str | None = None):
        self.driver = driver
        self.isolation = self._isolation(why_no_run_user)

    def _isolation(self, why_no_run_user: str | None) -> Isolation:
        """Whether runs can read the controller: its environment, its state, its secrets key."""
        user = self.driver.run_user
        if user is not None:
            return Isolation(True, f"process runs execute as {user.name} (uid {user.uid}), which cannot read the "
                                   f"state directory; container runs see only their own files")
        why = why_no_run_user or "runs execute as the controller's user"
        return Isolation(False, f"{why}: a run without image can read the state directory (every run's env, the "
                                f"secrets key) and the controller's processes; runs with image are kept apart "
                                f"by their container")

    def demand(self, spec) -> dict[str, int]:
        """A slot and its GPUs per node; a cluster run's nodes are admitted together."""
        return {"slots": spec.nodes, "gpus": spec.resources.gpu_count * spec.nodes}

    def capacity(self, owned_running: int) -> dict[str, int]:
        return self.driver.ex_capacity()

    def unsatisfiable(self, spec) -> str | None:
        """Why this machine can never run the spec (it would wait forever), or None.

        Each field is honoured, checked or refused as gitopsq.providers.fields says.
        """
        for check in (self._placement, self._runtime, self._inputs, self._volumes, self._sizes, self._gpus, self._nodes):
            why = check(spec)
            if why:
                return why
        return None

    def _placement(self, spec) -> str | None:
        return placement_problem(spec, "local", "the local provider", "the local provider")

    def _runtime(self, spec) -> str | None:
        if spec.image and self.driver._container_tool() is None:
            return ("image: the local provider runs images with docker or podman, and neither answered "
                    "'docker info' / 'podman info' on this machine")
        if spec.resources.shm_size is not None and not spec.image:
            return ("resources.shm_size: a process run on the local provider shares this machine's /dev/shm; "
                    "set image to run in a container with its own")
        if spec.nvcc and find_nvcc() is None:
            return "nvcc: the local provider found no nvcc on this machine (PATH, /usr/local/cuda/bin); install CUDA's toolkit"
        if spec.python and find_python(spec.python, self.driver.run_user) is None:
            runnable = f" that the run user {self.driver.run_user.name} may run" if self.driver.run_user else ""
            return (f"python: no Python {spec.python}{runnable} on this machine for the local provider "
                    f"(looked on PATH, in pyenv and uv); install it or change python")
        return None

    def _inputs(self, spec) -> str | None:
        """Repos and files land in the working directory; elsewhere only where the run has a filesystem of its own."""
        places = [(f"repos[{i}].path", r.path) for i, r in enumerate(spec.repos)]
        places += [(f"files[{i}]", f.dst) for i, f in enumerate(spec.files)]
        for field, path in places:
            if spec.image and path.startswith("~"):
                return (f"{field}: {path!r}: the home of the image's user is not known to the local provider; "
                        f"use an absolute path")
            if not spec.image and _outside_workdir(path):
                return (f"{field}: {path!r} is outside the working directory; a process run on the local provider "
                        f"has no filesystem of its own (use a relative path, or set image)")
        return None

    def _volumes(self, spec) -> str | None:
        """A process run's volumes are links in its working directory; a container's are mounts."""
        paths = []
        for index, volume in enumerate(spec.volumes):
            field, path = f"volumes[{index}]", volume.path
            if spec.image and path.startswith("~"):
                return (f"{field}: {path!r}: the home of the image's user is not known to the local provider; "
                        f"use an absolute path")
            if spec.image and container_path(path) == CONTAINER_WORKDIR:
                return (f"{field}: {path!r} is the working directory of a container run on the local provider "
                        f"({CONTAINER_WORKDIR}); mount the volume below it, e.g. data")
            problem = None if spec.image else process_path_problem(path)
            if problem:
                return (f"{field}: {path!r} {problem}; a process run on the local provider has no filesystem of its "
                        f"own, so a volume is a link in its working directory (use a relative path, or set image)")
            paths.append(container_path(path) if spec.image else os.path.normpath(path))
        clash = overlap(paths, nested=not spec.image)
        if clash:
            i, j, how = clash
            return (f"volumes[{j}]: {spec.volumes[j].path!r} {how} volumes[{i}]'s path {spec.volumes[i].path!r} "
                    f"(local provider)")
        return None

    def _sizes(self, spec) -> str | None:
        res = spec.resources
        cpus = os.cpu_count() or 1
        if res.cpu and res.cpu.min and res.cpu.min > cpus:
            return f"resources.cpu: needs {res.cpu.min:g} CPUs; this machine has {cpus} (local provider)"
        ram_gb = self._ram_gb()
        if res.memory and res.memory.min and res.memory.min > ram_gb:
            return f"resources.memory: needs {res.memory.min:g}GB; this machine has {ram_gb:.1f}GB (local provider)"
        disk_gb = shutil.disk_usage(self.driver.state_dir).total / 1024**3
        if res.disk and res.disk.min and res.disk.min > disk_gb:
            return f"resources.disk: needs {res.disk.min:g}GB; the state directory's disk has {disk_gb:.0f}GB (local provider)"
        return None

    def _gpus(self, spec) -> str | None:
        gpu = spec.resources.gpu
        count = spec.resources.gpu_count
        if count > self.driver.gpus:
            return f"resources.gpu: needs {count} GPU(s); this machine has {self.driver.gpus} (--local-gpus)"
        if gpu is None or count == 0 or not (gpu.vendor or gpu.names or gpu.memory or gpu.total_memory):
            return None
        models = gpu_models()
        if models is None:
            return ("resources.gpu: the local provider cannot tell this machine's GPU model or memory "
                    "(nvidia-smi did not answer); ask for a count only, e.g. gpu: 1")
        if gpu.vendor and gpu.vendor != "nvidia":
            return f"resources.gpu: this machine's GPUs are NVIDIA, not {gpu.vendor} (local provider)"
        fitting = sorted((m for m in models if _gpu_model_fits(m, gpu)), key=lambda m: -m[1])
        total = sum(memory for _, memory in fitting[:count])
        if len(fitting) < count or (gpu.total_memory and not gpu.total_memory.contains(round(total))):
            have = ", ".join(f"{name} {memory:g}GB" for name, memory in models) or "none"
            return f"resources.gpu: needs {count} GPU(s) matching it; this machine has {have} (local provider)"
        return None

    def _nodes(self, spec) -> str | None:
        """A cluster run's nodes all run at once: this machine must hold them together."""
        if spec.nodes > self.driver.slots:
            return (f"nodes: needs {spec.nodes} slots at once (one per node); this machine has {self.driver.slots} "
                    f"(--local-slots) (local provider)")
        gpus = spec.resources.gpu_count * spec.nodes
        if spec.nodes > 1 and gpus > self.driver.gpus:
            return (f"nodes: needs {gpus} GPUs at once ({spec.resources.gpu_count} on each of {spec.nodes} nodes); "
                    f"this machine has {self.driver.gpus} (--local-gpus) (local provider)")
        return None

    @functools.cache
    def _ram_gb(self) -> float:
        return self.driver.list_sizes()[0].ram / 1024  # the machine's memory does not change while we run

    def create_args(self, launch, tags: dict[str, str]) -> dict:
        from gitopsq.providers.base import cluster_env, registry_login, run_env, run_script

        spec = launch.spec
        script = run_script(spec) if spec.commands or spec.type == "dev-environment" else ""
        env = run_env(spec, launch)
        # A cluster run's nodes are process groups (or containers on the host's network) on this
        # machine: they reach each other, and the master, at 127.0.0.1.
        env.update(cluster_env(spec.nodes, launch.rank, spec.resources.gpu_count, "127.0.0.1", ["127.0.0.1"] * spec.nodes))
        if "PATH" not in env and spec.nvcc and not spec.image and find_nvcc():
            env["PATH"] = f"{os.path.dirname(find_nvcc())}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
        container_args = ()
        if spec.image and spec.resources.shm_size is not None:
            container_args = ("--shm-size", f"{int(math.ceil(spec.resources.shm_size * 1024))}m")
        if spec.image and spec.nodes > 1:
            container_args = (*container_args, "--network", "host")
        name = f"gq-{launch.run}-{launch.submission_id}" + (f"-{launch.rank}" if spec.nodes > 1 else "")
        return dict(name=name, ex_script=script,
                    ex_env=env, ex_gpus=spec.resources.gpu_count,
                    ex_image=spec.image, ex_tags=tags, ex_container_args=container_args,
                    ex_python=None if spec.image else self._interpreter(spec.python),
                    ex_volumes=tuple((v.instance_path, v.path, v.optional) for v in spec.volumes),
                    ex_retention_key=(launch.run, str(launch.submission_id)),
                    ex_tree=self._tree_of(launch),
                    ex_outside=tuple((source, container_path(path)) for source, path in launch.tree_outside),
                    ex_registry_auth=registry_login(spec, launch.secrets) if spec.image else None)

    @staticmethod
    def _tree_of(launch) -> str | None:
        """The working tree a node takes over (moves into place): the master takes the staged one,
        every other node of a cluster run a copy of it (the master is created last)."""
        if launch.tree is None:
            return None
        if launch.rank == 0:
            return str(launch.tree)
        copy = launch.tree.with_name(f"{launch.tree.name}-rank{launch.rank}")
        shutil.copytree(launch.tree, copy, symlinks=True)
        return str(copy)

    def _interpreter(self, version: str | None) -> str | None:
        """The interpreter whose venv a process run gets: of its `python`, else the machine's python3
        (None when the machine has none: the run then has no venv, as it asked for no Python)."""
        if version is None:
            return default_python(self.driver.run_user)
        interpreter = find_python(version, self.driver.run_user)
        if interpreter is None:  # uninstalled since it was checked: the launch fails with the reason
            raise LocalError(f"python: no Python {version} on this machine any more", driver=self.driver)
        return interpreter

    def classify(self, exc: Exception):
        from gitopsq.providers.base import CAPACITY, ERROR, ProviderError

        if isinstance(exc, LocalCapacityError):
            return ProviderError(CAPACITY, "no-free-slot", str(exc))
        if isinstance(exc, LocalImageError):
            return ProviderError(ERROR, "no-container-engine", str(exc))
        return ProviderError(ERROR, type(exc).__name__, str(exc))

    def list_owned(self, driver, controller_id: str) -> list[Node]:
        from gitopsq.providers.base import TAG_CONTROLLER

        return [n for n in driver.list_nodes() if (n.extra.get("tags") or {}).get(TAG_CONTROLLER) == controller_id]

    def exit_code(self, node: Node):
        extra = node.extra
        return node.state == NodeState.RUNNING, extra.get("exit_code"), bool(extra.get("lost")), extra.get("log")


def _outside_workdir(path: str) -> bool:
    normal = posixpath.normpath(path)
    return path.startswith(("/", "~")) or normal == ".." or normal.startswith("../")


@functools.cache
def find_nvcc() -> str | None:
    """NVIDIA's CUDA compiler: on PATH, or where the CUDA toolkit installs it."""
    return shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")


@functools.cache
def gpu_models() -> list[tuple[str, float]] | None:
    """(model name, memory in GB) of each GPU nvidia-smi reports; None when it does not answer."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    models = []
    for line in out.stdout.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip():
            models.append((name.strip(), float(memory.strip() or 0) / 1024))
    return models


def _gpu_model_fits(model: tuple[str, float], gpu) -> bool:
    """dstack names a GPU by its model (A100, H100); nvidia-smi says 'NVIDIA A100-SXM4-80GB'."""
    name, memory = model
    words = set(name.upper().replace("-", " ").split())
    if gpu.names and not any(n.upper() in words or n.upper() in name.upper().split() for n in gpu.names):
        return False
    if gpu.memory and not gpu.memory.contains(round(memory)):
        return False
    return True


def make_local_provider(state_dir: Path, controller_id: str, slots: int | None = None, gpus: int | None = None,
                        max_log_size: int | None = None, keep_workdirs: int | None = None,
                        workdirs_max_size: int | None = None, run_user=None, why_no_run_user: str | None = None):
    """The embedded default provider, through Libcloud's driver registry.

    run_user: the runuser.RunUser process runs execute as (None: this process's user, and
    why_no_run_user says why, for the warning at start and /healthz)."""
    from libcloud.compute.providers import get_driver

    from gitopsq.providers.base import LibcloudProvider

    register()
    driver = get_driver(PROVIDER)(state_dir, slots=slots, gpus=gpus, max_log_size=max_log_size,
                                  keep_workdirs=keep_workdirs, workdirs_max_size=workdirs_max_size, run_user=run_user)
    return LibcloudProvider(driver, LocalAdapter(driver, why_no_run_user), controller_id)
