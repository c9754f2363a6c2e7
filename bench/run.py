"""gitopsq's benchmarks: every figure beside the limit it is measured against, in the same run.

    python bench/run.py [--quick] [--only GROUP[,GROUP]] [--out FILE] [--runs N]
    python bench/run.py --scale [--quick] [--only sync,daemon,queue] [--out FILE]

Builds a config repo (10,000 run files, 500 commits of ~20 changed files; --quick: 1,000 and 50)
with `git fast-import` in a temp dir, measures, prints a table and writes (default bench/out/results.json,
ignored by git; with --only, bench/out/results-GROUP.json) a JSON list of
{"figure", "value", "unit", "limit", "ratio"}. Each value and limit is the median of --runs runs
(default 3). ratio = value / limit for times and sizes, limit / value for rates: how many times
the limit gitopsq costs (1.0 = as fast as the limit, higher = slower).

Groups (--only; default all): sync (first sync, restart, catch-up, per-commit), daemon, queue,
launch (admission to a run's first command on the local provider, with `repos: [.]` and without).

--scale: how cost grows. The same benchmarks (first sync, restart with nothing changed, one-commit
reconcile, daemon start and peak RSS) on repos of 1,000, 10,000 and 100,000 run files, and
Controller.admit_and_launch at 1,000, 100,000 and 1,000,000 queued; prints the cost per unit of work
at each size (us per file, ms per commit, us per decision, KB of RSS per run) and its growth from each
size to the next divided by the growth of the work, flagging more than 2x; writes the rows to
bench/out/scale.json. One run at 100,000 files (medians of 3 elsewhere, of 200 decisions for
admission); about 3.5 minutes on this 2-core machine when it is quiet (13 to 16 while other work ran).
With --quick: 100 / 1,000 / 10,000 files and 100 / 10,000 / 100,000 queued, to check it runs.

Not part of the test suite (pytest only collects tests/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bare_python_rss_mb, build_repo, median, percentile, run_file, stop_process, timed, vm_hwm_kb, wait_until  # noqa: E402

from gitopsq import queue as q  # noqa: E402
from gitopsq.controller import Controller  # noqa: E402
from gitopsq.providers.base import NodeStatus, log_dir_for  # noqa: E402
from gitopsq.providers.local_adapter import make_local_provider  # noqa: E402
from gitopsq.source import ConfigRepo  # noqa: E402
from gitopsq.store import Store  # noqa: E402
from tests.fakes import FakeProvider  # noqa: E402

BENCH_BRANCH = "bench"  # the in-process benchmarks move this ref; the daemon watches main
GROUPS = ("sync", "daemon", "queue", "launch")
SLURM_GROUP = "slurm"  # not in the default groups: it needs root, slurm-wlm and munge


class Figures:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.notes: dict[str, str] = {}
        self.targets: dict[str, str] = {}

    def add(self, figure: str, value: float, unit: str, limit: float, rate: bool = False,
            note: str = "", target: str = "") -> None:
        ratio = (limit / value if value else float("inf")) if rate else (value / limit if limit else float("inf"))
        self.rows.append({"figure": figure, "value": round(value, 4), "unit": unit, "limit": round(limit, 4),
                          "ratio": round(ratio, 2)})
        self.notes[figure] = note
        self.targets[figure] = target
        print(f"  {figure}: {value:.4g} {unit} (limit {limit:.4g}, ratio {ratio:.2f})", file=sys.stderr, flush=True)


def git(repo: Path, *args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, input=input).stdout


def set_ref(repo: Path, sha: str) -> None:
    git(repo, "update-ref", f"refs/heads/{BENCH_BRANCH}", sha)


def controller(repo: Path, db: Path) -> Controller:
    return Controller(Store(db), FakeProvider(slots=1), ConfigRepo(str(repo), branch=BENCH_BRANCH), branch=BENCH_BRANCH)


def close(c: Controller) -> None:
    c.repo.close()
    c.store.close()


def copy_db(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # src is closed: WAL checkpointed into the main file
    return dst


def last_parsed(store: Store) -> int:
    row = store.conn.execute("SELECT detail FROM events WHERE kind = 'reconciled' ORDER BY id DESC LIMIT 1").fetchone()
    return json.loads(row["detail"])["parsed"]


# --- git sync ---------------------------------------------------------------------------------------


def bench_first_sync(f: Figures, repo: Path, shas: list[str], files: int, work: Path, runs: int) -> Path:
    blobs = [line.split(b" ")[2].split(b"\t")[0] for line in git(repo, "ls-tree", "-r", "-z", shas[0]).split(b"\0") if line]
    values, limits, base = [], [], None
    for r in range(runs):
        set_ref(repo, shas[0])
        db = work / f"first-{r}" / "db.sqlite"
        c = controller(repo, db)
        seconds, _ = timed(c.sync_git)
        assert last_parsed(c.store) == files
        close(c)
        values.append(files / seconds)
        base = base or db
        t = time.perf_counter()
        out = git(repo, "cat-file", "--batch", input=b"\n".join(blobs) + b"\n")
        limits.append(len(blobs) / (time.perf_counter() - t))
        assert len(out) > 0
    f.add(f"first full sync of {files:,} runs", median(values), "files/s", median(limits), rate=True,
          note="Controller.sync_git on an empty store (list, read, parse, validate, plan, record) vs one "
               "`git cat-file --batch` reading the same blobs", target=">= 900 files/s")
    return base


def bench_restart(f: Figures, repo: Path, shas: list[str], files: int, base_db: Path, work: Path, runs: int) -> None:
    values, limits, parsed = [], [], []
    for r in range(runs):
        set_ref(repo, shas[0])
        db = copy_db(base_db, work / f"restart-{r}" / "db.sqlite")
        with sqlite3.connect(db) as conn:
            conn.execute("DELETE FROM cursors")  # forget the cursor: a full comparison, as after a lost cursor
        t = time.perf_counter()
        c = controller(repo, db)
        c.sync_git()
        values.append(time.perf_counter() - t)
        parsed.append(last_parsed(c.store))
        close(c)
        # the limit: list the tree and read the recorded blob ids -- the least a full comparison must do
        t = time.perf_counter()
        listing = git(repo, "ls-tree", "-r", "-z", "--full-tree", shas[0])
        with sqlite3.connect(db) as conn:
            recorded = dict(conn.execute("SELECT path, blob FROM files"))
        limits.append(time.perf_counter() - t)
        assert len(recorded) == files and listing
    assert max(parsed) == 0, f"a restart with nothing changed parsed {parsed} blobs"
    f.add(f"restart, nothing changed ({files:,} runs)", median(values), "s", median(limits),
          note=f"fresh Controller on the same DB, cursor reset; parsed {max(parsed)} blobs (the 'parsed' field of the "
               "last 'reconciled' event) vs `git ls-tree -r` plus reading the recorded blob ids",
          target="< 1 s, 0 parsed")


def bench_catch_up(f: Figures, repo: Path, shas: list[str], base_db: Path, work: Path, runs: int) -> None:
    n = len(shas) - 1
    values, limits = [], []
    for r in range(runs):
        db = copy_db(base_db, work / f"catchup-{r}" / "db.sqlite")
        set_ref(repo, shas[-1])
        c = controller(repo, db)
        seconds, _ = timed(c.sync_git)  # what a controller that was down does: one sync to the tip
        values.append(seconds)
        close(c)
        t = time.perf_counter()
        git(repo, "diff-tree", "--stdin", "-r", "-z", "--no-renames", input="".join(s + "\n" for s in shas[1:]).encode())
        limits.append(time.perf_counter() - t)
    f.add(f"catch-up after {n} commits (one sync to the tip)", median(values), "s", median(limits),
          note=f"Controller.sync_git from the first commit's state to the tip vs one `git diff-tree --stdin` over the same {n} commits")


def bench_per_commit(f: Figures, repo: Path, shas: list[str], base_db: Path, work: Path, runs: int, per_run: int) -> None:
    p50s, p99s, step50s, step99s, lim50s, lim99s = [], [], [], [], [], []
    commits = shas[1:]
    for r in range(runs):
        db = copy_db(base_db, work / f"percommit-{r}" / "db.sqlite")
        set_ref(repo, shas[0])
        c = controller(repo, db)
        c.step()  # recover and launch the first run, like a daemon that is up
        while (up := c.step()).next_wake is not None and up.next_wake <= c.clock():
            pass  # the first decisions on its queue, which a daemon's loop takes in steps back to back
        sync_times: list[float] = []
        real_sync = c.sync_git

        def measured_sync():
            seconds, result = timed(real_sync)
            sync_times.append(seconds)
            return result

        c.sync_git = measured_sync
        start = (r * per_run) % max(1, len(commits) - per_run + 1)
        chunk = commits[start:start + per_run]
        # replay from the commit before the chunk so every step sees exactly one new commit
        prev = shas[start]
        set_ref(repo, prev)
        c.sync_git = real_sync
        c.sync_git()
        c.sync_git = measured_sync
        sync_times.clear()
        step_times, limit_times = [], []
        for sha in chunk:
            set_ref(repo, sha)
            seconds, _ = timed(c.step)
            step_times.append(seconds)
            t = time.perf_counter()
            git(repo, "diff-tree", "-r", "-z", "--no-renames", prev, sha)
            limit_times.append(time.perf_counter() - t)
            prev = sha
        close(c)
        ms = lambda xs, p: percentile(xs, p) * 1000  # noqa: E731
        p50s.append(ms(sync_times, 50)), p99s.append(ms(sync_times, 99))
        step50s.append(ms(step_times, 50)), step99s.append(ms(step_times, 99))
        lim50s.append(ms(limit_times, 50)), lim99s.append(ms(limit_times, 99))
    k = f"{per_run} commits x {runs} runs"
    f.add("per-commit reconcile p50 (sync_git)", median(p50s), "ms", median(lim50s),
          note=f"the git part of a step for one new commit ({k}) vs one spawned `git diff-tree` of that commit",
          target="< 3x the limit")
    f.add("per-commit reconcile p99 (sync_git)", median(p99s), "ms", median(lim99s), note=f"as above ({k})")
    f.add("per-commit controller step p50", median(step50s), "ms", median(lim50s),
          note=f"the whole Controller.step after one commit (sync, poll, admit from the full queue) ({k})")
    f.add("per-commit controller step p99", median(step99s), "ms", median(lim99s), note=f"as above ({k})")


# --- the daemon -------------------------------------------------------------------------------------


def _wait(check, timeout: float, what: str, interval: float = 0.002):
    return wait_until(check, timeout, what, interval)  # polls finely: it times latencies


def _ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5, isolation_level=None)


def _has_run(conn: sqlite3.Connection, name: str) -> bool:
    try:
        return conn.execute("SELECT 1 FROM submissions WHERE run = ?", (name,)).fetchone() is not None
    except sqlite3.OperationalError:  # not created yet
        return False


def _stop_daemon(proc: subprocess.Popen, db: Path) -> None:
    stop_process(proc, 15)
    # nodes outlive the daemon by design: end the ones this benchmark's daemon started
    for meta in db.parent.glob(f"{db.stem}-nodes/**/meta.json"):
        pid = json.loads(meta.read_text()).get("pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def bench_daemon(f: Figures, repo: Path, files: int, work: Path, runs: int, commits_per_run: int) -> None:
    starts, lat50, lat99, lim50, lim99, rss, commit_ms = [], [], [], [], [], [], []
    scratch = work / "limit.sqlite"
    wconn = sqlite3.connect(scratch, isolation_level=None)
    wconn.execute("PRAGMA journal_mode=WAL")
    wconn.execute("CREATE TABLE IF NOT EXISTS s (id INTEGER PRIMARY KEY, run TEXT)")
    wconn.execute("CREATE INDEX IF NOT EXISTS s_run ON s(run)")
    rconn = _ro(scratch)
    serial = files
    for r in range(runs):
        db = work / f"daemon-{r}" / "db.sqlite"
        db.parent.mkdir(parents=True)
        tip = git(repo, "rev-parse", "HEAD").decode().strip()
        log = open(db.parent / "daemon.log", "wb")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gitopsq", "serve", "--repo", str(repo), "--db", str(db),
                                 "--http", "off", "--provider", "local", "--local-slots", "1"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        try:
            def synced():
                if not db.exists():
                    return False
                with _ro(db) as conn:
                    try:
                        return conn.execute("SELECT 1 FROM cursors WHERE commit_sha = ?", (tip,)).fetchone()
                    except sqlite3.OperationalError:
                        return False

            _wait(synced, max(300, files / 50), "the daemon's first sync", 0.02)
            starts.append(time.perf_counter() - t0)
            time.sleep(1.0)
            conn = _ro(db)
            lats, limits = [], []
            for i in range(commits_per_run):
                serial += 1
                name = f"run-{serial:05d}"
                path = repo / "runs" / "new" / f"{name}.yml"
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(run_file(serial, 50).replace(f"name: run-{serial:05d}".encode(), f"name: {name}".encode()))
                git(repo, "add", str(path))
                tc = time.perf_counter()
                git(repo, "commit", "-q", "-m", f"add {name}")
                committed = time.perf_counter()
                commit_ms.append((committed - tc) * 1000)
                _wait(lambda: _has_run(conn, name), 60, f"{name} to be submitted")
                lats.append(time.perf_counter() - committed)
                # the limit: the least any controller must do for that commit -- one spawned diff-tree,
                # one SQLite insert committed, seen by another connection polling like this one
                head = git(repo, "rev-parse", "HEAD").decode().strip()
                t = time.perf_counter()
                git(repo, "diff-tree", "-r", "-z", "--no-renames", f"{head}~1", head)
                wconn.execute("INSERT INTO s(run) VALUES(?)", (name,))
                _wait(lambda: rconn.execute("SELECT 1 FROM s WHERE run = ?", (name,)).fetchone(), 10, "the raw insert")
                limits.append(time.perf_counter() - t)
                time.sleep(0.3)  # separate commits, not one coalesced burst
            conn.close()
            rss.append(vm_hwm_kb(proc.pid) / 1024)
        finally:
            _stop_daemon(proc, db)
            log.close()
        ms = lambda xs, p: percentile(xs, p) * 1000  # noqa: E731
        lat50.append(ms(lats, 50)), lat99.append(ms(lats, 99)), lim50.append(ms(limits, 50)), lim99.append(ms(limits, 99))
    bare = median([bare_python_rss_mb() for _ in range(runs)])
    startup = [timed(subprocess.run, [sys.executable, "-c", "import gitopsq.cli"], check=True,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))[0] for _ in range(runs)]
    interpreter = median([bare_python_rss_mb("pass") for _ in range(runs)])
    k = f"{commits_per_run} commits x {runs} daemons"
    f.add(f"daemon start + first sync of {files:,} runs", median(starts), "s", median(startup),
          note="`gitopsq serve` started on the repo until its cursor is at the tip, the whole first sync included; "
               "limit: a bare `python -c 'import gitopsq.cli'` from spawn to exit")
    f.add("commit-to-submitted p50 (daemon)", median(lat50), "ms", median(lim50),
          note=f"`git commit` returned -> the run's submission row visible to a read-only SQLite reader ({k}); limit: one "
               "spawned `git diff-tree` of the commit + one raw SQLite insert seen by the same kind of reader, the least "
               f"work a commit needs (a `git commit` itself took {median(commit_ms):.0f} ms)",
          target="p99 < 250 ms")
    f.add("commit-to-submitted p99 (daemon)", median(lat99), "ms", median(lim99), note=f"as above ({k})", target="< 250 ms")
    f.add(f"daemon peak RSS holding {files:,} runs", median(rss), "MB", bare,
          note=f"VmHWM of `gitopsq serve` after the runs above vs a bare `python -c 'import gitopsq.cli'` "
               f"(the interpreter alone: {interpreter:.0f} MB)", target="< 150 MB")


# --- Slurm -------------------------------------------------------------------------------------------


def _slurm_job_of(cluster, name: str) -> bool:
    """True once Slurm lists a job whose name says it runs `name` (gitopsq names jobs gq-<run>-<id>)."""
    out = cluster.run("squeue", "-h", "--states=all", "-O", "Name:|")
    return any(line.rstrip("|").startswith(f"gq-{name}-") or line.rstrip("|") == name for line in out.splitlines())


def bench_slurm(f: Figures, work: Path, runs: int, commits_per_run: int) -> None:
    """Commit-to-job-submitted on a one-machine Slurm cluster, beside a bare `sbatch` in the same run."""
    from tests.slurm_cluster import SlurmCluster, missing_tools

    if missing_tools() or os.geteuid() != 0:
        print("  slurm: skipped (needs root and `apt-get install -y slurm-wlm munge`)", file=sys.stderr, flush=True)
        return
    lat50, lat99, lim50, lim99 = [], [], [], []
    with SlurmCluster(root=work / "slurm") as cluster:
        for r in range(runs):
            repo = work / f"slurm-repo-{r}"
            subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
            for key, value in (("user.email", "bench@gitopsq.dev"), ("user.name", "gitopsq bench")):
                git(repo, "config", key, value)
            (repo / "runs").mkdir()
            git(repo, "commit", "-q", "--allow-empty", "-m", "empty")
            db = work / f"slurm-{r}" / "db.sqlite"
            db.parent.mkdir(parents=True)
            log = open(db.parent / "daemon.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "gitopsq", "serve", "--repo", str(repo), "--db", str(db),
                                     "--http", "off", "--provider", "slurm", "--provider-opt", f"slurm_conf={cluster.conf}",
                                     "--provider-opt", f"partition={cluster.partition}"],
                                    stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=work)
            try:
                time.sleep(1.5)  # the daemon's start and first (empty) sync
                lats, limits = [], []
                for i in range(commits_per_run):
                    name = f"slurm-{r}-{i}"
                    (repo / "runs" / f"{name}.yml").write_text(f"type: task\nname: {name}\ncommands: ['true']\n")
                    git(repo, "add", "-A")
                    git(repo, "commit", "-q", "-m", f"add {name}")
                    committed = time.perf_counter()
                    _wait(lambda: _slurm_job_of(cluster, name), 60, f"{name}'s job", 0.005)
                    lats.append(time.perf_counter() - committed)
                    # the limit: the least any controller must do -- diff the commit and run sbatch, seen the same way
                    head = git(repo, "rev-parse", "HEAD").decode().strip()
                    t = time.perf_counter()
                    git(repo, "diff-tree", "-r", "-z", "--no-renames", f"{head}~1", head)
                    cluster.run("sbatch", "--parsable", f"--job-name=bare-{name}", "--output=/dev/null", "--wrap", "true")
                    _wait(lambda: _slurm_job_of(cluster, f"bare-{name}"), 60, "the bare job", 0.005)
                    limits.append(time.perf_counter() - t)
                    cluster.cancel_all()  # an empty partition for the next commit
                    time.sleep(0.3)
            finally:
                stop_process(proc, 30)
                log.close()
            for values, p, out in ((lats, 50, lat50), (lats, 99, lat99), (limits, 50, lim50), (limits, 99, lim99)):
                out.append(percentile(values, p) * 1000)
    k = f"{commits_per_run} commits x {runs} daemons"
    f.add("commit-to-job-submitted p50 (slurm)", median(lat50), "ms", median(lim50),
          note=f"`git commit` returned -> the run's job listed by `squeue` on a one-machine Slurm cluster ({k}); "
               "limit: one spawned `git diff-tree` of the commit + one bare `sbatch`, until `squeue` lists its job, "
               "in the same run")
    f.add("commit-to-job-submitted p99 (slurm)", median(lat99), "ms", median(lim99), note=f"as above ({k})")


# --- the queue ---------------------------------------------------------------------------------------


def _queue_rows(n: int, gangs: float):
    """The rows of _queue_db, one at a time: each spec is the same JSON but for its name, priority and
    nodes, so it is written from one template (a million json.dumps would take most of a minute)."""
    import random

    from gitopsq.spec import parse_run

    spec = parse_run(run_file(0, 0), "runs/run.yml").to_dict()
    marks = {"name": "@NAME@", "priority": -70001, "nodes": -70002}
    template = json.dumps(dict(spec, **marks), sort_keys=True)
    name_mark, priority_mark, nodes_mark = json.dumps(marks["name"]), str(marks["priority"]), str(marks["nodes"])

    def spec_json(name: str, priority: int, nodes: int) -> str:
        return template.replace(name_mark, json.dumps(name)).replace(priority_mark, str(priority)).replace(nodes_mark, str(nodes))

    assert spec_json("q-0", 5, 2) == json.dumps(dict(spec, name="q-0", priority=5, nodes=2), sort_keys=True), \
        "the spec template no longer matches json.dumps"
    rng = random.Random(3)
    for i in range(n):
        name, priority, nodes = f"q-{i:06d}", rng.randrange(0, 101), spec["nodes"]
        if gangs and rng.random() < gangs:
            nodes = rng.choice((2, 3, 4))
        # Steady state: every run has waited once already (its retry window is open).
        yield (name, 1, spec_json(name, priority, nodes), priority, "queued",
               1000.0 + i, 1000.0 + i, 1000.0 + i, 0, f"t{i}")


def _queue_db(db: Path, n: int, gangs: float = 0.0) -> None:
    """n queued submissions of random priorities; a share `gangs` of them cluster runs of 2 to 4 nodes.

    Inserted in one transaction with the submissions' indexes dropped and built again after (from
    the store's own DDL): sorting once is much faster than a million random index inserts."""
    store = Store(db)
    indexes = store.conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'submissions' "
                                 "AND sql IS NOT NULL").fetchall()
    with store.transaction():
        for name, _ in indexes:
            store.conn.execute(f'DROP INDEX "{name}"')
        store.conn.executemany(
            "INSERT INTO submissions(run, number, spec, priority, status, submitted_at, queued_at, window_start, attempts, token) "
            "VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", _queue_rows(n, gangs))
        for _, sql in indexes:
            store.conn.execute(sql)
    store.close()


def raw_pop_us(store, runs: int, pops: int = 200) -> list[float]:
    """The limit for admission: microseconds to pop the head of the queue on its index with raw
    SQL, one figure per run (each rolled back)."""
    figures = []
    for _ in range(runs):
        store.conn.execute("BEGIN")
        t = time.perf_counter()
        for _ in range(pops):
            (sub_id,) = store.conn.execute(
                "SELECT id FROM submissions WHERE status = 'queued' ORDER BY priority DESC, queued_at, id LIMIT 1").fetchone()
            store.conn.execute("DELETE FROM submissions WHERE id = ?", (sub_id,))
        figures.append((time.perf_counter() - t) / pops * 1e6)
        store.conn.execute("ROLLBACK")
    return figures


def bench_queue(f: Figures, n: int, work: Path, runs: int) -> None:
    db = work / "queue" / "db.sqlite"
    _queue_db(db, n)
    store = Store(db)
    # the limit: pop the head of the queue on the same index, raw SQL (rolled back after)
    limit_runs = raw_pop_us(store, runs, pops=min(200, n))
    plan = store.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM submissions WHERE status = 'queued' ORDER BY priority DESC, queued_at, id LIMIT 1").fetchall()
    assert any("submissions_queue" in str(tuple(row)) for row in plan), plan
    limit = median(limit_runs)

    # pure admit() over what the controller hands it: the head of the queue, read by index a chunk
    # at a time only while there is room (Controller.admit_and_launch), never the whole queue
    rows = next(store.queued_in_order())
    waiting = [q.Waiting(r["id"], r["run"], r["priority"], r["queued_at"], {"slots": 1}, True) for r in rows]
    pure = []
    for _ in range(runs):
        seconds, decision = timed(q.admit, waiting, {"slots": 1}, 2000.0)
        assert len(decision.launch) == 1
        pure.append(seconds * 1e6)
    f.add(f"admission: queue.admit() over the head of {n:,} queued", median(pure), "us/decision", limit,
          note=f"the pure function deciding the next launch from the first chunk ({len(rows)} rows) the controller reads vs a raw indexed SQLite pop "
               "(SELECT ... ORDER BY priority DESC, queued_at, id LIMIT 1 + DELETE)", target="< 1 ms per decision")

    # the controller's real admission: load the queue, decide, launch one run
    provider = FakeProvider(slots=1)
    c = Controller(store, provider, None)
    c.recovered = True
    real = []
    # as many decisions as the limit has pops: a median of 3 was the first, cold decision's as often as not
    for _ in range(max(runs, min(200, n))):
        seconds, launched = timed(c.admit_and_launch)
        assert len(launched) == 1, launched
        real.append(seconds * 1e6)
        for node in list(provider.nodes_by_id):
            provider.stop(node)  # the slot is free again for the next decision
    store.close()
    f.add(f"admission: Controller.admit_and_launch at {n:,} queued", median(real), "us/decision", limit,
          note=f"one admission decision as the controller takes it (read the queue, parse specs, admit, launch one; "
               f"median of {len(real)} decisions)",
          target="< 1 ms per decision")


def bench_gang_queue(f: Figures, n: int, work: Path, runs: int) -> None:
    """Admission with cluster runs: 10% of the queue are gangs of 2 to 4 nodes on a 4-slot machine,
    so gangs that do not fit set capacity aside; beside the raw indexed pop measured in the same run."""
    db = work / "gang-queue" / "db.sqlite"
    _queue_db(db, n, gangs=0.1)
    store = Store(db)
    limit_runs = raw_pop_us(store, runs)
    limit = median(limit_runs)
    provider = FakeProvider(slots=4)
    c = Controller(store, provider, None)
    c.recovered = True
    real, launched_runs, gangs_launched = [], 0, 0
    for i in range(runs * 8):
        # 3, 2, 1 or 0 of the 4 slots busy in turn: gangs at the head wait (and set room aside) or start
        provider.nodes_by_id = {f"busy-{k}": NodeStatus(f"busy-{k}", None, "busy", True, None) for k in range(3 - i % 4)}
        seconds, launched = timed(c.admit_and_launch)
        real.append(seconds * 1e6)
        launched_runs += len(launched)
        gangs_launched += sum(1 for sub_id in launched if len(provider.nodes_of(sub_id)) > 1)
    store.close()
    f.add(f"admission with gangs: Controller.admit_and_launch at {n:,} queued, 10% multi-node", median(real),
          "us/decision", limit, note=f"4 slots of which 3, 2, 1 or 0 busy in turn: a gang at the head waits and sets the free "
                                     f"ones aside, or starts ({launched_runs} runs launched, {gangs_launched} of them gangs, "
                                     f"in {len(real)} decisions)",
          target="< 1 ms per decision")


# --- admission to a run's first command ---------------------------------------------------------------

LAUNCH_BRANCH = "launch"  # the launch benchmark's runs live on this branch, beside the bench repo's files
LAUNCH_CONFIG = b'paths: ["bench-*.yml"]\n'  # only its own run files: the 10,000 others are just files


def _launch_run(name: str, trial: int, stamps: Path, repos: bool) -> bytes:
    """A task whose first command writes the time it started (the env change makes each trial a new submission)."""
    return (f"type: task\nname: {name}\n" + ("repos: [.]\n" if repos else "")
            + f"env: {{TRIAL: \"{trial}\"}}\ncommands:\n  - date +%s.%N > {stamps}/{name}-{trial}\n").encode()


def _commit_files(repo: Path, parent: str, files: dict[str, bytes], index: Path, message: str) -> str:
    """A commit of `parent`'s tree plus `files` on LAUNCH_BRANCH, made without touching the work tree."""
    env = dict(os.environ, GIT_INDEX_FILE=str(index))
    run = lambda *a, input=None: subprocess.run(["git", *a], cwd=repo, env=env, check=True, capture_output=True,  # noqa: E731
                                                 input=input).stdout.decode().strip()
    run("read-tree", parent)
    for path, data in files.items():
        blob = run("hash-object", "-w", "--stdin", input=data)
        run("update-index", "--add", "--cacheinfo", f"100644,{blob},{path}")
    commit = run("commit-tree", run("write-tree"), "-p", parent, "-m", message)
    run("update-ref", f"refs/heads/{LAUNCH_BRANCH}", commit)
    return commit


class _Phases:
    """Times the controller's launch phases (its tree's preparation, the provider's create) without changing it."""

    def __init__(self, c: Controller) -> None:
        self.prepare: list[float] = []
        self.create: list[float] = []
        c.inputs.prepare = self._timed(c.inputs.prepare, self.prepare)
        c.provider.launch = self._timed(c.provider.launch, self.create)

    @staticmethod
    def _timed(fn, into: list[float]):
        def timed_call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - t)
        return timed_call


def _first_command(c: Controller, store: Store, name: str, stamp: Path) -> float:
    """Seconds from just before the admission that launches `name` to its first command; waits for it to end."""
    c.sync_git()  # the new commit: a new submission, queued
    t0 = time.time()
    launched = c.admit_and_launch()
    assert launched, f"{name} was not launched"
    started = float(_wait(lambda: stamp.exists() and stamp.read_text().strip(), 60, f"{name}'s first command", 0.01))
    _wait(lambda: c.step() is not None and store.current_submission(name)["status"] in ("done", "failed"), 60,
          f"{name} to end", 0.01)
    assert store.current_submission(name)["status"] == "done", dict(store.current_submission(name))
    return started - t0


def bench_first_command(f: Figures, repo: Path, tip: str, files: int, work: Path, runs: int) -> None:
    base = work / "launch"
    stamps, index = base / "stamps", base / "index"
    stamps.mkdir(parents=True)
    commit = _commit_files(repo, tip, {".gitopsq.yml": LAUNCH_CONFIG}, index, "the launch benchmark's runs")
    store = Store(base / "state" / "gitopsq.db")
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0)
    c = Controller(store, provider, ConfigRepo(str(repo), branch=LAUNCH_BRANCH), branch=LAUNCH_BRANCH)
    c.step()  # recover, first sync: a controller that is up
    phases = _Phases(c)
    values: dict[str, list[float]] = {"repos": [], "plain": []}
    archive, spawn = [], []
    counts = []
    try:
        for trial in range(runs + 1):  # trial 0 warms up: the shadow git dir, the runs' pip copy, the page cache
            for kind in ("repos", "plain"):
                name = f"bench-{kind}"
                commit = _commit_files(repo, commit, {f"{name}.yml": _launch_run(name, trial, stamps, kind == "repos")},
                                       index, f"{name} trial {trial}")
                seconds = _first_command(c, store, name, stamps / f"{name}-{trial}")
                if kind == "repos":
                    workdir = Path(store.current_submission(name)["workdir"])
                    counts.append(sum(1 for p in workdir.rglob("*") if p.is_file() and ".venv" not in p.parts))
                if trial:
                    values[kind].append(seconds)
            # the limits, on the same commit and disk: the tree alone, and the first command alone
            dest = base / f"limit-{trial}"
            dest.mkdir()
            t = time.perf_counter()
            subprocess.run(f"git -C {repo} archive {commit} | tar -x -C {dest}", shell=True, check=True)
            seconds = time.perf_counter() - t
            stamp = stamps / f"limit-{trial}"
            t0 = time.time()
            subprocess.run(["sh", "-c", f"date +%s.%N > {stamp}"], check=True)
            if trial:
                archive.append(seconds)
                spawn.append(float(stamp.read_text()) - t0)
    finally:
        c.repo.close()
        store.close()
    ms = [x * 1000 for x in (median(values["repos"]), median(values["plain"]), median(archive), median(spawn))]
    prepare = median(phases.prepare[2::2]) * 1000  # the repos run's trees, warm-up left out
    create = [x * 1000 for x in phases.create[2:]]
    f.add(f"admission to first command, repos: [.] ({files:,} files)", ms[0], "ms", ms[2],
          note=f"Controller.admit_and_launch (a local process run: its tree from git, its venv) until its first command "
               f"runs (`date +%s.%N`), {max(counts)} files in its working directory; limit: `git archive <commit> | "
               f"tar -x -C dir` of that commit. Of it: the tree ({prepare:.0f} ms, gitopsq.workspace.prepare), the "
               f"provider's create ({median(create[0::2]):.0f} ms), the node's start (wrapper, venv, shell) the rest; "
               f"what repos add over a run without them: {ms[0] - ms[1]:.0f} ms", target="<= 2x the limit")
    f.add("admission to first command, no repos", ms[1], "ms", ms[3],
          note=f"the same run without repos (provider's create {median(create[1::2]):.0f} ms); limit: the same first "
               f"command spawned through `sh -c` from Python, spawn to its timestamp")


# --- how cost grows -----------------------------------------------------------------------------------

# (size, runs): the same benchmarks at three sizes, one run at the biggest repo (its first sync and
# its daemon take minutes). A decision is cheap to repeat (the cost is filling the queue) and some
# take ten times the others whatever the size, so admission is the median of 200 decisions.
SCALE_FILES = ((1_000, 3), (10_000, 3), (100_000, 1))
SCALE_QUEUED = ((1_000, 200), (100_000, 200), (1_000_000, 200))
SCALE_QUICK_FILES = ((100, 3), (1_000, 3), (10_000, 1))  # --scale --quick: a check that it runs
SCALE_QUICK_QUEUED = ((100, 100), (10_000, 200), (100_000, 200))
SCALE_GROUPS = ("sync", "daemon", "queue")
SCALE_COMMITS = 20  # one-commit reconciles per run (a fresh chunk of the repo's commits each run)
SCALE_DAEMON_COMMITS = 1  # the daemon holds its runs and has taken a commit when its RSS is read (at 100,000 one takes seconds)
SCALE_FLAG = 2.0  # a per-unit cost that grows more than this from one size to the next is flagged


class Growth:
    """One line of the growth table: a figure of the benchmarks above, turned into a cost per unit of work.

    per_unit(value, limit, size) is the cost of one unit at that size; its growth from one size to the
    next is (cost growth) / (work growth), since the cost of the whole is per_unit x units."""

    def __init__(self, name: str, source: str, unit: str, work: str, per_unit, limit_name: str = "",
                 limit_per_unit=None, group: str = "sync") -> None:
        self.name, self.source, self.unit, self.work, self.group = name, source, unit, work, group
        self.per_unit, self.limit_name, self.limit_per_unit = per_unit, limit_name, limit_per_unit


FILES_GROWTH = (
    Growth("first full sync", "first full sync of", "us/file", "every file", lambda v, lim, n: 1e6 / v,
           "`git cat-file --batch` of the same blobs", lambda v, lim, n: 1e6 / lim),
    Growth("restart, nothing changed", "restart, nothing changed", "us/file", "every file (compared, 0 parsed)",
           lambda v, lim, n: v * 1e6 / n, "`git ls-tree -r` + reading the recorded blob ids", lambda v, lim, n: lim * 1e6 / n),
    Growth("one-commit reconcile p50 (sync_git)", "per-commit reconcile p50", "ms/commit", "one commit of ~20 files",
           lambda v, lim, n: v, "one spawned `git diff-tree` of the commit", lambda v, lim, n: lim),
    Growth("one-commit reconcile p99 (sync_git)", "per-commit reconcile p99", "ms/commit",
           f"one commit of ~20 files (p99 of {SCALE_COMMITS} a run: the slowest)", lambda v, lim, n: v,
           "one spawned `git diff-tree` of the commit", lambda v, lim, n: lim),
    Growth("one-commit controller step p50", "per-commit controller step p50", "ms/commit",
           "one commit of ~20 files, then admission from the full queue", lambda v, lim, n: v),
    Growth("daemon start + first sync", "daemon start + first sync", "us/file", "every file",
           lambda v, lim, n: v * 1e6 / n, group="daemon"),
    Growth("daemon peak RSS above a bare import", "daemon peak RSS", "KB/run", "every run held",
           lambda v, lim, n: (v - lim) * 1024 / n, group="daemon"),
)
QUEUE_GROWTH = (
    Growth("admission: Controller.admit_and_launch", "admission: Controller.admit_and_launch", "us/decision",
           "one decision (launch one run)", lambda v, lim, n: v, "raw indexed pop (SELECT ... LIMIT 1 + DELETE)",
           lambda v, lim, n: lim, group="queue"),
)


def _row_of(f: Figures, source: str) -> dict:
    rows = [row for row in f.rows if row["figure"].startswith(source)]
    assert len(rows) == 1, f"expected one figure starting with {source!r}, found {[r['figure'] for r in f.rows]}"
    return rows[0]


def scale_files(n: int, runs: int, work: Path, groups: set[str]) -> Figures:
    """The sync and daemon figures on a repo of n run files (the default run's functions, at this size)."""
    f = Figures()
    repo = work / "repo"
    print(f"[{n:,} run files, {runs} run(s)] building the repo ...", file=sys.stderr, flush=True)
    shas = build_repo(repo, n, SCALE_COMMITS * runs)
    if "sync" in groups:
        base_db = bench_first_sync(f, repo, shas, n, work, runs)
        bench_restart(f, repo, shas, n, base_db, work, runs)
        bench_per_commit(f, repo, shas, base_db, work, runs, SCALE_COMMITS)
    if "daemon" in groups:
        bench_daemon(f, repo, n, work, runs, SCALE_DAEMON_COMMITS)
    return f


def scale_queue(n: int, runs: int, work: Path) -> Figures:
    """Controller.admit_and_launch at n queued (the default run's queue benchmark, at this size)."""
    f = Figures()
    print(f"[{n:,} queued, {runs} run(s)] filling the queue ...", file=sys.stderr, flush=True)
    bench_queue(f, n, work, runs)
    return f


def growth_rows(lines: tuple[Growth, ...], sizes: tuple[tuple[int, int], ...], figures: list[Figures],
                size_unit: str) -> list[dict]:
    """The JSON rows of the table: per figure (and its limit), the cost per unit at each size and its growth."""
    out = []
    for line in lines:
        for what, name, convert in (("gitopsq", line.name, line.per_unit), ("limit", line.limit_name, line.limit_per_unit)):
            if convert is None:
                continue
            previous = None
            for (n, runs), f in zip(sizes, figures):
                row = _row_of(f, line.source)
                value = convert(row["value"], row["limit"], n)
                growth = value / previous if previous else None
                out.append({"figure": line.name, "what": what, "measures": name, "size": n, "size_unit": size_unit,
                            "value": round(value, 4), "unit": line.unit, "work": line.work, "runs": runs,
                            "growth": round(growth, 2) if growth is not None else None,
                            "flag": bool(what == "gitopsq" and growth is not None and growth > SCALE_FLAG),
                            "source": row["figure"], "source_value": row["value"], "source_unit": row["unit"],
                            "source_limit": row["limit"]})
                previous = value
    return out


def print_growth(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    sizes = sorted({r["size"] for r in rows})
    runs = {r["size"]: r["runs"] for r in rows}
    table = Table(title=title)
    table.add_column("figure", justify="left")
    for n in sizes:
        table.add_column(f"at {n:,}\n(median of {runs[n]})", justify="right")
    for a, b in zip(sizes, sizes[1:]):
        table.add_column(f"growth\n{a:,} -> {b:,}", justify="right")
    table.add_column("work per unit", justify="left")
    keys = list(dict.fromkeys((r["figure"], r["what"]) for r in rows))
    for figure, what in keys:
        mine = {r["size"]: r for r in rows if (r["figure"], r["what"]) == (figure, what)}
        first = mine[sizes[0]]
        label = figure if what == "gitopsq" else f"  limit: {first['measures']}"
        cells = [f"{mine[n]['value']:,.4g} {first['unit']}" if n in mine else "-" for n in sizes]
        growth = []
        for n in sizes[1:]:
            r = mine.get(n)
            g = r and r["growth"]
            growth.append("-" if g is None else f"{g:.2f}x" + (" (!)" if r["flag"] else ""))
        table.add_row(label, *cells, *growth, first["work"] if what == "gitopsq" else "",
                      style=None if what == "gitopsq" else "dim")
    Console(width=180).print(table)


def run_scale(args, groups: set[str], work: Path) -> list[dict]:
    files_sizes = SCALE_QUICK_FILES if args.quick else SCALE_FILES
    queued_sizes = SCALE_QUICK_QUEUED if args.quick else SCALE_QUEUED
    small_runs = max(3, args.runs)
    files_sizes = tuple((n, small_runs if runs > 1 else runs) for n, runs in files_sizes)
    queued_sizes = tuple((n, max(runs, args.runs)) for n, runs in queued_sizes)
    started = time.perf_counter()
    tables = []
    if groups & {"sync", "daemon"}:
        lines = tuple(line for line in FILES_GROWTH if line.group in groups)
        figures = []
        for n, runs in files_sizes:
            t = time.perf_counter()
            figures.append(scale_files(n, runs, work / f"files-{n}", groups))
            print(f"[{n:,} run files] {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(work / f"files-{n}", ignore_errors=True)
        tables.append(("run files", growth_rows(lines, files_sizes, figures, "run files")))
    if "queue" in groups:
        figures = []
        for n, runs in queued_sizes:
            t = time.perf_counter()
            figures.append(scale_queue(n, runs, work / f"queued-{n}"))
            print(f"[{n:,} queued] {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(work / f"queued-{n}", ignore_errors=True)
        tables.append(("queued submissions", growth_rows(QUEUE_GROWTH, queued_sizes, figures, "queued submissions")))
    seconds = time.perf_counter() - started
    for size_unit, rows in tables:
        print_growth(rows, f"how cost grows with the number of {size_unit} (cost per unit of work; {seconds:.0f} s in all)")
    print(f"growth: the cost per unit at one size / at the size before, i.e. how much faster than its work a "
          f"figure grows (1.00 = in step with its work); (!) = more than {SCALE_FLAG:g}x. The work of a reconcile, a "
          "step and a decision does not grow with the size: their growth is that of the whole cost. Peak RSS per run "
          "is the daemon's VmHWM less a bare `import gitopsq.cli`, over the runs held. Limits (dim) are measured in "
          "the same runs; a limit that grows too shows what the machine itself pays at that size.")
    return [row for _, rows in tables for row in rows]


# --- output --------------------------------------------------------------------------------------------


def print_table(f: Figures, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col, justify in (("figure", "left"), ("value", "right"), ("unit", "left"), ("limit", "right"),
                         ("ratio", "right"), ("target", "left")):
        table.add_column(col, justify=justify)
    for row in f.rows:
        table.add_row(row["figure"], f"{row['value']:,.4g}", row["unit"], f"{row['limit']:,.4g}",
                      f"{row['ratio']:.2f}", f.targets[row["figure"]])
    console = Console(width=160)
    console.print(table)
    console.print("ratio: how many times the limit gitopsq costs (value/limit for times and sizes, limit/value for rates).")
    for row in f.rows:
        if f.notes[row["figure"]]:
            console.print(f"- [bold]{row['figure']}[/bold]: {f.notes[row['figure']]}", highlight=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 files and 50 commits: under a minute")
    ap.add_argument("--only", default="", help="comma-separated groups to run: sync, daemon, queue, launch, slurm "
                                               "(default: all but slurm)")
    ap.add_argument("--out", help="where to write the JSON figures (default bench/out/results.json; "
                                  "with --only, bench/out/results-GROUP.json)")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (the median is reported; at least 3)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (repo, databases, daemon logs)")
    ap.add_argument("--slurm", action="store_true",
                    help="also commit-to-job-submitted on a one-machine Slurm cluster (root, slurm-wlm and munge)")
    ap.add_argument("--scale", action="store_true",
                    help="how cost grows: sync, reconcile, restart and daemon RSS at 1,000 / 10,000 / 100,000 run files, "
                         "admission at 1,000 / 100,000 / 1,000,000 queued (with --only: sync, daemon, queue); "
                         "writes bench/out/scale.json")
    args = ap.parse_args()
    if args.scale:
        main_scale(ap, args)
        return
    runs = max(3, args.runs)
    groups = [g for g in args.only.split(",") if g] or list(GROUPS)
    unknown = set(groups) - set(GROUPS) - {SLURM_GROUP}
    if unknown:
        ap.error(f"--only: unknown group(s) {', '.join(sorted(unknown))} (choose from {', '.join(GROUPS)}, {SLURM_GROUP})")
    if args.slurm and SLURM_GROUP not in groups:
        groups.append(SLURM_GROUP)
    out = args.out or str(ROOT / "bench" / "out" / (f"results-{'-'.join(groups)}.json" if args.only else "results.json"))
    files, commits, queued = (1_000, 50, 10_000) if args.quick else (10_000, 500, 100_000)
    per_commit = 10 if args.quick else 40
    daemon_commits = 5 if args.quick else 15
    work = Path(tempfile.mkdtemp(prefix="gitopsq-bench-"))
    started = time.perf_counter()
    f = Figures()
    try:
        if set(groups) & {"sync", "launch", "daemon"}:  # the figures that read the bench repo
            repo = work / "repo"
            print(f"building a repo of {files:,} run files and {commits} commits in {work} ...", file=sys.stderr, flush=True)
            seconds, shas = timed(build_repo, repo, files, commits)
            print(f"  built in {seconds:.1f} s", file=sys.stderr, flush=True)
        if "sync" in groups:
            base_db = bench_first_sync(f, repo, shas, files, work, runs)
            bench_restart(f, repo, shas, files, base_db, work, runs)
            bench_catch_up(f, repo, shas, base_db, work, runs)
            bench_per_commit(f, repo, shas, base_db, work, runs, per_commit)
        if "launch" in groups:  # before the daemon's commits: the tree is the bench repo's tip
            bench_first_command(f, repo, shas[-1], files, work, runs)
        if "daemon" in groups:
            bench_daemon(f, repo, files, work, runs, daemon_commits)
        if "queue" in groups:
            bench_queue(f, queued, work, runs)
            bench_gang_queue(f, queued, work, runs)
        if SLURM_GROUP in groups:
            bench_slurm(f, work, runs, daemon_commits)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(f.rows, indent=2) + "\n")
    print_table(f, f"gitopsq benchmarks ({files:,} files, {commits} commits, {queued:,} queued; median of {runs} runs; "
                   f"{time.perf_counter() - started:.0f} s)")
    print(f"wrote {out}")


def main_scale(ap: argparse.ArgumentParser, args) -> None:
    groups = {g for g in args.only.split(",") if g} or set(SCALE_GROUPS)
    if groups - set(SCALE_GROUPS):
        ap.error(f"--scale --only: choose from {', '.join(SCALE_GROUPS)}")
    out = Path(args.out or ROOT / "bench" / "out" / "scale.json")
    work = Path(tempfile.mkdtemp(prefix="gitopsq-scale-"))
    try:
        rows = run_scale(args, groups, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
