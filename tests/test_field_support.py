"""Every field the schema accepts is honoured, checked or refused by each provider, as the
table in gitopsq.providers.fields (and the README) says: never accepted and silently ignored."""

from __future__ import annotations

import os
import sys
import time

import pytest

from gitopsq.controller import Controller
from gitopsq.providers import ec2
from gitopsq.providers.base import Launch, log_dir_for
from gitopsq.providers.cloud import CloudAdapter, user_data
from gitopsq.providers.fields import (
    CONTROLLER_FIELDS,
    EC2,
    FIELD_SUPPORT,
    LOCAL_CONTAINER,
    LOCAL_PROCESS,
    SLURM,
    render_markdown,
    verdict,
)
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.providers.local_adapter import LocalAdapter, make_local_provider
from gitopsq.providers.pythons import find_python
from gitopsq.providers.slurm import SlurmNodeDriver
from gitopsq.providers.slurm_adapter import SlurmAdapter
from gitopsq.source import ConfigRepo
from gitopsq.spec import load_schema, parse_run
from gitopsq.store import Store
from tests.helpers import ROOT, GitRepo

HERE = "%d.%d" % sys.version_info[:2]  # a Python this machine certainly has
NOT_INSTALLED = "3.19"

# field -> (a spec line that uses it so that it fits, one that the provider must refuse or None)
SAMPLES = {
    "python": (f"python: '{HERE}'", f"python: '{NOT_INSTALLED}'"),
    "resources.cpu": ("resources: {cpu: 1}", "resources: {cpu: 4096}"),
    "resources.memory": ("resources: {memory: 1GB}", "resources: {memory: 100TB}"),
    "resources.disk": ("resources: {disk: 1GB}", "resources: {disk: 1000TB}"),
    "resources.shm_size": ("resources: {shm_size: 1GB}", None),
    "resources.gpu": ("resources: {gpu: 1}", "resources: {gpu: A100:1}"),
    "backends": (None, "backends: [gcp]"),
    "regions": (None, "regions: [mars-central-1]"),
    "spot_policy": ("spot_policy: auto", "spot_policy: spot"),
    "max_price": ("max_price: 5", None),
    "volumes": ("volumes: [{instance_path: /tmp/gitopsq-probe, path: data}]", "volumes: ['/tmp/gitopsq-probe:/data']"),
    "nodes": ("nodes: 2", "nodes: 3"),  # the local fixture has 2 slots
}


def spec_of(line: str | None, image: bool = False):
    text = "type: task\ncommands: [echo hi]\n" + (line + "\n" if line else "") + ("image: ubuntu\n" if image else "")
    return parse_run(text.encode(), "runs/probe.yml")


def schema_fields() -> set[str]:
    schema = load_schema()
    names = {k for k, v in schema["properties"].items() if "x-unsupported" not in v}
    for branch in schema["allOf"]:
        names |= {k for k, v in branch["then"]["properties"].items() if "not" not in v or len(v) > 2}
    names.discard("resources")
    names |= {f"resources.{k}" for k in schema["$defs"]["resources"]["properties"]}
    return names


def test_the_table_covers_every_field_the_schema_accepts():
    assert schema_fields() == set(FIELD_SUPPORT) | set(CONTROLLER_FIELDS)


def test_the_readme_shows_the_table():
    assert render_markdown() in (ROOT / "README.md").read_text()


@pytest.fixture
def local(tmp_path):
    driver = LocalNodeDriver(tmp_path / "nodes", slots=2, gpus=1)
    driver._container_tool_cache = None  # as on a machine without docker or podman
    return LocalAdapter(driver)


@pytest.mark.parametrize("field", sorted(SAMPLES))
def test_local_process_runs_do_what_the_table_says(local, field):
    fits, refused = SAMPLES[field]
    kind = verdict(field, LOCAL_PROCESS)
    if kind == "refused":
        why = local.unsatisfiable(spec_of(refused or fits))
        assert why and why.startswith(field) and "local provider" in why
        return
    if fits is not None:
        assert local.unsatisfiable(spec_of(fits)) is None
    if refused is not None:
        why = local.unsatisfiable(spec_of(refused))
        assert why and why.startswith(field), why


def test_an_image_without_a_container_engine_is_refused_before_it_queues(local):
    assert verdict("image", LOCAL_CONTAINER) == "honoured"
    why = local.unsatisfiable(spec_of(None, image=True))
    assert why.startswith("image:") and "docker or podman" in why


@pytest.fixture(scope="module")
def cloud():
    driver = ec2.make_ec2_driver("us-east-1", key="k", secret="s")  # sizes ship with libcloud: no API call
    return CloudAdapter(driver, "ec2", "ctl", "https://gitopsq.example.com", region="us-east-1")


@pytest.mark.parametrize("field", sorted(set(SAMPLES) - {"python", "volumes"}))
def test_ec2_runs_do_what_the_table_says(cloud, field):
    fits, refused = SAMPLES[field]
    if field == "resources.shm_size":
        assert cloud.unsatisfiable(spec_of(fits, image=True)) is None
        why = cloud.unsatisfiable(spec_of(fits))
        assert why.startswith("resources.shm_size") and "ec2" in why
        return
    if field == "resources.gpu":  # an EC2 size with one GPU exists; one with an A100 alone does not
        fits, refused = fits, "resources: {gpu: B300:1}"
    if field == "backends":
        fits = "backends: [aws]"
    if field == "regions":
        fits = "regions: [us-east-1]"
    if field == "spot_policy":
        refused = None
    if field in ("resources.disk",):
        refused = None  # any root volume size can be asked for
    if field == "nodes":
        refused = None  # without --max-nodes: as many as the cloud gives (see test_cloud_provider)
    assert verdict(field, EC2) in ("honoured", "checked")
    if fits is not None:
        assert cloud.unsatisfiable(spec_of(fits)) is None, field
    if refused is not None:
        why = cloud.unsatisfiable(spec_of(refused))
        assert why and why.startswith(field), why


def test_ec2_runs_python_in_its_image_with_the_shm_size():
    spec = spec_of("python: '3.12'\nresources: {shm_size: 2GB}")
    script = user_data(Launch(1, "probe", 1, spec, "tok"), "https://gitopsq.example.com")
    assert "--shm-size 2048m " in script and "python:3.12 bash /gitopsq/script.sh" in script


class RecordedSlurm(SlurmNodeDriver):
    """A partition of two nodes as Slurm 22.05's commands print it (recorded from a real cluster,
    extended by a second node), so the table is held to the adapter without a cluster."""

    OUTPUT = {
        "sinfo": "big|idle|0/8/0/8|65536|0|102400|gpu:t4:2(S:0)|gpu:t4:0(IDX:N/A)|\n"
                 "small|mixed|2/2/0/4|16384|4096|20480|(null)|gpu:0|\n",
        "scontrol show partition": "PartitionName=gq AllowGroups=ALL Default=YES DefaultTime=NONE MaxNodes=UNLIMITED "
                                   "MaxTime=1-00:00:00 Nodes=big,small State=UP TotalCPUs=12 TotalNodes=2 "
                                   "DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED TRES=cpu=12,mem=80G,node=2\n",
        "scontrol show config": "DefMemPerCPU            = 512\nMaxMemPerNode           = UNLIMITED\n"
                                "SelectTypeParameters    = CR_CORE_MEMORY\n",
    }

    def ex_run(self, command, *args, input=None, env=None):
        key = command if command != "scontrol" else " ".join((command, *args[:2]))
        return self.OUTPUT[key]


@pytest.fixture
def slurm_adapter(tmp_path):
    return SlurmAdapter(RecordedSlurm(tmp_path / "jobs", partition="gq"))


@pytest.mark.parametrize("field", sorted(SAMPLES))
def test_slurm_runs_do_what_the_table_says(slurm_adapter, field):
    fits, refused = SAMPLES[field]
    kind = verdict(field, SLURM)
    if field == "backends":
        fits = "backends: [slurm]"
    if field == "python":
        refused = None  # the node's own Python: the job says so when it has none (tests/test_slurm.py)
    if kind == "refused":
        why = slurm_adapter.unsatisfiable(spec_of(refused or fits))
        assert why and why.startswith(field) and "slurm" in why.lower(), why
        return
    assert kind == "honoured", field
    if fits is not None:
        assert slurm_adapter.unsatisfiable(spec_of(fits)) is None, field
    if refused is not None:
        why = slurm_adapter.unsatisfiable(spec_of(refused))
        assert why and why.startswith(field), why


def test_slurm_refuses_images_gpu_memory_and_a_time_past_the_partition_limit(slurm_adapter):
    assert verdict("image", SLURM) == "refused"
    assert slurm_adapter.unsatisfiable(spec_of(None, image=True)).startswith("image:")
    assert slurm_adapter.unsatisfiable(spec_of("resources: {gpu: 24GB:1}")).startswith("resources.gpu: Slurm's gres")
    assert slurm_adapter.unsatisfiable(spec_of("resources: {gpu: T4:2}")) is None
    assert slurm_adapter.unsatisfiable(spec_of("resources: {gpu: T4:3}")).startswith("resources.gpu: needs 3x T4")
    assert slurm_adapter.unsatisfiable(spec_of("max_duration: 24h")) is None
    assert slurm_adapter.unsatisfiable(spec_of("max_duration: 25h")).startswith("max_duration: 1500 minutes")


def test_slurm_requests_what_the_run_file_asks_for(slurm_adapter):
    spec = spec_of("resources: {cpu: 3.., memory: 1.5GB, gpu: T4:1, disk: 10GB}\nmax_duration: 90s\npython: '3.12'")
    args = slurm_adapter.create_args(Launch(1, "probe", 1, spec, "tok"), {"gitopsq-controller": "c"})
    assert {k: args[k] for k in ("ex_cpus", "ex_memory_mb", "ex_gpus", "ex_gpu_type", "ex_tmp_mb", "ex_time_minutes",
                                 "ex_python")} == {"ex_cpus": 3, "ex_memory_mb": 1536, "ex_gpus": 1, "ex_gpu_type": "t4",
                                                   "ex_tmp_mb": 10240, "ex_time_minutes": 2, "ex_python": "3.12"}
    assert slurm_adapter.demand(spec) == {"nodes": 1, "cpus": 3, "memory_mb": 1536, "gpus": 1, "gpus:t4": 1}
    # Memory left unset is what Slurm gives: DefMemPerCPU per CPU.
    assert slurm_adapter.demand(spec_of(None)) == {"nodes": 1, "cpus": 1, "memory_mb": 512, "gpus": 0}
    assert slurm_adapter.driver.ex_capacity() == {"cpus": 10, "memory_mb": 65536 + 12288, "gpus": 2, "gpus:t4": 2}


def _controller(tmp_path, text):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/probe.yml", text)
    repo.commit("a run")
    store = Store(tmp_path / "state" / "gitopsq.db")
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0)
    return store, Controller(store, provider, ConfigRepo(str(repo.path)))


def test_a_local_run_gets_the_python_it_asks_for(tmp_path, cleanup_nodes):
    """Observed: python: "3.12" ran the controller's Python 3.11."""
    other = next((v for v in ("3.12", "3.13", "3.10", "3.9") if v != HERE and find_python(v)), None)
    if other is None:
        pytest.skip(f"this machine has no Python besides {HERE}")
    store, controller = _controller(tmp_path, f"type: task\npython: '{other}'\ncommands: ['python --version', 'python3 -c \"import sys; print(sys.version_info[:2])\"']\n")
    deadline = time.monotonic() + 30
    while store.current_submission("probe") is None or store.current_submission("probe")["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        controller.step()
        time.sleep(0.05)
    sub = store.current_submission("probe")
    assert sub["status"] == "done", sub["message"]
    log = open(sub["log_path"]).read()
    major, minor = other.split(".")
    assert f"Python {other}." in log and f"({major}, {minor})" in log


def test_a_run_asking_for_a_missing_python_fails_before_launching(tmp_path, cleanup_nodes):
    store, controller = _controller(tmp_path, f"type: task\npython: '{NOT_INSTALLED}'\ncommands: [python --version]\n")
    controller.step()
    sub = store.current_submission("probe")
    assert (sub["status"], sub["reason"]) == ("failed", "unsatisfiable")
    assert sub["message"].startswith(f"python: no Python {NOT_INSTALLED}") and sub["node_id"] is None


def test_shm_size_on_a_process_run_is_refused_not_ignored(tmp_path, cleanup_nodes):
    """Observed: shm_size was accepted and had no effect."""
    store, controller = _controller(tmp_path, "type: task\nresources: {shm_size: 1GB}\ncommands: [echo hi]\n")
    controller.step()
    sub = store.current_submission("probe")
    assert (sub["status"], sub["reason"]) == ("failed", "unsatisfiable")
    assert sub["message"].startswith("resources.shm_size:")


def test_a_container_run_gets_its_shm_size(tmp_path, monkeypatch, cleanup_nodes):
    # A stand-in docker that answers `docker info`, records how it is run and runs the script as
    # the container would: this machine has no container engine.
    fake = tmp_path / "fakebin"
    fake.mkdir()
    record = tmp_path / "docker-args"
    (fake / "docker").write_text(f'#!/bin/bash\n[ "$1" = run ] || exit 0\nprintf "%s\\n" "$@" > {record}\n'
                                 'echo in-container\n')
    (fake / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    store, controller = _controller(tmp_path, "type: task\nimage: ubuntu\nresources: {shm_size: 2GB}\ncommands: [echo hi]\n")
    deadline = time.monotonic() + 30
    while store.current_submission("probe") is None or store.current_submission("probe")["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        controller.step()
        time.sleep(0.05)
    assert store.current_submission("probe")["status"] == "done", store.current_submission("probe")["message"]
    args = record.read_text().splitlines()
    assert args[args.index("--shm-size") + 1] == "2048m" and args.index("--shm-size") < args.index("ubuntu")
