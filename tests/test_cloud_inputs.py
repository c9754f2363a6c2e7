"""A cloud run's code, files and secrets: the node downloads them from the controller's HTTP
server with its own token, never from its user-data. EC2 on moto, the real web app under
uvicorn, a real config repo, and the user-data script run here as the node would run it."""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gitopsq.controller import Controller
from gitopsq.providers import ec2
from gitopsq.providers.base import TAG_CONTROLLER, bundle_path, bundles_dir_for, cloud_logs_dir_for
from gitopsq.providers.cloud import make_cloud_provider
from gitopsq.nodetoken import attempt_token
from gitopsq.secretstore import SecretStore
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from gitopsq.web import create_app
from gitopsq.web.queries import masked_log_tail
from tests.helpers import GitRepo, Recorder
from tests.moto_ec2 import TEST_KEY, MotoEC2Server
from tests.webserver import running

AWS_SECRET = "aws-secret-that-stays-on-the-controller"
FIRST_VALUE = "hf-first-value-1111"
SECRET_VALUE = "hf-secret-value-4242"
STATUS = {"branch": "main", "commit": None, "provider": "ec2", "provider_health": None, "last_step_at": None,
          "last_success_at": None, "last_step_error": None, "step_failures": 0, "repo": "config"}


@pytest.fixture(autouse=True)
def env(monkeypatch):
    monkeypatch.setenv("GITOPSQ_PROVIDER_KEY", TEST_KEY)
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", AWS_SECRET)  # moto takes any secret


class Cloud:
    """A config repo, a controller over EC2 on moto, and the controller's web app at `url`."""

    def __init__(self, tmp_path: Path, moto: MotoEC2Server, url: str, store: Store):
        self.tmp = tmp_path
        self.moto = moto
        self.repo = GitRepo(tmp_path / "config")
        self.store = store
        self.url = url
        self.provider = make_cloud_provider("ec2", {"region": "us-east-1", "endpoint": moto.endpoint},
                                            store.controller_id, None, url, bundles=bundles_dir_for(store.path),
                                            logs=cloud_logs_dir_for(store.path))
        self.config = ConfigRepo(str(self.repo.path))
        self.controller = Controller(store, self.provider, self.config)

    def user_data(self, run: str) -> str:
        node_id = self.store.current_submission(run)["node_id"]
        [node] = [n for n in ec2.list_nodes_by_tag(self.provider.driver, TAG_CONTROLLER, self.store.controller_id)
                  if n.id == node_id]
        return ec2.get_user_data(self.provider.driver, node)

    def node_env(self, path: str | None = None, **extra: str) -> dict[str, str]:
        """The environment a node's user-data runs with here (as cloud-init would, powering nothing off)."""
        (self.tmp / "home").mkdir(exist_ok=True)
        return {"PATH": path or os.environ["PATH"], "HOME": str(self.tmp / "home"), "GITOPSQ_NO_POWEROFF": "1",
                "GITOPSQ_WORKDIR": str(self.tmp / "node"), "GITOPSQ_REPORT_BACKOFF": "0", "GITOPSQ_DOWNLOAD_BACKOFF": "0",
                **extra}

    def boot(self, script: str, path: str | None = None) -> subprocess.CompletedProcess:
        """Run a node's user-data here, to its end."""
        return subprocess.run(["bash", "-c", script], env=self.node_env(path), capture_output=True, text=True, timeout=120)


@pytest.fixture
def cloud(tmp_path):
    store = Store(tmp_path / "state" / "gitopsq.db")
    app = create_app(store.path, Recorder(), lambda: dict(STATUS), None)
    with MotoEC2Server() as moto, running(app) as url:
        world = Cloud(tmp_path, moto, url, store)
        yield world
        world.config.close()
    store.close()


def decoded(script: str) -> str:
    """The user-data with the base64 blobs in it (the run's script and env) decoded."""
    blobs = re.findall(r"echo ([A-Za-z0-9+/=]{8,}) \| base64 -d", script)
    return "\n".join([script, *(base64.b64decode(blob).decode() for blob in blobs)])


def node_token(sub) -> str:
    """The token a node of the submission's current attempt holds."""
    return attempt_token(sub["token"], sub["attempts"])


def node_get(cloud: Cloud, sub_id: int, what: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.get(f"{cloud.url}/api/submissions/{sub_id}/inputs/{what}", headers=headers, timeout=10)


def bin_without_curl(tmp_path: Path) -> str:
    """A PATH with what the node script and the run need, python3 included, but no curl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "base64", "tee", "sleep", "sync", "cat", "env", "tar", "gzip", "rm", "wc", "tail", "head", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


@pytest.mark.parametrize("client", ["curl", "python3"])
def test_a_cloud_run_gets_its_commits_code_files_and_secret_from_the_controller(cloud, client):
    placed = cloud.tmp / "placed" / "labels.txt"  # an absolute dst: the node has a filesystem of its own
    repo = cloud.repo
    repo.write("train.py", "print('trained with v1')\n")
    repo.write("data/labels.txt", "cat,dog\n")
    repo.write("train.yml", "type: task\nrepos: [.]\n"
                            f"files: ['data/labels.txt:labels.txt', 'data/labels.txt:{placed}', 'data/labels.txt:~/labels.txt']\n"
                            "env: [HF_TOKEN, PLAIN=visible]\nresources: {cpu: 2, memory: 8GB}\n"
                            "commands:\n  - python3 train.py\n  - cat labels.txt\n"
                            "  - echo \"token=$HF_TOKEN plain=$PLAIN at $GITOPSQ_COMMIT\"\n")
    repo.write("runs/other.yml", "type: task\ncommands: ['true']\nresources: {cpu: 2, memory: 8GB}\n")
    first = repo.commit("v1")
    SecretStore(cloud.store).set("HF_TOKEN", FIRST_VALUE)
    cloud.controller.sync_git()  # submitted at the first commit...
    repo.write("train.py", "print('trained with v2')\n")
    repo.commit("v2: code only")
    cloud.controller.step()  # ...launched after the second
    sub, other = cloud.store.current_submission("train"), cloud.store.current_submission("other")
    assert (sub["status"], other["status"]) == ("running", "running"), sub["message"]
    bundle = bundle_path(bundles_dir_for(cloud.store.path), sub["id"])
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600

    script = cloud.user_data("train")
    everything = decoded(script)
    for value in (FIRST_VALUE, SECRET_VALUE, AWS_SECRET, "cat,dog", "trained with"):
        assert value not in everything, f"{value} is in the user-data"
    assert "export PLAIN=visible" in everything and f"export GITOPSQ_COMMIT={first}" in everything

    # Changed after the launch, before the node asks: the node gets the value of the moment it asks.
    SecretStore(cloud.store).set("HF_TOKEN", SECRET_VALUE)
    done = cloud.boot(script, None if client == "curl" else bin_without_curl(cloud.tmp))
    assert done.returncode == 0, done.stdout + done.stderr
    log = cloud.tmp / "node" / "run.log"
    assert log.read_text().splitlines() == ["trained with v1", "cat,dog", f"token={SECRET_VALUE} plain=visible at {first}"]
    assert placed.read_text() == "cat,dog\n" and (cloud.tmp / "home" / "labels.txt").read_text() == "cat,dog\n"
    assert not (cloud.tmp / "node" / "secrets.env").exists() and not (cloud.tmp / "node" / "tree.tar.gz").exists()
    # the served log masks what was served
    tail, problem = masked_log_tail(cloud.store, str(log), sub["id"])
    assert problem is None and f"token=*** plain=visible at {first}" in tail and SECRET_VALUE not in tail

    # the node reported through the same server: the submission ends, its tree is no longer served
    cloud.controller.step()
    assert cloud.store.current_submission("train")["status"] == "done"
    assert not bundle.exists()
    for what in ("env", "tree"):
        refused = node_get(cloud, sub["id"], what, node_token(sub))
        assert (refused.status_code, refused.json()) == (403, {"detail": "refused"})


def test_a_node_gets_only_its_own_inputs(cloud):
    cloud.repo.write("a.yml", "type: task\nrepos: [.]\nenv: [HF_TOKEN]\ncommands: ['true']\nresources: {cpu: 2, memory: 8GB}\n")
    cloud.repo.write("b.yml", "type: task\nrepos: [.]\ncommands: ['true']\nresources: {cpu: 2, memory: 8GB}\n")
    cloud.repo.commit()
    SecretStore(cloud.store).set("HF_TOKEN", SECRET_VALUE)
    cloud.controller.step()
    a, b = cloud.store.current_submission("a"), cloud.store.current_submission("b")
    assert (a["status"], b["status"]) == ("running", "running")
    assert node_get(cloud, a["id"], "env", node_token(a)).text == f"export HF_TOKEN={SECRET_VALUE}\n"
    assert node_get(cloud, a["id"], "tree", node_token(a)).content[:2] == b"\x1f\x8b"  # gzip
    # b's token, the submission's own token (not its attempt's), a wrong one, a cut one: refused
    for token in (node_token(b), a["token"], "wrong-" + node_token(a), node_token(a)[:-1]):
        for what in ("env", "tree"):
            answer = node_get(cloud, a["id"], what, token)
            assert answer.status_code == 403 and SECRET_VALUE not in answer.text, (token, what)
    for what in ("env", "tree"):
        assert node_get(cloud, a["id"], what, None).status_code == 401
    basic = httpx.get(f"{cloud.url}/api/submissions/{a['id']}/inputs/env", timeout=10,
                      headers={"Authorization": f"Basic {node_token(a)}"})
    assert basic.status_code in (401, 403)
    assert node_get(cloud, 10**30, "env", node_token(a)).status_code in (403, 422)

    # stopped: no longer served, and its tree is gone
    cloud.repo.remove("a.yml")
    cloud.repo.commit()
    cloud.controller.step()
    assert cloud.store.current_submission("a")["status"] == "cancelled"
    assert not bundle_path(bundles_dir_for(cloud.store.path), a["id"]).exists()
    assert node_get(cloud, a["id"], "env", node_token(a)).status_code == 403
    assert node_get(cloud, b["id"], "tree", node_token(b)).status_code == 200


def test_a_container_run_mounts_its_absolute_files_read_only(cloud):
    # A stand-in docker records how it is called and runs the script as the container would.
    fake = cloud.tmp / "fakebin"
    fake.mkdir()
    (fake / "docker").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$GITOPSQ_WORKDIR/docker-args"\n'
                                 'exec bash "$GITOPSQ_WORKDIR/script.sh"\n')
    (fake / "docker").chmod(0o755)
    cloud.repo.write("labels.txt", "cat,dog\n")
    cloud.repo.write("job.yml", "type: task\nimage: python:3.12-slim\nrepos: [.]\nfiles: ['labels.txt:/etc/labels.txt']\n"
                                "env: [HF_TOKEN]\ncommands: ['cat labels.txt', 'echo \"token=$HF_TOKEN\"']\n"
                                "resources: {cpu: 2, memory: 8GB}\n")
    cloud.repo.commit()
    SecretStore(cloud.store).set("HF_TOKEN", SECRET_VALUE)
    cloud.controller.step()
    script = cloud.user_data("job")
    assert SECRET_VALUE not in decoded(script)
    done = cloud.boot(script, f"{fake}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stdout + done.stderr
    node = cloud.tmp / "node"
    assert (node / "run.log").read_text().splitlines() == ["cat,dog", f"token={SECRET_VALUE}"]
    args = (node / "docker-args").read_text().splitlines()
    mounts = [args[i + 1] for i, arg in enumerate(args) if arg == "-v"]
    assert f"{node}/work:/work" in mounts
    assert f"{node}/bundle/abs/etc/labels.txt:/etc/labels.txt:ro" in mounts
    assert (node / "bundle" / "abs" / "etc" / "labels.txt").read_text() == "cat,dog\n"
    assert args[args.index("HF_TOKEN") - 1] == "-e"  # by name: the value stays off the command line
    assert SECRET_VALUE not in "\n".join(args)


def test_a_failed_download_fails_the_run_with_a_reason_in_its_log(cloud):
    cloud.repo.write("job.yml", "type: task\nrepos: [.]\ncommands: ['echo ran']\nresources: {cpu: 2, memory: 8GB}\n")
    cloud.repo.commit()
    cloud.controller.step()
    sub = cloud.store.current_submission("job")
    script = cloud.user_data("job")
    bundle_path(bundles_dir_for(cloud.store.path), sub["id"]).unlink()  # the controller lost it
    done = cloud.boot(script)
    assert done.returncode == 1
    log = (cloud.tmp / "node" / "run.log").read_text()
    assert "ran" not in log.splitlines()
    assert log.count("gitopsq: downloading the run's tree failed") == 5
    assert "cannot download the run's working tree from" in log and "the run did not start" in log
    cloud.controller.step()  # reported as any exit code
    assert (cloud.store.current_submission("job")["status"], cloud.store.current_submission("job")["exit_code"]) == ("failed", 1)


def test_recovery_keeps_only_the_trees_of_running_submissions(cloud):
    cloud.repo.write("job.yml", "type: task\nrepos: [.]\ncommands: ['true']\nresources: {cpu: 2, memory: 8GB}\n")
    cloud.repo.commit()
    cloud.controller.step()
    sub = cloud.store.current_submission("job")
    bundles = bundles_dir_for(cloud.store.path)
    stale = [bundle_path(bundles, 4242), bundles / f"{sub['id']}.abc123.part"]  # an ended submission's, a half-written one
    for path in stale:
        path.write_bytes(b"old")
    Controller(cloud.store, cloud.provider, cloud.config).step()  # as after a restart
    assert sorted(p.name for p in bundles.iterdir()) == [bundle_path(bundles, sub["id"]).name]


def test_a_run_on_the_node_sees_its_volumes_and_a_container_pulls_with_its_registry_login(cloud):
    volume = cloud.tmp / "node-disk" / "ckpt"  # an instance_path: a folder of the node, made when missing
    cloud.repo.write("train.yml", f"type: task\nvolumes: ['{volume}:checkpoints']\n"
                                  "commands: ['echo epoch-1 > checkpoints/last']\nresources: {cpu: 2, memory: 8GB}\n")
    fake = cloud.tmp / "fakebin"
    fake.mkdir()
    # A stand-in docker: `login` keeps what it was given (user, registry, stdin), `run` its arguments.
    (fake / "docker").write_text('#!/bin/bash\nif [ "$1" = login ]; then echo "$@" > "$GITOPSQ_WORKDIR/login-args"; '
                                 'cat > "$GITOPSQ_WORKDIR/login-stdin"; exit 0; fi\n'
                                 'printf "%s\\n" "$@" > "$GITOPSQ_WORKDIR/docker-args"\nenv > "$GITOPSQ_WORKDIR/docker-env"\n')
    (fake / "docker").chmod(0o755)
    cloud.repo.write("private.yml", "type: task\nimage: ghcr.io/team/trainer:1\nregistry_auth:\n  username: bot\n"
                                    "  password: ${{ secrets.ghcr }}\nvolumes: ['/srv/data:/data']\n"
                                    "commands: ['true']\nresources: {cpu: 2, memory: 8GB}\n")
    cloud.repo.commit()
    SecretStore(cloud.store).set("ghcr", "ghp_registry_secret_1")
    cloud.controller.step()

    done = cloud.boot(cloud.user_data("train"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (volume / "last").read_text() == "epoch-1\n"

    script = cloud.user_data("private")
    assert "ghp_registry_secret_1" not in decoded(script)
    done = cloud.boot(script, f"{fake}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stdout + done.stderr
    node = cloud.tmp / "node"
    assert (node / "login-args").read_text().split() == ["login", "--username", "bot", "--password-stdin", "ghcr.io"]
    assert (node / "login-stdin").read_text() == "ghp_registry_secret_1"
    args = (node / "docker-args").read_text().splitlines()
    assert "/srv/data:/data" in [args[i + 1] for i, arg in enumerate(args) if arg == "-v"]
    assert "ghp_registry_secret_1" not in "\n".join(args) + (node / "docker-env").read_text()
