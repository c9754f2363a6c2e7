"""Instance volumes on the local provider: a process run sees each as a link in its working
directory, a container run as a bind mount; the attempts of a submission share them, so a retry
resumes from its checkpoint."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from gitopsq.controller import Controller
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalError, LocalNodeDriver
from gitopsq.providers.local_adapter import LocalAdapter, make_local_provider
from gitopsq.source import ConfigRepo
from gitopsq.spec import parse_run
from gitopsq.store import Store, attempt_logs
from tests.fakes import Clock
from tests.helpers import GitRepo


@pytest.fixture(autouse=True)
def no_leftover_processes(cleanup_nodes):
    yield


def spec_of(text: str):
    return parse_run(("type: task\ncommands: [echo hi]\n" + text).encode(), "runs/probe.yml")


@pytest.fixture
def adapter(tmp_path):
    driver = LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0)
    driver._container_tool_cache = "docker"  # as on a machine with docker: only the paths are judged here
    return LocalAdapter(driver)


@pytest.mark.parametrize("volume, why", [
    ("'/srv/ckpt:/checkpoints'", "volumes[0]: '/checkpoints' is an absolute path"),
    ("{instance_path: /srv/ckpt, path: ~/ckpt}", "volumes[0]: '~/ckpt' is an absolute path"),
    ("{instance_path: /srv/ckpt, path: ../ckpt}", "volumes[0]: '../ckpt' leaves the working directory"),
    ("{instance_path: /srv/ckpt, path: .}", "volumes[0]: '.' is the working directory itself"),
])
def test_a_process_run_links_relative_paths_only(adapter, volume, why):
    message = adapter.unsatisfiable(spec_of(f"volumes: [{volume}]"))
    assert message.startswith(why) and "local provider" in message


def test_volumes_of_one_run_do_not_overlap(adapter):
    same = adapter.unsatisfiable(spec_of("volumes: [{instance_path: /a, path: data}, {instance_path: /b, path: ./data}]"))
    assert same.startswith("volumes[1]: './data' is also volumes[0]'s path 'data'")
    nested = adapter.unsatisfiable(spec_of("volumes: [{instance_path: /a, path: data}, {instance_path: /b, path: data/x}]"))
    assert nested.startswith("volumes[1]: 'data/x' is inside volumes[0]'s path 'data'")
    assert adapter.unsatisfiable(spec_of("volumes: [{instance_path: /a, path: data}, {instance_path: /b, path: datax}]")) is None


def test_a_container_run_mounts_anywhere_but_an_unknown_home_or_its_working_directory(adapter):
    for path in ("/checkpoints", "ckpt", "../ckpt"):
        assert adapter.unsatisfiable(spec_of(f"image: ubuntu\nvolumes: [{{instance_path: /a, path: {path}}}]")) is None
    home = adapter.unsatisfiable(spec_of("image: ubuntu\nvolumes: [{instance_path: /a, path: ~/cache}]"))
    assert home.startswith("volumes[0]: '~/cache'") and "local provider" in home
    work = adapter.unsatisfiable(spec_of("image: ubuntu\nvolumes: [{instance_path: /a, path: /work}]"))
    assert work.startswith("volumes[0]: '/work' is the working directory") and "local provider" in work


def wait_ended(driver, node, timeout=20.0):
    deadline = time.monotonic() + timeout
    while (found := driver.ex_get_node(node.id)).extra["exit_code"] is None:
        assert time.monotonic() < deadline, "the node did not end"
        time.sleep(0.02)
    return found


def test_a_missing_instance_path_is_created_unless_optional(tmp_path):
    driver = LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0)
    made, skipped, there = tmp_path / "vol" / "made", tmp_path / "vol" / "skipped", tmp_path / "vol" / "there"
    there.mkdir(parents=True)
    (there / "old.txt").write_text("from before\n")
    script = "echo new > out/new.txt; cat in/old.txt; ls -d opt 2>&1 || true; echo seen > in/seen.txt"
    node = driver.create_node("v", ex_script=script, ex_volumes=((str(made), "out", False), (str(skipped), "opt", True),
                                                                 (str(there), "in", True)))
    assert wait_ended(driver, node).extra["exit_code"] == 0
    assert (made / "new.txt").read_text() == "new\n" and (there / "seen.txt").read_text() == "seen\n"
    assert not skipped.exists()
    log = driver.ex_log_path(node).read_text()
    assert log.startswith("from before\n") and "No such file" in log
    workdir = Path(node.extra["workdir"])
    assert os.readlink(workdir / "out") == str(made)


def test_an_instance_path_that_cannot_be_made_fails_the_launch_naming_it(tmp_path):
    driver = LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LocalError, match=f"volumes: cannot create {blocker}/sub"):
        driver.create_node("v", ex_script="true", ex_volumes=((str(blocker / "sub"), "data", False),))
    assert driver.list_nodes() == [] and driver.ex_capacity()["slots"] == 1


def test_a_container_run_gets_bind_mounts(tmp_path, monkeypatch):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    record = tmp_path / "docker-args"
    (fake / "docker").write_text(f'#!/bin/bash\n[ "$1" = run ] || exit 0\nprintf "%s\\n" "$@" > {record}\n')
    (fake / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    driver = LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0)
    made = tmp_path / "vol" / "ckpt"
    node = driver.create_node("c", ex_script="true", ex_image="ubuntu",
                              ex_volumes=((str(made), "ckpt", False), ("/srv/data", "/data", False),
                                          (str(tmp_path / "nope"), "/opt/x", True)))
    assert wait_ended(driver, node).extra["exit_code"] == 0
    args = record.read_text().splitlines()
    mounts = [args[i + 1] for i, a in enumerate(args) if a == "-v"]
    assert mounts[2:] == [f"{made}:/work/ckpt", "/srv/data:/data"] and made.is_dir()
    assert args.index("-v") < args.index("ubuntu")


def test_a_retry_resumes_from_its_checkpoint_on_a_volume(tmp_path):
    volume = tmp_path / "checkpoints"
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/train.yml", "type: task\ncommands:\n"
               "  - if [ -f ckpt/step ]; then echo \"resumed at $(cat ckpt/step)\"; else echo 100 > ckpt/step; exit 1; fi\n"
               f"volumes: [{{instance_path: {volume}, path: ckpt}}]\n"
               "retry: {on_events: [error], duration: 1h}\n")
    repo.commit("a run that fails once, after its checkpoint")
    store = Store(tmp_path / "state" / "gitopsq.db")
    clock = Clock(start=time.time())
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0)
    controller = Controller(store, provider, ConfigRepo(str(repo.path)), clock=clock, rng=random.Random(7))

    deadline = time.monotonic() + 60
    while (sub := store.current_submission("train")) is None or sub["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "the run did not end"
        if sub is not None and sub["status"] == "queued" and sub["next_try_at"]:
            clock.advance(max(0.0, sub["next_try_at"] - clock()) + 0.01)  # its backoff, without sleeping
        controller.step()
        time.sleep(0.05)
    assert (sub["status"], sub["number"], sub["attempts"]) == ("done", 1, 1)
    first, second = (Path(p).read_text() for p in attempt_logs(store, sub["id"]))
    assert first == "" and second == "resumed at 100\n"
    assert (volume / "step").read_text() == "100\n"
