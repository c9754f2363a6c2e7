"""gitopsq and dstack side by side: start, queueing N runs, priority order of admission, memory.

    python bench/peer.py [--runs 50] [--dstack PATH]

Installs nothing. dstack is used when the `bench-peer` extra (dstack[server]) is installed -- its
`dstack` executable is looked up with --dstack, then beside this Python, then on PATH; without it
this prints gitopsq's column only.

Both get the same N tasks, priorities 0..100 in shuffled order, queued while there is no capacity
(`retry: {on_events: [no-capacity], ...}`):

- dstack: `dstack server` with HOME and DSTACK_SERVER_DIR in a temp dir and no backends (its price
  catalog download fails offline and it carries on); runs go through `POST /api/project/main/runs/apply`.
  With no backend, every admission decision is "no capacity": a run's first job submission ends
  with failed_to_start_due_to_no_capacity and the run goes to `pending`. The order of those
  decisions (that submission's finished_at, as /api/runs/list shows it) is the order its scheduler
  took the runs in.
- gitopsq: `gitopsq serve --local-slots 1 --http off` on a git repo; one commit of N files, then
  (a fresh daemon) N commits of one file. The runs take a moment (`sleep 0.2`) and only one runs at
  a time, so the order in which they go to `running` (started_at) is the order of its decisions.

Spearman correlation is between priority and earliness of the decision: 1.0 = strictly by priority.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, stop_process, vm_hwm_kb, wait_until  # noqa: E402

TOKEN = "bench-token-0123456789"


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    n = len(xs)
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else float("nan")


def priorities(n: int, seed: int = 11) -> list[int]:
    values = [round(i * 100 / max(1, n - 1)) for i in range(n)]
    random.Random(seed).shuffle(values)
    return values


wait = wait_until


def rss_mb(pid: int) -> float:
    """Peak RSS of a process and its live children (kB -> MB)."""
    total = vm_hwm_kb(pid)
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += vm_hwm_kb(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


stop = stop_process


# --- dstack ---------------------------------------------------------------------------------------


def find_dstack(option: str | None) -> str | None:
    for candidate in (option, str(Path(sys.executable).with_name("dstack")), shutil.which("dstack")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def bench_dstack(exe: str, n: int, work: Path) -> dict:
    home = work / "dstack-home"
    home.mkdir(parents=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, HOME=str(home), DSTACK_SERVER_DIR=str(home / "server"))
    log = open(work / "dstack-server.log", "wb")

    def call(path: str, body: dict):
        req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")

    def up():
        try:
            call("/api/users/get_my_user", {})
            return True
        except OSError:
            return False

    t0 = time.perf_counter()
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port), "--token", TOKEN, "-y"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        wait(up, 180, "dstack server to answer", 0.05)
        start = time.perf_counter() - t0
        prios = priorities(n)
        names = [f"peer-{i:03d}" for i in range(n)]
        t_submit = time.perf_counter()
        per_call = []
        for name, priority in zip(names, prios):
            t = time.perf_counter()
            call("/api/project/main/runs/apply", {"plan": {"run_spec": {"run_name": name, "configuration": {
                "type": "task", "commands": ["sleep 0.2"], "priority": priority,
                "retry": {"on_events": ["no-capacity"], "duration": "1h"}}}}, "force": False})
            per_call.append(time.perf_counter() - t)
        submitted = time.perf_counter() - t_submit

        def list_runs() -> list[dict]:
            runs, body = [], {"project_name": "main", "limit": 100}
            while True:
                page = call("/api/runs/list", body)
                runs += page
                if len(page) < 100:
                    return runs
                body = dict(body, prev_submitted_at=page[-1]["submitted_at"], prev_run_id=page[-1]["id"])

        def decided(number: int):
            """When each run's job submission `number` was decided (ended: no capacity); None until all were."""
            out = {}
            for run in list_runs():
                subs = [s for job in run["jobs"] for s in job["job_submissions"] if s["submission_num"] == number]
                if subs and subs[0]["status"] != "submitted":
                    out[run["run_spec"]["run_name"]] = subs[0]["finished_at"] or subs[0]["last_processed_at"]
            return out if len(out) >= n else None

        def correlation(decisions: dict) -> float:
            order = sorted(names, key=lambda name: decisions[name])
            return spearman(prios, [-order.index(name) for name in names])

        first = wait(lambda: decided(0), 600, "dstack to decide on every run", 0.2)
        all_pending = time.perf_counter() - t_submit
        # The first decisions follow the arrivals; the retries of the pending runs are decided with
        # every run already waiting -- a full queue, as gitopsq's figure is taken.
        try:
            second = correlation(wait(lambda: decided(1), 300, "dstack to retry every run", 0.5))
        except RuntimeError:
            second = float("nan")
        memory = rss_mb(proc.pid)
        try:
            call("/api/project/main/runs/stop", {"runs_names": names, "abort": True})
        except OSError:
            pass
    finally:
        stop(proc)
        log.close()
    return {"start": start, "submit_all": submitted, "per_submission": sorted(per_call)[len(per_call) // 2],
            "all_queued": all_pending, "spearman_arrival": correlation(first), "spearman": second, "rss": memory}


# --- gitopsq --------------------------------------------------------------------------------------


def run_text(name: str, priority: int) -> str:
    return (f"type: task\nname: {name}\npriority: {priority}\ncommands:\n  - sleep 0.2\n"
            f"retry: {{on_events: [no-capacity], duration: 1h}}\n")


class Gitopsq:
    def __init__(self, work: Path, label: str):
        self.repo = work / f"{label}-repo"
        self.db = work / f"{label}-state" / "db.sqlite"
        self.db.parent.mkdir(parents=True)
        self.repo.mkdir(parents=True)
        for args in (("init", "-q", "-b", "main"), ("config", "user.email", "bench@gitopsq.dev"),
                     ("config", "user.name", "gitopsq bench"), ("config", "commit.gpgsign", "false")):
            self.git(*args)
        (self.repo / "README.md").write_text("runs live in runs/\n")
        self.git("add", "README.md")
        self.git("commit", "-q", "-m", "start")
        self.log = open(work / f"{label}-daemon.log", "wb")
        self.proc: subprocess.Popen | None = None

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.repo, check=True, capture_output=True, text=True).stdout.strip()

    def start(self) -> float:
        tip = self.git("rev-parse", "HEAD")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gitopsq", "serve", "--repo", str(self.repo), "--db", str(self.db),
             "--http", "off", "--provider", "local", "--local-slots", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=self.db.parent)
        wait(lambda: self.query("SELECT 1 FROM cursors WHERE commit_sha = ?", tip), 60, "gitopsq's first sync", 0.005)
        return time.perf_counter() - t0

    def query(self, sql: str, *params):
        if not self.db.exists():
            return []
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as conn:
                return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []

    def count_submitted(self, names: list[str]) -> int:
        marks = ",".join("?" * len(names))
        return self.query(f"SELECT COUNT(*) FROM submissions WHERE run IN ({marks})", *names)[0][0]

    def stop(self) -> float:
        memory = rss_mb(self.proc.pid) if self.proc and self.proc.poll() is None else float("nan")
        if self.proc:
            stop(self.proc)
        self.log.close()
        for meta in self.db.parent.glob(f"{self.db.stem}-nodes/**/meta.json"):  # nodes outlive the daemon by design
            pid = json.loads(meta.read_text()).get("pid")
            if pid:
                try:
                    os.killpg(pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        return memory


def bench_gitopsq(n: int, work: Path) -> dict:
    prios = priorities(n)
    names = [f"peer-{i:03d}" for i in range(n)]
    # one commit of N files
    g = Gitopsq(work, "one-commit")
    try:
        start = g.start()
        (g.repo / "runs").mkdir()
        for name, priority in zip(names, prios):
            (g.repo / "runs" / f"{name}.yml").write_text(run_text(name, priority))
        g.git("add", "runs")
        g.git("commit", "-q", "-m", f"{n} runs")
        t = time.perf_counter()
        wait(lambda: g.count_submitted(names) == n, 60, "every run to be submitted", 0.002)
        one_commit = time.perf_counter() - t
        wait(lambda: len(g.query("SELECT run FROM submissions WHERE started_at IS NOT NULL")) == n, 30 + 3 * n,
             "every run to have started", 0.1)
        started = dict(g.query("SELECT run, started_at FROM submissions"))
        order = sorted(names, key=lambda name: started[name])
        earliness = [-order.index(name) for name in names]
    finally:
        memory = g.stop()
    # N commits of one file each
    g = Gitopsq(work, "many-commits")
    try:
        g.start()
        (g.repo / "runs").mkdir()
        t = time.perf_counter()
        per_commit = []
        for name, priority in zip(names, prios):
            tc = time.perf_counter()
            (g.repo / "runs" / f"{name}.yml").write_text(run_text(name, priority))
            g.git("add", "runs")
            g.git("commit", "-q", "-m", f"add {name}")
            per_commit.append(time.perf_counter() - tc)
        committing = time.perf_counter() - t
        wait(lambda: g.count_submitted(names) == n, 120, "every run to be submitted", 0.002)
        many_commits = time.perf_counter() - t
    finally:
        memory = max(memory, g.stop())
    return {"start": start, "all_queued": one_commit, "many_commits": many_commits, "committing": committing,
            "per_submission": sorted(per_commit)[n // 2],
            "spearman": spearman(prios, earliness), "rss": memory}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50, help="tasks submitted to each (default 50)")
    ap.add_argument("--dstack", help="path of the dstack executable (default: beside this Python, else on PATH)")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()
    n = args.runs
    work = Path(tempfile.mkdtemp(prefix="gitopsq-peer-"))
    exe = find_dstack(args.dstack)
    try:
        print(f"gitopsq: {n} runs ...", file=sys.stderr, flush=True)
        ours = bench_gitopsq(n, work)
        theirs = None
        if exe is None:
            print("dstack is not installed (pip install 'gitopsq[bench-peer]', or pass --dstack PATH): "
                  "showing gitopsq only", file=sys.stderr)
        else:
            print(f"dstack ({exe}): {n} runs ...", file=sys.stderr, flush=True)
            theirs = bench_dstack(exe, n, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [
        ("start (s)", ours["start"], theirs and theirs["start"],
         "spawn -> first sync done (gitopsq) / HTTP API answers (dstack)"),
        (f"all {n} queued (s)", ours["all_queued"], theirs and theirs["all_queued"],
         "gitopsq: one commit of N files -> N submissions queued; dstack: first apply -> every run decided (pending)"),
        (f"{n} commits of one file, all queued (s)", ours["many_commits"], None,
         f"first commit -> N submissions queued (making the commits took {ours['committing']:.2f} s)"),
        ("submit all over HTTP (s)", None, theirs and theirs["submit_all"], "N POST /runs/apply, one after another"),
        ("one submission (s)", ours["per_submission"], theirs and theirs["per_submission"],
         "median; gitopsq: write + git add + git commit of one file; dstack: one POST /runs/apply"),
        ("priority/decision Spearman, full queue", ours["spearman"], theirs and theirs["spearman"],
         "1.0 = strictly by priority; gitopsq: order of going to running; dstack: order of the retry decisions "
         "(job submission 1) once every run waits"),
        ("priority/decision Spearman, as they arrive", None, theirs and theirs["spearman_arrival"],
         "dstack: order of the first decisions (job submission 0), taken while the applies still arrive"),
        ("peak RSS (MB)", ours["rss"], theirs and theirs["rss"], "VmHWM of the server/daemon (and its children)"),
    ]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"gitopsq vs dstack, {n} tasks" if theirs else f"gitopsq, {n} tasks (dstack not installed)")
    for col in ("figure", "gitopsq", *(("dstack", "gitopsq/dstack") if theirs else ()), "how"):
        table.add_column(col, justify="left" if col in ("figure", "how") else "right")
    fmt = lambda v: "-" if v is None else f"{v:.3g}"  # noqa: E731
    for figure, a, b, how in rows:
        cells = [figure, fmt(a)]
        if theirs:
            cells += [fmt(b), fmt(a / b) if a is not None and b else "-"]
        table.add_row(*cells, how)
    Console(width=170).print(table)
    if args.out:
        Path(args.out).write_text(json.dumps([{"figure": f, "gitopsq": a, "dstack": b} for f, a, b, _ in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
