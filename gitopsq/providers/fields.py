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
MODES = (LOCAL_PROCESS, LOCAL_CONTAINER, EC2)

# Fields the controller itself honours, whatever the provider.
CONTROLLER_FIELDS = ("type", "name", "commands", "init", "env", "shell", "priority", "retry", "max_duration",
                     "inactivity_duration")

# field -> mode -> "honoured: ...", "checked: ...", "refused: ..." or "-: why it does not apply".
FIELD_SUPPORT: dict[str, dict[str, str]] = {
    "image": {
        LOCAL_PROCESS: "-: a run with `image` is a container run",
        LOCAL_CONTAINER: "honoured: `docker run` or `podman run`; refused when neither answers",
        EC2: "honoured: `docker run` on the node",
    },
    "python": {
        LOCAL_PROCESS: "honoured: the run gets a venv of that version (pyenv, uv or the system's interpreter) in its working directory, `.venv`, first on PATH, with pip, so `pip install` stays in the run; refused when it is not installed (without `python`: a venv of the machine's python3)",
        LOCAL_CONTAINER: "-: `python` and `image` exclude each other (the image brings its Python)",
        EC2: "honoured: runs in the `python:X.Y` image",
    },
    "nvcc": {
        LOCAL_PROCESS: "checked: nvcc must be on this machine (PATH or /usr/local/cuda/bin), which is put on the run's PATH",
        LOCAL_CONTAINER: "-: `nvcc` and `image` exclude each other",
        EC2: "refused: set `image` to a CUDA devel image instead",
    },
    "resources.cpu": {
        LOCAL_PROCESS: "checked: this machine must have that many CPUs",
        LOCAL_CONTAINER: "checked: this machine must have that many CPUs",
        EC2: "honoured: picks an instance type with that many vCPUs",
    },
    "resources.memory": {
        LOCAL_PROCESS: "checked: this machine must have that much memory",
        LOCAL_CONTAINER: "checked: this machine must have that much memory",
        EC2: "honoured: picks an instance type with that much memory",
    },
    "resources.gpu": {
        LOCAL_PROCESS: "honoured: GPUs by index in `CUDA_VISIBLE_DEVICES`; model and memory checked against `nvidia-smi`, refused when it cannot tell",
        LOCAL_CONTAINER: "honoured: `--gpus device=...`; model and memory checked as for a process",
        EC2: "honoured: picks an instance type with those GPUs",
    },
    "resources.disk": {
        LOCAL_PROCESS: "checked: the state directory's disk must be that large",
        LOCAL_CONTAINER: "checked: the state directory's disk must be that large",
        EC2: "honoured: the root volume's size",
    },
    "resources.shm_size": {
        LOCAL_PROCESS: "refused: a process shares this machine's /dev/shm; set `image` to get a container with its own",
        LOCAL_CONTAINER: "honoured: `--shm-size`",
        EC2: "honoured with `image` or `python` (`--shm-size`); refused for a run on the node itself",
    },
    "backends": {
        LOCAL_PROCESS: "honoured: must list `local`, else refused",
        LOCAL_CONTAINER: "honoured: must list `local`, else refused",
        EC2: "honoured: must list `aws` (or `ec2`), else refused",
    },
    "regions": {
        LOCAL_PROCESS: "refused: this machine has no regions",
        LOCAL_CONTAINER: "refused: this machine has no regions",
        EC2: "honoured: must list the controller's region, else refused",
    },
    "spot_policy": {
        LOCAL_PROCESS: "honoured: `on-demand` and `auto` run here; `spot` is refused",
        LOCAL_CONTAINER: "honoured: `on-demand` and `auto` run here; `spot` is refused",
        EC2: "honoured: `spot` asks for a spot instance; `auto` asks for one and falls back to on-demand when spot has no capacity; a spot interruption is the `interruption` retry event",
    },
    "max_price": {
        LOCAL_PROCESS: "honoured: this machine costs nothing per hour",
        LOCAL_CONTAINER: "honoured: this machine costs nothing per hour",
        EC2: "honoured: the cheapest fitting instance type must cost at most that",
    },
    "repos": {
        LOCAL_PROCESS: "honoured: checked out into the working directory (a `path` outside it, absolute, `~` or `..`, is refused)",
        LOCAL_CONTAINER: "honoured: checked out into the working directory (/work in the container); a `path` outside it is mounted there read-only, a `~` one is refused",
        EC2: "honoured: the node downloads the tree from the controller (no git credentials on the node); a `path` outside the working directory is written there (mounted read-only with `image`, where a `~` one is refused)",
    },
    "files": {
        LOCAL_PROCESS: "honoured: copied into the working directory (a `dst` outside it, absolute, `~` or `..`, is refused)",
        LOCAL_CONTAINER: "honoured: copied into the working directory; an absolute `dst` is mounted there read-only, a `~` one is refused",
        EC2: "honoured: downloaded with the tree; an absolute `dst` is written there (mounted read-only with `image`, where a `~` one is refused)",
    },
    "volumes": {
        LOCAL_PROCESS: "honoured: a relative `path` is a link in the working directory to `instance_path`, created when missing (an `optional` one is then left out); an absolute or `~` path is refused (a process has no filesystem of its own)",
        LOCAL_CONTAINER: "honoured: `-v instance_path:path`, a relative `path` under /work; `instance_path` created when missing (an `optional` one is then left out); a `~` path is refused",
        EC2: "honoured: a folder of the node (made when missing; an `optional` one is then left out), `-v` into the container or a link at its path; it lasts as long as the node",
    },
    "registry_auth": {
        LOCAL_PROCESS: "-: applies to images only",
        LOCAL_CONTAINER: "honoured: a login for this run's pull only",
        EC2: "honoured: `docker login` on the node, with the credentials downloaded from the controller",
    },
    "port": {
        LOCAL_PROCESS: "honoured: the service listens on this machine",
        LOCAL_CONTAINER: "honoured: the container shares this machine's network",
        EC2: "honoured: opened (TCP) to `serve --allow-cidr` in a security group of the run's own, removed after it; to nobody without one",
    },
    "ports": {
        LOCAL_PROCESS: "honoured: the run listens on this machine",
        LOCAL_CONTAINER: "honoured: the container shares this machine's network",
        EC2: "honoured: opened (TCP) to `serve --allow-cidr` in a security group of the run's own, removed after it; to nobody without one",
    },
    "ide": {
        LOCAL_PROCESS: "honoured: names the IDE that attaches to the run's working directory",
        LOCAL_CONTAINER: "honoured: names the IDE that attaches to the run's working directory",
        EC2: "honoured: names the IDE that attaches over SSH (`--provider-opt key_name`)",
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
                 + " | ".join("honoured: by the controller" for _ in MODES) + " |")
    return "\n".join(lines) + "\n"
