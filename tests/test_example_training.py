"""The bundled example that trains from committed code (examples-repo/runs/train-linear): it waits
for its secret on a fresh machine, then trains from its own commit's train.py and data, and a
later submission resumes from the checkpoints its volume kept. Real git, real processes."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest

from gitopsq.controller import Controller
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local_adapter import make_local_provider
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import FakeProvider
from tests.helpers import ROOT, run_cli

RUN_FILE = "runs/train-linear/train.yml"
KEY = "7f3c9a0e5b12d4c8a6e1f09b3d2c7a54"


@pytest.fixture(autouse=True)
def no_leftover_processes(cleanup_nodes):
    yield


def git(repo: Path, *args: str) -> str:
    import subprocess

    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def init_examples(tmp_path: Path) -> Path:
    target = tmp_path / "my-runs"
    result = run_cli("init", str(target))
    assert result.exit_code == 0, result.output
    return target


def ps(db: Path) -> dict[str, dict]:
    result = run_cli("ps", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.output)}


def test_on_a_fresh_machine_the_training_run_waits_for_its_secret_and_the_others_run(tmp_path):
    repo = init_examples(tmp_path)
    db = tmp_path / "state" / "gitopsq.db"
    store, provider = Store(db), FakeProvider(slots=10)
    with ConfigRepo(str(repo)) as source:
        Controller(store, provider, source).step()
    store.close()
    rows = ps(db)
    assert provider.running_runs() == sorted(set(rows) - {"train-linear"})
    assert (rows["train-linear"]["status"], rows["train-linear"]["why"]) == ("queued", "secret-missing: CHECKPOINT_KEY")
    assert "gitopsq secret set CHECKPOINT_KEY" in (ROOT / "README.md").read_text()  # the one command it needs


def drive(controller: Controller, store: Store, number: int, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        controller.step()
        sub = store.current_submission("train-linear")
        if sub is not None and sub["number"] == number and sub["status"] in ("done", "failed"):
            return sub
        time.sleep(0.05)
    raise AssertionError(f"train-linear #{number} did not end: {dict(store.current_submission('train-linear') or {})}")


def checkpoints(volume: Path) -> list[dict]:
    """The states saved on the volume, each checked against its signature under KEY."""
    states = []
    for path in sorted(volume.glob("epoch-*.json")):
        saved = json.loads(path.read_text())
        expected = hmac.new(KEY.encode(), json.dumps(saved["state"], sort_keys=True).encode(), hashlib.sha256).hexdigest()
        assert saved["signature"] == expected, path
        states.append(saved["state"])
    return states


def test_the_training_run_trains_from_its_commit_and_the_next_submission_resumes(tmp_path):
    repo = init_examples(tmp_path)
    volume = tmp_path / "volume"
    # Only the training run, and its checkpoints in this test's own folder instead of /tmp's.
    for other in ("hello", "notebook", "train-urgent", "web"):
        git(repo, "rm", "-q", f"runs/{other}.yml")
    run_file = repo / RUN_FILE
    text = run_file.read_text()
    assert "instance_path: /tmp/gitopsq-examples/train-linear\n" in text
    run_file.write_text(text.replace("/tmp/gitopsq-examples/train-linear", str(volume)))
    git(repo, "commit", "-qam", "only the training run, its volume in the test's folder")
    first_commit = git(repo, "rev-parse", "HEAD")

    db = tmp_path / "state" / "gitopsq.db"
    store = Store(db)
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=1, gpus=0)
    with ConfigRepo(str(repo)) as source:
        controller = Controller(store, provider, source)
        controller.step()
        assert ps(db)["train-linear"]["why"] == "secret-missing: CHECKPOINT_KEY"
        assert run_cli("secret", "set", "CHECKPOINT_KEY", "--db", str(db), input=KEY + "\n").exit_code == 0

        first = drive(controller, store, 1)
        log = run_cli("logs", "train-linear", "--db", str(db)).output
        assert first["status"] == "done", log
        assert log.splitlines()[0] == f"train.py at commit {first_commit[:12]}: 40 points, " \
                                      f"checkpoints signed with CHECKPOINT_KEY ({len(KEY)} characters)"
        assert log.splitlines()[-1].startswith("epoch 5/5 loss=")
        assert KEY not in Path(first["log_path"]).read_text()
        saved = checkpoints(volume)
        assert [s["epoch"] for s in saved] == [1, 2, 3, 4, 5]
        assert saved[-1]["loss"] < saved[0]["loss"]
        assert (Path(first["workdir"]) / "checkpoints").resolve() == volume.resolve()

        # Train longer: a new submission at the new commit resumes from the volume's last checkpoint.
        run_file.write_text(run_file.read_text().replace("EPOCHS=5", "EPOCHS=8"))
        git(repo, "commit", "-qam", "train for 8 epochs")
        second = drive(controller, store, 2)
        log = run_cli("logs", "train-linear", "--db", str(db)).output
        assert second["status"] == "done", log
        assert "resuming from epoch 5" in log and "epoch 6/8" in log and "epoch 1/" not in log
        assert [s["epoch"] for s in checkpoints(volume)] == list(range(1, 9))
    store.close()
