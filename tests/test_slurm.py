"""The controller driving a real one-machine Slurm cluster through the slurm provider, end to end.

The cluster (tests/slurm_cluster.py) is started once per session; every test starts with an empty
partition. Without Slurm's packages these tests are skipped, saying why.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from gitopsq.controller import Controller
from gitopsq.providers.base import workspace_dir_for
from gitopsq.providers.slurm_adapter import make_slurm_provider
from gitopsq.runtime import slurm_dir_for
from gitopsq.secretstore import SecretStore
from gitopsq.source import ConfigRepo
from gitopsq.store import Store, listing
from tests.fakes import Clock
from tests.helpers import GitRepo, run_cli
from tests.test_daemon import Daemon

QUEUE_FOREVER = "retry:\n  on_events: [no-capacity]\n  duration: off\n"


def run_file(name, commands, priority=0, extra=""):
    cmds = "\n".join(f"  - {c!r}" for c in commands)
    return f"type: task\nname: {name}\npriority: {priority}\ncommands:\n{cmds}\n{extra}"


class World:
    """A config repo, a store, and a controller over the test cluster's partition."""

    def __init__(self, tmp_path: Path, cluster, clock=None, max_nodes=None, **options):
        self.cluster = cluster
        self.repo = GitRepo(tmp_path / "repo")
        self.store = Store(tmp_path / "state" / "gitopsq.db")
        opts = {"slurm_conf": str(cluster.conf), "partition": cluster.partition, **options}
        self.provider = make_slurm_provider(slurm_dir_for(self.store.path), opts, self.store.controller_id, max_nodes)
        self.clock = clock
        self.controller = Controller(self.store, self.provider, ConfigRepo(str(self.repo.path)),
                                     clock=clock or time.time, rng=random.Random(0))

    def commit(self, message="change", **files):
        for name, text in files.items():
            path = f"runs/{name}.yml"
            if text is None:
                self.repo.remove(path)
            else:
                self.repo.write(path, text)
        self.repo.commit(message)

    def drive(self, until, timeout=30.0, what="the controller to converge"):
        """Step like the daemon would, until the condition holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.controller.step()
            if until():
                return
            time.sleep(0.05)
        rows = [(r["name"], r["status"], r["reason"], r["message"]) for r in listing(self.store, include_all=True)]
        raise AssertionError(f"timed out waiting for {what}: {rows}")

    def sub(self, run):
        return self.store.current_submission(run)

    def jobs(self):
        """Every job of ours Slurm still knows: job id -> (state, tags)."""
        jobs = {}
        for job in self.provider.driver._squeue():
            if job.tags.get("gitopsq-controller") == self.store.controller_id:
                jobs[job.job_id] = (job.state, job.tags)
        return jobs

    def idle(self):
        return not self.store.submissions_with_status("queued", "provisioning", "running", "stopping")


@pytest.fixture
def world(tmp_path, slurm):
    w = World(tmp_path, slurm)
    yield w
    w.store.close()


def test_a_commit_runs_a_task_to_done_with_its_output_in_logs(world, monkeypatch):
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", "never-in-a-job")  # the controller's own environment
    world.commit(hello=run_file("hello", [
        "echo hello from $GITOPSQ_RUN in $(basename $PWD) on $SLURM_JOB_PARTITION",
        "ls -A", "echo rank=$DSTACK_NODE_RANK nodes=$DSTACK_NODES_NUM master=$DSTACK_MASTER_NODE_IP",
        "echo secret=${GITOPSQ_PROVIDER_SECRET:-unset}"]))
    world.drive(lambda: world.sub("hello")["status"] == "done")
    sub = world.sub("hello")
    assert sub["exit_code"] == 0
    job = world.jobs()[sub["node_id"]]  # the node id is the Slurm job id
    assert job[0] == "COMPLETED" and job[1]["gitopsq-run"] == "hello" and job[1]["gitopsq-submission"] == str(sub["id"])
    out = run_cli("logs", "hello", "--db", str(world.store.path)).output.splitlines()
    key = job[1]["key"]
    assert out[0] == f"hello from hello in {key} on {world.cluster.partition}"
    assert out[1] == ".venv", "a fresh working directory, with the run's venv"
    assert out[2].startswith("rank=0 nodes=1 master=") and out[2] != "rank=0 nodes=1 master="
    assert out[-1] == "secret=unset" and len(out) == 4, "no controller secrets"
    rows = json.loads(run_cli("history", "hello", "--json", "--db", str(world.store.path)).output)
    assert rows[0]["log_path"] == sub["log_path"] and Path(sub["log_path"]).parent == slurm_dir_for(world.store.path) / "logs"


def test_priority_order_with_the_partition_full(world):
    cpus = world.cluster.cpus  # each run takes the whole partition
    holder = world.cluster.submit_running(f"--cpus-per-task={cpus}", "--wrap", "sleep 60")
    stamp = "date +%s.%N"
    for name, priority in (("low", 10), ("high", 90), ("mid", 50)):
        world.commit(**{name: run_file(name, [stamp, "sleep 0.5"], priority, f"resources: {{cpu: {cpus}}}\n{QUEUE_FOREVER}")})
    world.commit(impatient=run_file("impatient", ["echo never"], 5, f"resources: {{cpu: {cpus}}}\n"))
    world.controller.step()
    impatient = world.sub("impatient")
    assert (impatient["status"], impatient["reason"]) == ("failed", "no-capacity")
    assert [world.sub(n)["status"] for n in ("high", "mid", "low")] == ["queued"] * 3
    assert world.jobs() == {}, "nothing is submitted while another user's job holds the partition"
    assert "needs" in run_cli("ps", "--db", str(world.store.path), env={"COLUMNS": "200"}).output
    world.controller.step()
    assert world.jobs() == {}

    world.cluster.run("scancel", holder)  # the other user's job ends: the room goes by priority
    world.drive(world.idle, what="the three runs to finish")
    starts = {}
    for name in ("high", "mid", "low"):
        sub = world.sub(name)
        assert sub["status"] == "done", sub["message"]
        starts[name] = float(Path(sub["log_path"]).read_text().split()[0])
    assert sorted(starts, key=starts.get) == ["high", "mid", "low"]
    assert len(world.jobs()) == 3 and holder not in world.jobs()


def test_max_nodes_caps_the_jobs_gitopsq_runs_at_once(tmp_path, slurm):
    w = World(tmp_path, slurm, max_nodes=1)
    w.commit(one=run_file("one", ["sleep 0.5"], 10, QUEUE_FOREVER), two=run_file("two", ["sleep 0.5"], 5, QUEUE_FOREVER))
    w.controller.step()
    assert (w.sub("one")["status"], w.sub("two")["status"]) == ("running", "queued")
    assert ", 1 node; free: " in run_cli("ps", "--db", str(w.store.path), env={"COLUMNS": "200"}).output
    w.drive(w.idle)
    assert sorted(state for state, _ in w.jobs().values()) == ["COMPLETED", "COMPLETED"]
    w.store.close()


def test_a_job_slurm_leaves_pending_goes_back_to_the_queue(tmp_path, slurm):
    """Room that sinfo showed free was taken by another user before Slurm placed our job."""
    w = World(tmp_path, slurm, clock=Clock(time.time()), pending_grace="2")
    w.provider.adapter.capacity = lambda running: {"cpus": 999, "memory_mb": 10**9, "gpus": 0}  # the stale view
    cpus = slurm.cpus
    slurm.submit_running(f"--cpus-per-task={cpus}", "--wrap", "sleep 60")
    w.commit(patient=run_file("patient", ["echo ran"], 0, QUEUE_FOREVER), eager=run_file("eager", ["echo ran"], 0))
    w.controller.step()
    eager, patient = w.sub("eager"), w.sub("patient")
    assert (eager["status"], eager["reason"]) == ("failed", "no-capacity")
    assert "pending (" in eager["message"] and "busy with other jobs" in eager["message"], eager["message"]
    assert patient["status"] == "queued" and patient["backoff_event"] == "no-capacity" and patient["node_id"] is None
    assert sorted(state for state, _ in w.jobs().values()) == ["CANCELLED", "CANCELLED"], "not left in Slurm's queue"

    slurm.cancel_all()
    w.clock.advance(20)  # past the backoff
    w.drive(lambda: w.sub("patient")["status"] == "done")
    assert Path(w.sub("patient")["log_path"]).read_text() == "ran\n"
    w.store.close()


def test_slurm_time_limit_expiry_is_max_duration_exceeded(tmp_path, slurm):
    clock = Clock(time.time())
    w = World(tmp_path, slurm, clock=clock)
    w.commit(long=run_file("long", ["echo started", "sleep 300"], 0, "max_duration: 70s\n"))
    w.drive(lambda: Path(w.sub("long")["log_path"] or "/nonexistent").exists())
    job_id = w.sub("long")["node_id"]
    limit = slurm.run("squeue", "-h", "-j", job_id, "-O", "TimeLimit").strip()
    assert limit == "2:00", "max_duration rounded up to whole minutes, never below gitopsq's own"
    # Slurm reaches the limit first (as when the controller is down): bring its end to now.
    slurm.run("scontrol", "update", f"JobId={job_id}", f"EndTime={time.strftime('%Y-%m-%dT%H:%M:%S')}")
    w.drive(lambda: w.jobs()[job_id][0] == "TIMEOUT", timeout=60, what="Slurm's TIMEOUT")
    assert w.sub("long")["status"] == "running", "a TIMEOUT is not an error or an interruption"
    clock.advance(70)
    w.controller.step()
    sub = w.sub("long")
    assert (sub["status"], sub["reason"]) == ("failed", "max-duration-exceeded")
    w.store.close()


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry-on-error"])
def test_a_non_zero_exit_code(tmp_path, slurm, retry):
    clock = Clock(time.time())
    w = World(tmp_path, slurm, clock=clock)
    extra = "retry:\n  on_events: [error]\n  duration: 1h\n" if retry else ""
    w.commit(crash=run_file("crash", ["echo attempt $SLURM_JOB_ID", "exit 3"], 0, extra))
    w.drive(lambda: w.sub("crash")["status"] in ("failed", "queued") and w.sub("crash")["exit_code"] == 3)
    first = w.sub("crash")
    if not retry:
        assert (first["status"], first["reason"]) == ("failed", "exit-code")
        assert [s for s, _ in w.jobs().values()] == ["FAILED"]
        return
    assert first["status"] == "queued" and first["backoff_event"] == "error"
    assert 13 <= first["next_try_at"] - clock() <= 17, "backs off about 15 s after the first error"
    w.controller.step()
    assert len(w.jobs()) == 1, "not relaunched before the backoff is over"
    clock.advance(17)
    w.drive(lambda: w.sub("crash")["attempts"] == 2)
    second = w.sub("crash")
    assert second["status"] == "queued" and 27 <= second["next_try_at"] - clock() <= 33, "the backoff doubles"
    assert sorted(s for s, _ in w.jobs().values()) == ["FAILED", "FAILED"]
    logs = run_cli("logs", "crash", "--db", str(w.store.path)).output
    ran = [line for line in logs.splitlines() if line.startswith("attempt ")]
    assert len(ran) == 2 and "--- attempt 2" in logs, logs
    w.store.close()


def test_deleting_the_file_cancels_the_job(world):
    world.commit(sleeper=run_file("sleeper", ["echo up", "sleep 300"]))
    world.drive(lambda: world.sub("sleeper")["status"] == "running")
    job_id = world.sub("sleeper")["node_id"]
    world.commit("delete", sleeper=None)
    world.controller.step()
    sub = world.sub("sleeper")
    assert (sub["status"], sub["reason"]) == ("cancelled", "deleted")
    world.drive(lambda: world.jobs()[job_id][0] == "CANCELLED", what="Slurm to cancel the job")
    world.controller.step()
    assert world.sub("sleeper")["status"] == "cancelled"


def test_scancel_from_outside_is_interrupted_and_not_resubmitted(world):
    world.commit(victim=run_file("victim", ["sleep 300"], 0, "retry:\n  on_events: [no-capacity]\n  duration: 1h\n"))
    world.drive(lambda: world.sub("victim")["status"] == "running")
    job_id = world.sub("victim")["node_id"]
    world.cluster.run("scancel", job_id)
    world.drive(lambda: world.sub("victim")["status"] != "running")
    sub = world.sub("victim")
    assert (sub["status"], sub["reason"]) == ("failed", "interrupted")
    for _ in range(3):
        world.controller.step()
    assert list(world.jobs()) == [job_id] and world.sub("victim")["id"] == sub["id"]


def test_runs_no_node_of_the_partition_can_hold_fail_at_once(world):
    world.commit(huge=run_file("huge", ["true"], 0, f"resources: {{cpu: {world.cluster.cpus * 64}}}\n{QUEUE_FOREVER}"),
                 a100=run_file("a100", ["true"], 0, "resources: {gpu: A100:1}\n"))
    world.controller.step()
    huge, a100 = world.sub("huge"), world.sub("a100")
    assert (huge["status"], huge["reason"]) == ("failed", "unsatisfiable")
    assert huge["message"].startswith(f"resources.cpu: needs {world.cluster.cpus * 64} CPUs on a node")
    assert a100["message"].startswith("resources.gpu: needs 1x A100 on a node") and "t4" in a100["message"]
    assert world.jobs() == {}


def test_gpus_by_model_are_slurm_gres(world):
    world.commit(gpu=run_file("gpu", ["echo gpus=$SLURM_GPUS_ON_NODE per-node=$DSTACK_GPUS_PER_NODE"], 0,
                              "resources: {gpu: T4:2}\n"))
    world.drive(lambda: world.sub("gpu")["status"] == "done")
    assert Path(world.sub("gpu")["log_path"]).read_text() == "gpus=2 per-node=2\n"


def test_python_is_a_venv_of_the_nodes_interpreter_of_that_version(world):
    here = "%d.%d" % sys.version_info[:2]
    venv_check = ["python3 -c 'import sys; print(sys.version_info[:2], sys.prefix == sys.base_prefix)'",
                  'echo "venv=${VIRTUAL_ENV#$PWD/}"', "pip --version | cut -d' ' -f1"]
    world.commit(py=run_file("py", ["python --version", *venv_check], 0, f"python: '{here}'\n{QUEUE_FOREVER}"),
                 plain=run_file("plain", venv_check, 0, QUEUE_FOREVER),
                 missing=run_file("missing", ["python --version"], 0, "python: '3.19'\n"))
    world.drive(lambda: world.idle())
    major, minor = here.split(".")
    out = Path(world.sub("py")["log_path"]).read_text()
    assert world.sub("py")["status"] == "done", out
    assert out.splitlines()[1:] == [f"({major}, {minor}) False", "venv=.venv", "pip"], "a venv in the working directory, with pip"
    plain = Path(world.sub("plain")["log_path"]).read_text().splitlines()
    assert plain[1:] == ["venv=.venv", "pip"], "without python: a venv of the node's python3"
    missing = world.sub("missing")
    assert (missing["status"], missing["reason"], missing["exit_code"]) == ("failed", "exit-code", 127)
    assert "gitopsq: no python3.19 on " in Path(missing["log_path"]).read_text()


def test_a_runs_tree_lands_in_the_jobs_working_directory(world):
    """repos and files (staged by the controller at the submission's commit) are the job's working directory."""
    world.repo.write("train.py", "print('trained with v1')\n")
    world.repo.write("data/labels.txt", "cat,dog\n")
    world.commit(train=run_file("train", ["python3 train.py", "cat labels.txt", "echo at $GITOPSQ_COMMIT", "ls -A"], 0,
                                "repos: [..]\nfiles: ['../data/labels.txt:labels.txt']\n"))
    first = world.repo.git("rev-parse", "HEAD").strip()
    world.drive(lambda: world.sub("train")["status"] in ("done", "failed"))
    sub = world.sub("train")
    out = Path(sub["log_path"]).read_text().splitlines()
    assert sub["status"] == "done", out
    assert out[:3] == ["trained with v1", "cat,dog", f"at {first}"]
    assert {"train.py", "labels.txt", "runs", "data"} <= set(out[3:]) and ".git" not in out[3:]
    assert (Path(sub["workdir"]) / "train.py").is_file() and Path(sub["workdir"]).parent == slurm_dir_for(world.store.path) / "work"
    assert not any((workspace_dir_for(world.store.path) / "staging").iterdir()), "nothing is left staged"


def test_a_tree_outside_the_working_directory_is_refused(world):
    world.repo.write("data/labels.txt", "cat,dog\n")
    world.commit(abs=run_file("abs", ["true"], 0, "files: ['../data/labels.txt:/etc/labels.txt']\n"))
    world.controller.step()
    sub = world.sub("abs")
    assert (sub["status"], sub["reason"]) == ("failed", "unsatisfiable")
    assert sub["message"].startswith("files[0]: '/etc/labels.txt' is outside the working directory") and world.jobs() == {}


def test_a_multi_node_task_is_refused_by_name_not_run_as_separate_jobs(world):
    """A gang on Slurm belongs in one allocation (--nodes N); until the controller hands it over
    as one, it is refused rather than sent as N unrelated jobs."""
    world.commit(ddp=run_file("ddp", ["true"], 0, "nodes: 2\n"))
    world.controller.step()
    sub = world.sub("ddp")
    assert (sub["status"], sub["reason"]) == ("failed", "unsatisfiable")
    assert sub["message"].startswith("nodes: ") and world.jobs() == {}


SECRET = "hf_s3cret $HOME 'quoted' value"


def test_secrets_reach_the_job_masked_in_logs_and_never_in_its_files(world):
    SecretStore(world.store).set("hf_token", SECRET)
    world.commit(sec=run_file("sec", ["echo \"token=$HF_TOKEN\"", "echo \"plain=$PLAIN\"",
                                      "env | grep -c ^GITOPSQ_SECRET_ || true"], 0,
                              "env:\n  - HF_TOKEN=${{ secrets.hf_token }}\n  - PLAIN=visible\n"))
    world.drive(lambda: world.sub("sec")["status"] in ("done", "failed"))
    sub = world.sub("sec")
    assert sub["status"] == "done", sub["message"]
    assert Path(sub["log_path"]).read_text() == f"token={SECRET}\nplain=visible\n0\n", "the job had the value, as given"
    shown = run_cli("logs", "sec", "--db", str(world.store.path)).output
    assert shown == "token=***\nplain=visible\n0\n"
    job_dir = slurm_dir_for(world.store.path)
    written = [p for p in job_dir.rglob("*") if p.is_file() and p != Path(sub["log_path"])
               and "hf_s3cret" in p.read_text(errors="replace")]
    assert written == [], "no job file holds the secret: it went through sbatch's environment"
    [batch] = job_dir.rglob("batch.sh")
    assert "export PLAIN=visible" in batch.read_text() and "HF_TOKEN" in batch.read_text()


def test_volumes_are_links_to_a_folder_of_the_node(world, tmp_path):
    folder, absent = tmp_path / "checkpoints", tmp_path / "not-on-this-node"
    volumes = (f"volumes:\n  - {{instance_path: {folder}, path: ckpt}}\n"
               f"  - {{instance_path: {absent}, path: maybe, optional: true}}\n")
    world.commit(vol=run_file("vol", ["cat ckpt/step 2>/dev/null || echo fresh", "echo 100 > ckpt/step",
                                      "test -e maybe || echo no-optional-volume"], 0, volumes))
    world.drive(lambda: world.sub("vol")["status"] in ("done", "failed"))
    assert Path(world.sub("vol")["log_path"]).read_text() == "fresh\nno-optional-volume\n"
    assert (folder / "step").read_text() == "100\n" and not absent.exists()
    world.commit(vol=run_file("vol", ["cat ckpt/step"], 0, volumes))  # a new submission finds the checkpoint
    world.drive(lambda: world.sub("vol")["number"] == 2 and world.sub("vol")["status"] in ("done", "failed"))
    assert Path(world.sub("vol")["log_path"]).read_text() == "100\n"


def test_an_absolute_volume_path_is_refused(world):
    world.commit(vol=run_file("vol", ["true"], 0, "volumes: ['/srv/data:/data']\n"))
    world.controller.step()
    sub = world.sub("vol")
    assert (sub["status"], sub["reason"]) == ("failed", "unsatisfiable") and sub["message"].startswith("volumes[0]: '/data'")


def test_priority_order_among_gitopsqs_own_runs(world):
    """gitopsq's runs fill the partition; when one ends, the waiting ones start by priority."""
    cpus = world.cluster.cpus
    release = world.repo.path.parent / "release"
    whole = f"resources: {{cpu: {cpus}}}\n{QUEUE_FOREVER}"
    world.commit(first=run_file("first", [f"while [ ! -e {release} ]; do sleep 0.1; done"], 0, whole))
    world.drive(lambda: world.sub("first")["status"] == "running")
    for name, priority in (("low", 10), ("high", 90), ("mid", 50)):
        world.commit(**{name: run_file(name, ["date +%s.%N", "sleep 0.3"], priority, whole)})
    for _ in range(3):
        world.controller.step()
    assert [world.sub(n)["status"] for n in ("high", "mid", "low")] == ["queued"] * 3
    assert len(world.jobs()) == 1, "gitopsq submits nothing Slurm would have to hold"
    release.touch()
    world.drive(world.idle, what="the runs to finish")
    starts = {n: float(Path(world.sub(n)["log_path"]).read_text().split()[0]) for n in ("high", "mid", "low")}
    assert sorted(starts, key=starts.get) == ["high", "mid", "low"]


# --- kill -9 of `gitopsq serve` while jobs are submitted and running ------------------------------

def _crash_scenario(root: Path, cluster, rng: random.Random | None):
    """Six runs, two at a time; with rng, the daemon is SIGKILLed twice at random moments."""
    repo = GitRepo(root / "repo")
    ran = root / "ran.txt"
    db = root / "state" / "gitopsq.db"
    cpus = math.ceil(cluster.cpus / 2)  # two runs fill the partition
    args = ("--http", "off", "--interval", "2s", "--provider", "slurm", "--provider-opt", f"slurm_conf={cluster.conf}",
            "--provider-opt", f"partition={cluster.partition}")
    for i, name in enumerate("abcdef"):
        repo.write(f"runs/{name}.yml", run_file(name, [f"echo {name} >> {ran}", "sleep 0.5"], (i * 37) % 100,
                                                 f"resources: {{cpu: {cpus}}}\n{QUEUE_FOREVER}"))
    repo.commit()
    daemon = Daemon(repo.path, db, *args)
    if rng:
        for _ in range(2):
            time.sleep(rng.uniform(0.2, 2.0))
            daemon.stop(signal.SIGKILL)
            daemon = Daemon(repo.path, db, *args)
    try:
        deadline = time.monotonic() + 60
        while not (len(daemon.rows()) == 6 and all(r["status"] == "done" for r in daemon.rows())):
            if time.monotonic() > deadline:
                rows = [(r["name"], r["status"], r["reason"], r["message"]) for r in daemon.rows()]
                raise AssertionError(f"not converged: {rows}\n{daemon.log.read_text()[-3000:]}")
            time.sleep(0.1)
    finally:
        assert daemon.stop() == 0
    store = Store(db)
    state = sorted((r["name"], r["status"], r["submission"], r["exit_code"]) for r in listing(store, include_all=True))
    controller_id = store.controller_id
    store.close()
    jobs = {}
    for line in cluster.run("squeue", "-h", "--states=all", "-O", "JobID:|,State:|,Comment:|").splitlines():
        job_id, state_name, comment = line.rstrip("|").split("|", 2)
        if f"gitopsq-controller={controller_id}" in comment:
            jobs[job_id] = (state_name.strip(), comment)
    return state, sorted(ran.read_text().split()), jobs


@pytest.mark.parametrize("trials", [pytest.param(1, id="1-trial"), pytest.param(8, id="8-trials", marks=pytest.mark.slow)])
def test_kill_9_of_the_daemon_never_duplicates_a_job(tmp_path, slurm, trials):
    rng = random.Random(17)
    for trial in range(trials):
        state, ran, jobs = _crash_scenario(tmp_path / f"t{trial}", slurm, rng)
        assert state == [(n, "done", 1, 0) for n in "abcdef"], f"trial {trial}"
        assert ran == list("abcdef"), f"trial {trial}: a run ran twice or never: {ran}"
        per_submission = {}
        for job_id, (state_name, comment) in jobs.items():
            per_submission.setdefault(comment.split("gitopsq-submission=")[1].split(";")[0], []).append((job_id, state_name))
        cancelled_before_start = [j for js in per_submission.values() for j in js if j[1] == "CANCELLED"]
        assert all(sum(1 for _, s in js if s == "COMPLETED") == 1 for js in per_submission.values()), per_submission
        assert len(per_submission) == 6 and not cancelled_before_start, f"trial {trial}: {per_submission}"


def test_the_provider_check_asks_the_partition(slurm):
    """`apply -Q` and `plan --db` ask the provider serve runs with: on Slurm, the partition."""
    from gitopsq.providercheck import ProviderCheck
    from gitopsq.spec import parse_run

    check = ProviderCheck("slurm", {"slurm_conf": str(slurm.conf), "partition": slurm.partition})
    huge = parse_run(f"type: task\ncommands: [x]\nresources: {{cpu: {slurm.cpus * 64}}}\n".encode(), "runs/huge.yml")
    assert check(huge).startswith(f"resources.cpu: needs {slurm.cpus * 64} CPUs on a node")
    assert check(parse_run(b"type: task\ncommands: [x]\n", "runs/small.yml")) is None
