"""A run's code, files and secrets through the controller and the local provider: real git repos,
real HTTP servers, real processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from gitopsq.controller import Controller
from gitopsq.providers.base import log_dir_for, workspace_dir_for
from gitopsq.providers.local_adapter import make_local_provider
from gitopsq.secretstore import SecretStore
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.gitserver import SmartGitServer
from tests.helpers import GitRepo, bare_upstream


@pytest.fixture(autouse=True)
def no_leftover_processes(cleanup_nodes):
    yield


@pytest.fixture
def world(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    store = Store(tmp_path / "state" / "gitopsq.db")
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0)
    with ConfigRepo(str(repo.path)) as config:
        controller = Controller(store, provider, config)
        yield repo, store, controller
    store.close()


def drive(controller, store, run, statuses=("done", "failed"), timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        controller.step()
        sub = store.current_submission(run)
        if sub is not None and sub["status"] in statuses:
            return sub
        time.sleep(0.05)
    raise AssertionError(f"{run} did not reach {statuses}: {dict(store.current_submission(run) or {})}")


def output(sub) -> str:
    return Path(sub["log_path"]).read_text()


def upstream(tmp_path: Path) -> tuple[str, Path]:
    """The first commit of a repo with main (VERSION = 2, after 1) and a feature branch, and its bare copy."""
    work, bare = bare_upstream(tmp_path)
    return work.git("rev-list", "--max-parents=0", "main").strip(), bare


def test_a_run_sees_its_own_commits_code_after_a_later_commit_changed_it(world):
    repo, store, controller = world
    repo.write("train.py", "print('trained with v1')\n")
    repo.write("data/labels.txt", "cat,dog\n")
    repo.write("runs/train.yml", "type: task\nrepos: [..]\nfiles: ['../data/labels.txt:labels.txt']\n"
                                 "commands:\n  - python3 train.py\n  - cat labels.txt\n  - echo \"at $GITOPSQ_COMMIT as $DSTACK_RUN_NAME\"\n")
    first = repo.commit("v1")
    controller.sync_git()  # submitted at the first commit...
    repo.write("train.py", "print('trained with v2')\n")
    repo.commit("v2: code only, the run file is unchanged")
    controller.sync_git()  # ...and launched after the second

    sub = drive(controller, store, "train")
    assert sub["status"] == "done", output(sub)
    assert output(sub).splitlines()[:3] == ["trained with v1", "cat,dog", f"at {first} as train"]
    # the tree landed without history, and nothing is left staged
    workdir = Path(sub["workdir"])
    assert (workdir / "train.py").exists() and not (workdir / ".git").exists()
    assert not any((workspace_dir_for(store.path) / "staging").iterdir())


def test_a_url_repo_at_a_branch_and_at_a_hash(world, tmp_path):
    repo, store, controller = world
    first, bare = upstream(tmp_path)
    url = f"file://{bare}"
    repo.write("runs/branch.yml", f"type: task\nrepos:\n  - url: {url}\n    branch: feature\n    path: code\n"
                                  "commands: [cat code/model.py]\n")
    repo.write("runs/pinned.yml", f"type: task\nrepos: ['{url}:code']\nretry: {{on_events: [no-capacity], duration: 1h}}\n"
                                  "commands: [cat code/model.py]\n")
    repo.commit()
    # the pinned one by hash, in dstack's object form
    repo.write("runs/pinned.yml", f"type: task\nrepos:\n  - url: {url}\n    hash: {first}\n    path: code\n"
                                  "retry: {on_events: [no-capacity], duration: 1h}\ncommands: [cat code/model.py]\n")
    repo.commit()
    assert output(drive(controller, store, "branch")).strip() == "VERSION = 'feature'"
    assert output(drive(controller, store, "pinned")).strip() == "VERSION = 1"


def test_a_private_repo_over_http_is_cloned_with_a_stored_secret(world, tmp_path):
    repo, store, controller = world
    _, bare = upstream(tmp_path)
    root = tmp_path / "served"
    root.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(bare), str(root / "private.git")], check=True)
    server = SmartGitServer(root, "alice", "s3cret-token-9")
    try:
        repo.write("runs/private.yml", f"type: task\nrepos: ['{server.url}private.git:code']\n"
                                       "retry: {on_events: [error], duration: 1h}\ncommands: [cat code/model.py]\n")
        repo.commit()
        controller.sync_git()
        controller.step()
        sub = store.current_submission("private")
        # no secret yet: the clone fails the attempt with that reason, retried under `error`
        assert sub["status"] == "queued" and sub["backoff_event"] == "error" and sub["attempts"] == 1
        assert "authentication failed: no secret git.127.0.0.1" in sub["message"]

        SecretStore(store).set("git.127.0.0.1", "alice:s3cret-token-9")
        store.update_submission(sub["id"], next_try_at=None)  # not waiting out the backoff
        done = drive(controller, store, "private")
        assert output(done).strip() == "VERSION = 2"
        assert set(server.authorizations) - {None}  # it did authenticate
    finally:
        server.close()
    assert b"s3cret-token-9" not in store.path.read_bytes()


def test_a_file_placed_outside_the_working_directory_is_refused_for_a_process_run(world):
    repo, store, controller = world
    repo.write("config.json", "{}\n")
    repo.write("runs/abs.yml", "type: task\nfiles: ['../config.json:/etc/gitopsq-test.json']\ncommands: ['true']\n")
    repo.commit()
    sub = drive(controller, store, "abs")
    assert sub["status"] == "failed" and sub["reason"] == "unsatisfiable"
    assert "files[0]: '/etc/gitopsq-test.json' is outside the working directory" in sub["message"]
    assert not Path("/etc/gitopsq-test.json").exists()
