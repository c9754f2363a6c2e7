"""`gitopsq apply` on real repositories: the watched branch only, the author's text kept, a diff of the text."""

from __future__ import annotations

import yaml

from tests.helpers import GitRepo, run_cli

# A run file as people write them: comments, a `|` block, a command folded over several lines
# (ruamel.yaml would join those), quoted values, and a flow mapping.
AUTHORED = """\
# yaml-language-server: $schema=../schema.json
type: task   # a training job
name: train
commands:
  - |
    echo "epoch 1"
    echo 'epoch 2'
  - python train.py
    --epochs 3
    --lr 0.1
env: {EPOCHS: "3", MODE: 'fast'}

# Give up after an hour.
retry:
  duration: 1h   # long enough
priority: 7      # team default
max_duration: 6h
"""

QUEUE_RETRY = {"on_events": ["no-capacity"], "duration": False}  # PyYAML reads off as False; the spec takes it as off


def config_repo(tmp_path, branch="main") -> GitRepo:
    repo = GitRepo(tmp_path / "repo", branch=branch)
    repo.write("README.md", "runs\n")
    repo.commit("init")
    return repo


def without_retry(text: str) -> list[str]:
    """The file's lines less the `retry` key and the lines under it."""
    out, inside = [], False
    for line in text.splitlines(True):
        if line.startswith("retry:"):
            inside = True
            continue
        if inside and (line.startswith((" ", "\t")) or not line.strip()):
            continue
        inside = False
        out.append(line)
    return out


def test_apply_queue_keeps_the_file_byte_for_byte_except_the_retry_lines(tmp_path):
    repo = config_repo(tmp_path)
    source = tmp_path / "train.yml"
    source.write_text(AUTHORED)
    result = run_cli("apply", "-Q", "--repo", str(repo.path), str(source))
    assert result.exit_code == 0, result.output
    committed = repo.git("show", "HEAD:runs/train.yml") + "\n"
    assert without_retry(committed) == without_retry(AUTHORED)
    assert yaml.safe_load(committed)["retry"] == QUEUE_RETRY
    assert "duration: 1h" not in committed and "# Give up after an hour.\n" in committed
    assert source.read_text() == AUTHORED  # the author's own copy is left alone


def test_apply_queue_adds_retry_to_a_file_without_one(tmp_path):
    repo = config_repo(tmp_path)
    authored = AUTHORED.replace("# Give up after an hour.\nretry:\n  duration: 1h   # long enough\n", "")
    source = tmp_path / "train.yml"
    source.write_text(authored)
    assert run_cli("apply", "-Q", "--repo", str(repo.path), str(source)).exit_code == 0
    committed = repo.git("show", "HEAD:runs/train.yml") + "\n"
    assert committed.startswith(authored)  # the new key is added after everything the author wrote
    assert yaml.safe_load(committed)["retry"] == QUEUE_RETRY


def test_apply_prints_a_diff_of_the_file_text_not_of_normalised_fields(tmp_path):
    repo = config_repo(tmp_path)
    repo.write("runs/train.yml", "type: task\nname: train\ncommands: [python train.py]  # v1\n")
    repo.commit("train v1")
    source = tmp_path / "train.yml"
    source.write_text("type: task\nname: train\ncommands: [python train.py]  # v1\npriority: 42\n")
    result = run_cli("apply", "--repo", str(repo.path), str(source))
    assert result.exit_code == 0, result.output
    assert "--- a/runs/train.yml\n+++ b/runs/train.yml\n" in result.output
    assert "+priority: 42\n" in result.output and " commands: [python train.py]  # v1\n" in result.output
    for normalised in ("backends", "shell", "null", "->"):
        assert normalised not in result.output
    assert repo.git("log", "-1", "--format=%s") == "gitopsq apply train: priority changed"


def test_apply_names_the_run_when_the_target_file_would_name_it_otherwise(tmp_path):
    repo = config_repo(tmp_path)
    repo.write("jobs/legacy.yml", "type: task\nname: mine\ncommands: [echo v1]\n")
    repo.commit("mine lives in legacy.yml")
    source = tmp_path / "mine.yml"
    source.write_text("# v2\ntype: task\ncommands: [echo v2]\n")  # no name: it is named after its file, mine
    assert run_cli("apply", "--repo", str(repo.path), str(source)).exit_code == 0
    assert repo.git("show", "HEAD:jobs/legacy.yml") == "# v2\ntype: task\nname: mine\ncommands: [echo v2]"


def test_apply_on_a_branch_the_controller_does_not_watch_refuses_and_commits_nothing(tmp_path):
    repo = config_repo(tmp_path)
    repo.git("checkout", "-q", "-b", "feature")
    before = {branch: repo.git("rev-parse", branch) for branch in ("main", "feature")}
    source = tmp_path / "train.yml"
    source.write_text(AUTHORED)
    result = run_cli("apply", "-Q", "--repo", str(repo.path), str(source))
    assert result.exit_code == 1
    assert "'feature'" in result.output and "'main'" in result.output
    assert {branch: repo.git("rev-parse", branch) for branch in ("main", "feature")} == before
    assert not (repo.path / "runs").exists() and repo.git("status", "--porcelain") == ""


def test_apply_commits_to_the_branch_named_by_branch_or_gitopsq_branch(tmp_path):
    repo = config_repo(tmp_path)
    repo.git("checkout", "-q", "-b", "prod")
    source = tmp_path / "train.yml"
    source.write_text(AUTHORED)
    assert run_cli("apply", "--branch", "prod", "--repo", str(repo.path), str(source)).exit_code == 0
    assert repo.git("log", "-1", "--format=%s", "prod") == "gitopsq apply train: new run"
    source.write_text(AUTHORED.replace("priority: 7", "priority: 8"))
    assert run_cli("apply", "--repo", str(repo.path), str(source), env={"GITOPSQ_BRANCH": "prod"}).exit_code == 0
    assert repo.git("log", "-1", "--format=%s", "prod") == "gitopsq apply train: priority changed"
    assert repo.git("log", "-1", "--format=%s", "main") == "init"


def test_apply_refuses_a_detached_head(tmp_path):
    repo = config_repo(tmp_path)
    repo.git("checkout", "-q", "--detach")
    source = tmp_path / "train.yml"
    source.write_text(AUTHORED)
    result = run_cli("apply", "--repo", str(repo.path), str(source))
    assert result.exit_code == 1 and "detached" in result.output and "'main'" in result.output
    assert repo.git("log", "-1", "--format=%s", "main") == "init"


def test_apply_queue_of_a_run_that_can_never_fit_says_so_and_commits_nothing(tmp_path):
    repo = config_repo(tmp_path)
    source = tmp_path / "big.yml"
    source.write_text("type: task\nname: big\ncommands: [python train.py]\nresources:\n  gpu: 8\n")
    result = run_cli("apply", "-Q", "--local-gpus", "2", "--repo", str(repo.path), str(source))
    assert result.exit_code == 1
    assert "big can never run on the local provider" in result.output
    assert "resources.gpu: needs 8 GPU(s); this machine has 2" in result.output
    assert repo.git("log", "--format=%s") == "init" and not (repo.path / "runs").exists()
    # With the GPUs the controller has, it commits.
    assert run_cli("apply", "-Q", "--local-gpus", "8", "--repo", str(repo.path), str(source)).exit_code == 0
