"""Shared pieces of the benchmarks: a synthetic config repo, process memory, timing helpers.

Nothing here is imported by gitopsq itself or by the test suite.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run the checkout's gitopsq, not whatever is installed
    sys.path.insert(0, str(ROOT))

RETRY_QUEUE = "retry: {on_events: [no-capacity], duration: off}"


def run_file(i: int, priority: int, revision: int = 0, retry: str = RETRY_QUEUE, command: str = "sleep 600") -> bytes:
    """One run file: a task that queues until a slot is free (never fails for lack of capacity)."""
    return (
        f"type: task\n"
        f"name: run-{i:05d}\n"
        f"priority: {priority}\n"
        f"env:\n  REVISION: \"{revision}\"\n  SEED: \"{i * 7919 % 10007}\"\n"
        f"commands:\n  - echo \"run {i} revision $REVISION\"\n  - {command}\n"
        f"max_duration: 2h\n"
        f"{retry}\n"
    ).encode()


def path_of(i: int) -> str:
    return f"runs/{i // 1000:02d}/run-{i:05d}.yml"


def build_repo(path: Path, files: int, commits: int, changed_per_commit: int = 20, seed: int = 7,
               branch: str = "main") -> list[str]:
    """A config repo: one commit adding `files` run files, then `commits` commits changing
    ~`changed_per_commit` files each, written with one `git fast-import`. Returns every commit sha,
    oldest first. The work tree is checked out at the tip (the daemon benchmark commits in it)."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    git = lambda *a, **kw: subprocess.run(["git", *a], cwd=path, check=True, capture_output=True, **kw)  # noqa: E731
    git("init", "-q", "-b", branch)
    git("config", "user.email", "bench@gitopsq.dev")
    git("config", "user.name", "gitopsq bench")
    git("config", "commit.gpgsign", "false")
    git("config", "gc.auto", "0")
    chunks: list[bytes] = []
    mark = 0
    stamp = 1_700_000_000

    def commit(message: str, changes: list[tuple[str, bytes]]) -> None:
        nonlocal mark, stamp
        mark += 1
        stamp += 60
        msg = message.encode()
        chunks.append(f"commit refs/heads/{branch}\nmark :{mark}\n"
                      f"committer gitopsq bench <bench@gitopsq.dev> {stamp} +0000\n".encode())
        chunks.append(b"data %d\n%s\n" % (len(msg), msg))
        if mark > 1:
            chunks.append(f"from :{mark - 1}\n".encode())
        for file_path, data in changes:
            chunks.append(f"M 100644 inline {file_path}\n".encode())
            chunks.append(b"data %d\n%s\n" % (len(data), data))
        chunks.append(b"\n")

    revisions = [0] * files
    priorities = [rng.randrange(0, 101) for _ in range(files)]
    commit(f"add {files} runs", [(path_of(i), run_file(i, priorities[i])) for i in range(files)])
    for n in range(commits):
        count = max(1, changed_per_commit + rng.randint(-3, 3))  # "about 20"
        changes = []
        for i in rng.sample(range(files), min(count, files)):
            revisions[i] += 1
            if rng.random() < 0.5:
                priorities[i] = rng.randrange(0, 101)  # an update (priority) ...
            changes.append((path_of(i), run_file(i, priorities[i], revisions[i])))  # ... or a restart (env)
        commit(f"change {len(changes)} runs ({n + 1})", changes)
    subprocess.run(["git", "fast-import", "--quiet", "--done"], cwd=path, check=True,
                   input=b"".join(chunks) + b"done\n", capture_output=True)
    git("checkout", "-q", "-f", branch)
    shas = git("rev-list", "--reverse", branch).stdout.decode().split()
    assert len(shas) == commits + 1, (len(shas), commits + 1)
    return shas


def vm_hwm_kb(pid: int) -> int:
    """Peak resident set size of a process (VmHWM), in kB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def bare_python_rss_mb(code: str = "import gitopsq.cli") -> float:
    """Peak RSS of a python that only runs `code` (the floor any Python daemon pays)."""
    probe = f"{code}\nimport sys\nfor l in open('/proc/self/status'):\n    l.startswith('VmHWM') and print(l.split()[1])"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    return int(out.split()[-1]) / 1024


def median(values) -> float:
    return statistics.median(values)


def percentile(values, p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def wait_until(check, timeout: float, what: str, interval: float = 0.01):
    """Poll check() until it returns something true; that value, or RuntimeError after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_process(proc, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
