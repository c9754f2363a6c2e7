"""The JSON API's bodies, as pydantic models: FastAPI's /openapi.json is built from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["queued", "provisioning", "running", "stopping", "done", "failed", "cancelled"]

# SQLite integers are 64-bit; exit codes and ids outside these bounds are refused with a 422.
INT32 = 2**31 - 1
INT64 = 2**63 - 1


class RetryPolicy(BaseModel):
    on_events: list[str] = Field(description="Events that requeue the run: no-capacity, interruption, error.")
    duration: int | None = Field(description="Seconds the retries may take; null retries forever.")


class FileInvalid(BaseModel):
    since: str | None = Field(description="The commit from which the file has been invalid.")
    problem: str = Field(description="Its first problem, as `gitopsq validate` prints it.")


class RunRow(BaseModel):
    """A run with its current submission, as `gitopsq ps --json` prints it."""

    name: str
    file: str | None = Field(description="The run file in the config repo.")
    present: bool = Field(description="False once the file is gone from the branch.")
    submission_id: int
    submission: int = Field(description="The submission number of this run (1, 2, ... on restarts).")
    status: Status
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


class Report(BaseModel):
    """A cloud node's exit code, signed with its submission's token."""

    token: str = Field(max_length=512)
    exit_code: int = Field(ge=-INT32, le=INT32)


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
