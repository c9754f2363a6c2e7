"""The JSON API's bodies, as pydantic models: FastAPI's /openapi.json is built from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "provisioning", "running", "stopping", "done", "failed", "cancelled"]
RunStatus = Literal["scheduled", "queued", "provisioning", "running", "stopping", "done", "failed", "cancelled"]

# SQLite integers are 64-bit; exit codes and ids outside these bounds are refused with a 422.
INT32 = 2**31 - 1
INT64 = 2**63 - 1


class RetryPolicy(BaseModel):
    on_events: list[str] = Field(description="Events that requeue the run: no-capacity, interruption, error.")
    duration: int | None = Field(description="Seconds the retries may take; null retries forever.")


class FileInvalid(BaseModel):
    since: str | None = Field(description="The commit from which the file has been invalid.")
    problem: str = Field(description="Its first problem, as `gitopsq validate` prints it.")


class PortReach(BaseModel):
    port: int = Field(description="The port the run listens on.")
    local_port: int | None = Field(description="Where an ssh forward puts it on your machine (dstack's local side).")
    address: str | None = Field(description="host:port; null on a cloud provider (the node's address is not recorded).")
    forward: str | None = Field(description="The ssh command that forwards local_port, when it differs from port.")


class IdeHint(BaseModel):
    name: str = Field(description="vscode, cursor or windsurf.")
    command: str = Field(description="The command that opens the working directory, e.g. code /path.")
    url: str = Field(description="The link that opens it, e.g. vscode://file/path.")


class Connection(BaseModel):
    """How to reach a running run (null for any other status)."""

    host: str | None = Field(description="Where its runs are reached: serve --public-host, else the HTTP host (local provider).")
    url: str | None = Field(description="A service's URL.")
    ports: list[PortReach] = Field(description="Its ports (tasks and dev environments).")
    workdir: str | None = Field(description="A dev environment's working directory (local provider).")
    ide: IdeHint | None = Field(description="How the dev environment's IDE opens it (local provider).")


class NodeRow(BaseModel):
    """One node of a cluster run (nodes: N), of its current attempt."""

    rank: int = Field(description="DSTACK_NODE_RANK: 0 is the master.")
    node_id: str | None
    ip: str | None = Field(description="Its address, as DSTACK_NODES_IPS lists it.")
    status: str = Field(description="running, done, failed, lost or stopped.")
    exit_code: int | None
    log_path: str | None
    workdir: str | None


class RunRow(BaseModel):
    """A run with its current submission, as `gitopsq ps --json` prints it."""

    name: str
    file: str | None = Field(description="The run file in the config repo.")
    present: bool = Field(description="False once the file is gone from the branch.")
    submission_id: int | None = Field(description="null for a scheduled run before its first tick.")
    submission: int | None = Field(description="The submission number of this run (1, 2, ... on restarts).")
    status: RunStatus = Field(description="Its current submission's status; scheduled before its first tick.")
    priority: int
    reason: str | None = Field(description="Why the submission ended or was requeued.")
    message: str | None
    exit_code: int | None
    attempts: int | None = Field(description="Failed attempts so far (retries).")
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    window_start: float | None = Field(description="Start of the current retry window.")
    next_try_at: float | None = Field(description="No launch before this time (backoff).")
    deadline: float | None = Field(description="When a queued run waiting for capacity gives up.")
    retry: RetryPolicy | None
    type: str | None = Field(description="task, service or dev-environment.")
    log_path: str | None
    node_id: str | None
    backoff_event: str | None = Field(description="Why a queued run backs off until next_try_at: error, interruption, no-capacity, throttle or auth.")
    needs: dict[str, int] | None = Field(description="What a queued run needs from the provider, e.g. {\"slots\": 1, \"gpus\": 0}.")
    free: dict[str, int] | None = Field(description="What the provider had free after the last step (queued runs only).")
    ahead: int | None = Field(description="Queued submissions ahead of this one (queued runs only).")
    file_invalid: FileInvalid | None = Field(description="Set while the run's file does not validate: the run keeps its last valid spec.")
    why: str = Field(description="What a queued run waits for, else why its submission ended, in words (as `gitopsq ps` shows it).")
    connect: Connection | None = Field(None, description="How to reach the run while it is running.")
    submitted_by: str | None = Field(None, description="Who made this submission by hand (`gitopsq rerun`: a token's "
                                                       "name or an OS user); null for a commit.")
    stopped_by: str | None = Field(None, description="Who stopped it by hand (`gitopsq stop`, or a rerun); null otherwise.")
    nodes_num: int = Field(1, description="How many nodes the run runs on at once (nodes: N).")
    nodes: list[NodeRow] | None = Field(None, description="A cluster run's nodes, of its current attempt.")
    schedule: list[str] | None = Field(None, description="Its cron expressions (UTC), when it runs on a schedule.")
    next_tick_at: float | None = Field(None, description="When a scheduled run gets its next submission.")


class RunDetail(RunRow):
    commit_sha: str | None = Field(description="The commit that submitted the current submission.")
    submitted_at: float | None
    last_activity_at: float | None = Field(description="Last dev-environment heartbeat.")
    reported_at: float | None = Field(description="When the node reported its exit code.")
    stop_reason: str | None


class Submission(BaseModel):
    name: str = Field(description="The run.")
    submission_id: int
    submission: int
    status: Status
    priority: int
    reason: str | None
    message: str | None
    exit_code: int | None
    attempts: int | None
    submitted_at: float | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    window_start: float | None
    next_try_at: float | None
    last_activity_at: float | None
    reported_at: float | None
    stop_reason: str | None
    deadline: float | None
    retry: RetryPolicy | None
    type: str | None
    log_path: str | None
    workdir: str | None = Field(description="The working directory of its latest attempt, kept after it ends (local provider).")
    workdir_pruned: bool = Field(description="True once the retention policy has deleted that working directory.")
    node_id: str | None
    commit_sha: str | None
    submitted_by: str | None = Field(None, description="Who made it by hand (`gitopsq rerun`); null for a commit.")
    stopped_by: str | None = Field(None, description="Who stopped it by hand (`gitopsq stop`, or a rerun).")
    nodes_num: int = Field(1, description="How many nodes it runs on at once (nodes: N).")
    schedule: list[str] | None = Field(None, description="Its cron expressions, when its run is scheduled.")


class IntentAccepted(BaseModel):
    """A stop or rerun, recorded: the controller applies it at its next step (woken at once)."""

    id: int
    run: str
    kind: Literal["stop", "rerun"]
    submission_id: int | None = Field(description="The submission a stop stops (a rerun: the latest one when asked).")
    actor: str = Field(description="Who asked: the token's name.")
    via: str = Field(description="api, dashboard or cli.")
    at: float
    done_at: float | None = Field(description="When the controller applied it (null: not yet).")
    outcome: str | None = Field(description="What it did, in words.")


class Report(BaseModel):
    """A cloud node's exit code, signed with its submission's token."""

    token: str = Field(max_length=512)
    exit_code: int = Field(ge=-INT32, le=INT32)
    rank: int | None = Field(None, ge=0, le=INT32, description="The node's rank, for a node of a cluster run.")


class LogReceived(BaseModel):
    """How much of a node's log the controller has: the next chunk starts at `offset`."""

    offset: int
    complete: bool = Field(description="The node's last chunk arrived.")


class NoticeAccepted(BaseModel):
    submission_id: int
    recorded: bool


class ReportAccepted(BaseModel):
    submission_id: int
    exit_code: int
    reported_at: float | None


class Activity(BaseModel):
    name: str
    last_activity_at: float


class Health(BaseModel):
    """ok while steps succeed and the provider answers; degraded (HTTP 503) otherwise, with the reason."""

    model_config = ConfigDict(extra="allow")
    status: Literal["ok", "degraded"]
    reason: str | None = Field(None, description="null when ok, else why degraded (one line).")
    branch: str | None = None
    commit: str | None = Field(None, description="The last reconciled commit.")
    provider: str | None = None
    provider_health: str | None = Field(None, description="null when healthy, else the provider's problem.")
    last_step_at: float | None = Field(None, description="When the last step ended, whatever its outcome.")
    last_success_at: float | None = Field(None, description="When the last successful step ended.")
    last_step_error: str | None = Field(None, description="null when the last step succeeded, else its error.")
    step_failures: int = Field(0, description="Failed steps since the daemon started.")
    invalid_files: int = Field(0, description="Files of the branch that do not validate (their runs keep their last valid spec).")
    repo: str | None = None
    runs_isolated: bool | None = Field(None, description="false when runs can read the controller's state and processes "
                                                         "(same user, see SECURITY.md).")
    runs_isolation: str | None = Field(None, description="How runs are kept from the controller, or why they are not.")


class WebhookAccepted(BaseModel):
    accepted: bool


class Problem(BaseModel):
    detail: str


class SecretValue(BaseModel):
    """The body of PUT /api/secrets/{name}."""

    model_config = ConfigDict(extra="forbid")
    value: str = Field(min_length=1, description="The secret's value; stored encrypted, never returned.")


class SecretRow(BaseModel):
    """A secret that is set or that a run references; never its value."""

    name: str
    set: bool = Field(description="False for a name runs reference that is not set: they wait with secret-missing.")
    created_at: float | None = Field(description="When it was first set.")
    updated_at: float | None = Field(description="When its value last changed.")
    runs: list[str] = Field(description="Present runs whose current spec references it.")


class SecretSet(BaseModel):
    name: str
    created: bool = Field(description="True when the name was new, false when its value was replaced.")
    created_at: float
    updated_at: float


# --- the live state a plan reads (POST /api/state; gitopsq.livestate) ------------------------------

class StateQuery(BaseModel):
    """What a plan asks about: the runs its change touches, and their new specs to judge."""

    model_config = ConfigDict(extra="forbid")
    runs: list[str] = Field(default_factory=list, max_length=10_000, description="Runs whose record to include.")
    specs: dict[str, dict] = Field(default_factory=dict, max_length=10_000,
                                   description="Run name -> its new spec (as `gitopsq plan` normalises it), to judge "
                                               "with the controller's provider.")


class RunState(BaseModel):
    name: str
    file: str | None
    spec: dict | None = Field(description="The spec as recorded (the branch's, as last reconciled).")
    present: bool
    status: Status | None = Field(description="The latest submission's status (null: never submitted).")
    submission: int | None = Field(description="The latest submission's number.")
    submission_id: int | None
    priority: int | None
    queued_at: float | None
    started_at: float | None
    finished_at: float | None
    reason: str | None
    stopped_by: str | None
    needs: dict[str, int] | None = Field(description="What its submission takes or asks from the provider.")


class QueuedState(BaseModel):
    """A submission waiting for capacity, as the controller's admission sees it (gitopsq.queue.Waiting)."""

    submission_id: int
    run: str
    priority: int
    queued_at: float
    demand: dict[str, int]
    retry_on_no_capacity: bool
    deadline: float | None
    next_try_at: float | None
    last_attempt_at: float | None
    wakes_on_free: bool


class RunningState(BaseModel):
    run: str
    priority: int


class JudgedSpec(BaseModel):
    needs: dict[str, int] | None = Field(description="What it needs from the provider (null: not asked).")
    unsatisfiable: str | None = Field(description="Why the provider can never run it; null when it can.")


class LiveStateAnswer(BaseModel):
    """The controller's state for `gitopsq plan --server`: read only, nothing changes."""

    at: float = Field(description="The controller's clock when it answered.")
    branch: str | None
    commit: str | None = Field(description="The last commit the controller reconciled.")
    provider: str | None
    runs: dict[str, RunState] = Field(description="The runs asked about that the controller knows.")
    queue: list[QueuedState] = Field(description="Submissions waiting for capacity, in queue order.")
    running: list[RunningState] = Field(description="Submissions holding capacity (provisioning or running).")
    secrets: list[str] = Field(description="The names of the secrets that are set (never values).")
    free: dict[str, int] | None = Field(description="What the provider had free after the last step.")
    judged: dict[str, JudgedSpec]
    unjudged: str | None = Field(description="Why specs could not be judged (null: they were).")
