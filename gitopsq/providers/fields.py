"""What each provider does with each field a run file may set: honoured, checked, or refused.

Never accept a field and ignore it: a field is honoured (it does what dstack's field does),
checked (a requirement the provider verifies before launching, not a limit it enforces), or
refused before the run queues, with a reason naming the field and the provider. This one table
is what the README shows (`render_markdown`), and the tests hold each provider's
`unsatisfiable()` to it.
"""

from __future__ import annotations

LOCAL_PROCESS = "local process"
LOCAL_CONTAINER = "local container (`image`)"
EC2 = "ec2"
SLURM = "slurm"
MODES = (LOCAL_PROCESS, LOCAL_CONTAINER, EC2, SLURM)

# Fields the controller itself honours, whatever the provider.
CONTROLLER_FIELDS = ("type", "name", "commands", "init", "env", "shell", "priority", "retry", "max_duration",
                     "inactivity_duration", "schedule")

# How a provider backs up the controller (which alone decides how a run ends).
CONTROLLER_NOTE = {SLURM: "honoured: by the controller; `max_duration` is also `--time` (whole minutes, rounded up), "
                          "so Slurm ends the job when the controller is down, and a TIMEOUT ends as `max-duration-exceeded`"}

# field -> mode -> "honoured: ...", "checked: ...", "refused: ..." or "-: why it does not apply".
FIELD_SUPPORT: dict[str, dict[str, str]] = {
    "image": {
        LOCAL_PROCESS: "-: a run with `image` is a container run",
        LOCAL_CONTAINER: "honoured: `docker run` or `podman run`; refused when neither answers",
        EC2: "honoured: `docker run` on the node",
        SLURM: "refused: jobs run on the cluster's nodes themselves; container images are not supported there",
    },
    "python": {
        LOCAL_PROCESS: "honoured: the run gets a venv of that version (pyenv, uv or the system's interpreter) in its working directory, `.venv`, first on PATH, with pip, so `pip install` stays in the run; refused when it is not installed (without `python`: a venv of the machine's python3)",
        LOCAL_CONTAINER: "-: `python` and `image` exclude each other (the image brings its Python)",
        EC2: "honoured: runs in the `python:X.Y` image",
        SLURM: "honoured: the run gets a venv of the node's `pythonX.Y` (from its PATH) in its working directory, `.venv`, first on PATH, with pip; the run fails saying so when the node has none (without `python`: a venv of the node's python3, when it has one)",
    },
    "nvcc": {
        LOCAL_PROCESS: "checked: nvcc must be on this machine (PATH or /usr/local/cuda/bin), which is put on the run's PATH",
        LOCAL_CONTAINER: "-: `nvcc` and `image` exclude each other",
        EC2: "refused: set `image` to a CUDA devel image instead",
        SLURM: "refused: the CUDA toolkit of the cluster's nodes is not known to the slurm provider; load it in `commands` (e.g. `module load cuda`)",
    },
    "resources.cpu": {
        LOCAL_PROCESS: "checked: this machine must have that many CPUs",
        LOCAL_CONTAINER: "checked: this machine must have that many CPUs",
        EC2: "honoured: picks an instance type with that many vCPUs",
        SLURM: "honoured: `--cpus-per-task` (the range's minimum); refused when no node of the partition has that many",
    },
    "resources.memory": {
        LOCAL_PROCESS: "checked: this machine must have that much memory",
        LOCAL_CONTAINER: "checked: this machine must have that much memory",
        EC2: "honoured: picks an instance type with that much memory",
        SLURM: "honoured: `--mem` per node; refused above the partition's largest node or MaxMemPerNode",
    },
    "resources.gpu": {
        LOCAL_PROCESS: "honoured: GPUs by index in `CUDA_VISIBLE_DEVICES`; model and memory checked against `nvidia-smi`, refused when it cannot tell",
        LOCAL_CONTAINER: "honoured: `--gpus device=...`; model and memory checked as for a process",
        EC2: "honoured: picks an instance type with those GPUs",
        SLURM: "honoured: `--gres=gpu[:type]:N`, the type matched from the names among the partition's GPU types; refused when no node has them, or for GPU memory (gres does not say it)",
    },
    "resources.disk": {
        LOCAL_PROCESS: "checked: the state directory's disk must be that large",
        LOCAL_CONTAINER: "checked: the state directory's disk must be that large",
        EC2: "honoured: the root volume's size",
        SLURM: "honoured: `--tmp` (node-local disk); refused above every node's TmpDisk",
    },
    "resources.shm_size": {
        LOCAL_PROCESS: "refused: a process shares this machine's /dev/shm; set `image` to get a container with its own",
        LOCAL_CONTAINER: "honoured: `--shm-size`",
        EC2: "honoured with `image` or `python` (`--shm-size`); refused for a run on the node itself",
        SLURM: "refused: a job shares the node's /dev/shm",
    },
    "backends": {
        LOCAL_PROCESS: "honoured: must list `local`, else refused",
        LOCAL_CONTAINER: "honoured: must list `local`, else refused",
        EC2: "honoured: must list `aws` (or `ec2`), else refused",
        SLURM: "honoured: must list `slurm`, else refused",
    },
    "regions": {
        LOCAL_PROCESS: "refused: this machine has no regions",
        LOCAL_CONTAINER: "refused: this machine has no regions",
        EC2: "honoured: must list the controller's region, else refused",
        SLURM: "refused: a partition has no regions",
    },
    "spot_policy": {
        LOCAL_PROCESS: "honoured: `on-demand` and `auto` run here; `spot` is refused",
        LOCAL_CONTAINER: "honoured: `on-demand` and `auto` run here; `spot` is refused",
        EC2: "honoured: `spot` asks for a spot instance; `auto` asks for one and falls back to on-demand when spot has no capacity; a spot interruption is the `interruption` retry event",
        SLURM: "honoured: `on-demand` and `auto` run; `spot` is refused",
    },
    "max_price": {
        LOCAL_PROCESS: "honoured: this machine costs nothing per hour",
        LOCAL_CONTAINER: "honoured: this machine costs nothing per hour",
        EC2: "honoured: the cheapest fitting instance type must cost at most that",
        SLURM: "honoured: the cluster costs nothing per hour",
    },
    "repos": {
        LOCAL_PROCESS: "honoured: checked out into the working directory (a `path` outside it, absolute, `~` or `..`, is refused)",
        LOCAL_CONTAINER: "honoured: checked out into the working directory (/work in the container); a `path` outside it is mounted there read-only, a `~` one is refused",
        EC2: "honoured: the node downloads the tree from the controller (no git credentials on the node); a `path` outside the working directory is written there (mounted read-only with `image`, where a `~` one is refused)",
        SLURM: "honoured: checked out into the job's working directory under `workdir_root`, which the nodes mount (a `path` outside it, absolute, `~` or `..`, is refused)",
    },
    "files": {
        LOCAL_PROCESS: "honoured: copied into the working directory (a `dst` outside it, absolute, `~` or `..`, is refused)",
        LOCAL_CONTAINER: "honoured: copied into the working directory; an absolute `dst` is mounted there read-only, a `~` one is refused",
        EC2: "honoured: downloaded with the tree; an absolute `dst` is written there (mounted read-only with `image`, where a `~` one is refused)",
        SLURM: "honoured: copied into the job's working directory (a `dst` outside it, absolute, `~` or `..`, is refused)",
    },
    "volumes": {
        LOCAL_PROCESS: "honoured: a relative `path` is a link in the working directory to `instance_path`, created when missing (an `optional` one is then left out); an absolute or `~` path is refused (a process has no filesystem of its own)",
        LOCAL_CONTAINER: "honoured: `-v instance_path:path`, a relative `path` under /work; `instance_path` created when missing (an `optional` one is then left out); a `~` path is refused",
        EC2: "honoured: a folder of the node (made when missing; an `optional` one is then left out), `-v` into the container or a link at its path; it lasts as long as the node",
        SLURM: "honoured: a relative `path` is a link in the working directory to the node's `instance_path`, made on each node when missing (an `optional` one missing on the first node is left out); an absolute or `~` path is refused (a job has no filesystem of its own)",
    },
    "registry_auth": {
        LOCAL_PROCESS: "-: applies to images only",
        LOCAL_CONTAINER: "honoured: a login for this run's pull only",
        EC2: "honoured: `docker login` on the node, with the credentials downloaded from the controller",
        SLURM: "-: applies to images only (refused on Slurm)",
    },
    "port": {
        LOCAL_PROCESS: "honoured: the service listens on this machine; `ps`, the API and the run page show its URL (host: `serve --public-host`)",
        LOCAL_CONTAINER: "honoured: the container shares this machine's network (`--network host`); its URL is shown as for a process",
        EC2: "honoured: opened (TCP) to `serve --allow-cidr` in a security group of the run's own, removed after it; to nobody without one; shown without an address (the node's is not recorded yet)",
        SLURM: "honoured: the service listens on its node, reachable on the cluster's network",
    },
    "ports": {
        LOCAL_PROCESS: "honoured: the run listens on this machine; `ps`, the API and the run page show host:port, and for `9000:80` the `ssh -L` command that puts port 80 at 9000 on your machine",
        LOCAL_CONTAINER: "honoured: the container shares this machine's network (`--network host`); shown as for a process",
        EC2: "honoured: the container port is opened (TCP) to `serve --allow-cidr` in a security group of the run's own, removed after it; to nobody without one; listed without an address (the node's is not recorded yet)",
        SLURM: "honoured: the run listens on its node, reachable on the cluster's network",
    },
    "nodes": {
        LOCAL_PROCESS: "honoured: that many process groups on this machine, admitted together or not at all, each with a slot, its GPUs and a working directory of its own; the master is 127.0.0.1; refused when the machine has fewer slots or GPUs than all of them need",
        LOCAL_CONTAINER: "honoured: that many containers on this machine's network (`--network host`), as for processes",
        EC2: "honoured: that many instances created together (in a cluster placement group where the instance type allows one); when one cannot be created the others are destroyed; refused above `--max-nodes`",
        SLURM: "refused: a multi-node task needs one allocation (`--nodes N`), not yet handed over as one",
    },
    "ide": {
        LOCAL_PROCESS: "honoured: `ps`, the API and the run page give the working directory, `code DIR` and a `vscode://file/DIR` link (likewise `cursor`, `windsurf`)",
        LOCAL_CONTAINER: "honoured: as for a process: the IDE opens the working directory, which the container mounts as /work",
        EC2: "honoured: names the IDE that attaches over SSH (`--provider-opt key_name`)",
        SLURM: "honoured: names the IDE that attaches to the node over SSH",
    },
}


def verdict(field: str, mode: str) -> str:
    """honoured, checked, refused or - (does not apply)."""
    return FIELD_SUPPORT[field][mode].split(":", 1)[0]


def render_markdown() -> str:
    """The README's table: one row per field, one column per way a run can be provisioned."""
    lines = ["| field | " + " | ".join(MODES) + " |", "|---|" + "---|" * len(MODES)]
    for field, by_mode in FIELD_SUPPORT.items():
        lines.append(f"| `{field}` | " + " | ".join(by_mode[mode] for mode in MODES) + " |")
    lines.append(f"| {', '.join(f'`{f}`' for f in CONTROLLER_FIELDS)} | "
                 + " | ".join(CONTROLLER_NOTE.get(mode, "honoured: by the controller") for mode in MODES) + " |")
    return "\n".join(lines) + "\n"
