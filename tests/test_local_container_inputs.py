"""A container run on the local provider: its tree, what the tree puts outside the working
directory, and its registry login. The engine is a recording stand-in for docker on PATH (this
machine may have no engine); what is checked is what the engine is given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gitopsq.providers.base import image_registry
from gitopsq.providers.local import LocalError, LocalNodeDriver
from tests.test_local_volumes import wait_ended


@pytest.fixture(autouse=True)
def no_leftover_processes(cleanup_nodes):
    yield


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """`docker` that answers `info`, and for a run records its arguments and its login config."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    record = tmp_path / "engine"
    record.mkdir()
    (fake / "docker").write_text(
        "#!/bin/bash\n"
        'if [ "$1" = --config ]; then cp "$2/config.json" ' f"{record}/login.json; shift 2; fi\n"
        '[ "$1" = run ] || exit 0\n'
        f'printf "%s\\n" "$@" > {record}/args\n')
    (fake / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    return record


def test_the_tree_becomes_the_working_directory_and_outside_entries_are_read_only_mounts(tmp_path, engine):
    tree = tmp_path / "staged"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "train.py").write_text("print('hi')\n")
    conf = tmp_path / "staged.outside" / "abs" / "etc" / "app.json"
    conf.parent.mkdir(parents=True)
    conf.write_text("{}")
    driver = LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0)
    node = driver.create_node("c", ex_script="true", ex_image="python:3.12", ex_tree=str(tree),
                              ex_outside=((str(conf), "/etc/app.json"),))
    assert wait_ended(driver, node).extra["exit_code"] == 0
    workdir = node.extra["workdir"]
    assert (tmp_path / "nodes").exists() and not tree.exists()  # moved, not copied
    assert open(os.path.join(workdir, "src", "train.py")).read() == "print('hi')\n"
    args = (engine / "args").read_text().splitlines()
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "-v"]
    assert f"{workdir}:/work" in mounts and f"{conf}:/etc/app.json:ro" in mounts


def test_a_process_run_cannot_have_entries_outside_its_working_directory(tmp_path):
    driver = LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0)
    with pytest.raises(LocalError, match="no filesystem of its own"):
        driver.create_node("p", ex_script="true", ex_outside=((str(tmp_path), "/etc/x"),))
    assert driver.list_nodes() == []


def test_a_registry_login_is_the_runs_own(tmp_path, engine):
    docker_home = tmp_path / "home" / ".docker"
    driver = LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0)
    node = driver.create_node("c", ex_script="true", ex_image="ghcr.io/team/trainer:1",
                              ex_registry_auth=("bot", "ghp_secretvalue"))
    assert wait_ended(driver, node).extra["exit_code"] == 0
    login = json.loads((engine / "login.json").read_text())
    assert login == {"auths": {"ghcr.io": {"auth": "Ym90OmdocF9zZWNyZXR2YWx1ZQ=="}}}  # base64 of bot:ghp_secretvalue
    assert "ghp_secretvalue" not in (engine / "args").read_text()  # never on a command line
    assert not docker_home.exists()


@pytest.mark.parametrize("image, registry", [
    ("ubuntu", "https://index.docker.io/v1/"), ("team/trainer", "https://index.docker.io/v1/"),
    ("ghcr.io/team/trainer:1", "ghcr.io"), ("localhost/x", "localhost"), ("127.0.0.1:5000/x", "127.0.0.1:5000"),
])
def test_the_registry_of_an_image(image, registry):
    assert image_registry(image) == registry


def test_a_container_run_sees_neither_the_state_nor_the_hosts_proc(tmp_path, engine):
    # What the engine mounts is the run's own: its working directory, its script (read-only), its
    # volumes and what its tree puts outside the working directory. Never the state around them
    # (the database and key beside it, the nodes' metadata, other runs' logs), and the container
    # keeps its own pid namespace, so the host's /proc (the controller's environment) is not there.
    outside = tmp_path / "staged.outside" / "abs" / "etc" / "app.json"
    outside.parent.mkdir(parents=True)
    outside.write_text("{}")
    volume = tmp_path / "volumes" / "cache"
    driver = LocalNodeDriver(tmp_path / "gitopsq-nodes", slots=1, gpus=0)
    node = driver.create_node("c", ex_script="true", ex_image="python:3.12", ex_volumes=((str(volume), "/cache", False),),
                              ex_outside=((str(outside), "/etc/app.json"),), ex_container_args=("--shm-size", "64m"))
    assert wait_ended(driver, node).extra["exit_code"] == 0
    args = (engine / "args").read_text().splitlines()
    sources = [args[i + 1].split(":")[0] for i, a in enumerate(args) if a in ("-v", "--volume", "--mount")]
    workdir = node.extra["workdir"]
    script = str(driver.nodes_dir / node.id / "script.sh")
    assert sorted(sources) == sorted([workdir, script, str(volume), str(outside)])
    private = [tmp_path, driver.state_dir, driver.nodes_dir, driver.logs_dir, driver.ended_dir, driver.workdirs_dir]
    assert not [s for s in sources if any(p == Path(s) or Path(s) in p.parents for p in private)]
    assert [a for a in args if a.startswith(("--pid", "--privileged", "--ipc", "--userns", "--cap-add", "--device"))
            or a in ("--network=host", "--net=host")] == []
    assert "/proc" not in " ".join(sources)
