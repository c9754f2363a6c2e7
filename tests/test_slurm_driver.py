"""The Slurm driver on its own: reading the commands' output (pure), the batch script, and the
driver's jobs on the real test cluster (skipped without Slurm)."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest
from libcloud.compute.base import Node
from libcloud.compute.types import NodeState

from gitopsq.providers.base import AUTH, CAPACITY, THROTTLE, UNSATISFIABLE, ProviderConfigError
from gitopsq.providers.slurm import (
    SlurmAuthError,
    SlurmCapacityError,
    SlurmError,
    SlurmNodeDriver,
    SlurmUnavailableError,
    SlurmUnsatisfiableError,
    _command_error,
    batch_script,
)
from gitopsq.providers.slurm_adapter import SLURM_OPTIONS, TIMEOUT_HOLD, SlurmAdapter, make_slurm_provider
from gitopsq.providers.slurm_output import (
    Job,
    job_outcome,
    minutes_for,
    parse_gres,
    parse_jobs,
    parse_nodes,
    parse_tags,
    slurm_minutes,
    tags_comment,
)
from tests.fakes import Clock
from tests.helpers import run_cli

# --- what the commands print ---------------------------------------------------------------------


def test_squeue_lines_keep_a_comment_with_separators_whole():
    text = ("12|RUNNING|None|0|node[01-02]|1700000000|1700000001|1700003601|1:00:00|2|gpu|gitopsq:run=a;key=k|\n"
            "13|FAILED|NonZeroExitCode|768|node03|1700000000|1700000001|1700000002|UNLIMITED|1|gpu|a|b|c|\n"
            "14|CANCELLED by 0|None|15|None assigned|1700000000|N/A|N/A|5|1|gpu|(null)|\n")
    jobs = parse_jobs(text)
    assert [(j.job_id, j.state, j.num_nodes, j.nodelist) for j in jobs] == [
        ("12", "RUNNING", 2, "node[01-02]"), ("13", "FAILED", 1, "node03"), ("14", "CANCELLED", 1, "None assigned")]
    assert jobs[0].tags == {"run": "a", "key": "k"} and jobs[0].start_time == 1700000001.0
    assert jobs[1].comment == "a|b|c" and jobs[1].exit_code == 3 and jobs[2].comment == ""
    assert jobs[2].exit_code == 128 + 15 and jobs[2].start_time is None
    with pytest.raises(ValueError, match="cannot read"):
        parse_jobs("12|RUNNING\n")


def test_sinfo_nodes_and_their_gres():
    nodes = parse_nodes("a|mixed|2/6/0/8|64000|16000|90000|gpu:a100:4(S:0-1),gpu:v100:2,shard:8|gpu:a100:1(IDX:0),gpu:v100:0(IDX:N/A)|\n"
                        "b|drained*|0/0/4/4|8000|0|0|(null)|(null)|\nc|idle~|0/4/0/4|8000|0|0|(null)|(null)|\n")
    a, b, c = nodes
    assert (a.cpus_idle, a.cpus_total, a.memory_mb - a.memory_allocated_mb, a.tmp_disk_mb) == (6, 8, 48000, 90000)
    assert a.gres == {"gpu": 6, "gpu:a100": 4, "gpu:v100": 2, "shard": 8} and a.free("gpu:a100") == 3
    assert [n.usable for n in nodes] == [True, False, True], "powered-down nodes start on demand; drained ones do not"
    assert parse_gres("gpu:nvidia_a100-sxm4-80gb:8(S:0-1)") == {"gpu": 8, "gpu:nvidia_a100-sxm4-80gb": 8}


@pytest.mark.parametrize("text, minutes", [("UNLIMITED", None), ("30", 30), ("1:30", 1.5), ("2:00:00", 120),
                                           ("1-00:00:00", 1440), ("2-12", 3600), ("1-01:30", 1530)])
def test_slurm_time_limits(text, minutes):
    assert slurm_minutes(text) == minutes


def test_max_duration_rounds_up_to_whole_minutes():
    assert [minutes_for(s) for s in (1, 59, 60, 61, 3600)] == [1, 1, 1, 2, 60]


def test_tags_travel_in_the_comment():
    tags = {"gitopsq-controller": "abc123", "gitopsq-run": "train-7", "gitopsq-submission": "42", "key": "k1"}
    assert parse_tags(tags_comment(tags)) == tags
    with pytest.raises(ValueError):
        tags_comment({"gitopsq-run": "a b"})


def _job(state, status=0):
    return Job("1", state, "None", status, "n1", None, None, None, "UNLIMITED", 1, "p", "")


@pytest.mark.parametrize("state, status, recorded, outcome", [
    ("COMPLETED", 0, None, (0, False)),
    ("FAILED", 3 << 8, 3, (3, False)),
    ("FAILED", 9, None, (137, False)),  # killed by a signal: 128 + 9
    ("FAILED", 0, None, (1, False)),  # failed to launch: never a success
    ("OUT_OF_MEMORY", 0, None, (137, False)),
    ("CANCELLED", 0, None, (None, True)),
    ("NODE_FAIL", 0, None, (None, True)),
    ("PREEMPTED", 0, None, (None, True)),
    ("TIMEOUT", 15, None, (None, False)),
    ("RUNNING", 0, None, (None, False)),
])
def test_how_a_job_ended(state, status, recorded, outcome):
    assert job_outcome(_job(state, status), recorded) == outcome


@pytest.mark.parametrize("message, cls, kind", [
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)", SlurmUnavailableError, THROTTLE),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available", SlurmUnsatisfiableError, UNSATISFIABLE),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified", SlurmAuthError, AUTH),
    ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)", SlurmCapacityError, CAPACITY),
    ("sbatch: error: Invalid authentication credential", SlurmAuthError, AUTH),
])
def test_command_errors_are_classified_in_one_place(message, cls, kind, tmp_path):
    error = _command_error("sbatch", 1, message, False, None)
    assert type(error) is cls and str(error) == f"sbatch: {message}"
    assert SlurmAdapter(SlurmNodeDriver(tmp_path, partition="p")).classify(error).kind == kind


def test_ssh_failures_are_the_login_hosts():
    assert type(_command_error("squeue", 255, "ssh: connect to host login1 port 22: Connection timed out", True, None)) is SlurmUnavailableError
    assert type(_command_error("squeue", 255, "user@login1: Permission denied (publickey).", True, None)) is SlurmAuthError


def test_a_multi_node_batch_script_runs_the_commands_once_per_node_with_dstacks_variables():
    script = batch_script("gq-train-1", "k1", "/shared/gq/nodes/k1", {"EPOCHS": "3 or 4"}, gpus=8, nodes=4,
                          cpus_per_node=32, python=None)
    assert "export EPOCHS='3 or 4'\n" in script
    assert ("srun --nodes=4 --ntasks-per-node=1 --cpus-per-task=32 --kill-on-bad-exit=1 "
            "bash -c 'export DSTACK_NODE_RANK=$SLURM_NODEID; exec bash \"$0\"' /shared/gq/nodes/k1/run.sh") in script
    assert "export DSTACK_GPUS_PER_NODE=8" in script and 'DSTACK_NODES_NUM="${SLURM_JOB_NUM_NODES:-1}"' in script
    assert 'scontrol show hostnames "${SLURM_JOB_NODELIST' in script and "DSTACK_MASTER_NODE_IP=" in script
    single = batch_script("gq-a-1", "k2", "/x/nodes/k2", {}, gpus=0, nodes=1, cpus_per_node=None, python=None)
    assert "srun" not in single and "DSTACK_NODE_RANK=0 bash /x/nodes/k2/run.sh" in single


def test_options_are_checked_and_listed_in_serve_help(tmp_path):
    with pytest.raises(ProviderConfigError, match="region: not a slurm option"):
        make_slurm_provider(tmp_path, {"region": "x"}, "c")
    with pytest.raises(ProviderConfigError, match="pending_grace must be seconds"):
        make_slurm_provider(tmp_path, {"pending_grace": "soon"}, "c")
    with pytest.raises(ProviderConfigError, match="sbatch_args"):
        make_slurm_provider(tmp_path, {"sbatch_args": "'unclosed"}, "c")
    provider = make_slurm_provider(tmp_path, {"partition": "p", "sbatch_args": "--constraint=ib --exclusive"}, "c")
    assert provider.name == "slurm" and provider.driver.sbatch_args == ("--constraint=ib", "--exclusive")
    help_text = run_cli("serve", "--help").output
    assert all(f"{key}=" in help_text for key in SLURM_OPTIONS)


def test_a_timeout_waits_for_the_controllers_deadline_then_counts_as_lost(tmp_path):
    clock = Clock(0)
    adapter = SlurmAdapter(SlurmNodeDriver(tmp_path, partition="p"), clock=clock)
    node = Node("7", "gq-a-1", NodeState.STOPPED, [], [], None,
                extra={"timed_out": True, "slurm_state": "TIMEOUT", "exit_code": None, "lost": False, "log": "l"})
    assert adapter.exit_code(node) == (True, None, False, "l")
    clock.advance(TIMEOUT_HOLD - 1)
    assert adapter.exit_code(node) == (True, None, False, "l")
    clock.advance(1)
    assert adapter.exit_code(node) == (False, None, True, "l")


# --- the driver on the test cluster --------------------------------------------------------------


@pytest.fixture
def driver(tmp_path, slurm):
    return SlurmNodeDriver(tmp_path / "jobs", partition=slurm.partition, slurm_conf=str(slurm.conf))


def _wait_ended(driver, job_id, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = driver.ex_get_node(job_id)
        if node is None or node.state == NodeState.STOPPED:
            return node
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_a_prepared_working_directory_and_one_task_per_node(driver, slurm):
    prepare = lambda work: (work / "train.py").write_text("print('prepared')\n")  # noqa: E731
    node = driver.create_node("gq-prep-1", ex_script="python3 train.py\necho tasks=$SLURM_NTASKS nodes=$SLURM_JOB_NUM_NODES\n",
                              ex_tags={"gitopsq-controller": "c"}, ex_prepare_workdir=prepare)
    ended = _wait_ended(driver, node.id)
    assert ended.extra["exit_code"] == 0 and ended.extra["slurm_state"] == "COMPLETED"
    assert Path(ended.extra["log"]).read_text() == "prepared\ntasks=1 nodes=1\n"
    assert slurm.run("squeue", "-h", "-t", "all", "-j", node.id, "-O", "NumNodes").strip() == "1"


def test_the_exit_code_outlives_slurms_memory_of_the_job(driver, monkeypatch):
    done = driver.create_node("gq-a-1", ex_script="exit 4\n", ex_tags={"gitopsq-controller": "c"})
    killed = driver.create_node("gq-b-1", ex_script="kill -9 $PPID; sleep 30\n", ex_tags={"gitopsq-controller": "c"})
    _wait_ended(driver, done.id)
    _wait_ended(driver, killed.id)
    monkeypatch.setattr(driver, "_squeue", lambda *a: [])  # past MinJobAge: Slurm no longer lists them
    nodes = {n.id: n for n in driver.list_nodes()}
    assert (nodes[done.id].extra["slurm_state"], nodes[done.id].extra["exit_code"], nodes[done.id].extra["lost"]) == ("FORGOTTEN", 4, False)
    assert (nodes[killed.id].extra["exit_code"], nodes[killed.id].extra["lost"]) == (None, True)


def test_a_job_submitted_just_before_a_crash_is_found_by_its_key(driver):
    node = driver.create_node("gq-a-1", ex_script="sleep 30\n", ex_tags={"gitopsq-controller": "c"})
    meta_path = driver.nodes_dir / node.extra["key"] / "meta.json"
    meta = meta_path.read_text()
    meta_path.write_text(meta.replace(f'"job_id": "{node.id}"', '"job_id": null'))  # died before recording it
    [found] = driver.list_nodes()
    assert found.id == node.id and found.state == NodeState.RUNNING
    assert driver.destroy_node(found)
    assert driver.list_nodes() == [] and (driver.ended_dir / found.extra["key"] / "batch.sh").is_file()
    assert Path(found.extra["workdir"]).is_dir(), "the working directory stays where it was shown"
    assert Path(found.extra["log"]).exists(), "the log stays where users read it"


def test_commands_on_a_login_host_over_ssh(tmp_path, slurm):
    """A stand-in for ssh that runs the remote command line here, as sshd would through a shell."""
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text(f"#!/bin/sh\n[ \"$1\" = login1 ] || exit 255\nshift\necho \"$*\" >> {tmp_path}/remote.log\nexec sh -c \"$*\"\n")
    fake_ssh.chmod(fake_ssh.stat().st_mode | stat.S_IXUSR)
    driver = SlurmNodeDriver(tmp_path / "jobs", partition=slurm.partition, slurm_conf=str(slurm.conf),
                             login="login1", ssh=str(fake_ssh))
    secret = "s3cret 'x' $y\nline two\n"  # quotes, a dollar, newlines (a trailing one too)
    node = driver.create_node("gq-remote-1", ex_script="echo \"it's $MSG\"\nprintf '[%s]' \"$TOKEN\"\n",
                              ex_env={"MSG": "a b; c"}, ex_secret_env={"TOKEN": secret}, ex_tags={"gitopsq-controller": "c"})
    ended = _wait_ended(driver, node.id)
    assert ended.extra["exit_code"] == 0 and Path(ended.extra["log"]).read_text() == f"it's a b; c\n[{secret}]"
    remote = (tmp_path / "remote.log").read_text()
    assert f"SLURM_CONF={slurm.conf} sbatch --parsable" in remote and "squeue -h --states=all" in remote
    assert "s3cret" not in remote, "the value travels on standard input, never on the remote command line"
    with pytest.raises(SlurmError):
        SlurmNodeDriver(tmp_path / "j2", partition=slurm.partition, login="elsewhere", ssh=str(fake_ssh)).list_nodes()


def test_job_files_are_the_users_alone(driver):
    node = driver.create_node("gq-a-1", ex_script="env\n", ex_env={"PLAIN": "visible"}, ex_secret_env={"TOKEN": "s3cret"},
                              ex_tags={"gitopsq-controller": "c"})
    ended = _wait_ended(driver, node.id)
    for folder in (driver.nodes_dir, driver.logs_dir, driver.ended_dir, Path(ended.extra["workdir"]).parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    env = dict(line.split("=", 1) for line in Path(ended.extra["log"]).read_text().splitlines() if "=" in line)
    assert env["TOKEN"] == "s3cret" and env["PLAIN"] == "visible" and "SLURM_TIME_FORMAT" not in env
    assert not any(name.startswith("GITOPSQ_SECRET_") for name in env), "the neutral names are gone"
    files = [p for p in driver.root.rglob("*") if p.is_file() and str(p) != ended.extra["log"]]
    assert files and not [p for p in files if b"s3cret" in p.read_bytes()], "a secret is in no job file"


def test_more_nodes_than_the_partition_has_is_unsatisfiable(driver, slurm):
    """ex_nodes is --nodes N with one task per node (the cluster here has one node)."""
    with pytest.raises(SlurmUnsatisfiableError):
        driver.create_node("gq-gang-1", ex_script="true\n", ex_nodes=2, ex_tags={"gitopsq-controller": "c"})
    assert driver.list_nodes() == [] and not any(driver.work_dir.iterdir()), "nothing is left of a refused job"


def test_a_submitted_job_is_kept_when_slurm_stops_answering_right_after(driver, monkeypatch):
    """sbatch got through, then squeue timed out: the job is the run's, not an error to launch again."""
    def no_answer(*args):
        raise SlurmUnavailableError("squeue: Socket timed out on send/recv operation")

    original = driver._squeue
    monkeypatch.setattr(driver, "_squeue", no_answer)
    node = driver.create_node("gq-a-1", ex_script="echo kept\n", ex_tags={"gitopsq-controller": "c"})
    assert node.state == NodeState.PENDING and node.id.isdigit()
    monkeypatch.setattr(driver, "_squeue", original)
    ended = _wait_ended(driver, node.id)
    assert ended.extra["exit_code"] == 0 and Path(ended.extra["log"]).read_text() == "kept\n"


def test_slurm_runs_are_reported_as_not_isolated_from_the_controller(tmp_path):
    """A job runs as the user who submits it: /healthz and serve say what it can reach."""
    provider = make_slurm_provider(tmp_path, {"partition": "p"}, "c")
    assert not provider.isolation.isolated and "state directory" in provider.isolation.how


def test_a_tree_staged_on_another_filesystem_is_copied_into_place(driver, monkeypatch, tmp_path):
    """workdir_root on the cluster's filesystem, the staging folder on the controller's: no rename there."""
    import errno
    import os

    from gitopsq.providers import slurm as slurm_module

    staged = tmp_path / "staged"
    (staged / "code").mkdir(parents=True)
    (staged / "code" / "train.py").write_text("print('from the tree')\n")
    (staged / "link").symlink_to("code/train.py")

    def other_filesystem(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(slurm_module.os, "rename", other_filesystem)
    node = driver.create_node("gq-tree-1", ex_script="python3 link\n", ex_tree=str(staged), ex_tags={"gitopsq-controller": "c"})
    ended = _wait_ended(driver, node.id)
    assert Path(ended.extra["log"]).read_text() == "from the tree\n"
    assert os.readlink(Path(ended.extra["workdir"]) / "link") == "code/train.py", "links are copied as links"
