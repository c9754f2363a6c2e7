"""The small protocol the controller needs from a provider, implemented once over Libcloud.

`LibcloudProvider` talks to any Libcloud `NodeDriver` (create_node, list_nodes, destroy_node):
it tags every node with the controller id, run name and submission id, finds its own nodes by
those tags, and maps errors to kinds. What differs between drivers (how a node gets its work,
how capacity is known, which size fits) is a `DriverAdapter` - the local machine and a cloud each
have one; neither is a second code path for the controller.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

from gitopsq.inputs import secret_names, substitute
from gitopsq.spec import RunSpec

log = logging.getLogger("gitopsq.providers")
TAG_CONTROLLER = "gitopsq-controller"
TAG_RUN = "gitopsq-run"
TAG_SUBMISSION = "gitopsq-submission"
TAG_RANK = "gitopsq-rank"  # the node's rank in a cluster run (nodes: N); absent on a single node
TAG_ATTEMPT = "gitopsq-attempt"  # the submission's attempt the node runs (its token's, its log's)

# Error kinds, each handled one way by the controller.
CAPACITY = "capacity"  # no room now: queue per retry policy
THROTTLE = "throttle"  # provider busy (throttling, 5xx, timeouts): back off, not a run failure
AUTH = "auth"  # credentials: runs wait, the provider is reported unhealthy
UNSATISFIABLE = "unsatisfiable"  # no size/machine can ever satisfy the resources: fail at once
ERROR = "error"  # anything else: the run's `error` retry event


@dataclass(frozen=True)
class Isolation:
    """Whether a run can read the controller (its environment, state directory and keys), and how
    it is kept out or why it is not."""

    isolated: bool
    how: str


# A cloud run executes on a node of its own, which holds nothing of the controller's.
ON_NODES_OF_THEIR_OWN = Isolation(True, "runs execute on nodes of their own, which hold nothing of the controller's")


class ProviderConfigError(Exception):
    """A provider cannot be built from the options and environment given (said without secrets)."""


class ProviderError(Exception):
    def __init__(self, kind: str, code: str, message: str):
        super().__init__(f"{code}: {message}" if code else message)
        self.kind, self.code, self.message = kind, code, message


@dataclass(frozen=True)
class Launch:
    """One node to create for one submission."""

    submission_id: int
    run: str
    number: int
    spec: RunSpec
    token: str  # the attempt's secret for the node's exit-code report (gitopsq.nodetoken)
    attempt: int = 0  # the submission's attempts so far: a relaunch after a crash reuses the number
    commit: str | None = None  # the config repo's commit the spec came from
    # The values of the secrets the spec references, for this launch only: never stored in clear,
    # never in a repr (a launch may be logged).
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The run's working tree (its repos and files), prepared by the controller in a staging folder
    # that the provider takes over (moves into place, or packs for a node to download); None when
    # the run has neither repos nor files.
    tree: Path | None = None
    tree_env: Mapping[str, str] = field(default_factory=dict, compare=False)  # GITOPSQ_COMMIT, DSTACK_REPO_ID
    # (staged source, path as written) of what the tree puts outside the working directory
    # (/x, ~/x, ../x): for a provider whose runs have a filesystem of their own.
    tree_outside: tuple[tuple[str, str], ...] = ()
    rank: int = 0  # which node of a cluster run (spec.nodes > 1) this is; the master is 0

    def for_rank(self, rank: int) -> "Launch":
        return dataclasses.replace(self, rank=rank)


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    submission_id: int | None
    run: str | None
    running: bool
    exit_code: int | None  # when ended; None if lost or unknown
    lost: bool = False  # ended without recording an exit code
    log_path: str | None = None
    started_at: float | None = None  # when the node started, if the provider knows (epoch seconds)
    finished_at: float | None = None  # when it ended, if the provider knows: the run's end, not when it was noticed
    workdir: str | None = None  # the run's working directory on this machine, where the provider keeps one
    rank: int = 0  # its rank in a cluster run (0 for a single node)
    ip: str | None = None  # the address the other nodes of its run reach it at, when known


class Provider(Protocol):
    name: str
    reports_exit_codes: bool  # True: nodes report through the callback; False: nodes() tells

    def demand(self, spec: RunSpec) -> dict[str, int]: ...
    def capacity(self) -> dict[str, int]: ...
    def unsatisfiable(self, spec: RunSpec) -> str | None: ...
    def launch(self, launch: Launch) -> NodeStatus: ...
    def launch_gang(self, launch: Launch) -> list[NodeStatus]: ...  # every node of a cluster run, or none
    def nodes(self) -> list[NodeStatus]: ...
    def stop(self, node_id: str) -> None: ...


def run_script(spec: RunSpec) -> str:
    """The bash script a node runs: commands in order, stopping at the first that fails.

    A dev environment runs `init` and then stays up until it is stopped.
    """
    steps = list(spec.init if spec.type == "dev-environment" else spec.commands)
    body = "\n".join(steps)
    if spec.type == "dev-environment":
        body += "\necho 'gitopsq: dev environment ready'\nwhile :; do sleep 3600; done"
    if spec.shell in ("bash", "/bin/bash"):
        return f"set -e\n{body}\n"
    return f"exec {shlex.quote(spec.shell if '/' in spec.shell else '/bin/' + spec.shell)} -ec {shlex.quote(body)}\n"


def run_env(spec: RunSpec, launch: Launch, with_secrets: bool = True) -> dict[str, str]:
    """The run's environment: its env with secrets put in, and what gitopsq and dstack tell a run.

    with_secrets=False leaves out every variable whose value holds a secret (for a node's
    user-data, which must never carry one: the node downloads those)."""
    env = {}
    for name, value in spec.env:
        if secret_names(value):
            if not with_secrets:
                continue
            value = substitute(value, launch.secrets)
        env[name] = value
    env.update(launch.tree_env)
    if launch.commit:
        env.setdefault("GITOPSQ_COMMIT", launch.commit)
    env.update(GITOPSQ_RUN=launch.run, GITOPSQ_SUBMISSION=str(launch.number), GITOPSQ_SUBMISSION_ID=str(launch.submission_id),
               DSTACK_RUN_NAME=launch.run)
    env.update(cluster_env(spec.nodes, launch.rank, spec.resources.gpu_count))
    return env


def cluster_env(nodes: int, rank: int, gpus_per_node: int, master_ip: str | None = None,
                ips: list[str] | None = None) -> dict[str, str]:
    """dstack's variables for a node of a run of `nodes` nodes (1 for a single node), so that
    `torchrun --nnodes=$DSTACK_NODES_NUM --node-rank=$DSTACK_NODE_RANK --master-addr=$DSTACK_MASTER_NODE_IP`
    works unchanged. The addresses when known (a cloud node downloads them once all exist)."""
    env = {"DSTACK_NODES_NUM": str(nodes), "DSTACK_NODE_RANK": str(rank), "DSTACK_GPUS_PER_NODE": str(gpus_per_node),
           "DSTACK_GPUS_NUM": str(gpus_per_node * nodes)}
    if master_ip is not None:
        env["DSTACK_MASTER_NODE_IP"] = master_ip
    if ips is not None:
        env["DSTACK_NODES_IPS"] = "\n".join(ips)
    return env


def registry_login(spec: RunSpec, secrets: Mapping[str, str]) -> tuple[str, str] | None:
    """(username, password) for pulling the run's image, with its secrets and env put in."""
    auth = spec.registry_auth
    if auth is None:
        return None
    env = dict(spec.env)
    return substitute(auth.username, secrets, env), substitute(auth.password, secrets, env)


def image_registry(image: str) -> str:
    """The registry an image reference names (docker's rule: a first part with '.' or ':', or
    localhost), else Docker Hub."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "https://index.docker.io/v1/"


def placement_problem(spec: RunSpec, backend: str, runs_on: str, place: str) -> str | None:
    """Why a provider with one place to run (no regions, no spot market) never runs the spec:
    `backends` without `backend`, any `regions`, `spot_policy: spot`; None when none of them.
    runs_on names the provider ("Slurm"), place where runs go ("a Slurm partition")."""
    if spec.backends and backend not in spec.backends:
        return f"backends: this controller runs on {runs_on}, not {', '.join(spec.backends)}"
    if spec.regions:
        return f"regions: {place} has no regions (asked for {', '.join(spec.regions)})"
    if spec.spot_policy == "spot":
        return f"spot_policy: {place} has no spot capacity; use on-demand or auto"
    return None


def secret_env_names(spec: RunSpec) -> list[str]:
    """The variables whose values hold a secret."""
    return [name for name, value in spec.env if secret_names(value)]


def secret_env(spec: RunSpec, secrets: Mapping[str, str]) -> dict[str, str]:
    """The variables whose values hold a secret, with the secrets put in (what run_env adds
    with_secrets); every secret they reference must be in `secrets`."""
    return {name: substitute(value, secrets) for name, value in spec.env if secret_names(value)}


class DriverAdapter(Protocol):
    """What differs between Libcloud drivers."""

    name: str
    reports_exit_codes: bool

    def demand(self, spec: RunSpec) -> dict[str, int]: ...
    def capacity(self, owned_running: int) -> dict[str, int]: ...
    def unsatisfiable(self, spec: RunSpec) -> str | None: ...
    def create_args(self, launch: Launch, tags: dict[str, str]) -> dict: ...
    def classify(self, exc: Exception) -> ProviderError: ...
    def list_owned(self, driver, controller_id: str) -> list: ...
    def exit_code(self, node) -> tuple[bool, int | None, bool, str | None]: ...  # running, exit code, lost, log


class LibcloudProvider:
    """A Provider over any Libcloud NodeDriver plus its adapter."""

    def __init__(self, driver, adapter: DriverAdapter, controller_id: str):
        self.driver = driver
        self.adapter = adapter
        self.controller_id = controller_id
        self.name = adapter.name
        self.reports_exit_codes = adapter.reports_exit_codes
        self.isolation: Isolation = getattr(adapter, "isolation", ON_NODES_OF_THEIR_OWN)
        self.cannot: tuple[str, ...] = tuple(getattr(adapter, "cannot", ()))  # what the driver lacks, said at start

    def demand(self, spec: RunSpec) -> dict[str, int]:
        return self.adapter.demand(spec)

    def capacity(self) -> dict[str, int]:
        running = sum(1 for node in self.nodes() if node.running)
        return self.adapter.capacity(running)

    def unsatisfiable(self, spec: RunSpec) -> str | None:
        return self.adapter.unsatisfiable(spec)

    def tags(self, launch: Launch) -> dict[str, str]:
        tags = {TAG_CONTROLLER: self.controller_id, TAG_RUN: launch.run, TAG_SUBMISSION: str(launch.submission_id),
                TAG_ATTEMPT: str(launch.attempt)}
        if launch.spec.nodes > 1:
            tags[TAG_RANK] = str(launch.rank)
        return tags

    def launch(self, launch: Launch) -> NodeStatus:
        return self._made(self._create(launch), launch)

    def _create(self, launch: Launch):
        """The driver's node for one launch (one rank of a cluster run), or a classified error."""
        args = self._classified(lambda: self.adapter.create_args(launch, self.tags(launch)))
        try:
            return self._classified(lambda: self.driver.create_node(**args))
        except ProviderError as exc:
            # A second way to make the node, where the adapter has one (spot_policy auto: on-demand
            # when spot has no capacity); else the error stands.
            fallback = getattr(self.adapter, "fallback", None)
            args = fallback(launch, args, exc) if fallback else None
            if args is None:
                raise
            return self._classified(lambda: self.driver.create_node(**args))

    def _made(self, node, launch: Launch) -> NodeStatus:
        """A node just made, as its launch says it is: a driver without tags returns it without them
        (they are in its name, read when nodes are listed)."""
        return dataclasses.replace(self._status(node), submission_id=launch.submission_id, run=launch.run,
                                   rank=launch.rank)

    def interruption(self, node_id: str) -> str | None:
        """Why a node that ended without a report ended, when the provider took it back (a spot
        interruption), else None (also when the provider cannot tell)."""
        ask = getattr(self.adapter, "interruption", None)
        if ask is None:
            return None
        try:
            return ask(self.driver, node_id)
        except Exception:  # cannot tell now: an ordinary lost node
            return None

    def attempt_ended(self, submission_id: int, attempt: int, why: str, nodes: int = 1) -> None:
        """The controller is done with an attempt's nodes: what the adapter keeps of them may say how
        they ended (a cloud log says what of it never arrived)."""
        ended = getattr(self.adapter, "attempt_ended", None)
        if ended is not None:
            ended(submission_id, attempt, why, nodes)

    def _classified(self, call):
        try:
            return call()
        except ProviderError:
            raise
        except Exception as exc:  # every driver failure becomes one of the kinds, in one place
            raise self.adapter.classify(exc) from exc

    def launch_gang(self, launch: Launch) -> list[NodeStatus]:
        """Every node of a cluster run (spec.nodes > 1), or none: when one cannot be created, those
        already made are destroyed before the error is raised. Created from the last rank to the
        master, so that the master, made last, takes what is handed over once (the working tree)."""
        made = []
        try:
            for rank in reversed(range(launch.spec.nodes)):
                one = launch.for_rank(rank)
                made.append((self._create(one), one))
        except Exception as exc:
            self._undo([node for node, _ in made])
            if isinstance(exc, ProviderError):
                raise
            raise self.adapter.classify(exc) from exc
        return sorted((self._made(node, one) for node, one in made), key=lambda n: n.rank)

    def _undo(self, made: list) -> None:
        """Destroy the nodes of a gang that could not be made whole (never leave part of it)."""
        for node in made:
            try:
                self.driver.destroy_node(node)
            except Exception as exc:  # listed as a node of no active submission: the next step destroys it
                log.warning("could not destroy node %s of an incomplete cluster run: %s", node.id, exc)

    def nodes(self) -> list[NodeStatus]:
        try:
            owned = self.adapter.list_owned(self.driver, self.controller_id)
        except ProviderError:
            raise
        except Exception as exc:
            raise self.adapter.classify(exc) from exc
        return [self._status(node) for node in owned]

    def stop(self, node_id: str) -> None:
        try:
            for node in self.adapter.list_owned(self.driver, self.controller_id):
                if node.id == node_id:
                    self.driver.destroy_node(node)
                    return
        except ProviderError:
            raise
        except Exception as exc:
            raise self.adapter.classify(exc) from exc

    def _status(self, node) -> NodeStatus:
        tags = _tags_of(node)
        sub = tags.get(TAG_SUBMISSION)
        rank = tags.get(TAG_RANK, "0")
        running, exit_code, lost, log = self.adapter.exit_code(node)
        extra = node.extra or {}
        ips = [*(node.private_ips or ()), *(node.public_ips or ())]
        return NodeStatus(node.id, int(sub) if sub and sub.isdigit() else None, tags.get(TAG_RUN), running, exit_code, lost, log,
                          started_at=_epoch(extra.get("started_at")), finished_at=_epoch(extra.get("finished_at")),
                          workdir=extra.get("workdir") if isinstance(extra.get("workdir"), str) else None,
                          rank=int(rank) if rank.isdigit() else 0, ip=ips[0] if ips else None)


def _tags_of(node) -> dict[str, str]:
    extra = node.extra or {}
    return dict(extra.get("tags") or {})


def _epoch(value) -> float | None:
    """A time a driver gives in a node's extra (ISO 8601, as the local one does) as epoch seconds."""
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo else None  # a naive time would be read in our zone


def workspace_dir_for(db_path: Path) -> Path:
    """Where the controller prepares runs' working trees (staging/), keeps URL repos' mirrors
    (mirrors/) and the trees cloud nodes download (bundles/), for one state database."""
    return db_path.parent / f"{db_path.stem}-workspaces"


def bundles_dir_for(db_path: Path) -> Path:
    """Where the trees cloud nodes download wait, one file per submission (bundle_path)."""
    return workspace_dir_for(db_path) / "bundles"


def bundle_path(bundles: Path, submission_id: int) -> Path:
    """A submission's tree for its node to download: bundles/<submission id>.tar.gz."""
    return Path(bundles) / f"{int(submission_id)}.tar.gz"


def cloud_logs_dir_for(db_path: Path) -> Path:
    """Where cloud runs' logs are kept as their nodes ship them (gitopsq.providers.cloud_logs)."""
    return db_path.parent / f"{db_path.stem}-logs"


def log_dir_for(db_path: Path) -> Path:
    """Where the local provider keeps node state and logs for one state database."""
    return db_path.parent / f"{db_path.stem}-nodes"
