"""What Slurm's commands print, read: jobs (`squeue -O`), nodes (`sinfo -O`), settings
(`scontrol show ... -o`, `scontrol show config`), time limits, and what a job's state means for
a run. Pure functions over text: the driver (gitopsq.providers.slurm) runs the commands.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

TAG_PREFIX = "gitopsq:"

# Job states (squeue's long names) by what they mean for a run.
WORKING = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "REQUEUED",
           "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
SUCCEEDED = {"COMPLETED"}
FAILED = {"FAILED", "OUT_OF_MEMORY"}
TIMED_OUT = {"TIMEOUT"}
INTERRUPTED = {"CANCELLED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"}
# Pending reasons that no amount of waiting cures: the request breaks a partition or policy limit.
NEVER_STARTS = ("PartitionConfig", "PartitionTimeLimit", "PartitionNodeLimit", "BadConstraints", "InvalidAccount",
                "InvalidQOS", "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit",
                "QOSMaxCpuPerJobLimit", "QOSMaxNodePerJobLimit", "QOSMaxMemoryPerJob", "QOSMaxGRESPerJob",
                "AssocMaxCpuPerJobLimit", "AssocMaxNodePerJobLimit", "AssocMaxGRESPerJob", "AccountNotAllowed",
                "QOSNotAllowed")

JOB_FIELDS = ("JobID", "State", "Reason", "exit_code", "NodeList", "SubmitTime", "StartTime", "EndTime",
              "TimeLimit", "NumNodes", "Partition", "Comment")


@dataclass(frozen=True)
class Job:
    """One line of `squeue -O`."""

    job_id: str
    state: str
    reason: str
    exit_status: int  # the wait status as Slurm keeps it: code << 8 | signal
    nodelist: str
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    time_limit: str
    num_nodes: int
    partition: str
    comment: str

    @property
    def tags(self) -> dict[str, str]:
        return parse_tags(self.comment)

    @property
    def exit_code(self) -> int:
        """The shell's view: the code, or 128 + the signal that killed the batch script."""
        signal, code = self.exit_status & 0x7F, (self.exit_status >> 8) & 0xFF
        return 128 + signal if signal else code


@dataclass(frozen=True)
class PartitionNode:
    """One node of the partition as `sinfo -N -O` shows it."""

    name: str
    state: str
    cpus_total: int
    cpus_idle: int
    memory_mb: int
    memory_allocated_mb: int
    tmp_disk_mb: int
    gres: dict[str, int] = field(default_factory=dict)  # "gpu" and "gpu:<type>" -> count
    gres_used: dict[str, int] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Takes jobs now (or after powering up): not down, drained, failing or not responding."""
        base = self.state.rstrip("*~#!%$@^-+")
        return base in ("idle", "mixed", "allocated", "completing", "planned") and not set(self.state) & set("*$@!%")

    def free(self, key: str) -> int:
        return max(0, self.gres.get(key, 0) - self.gres_used.get(key, 0))


def tags_comment(tags: dict[str, str]) -> str:
    """gitopsq's tags as a job comment: no spaces or separators, so squeue and scontrol keep it whole."""
    for key, value in tags.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", f"{key}{value}"):
            raise ValueError(f"tag {key}={value!r} does not fit in a Slurm job comment")
    return TAG_PREFIX + ";".join(f"{k}={v}" for k, v in tags.items())


def parse_tags(comment: str) -> dict[str, str]:
    if not comment.startswith(TAG_PREFIX):
        return {}
    pairs = (item.split("=", 1) for item in comment[len(TAG_PREFIX):].split(";") if "=" in item)
    return {k: v for k, v in pairs}


def _epoch(value: str) -> float | None:
    return float(value) if value.strip().isdigit() else None


def _int(value: str, default: int = 0) -> int:
    match = re.match(r"\s*(\d+)", value)
    return int(match.group(1)) if match else default


def parse_jobs(text: str) -> list[Job]:
    """`squeue -h -O <each of JOB_FIELDS with '|' after it>` lines; the comment (free text) is last."""
    jobs = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line[:-1].split("|", len(JOB_FIELDS) - 1) if line.endswith("|") else []
        if len(parts) != len(JOB_FIELDS):
            raise ValueError(f"squeue printed a line gitopsq cannot read: {line!r}")
        job_id, state, reason, status, nodes, submit, start, end, limit, num_nodes, partition, comment = (
            p.strip() for p in parts)
        jobs.append(Job(job_id, state.split()[0] if state else "", reason, _int(status), nodes, _epoch(submit),
                        _epoch(start), _epoch(end), limit, _int(num_nodes, 1), partition,
                        "" if comment == "(null)" else comment))
    return jobs


def parse_gres(text: str) -> dict[str, int]:
    """`gpu:a100:4(S:0-1),gpu:2,shard:8` -> {"gpu": 6, "gpu:a100": 4, "shard": 8}."""
    counts: dict[str, int] = {}
    if text in ("", "(null)"):
        return counts
    for item in re.split(r",(?![^(]*\))", text):
        item = item.split("(", 1)[0].strip()
        parts = item.split(":")
        if len(parts) < 2 or not parts[-1].isdigit():
            continue
        name, count = parts[0], int(parts[-1])
        counts[name] = counts.get(name, 0) + count
        if len(parts) >= 3:
            key = f"{name}:{':'.join(parts[1:-1])}"
            counts[key] = counts.get(key, 0) + count
    return counts


NODE_FIELDS = ("NodeList", "StateLong", "CPUsState", "Memory", "AllocMem", "Disk", "Gres", "GresUsed")


def parse_nodes(text: str) -> list[PartitionNode]:
    """`sinfo -h -N -O <NODE_FIELDS with '|'>` lines."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < len(NODE_FIELDS):
            raise ValueError(f"sinfo printed a line gitopsq cannot read: {line!r}")
        name, state, cpus, memory, allocated, disk, gres, used = parts[:len(NODE_FIELDS)]
        alloc_cpus, idle_cpus, _other, total_cpus = (_int(x) for x in (cpus.split("/") + ["0"] * 4)[:4])
        nodes.append(PartitionNode(name, state, total_cpus, idle_cpus, _int(memory), _int(allocated), _int(disk),
                                   parse_gres(gres), parse_gres(used)))
    return nodes


def parse_key_values(line: str) -> dict[str, str]:
    """One `scontrol show ... -o` line: Key=Value pairs separated by spaces."""
    out = {}
    for item in line.split():
        if "=" in item:
            key, value = item.split("=", 1)
            out[key] = value
    return out


def parse_config(text: str) -> dict[str, str]:
    """`scontrol show config`: `Key = Value` lines (the only form this command prints)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def slurm_minutes(text: str) -> float | None:
    """A Slurm time (minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]])
    in minutes; None for no limit."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", ""):
        return None
    if "-" in text:
        days, rest = text.split("-", 1)
        hours, minutes, seconds = ([int(p) for p in rest.split(":")] + [0, 0])[:3]
        return int(days) * 1440 + hours * 60 + minutes + seconds / 60
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + parts[2] / 60
    return parts[0] + (parts[1] / 60 if len(parts) == 2 else 0)


def job_outcome(job: Job, recorded: int | None) -> tuple[int | None, bool]:
    """(exit code, lost) of a job as Slurm reports it; (None, False) while it works or timed out."""
    if job.state in SUCCEEDED:
        return 0, False
    if job.state in FAILED:
        code = job.exit_code or recorded or 0
        if code == 0:  # failed without a code of its own: killed for memory (SIGKILL) or failed to launch
            code = 137 if job.state == "OUT_OF_MEMORY" else 1
        return code, False
    if job.state in INTERRUPTED:
        return None, True
    return None, False  # working, or TIMEOUT (gitopsq's max_duration deadline decides how it ends)


def minutes_for(seconds: float) -> int:
    """Slurm keeps time limits in whole minutes: round up, so Slurm never ends a run before gitopsq would."""
    return max(1, math.ceil(seconds / 60))
