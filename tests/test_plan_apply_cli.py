"""`gitopsq plan`, `init` and `apply` on real repositories."""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.helpers import GitRepo, run_cli, task


def pr_repo(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/keep.yml", task("keep", priority=10))
    repo.write("runs/edit.yml", task("edit"))
    repo.write("runs/gone.yml", task("gone"))
    repo.write("runs/broken.yml", task("broken"))
    repo.commit("base")
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("runs/keep.yml", task("keep", priority=80))
    repo.write("runs/edit.yml", task("edit", "python train.py"))
    repo.remove("runs/gone.yml")
    repo.write("runs/new.yml", task("new"))
    repo.commit("feature")
    return repo


def test_plan_markdown_for_a_pull_request(tmp_path):
    repo = pr_repo(tmp_path)
    result = run_cli("plan", "--repo", str(repo.path), "--base", "main", "--head", "feature", "--format", "markdown")
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith("### gitopsq plan: 1 to submit, 1 to update in place, 1 to restart, 1 to cancel")
    assert "| `~` | **keep** | update in place | 80 | `runs/keep.yml` |" in text
    assert "| `-/+` | **edit** | restart | 0 | `runs/edit.yml` |" in text
    assert "| `-` | **gone** | cancel |" in text
    assert "| `+` | **new** | submit | 0 | `runs/new.yml` |" in text
    assert "<details><summary>keep: 1 field(s) changed (update in place)</summary>" in text
    assert "| `priority` | `10` | `80` |" in text
    assert "Validation errors" not in text


def test_plan_json_and_errors(tmp_path):
    repo = pr_repo(tmp_path)
    repo.write("runs/broken.yml", "type: task\nname: broken\ncommands: [x]\nretry:\n  duration: forever\n")
    repo.commit("break one")
    result = run_cli("plan", "--repo", str(repo.path), "--base", "main", "--head", "feature", "--format", "json")
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert {a["run"]: a["action"] for a in out["actions"]} == {"keep": "update", "edit": "restart", "gone": "cancel", "new": "submit"}
    keep = next(a for a in out["actions"] if a["run"] == "keep")
    assert keep["changes"] == {"priority": [10, 80]} and keep["file"] == "runs/keep.yml"
    assert out["errors"] == [{"file": "runs/broken.yml", "line": 5, "field": "retry.duration",
                              "message": "'forever' is not a duration (use 30m, 1h, 2d or off)"}]
    md = run_cli("plan", "--repo", str(repo.path), "--base", "main", "--head", "feature", "--format", "markdown").output
    assert "- `runs/broken.yml:5` **retry.duration**: 'forever' is not a duration" in md


def test_detailed_exitcode(tmp_path):
    repo = pr_repo(tmp_path)
    args = ["plan", "--repo", str(repo.path), "--detailed-exitcode"]
    assert run_cli(*args, "--base", "main", "--head", "main").exit_code == 0
    assert run_cli(*args, "--base", "main", "--head", "feature").exit_code == 2
    repo.write("runs/new.yml", "type: task\ncommands: 1\n")
    repo.commit("bad")
    assert run_cli(*args, "--base", "main", "--head", "feature").exit_code == 1
    missing = run_cli(*args, "--base", "main", "--head", "no-such-branch")
    assert missing.exit_code == 1 and "'no-such-branch' is not a commit" in missing.output


def test_init_creates_a_committed_example_repo(tmp_path):
    target = tmp_path / "runs-repo"
    result = run_cli("init", str(target))
    assert result.exit_code == 0, result.output
    files = subprocess.run(["git", "ls-files"], cwd=target, capture_output=True, text=True, check=True).stdout.split()
    assert ".gitopsq.yml" in files and "runs/hello.yml" in files and ".github/workflows/gitopsq.yml" in files
    assert run_cli("validate", str(target)).exit_code == 0
    again = run_cli("init", str(target))
    assert again.exit_code == 0 and "already a gitopsq config repository" in again.output


def test_apply_queue_overrides_retry_and_commits(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("README.md", "runs\n")
    repo.commit("init")
    source = tmp_path / "train.yml"
    source.write_text("type: task\nname: train\ncommands: [python train.py]\nretry: {duration: 1h}\n")
    result = run_cli("apply", "-Q", "--repo", str(repo.path), str(source))
    assert result.exit_code == 0, result.output
    assert "Committed" in result.output and "runs/train.yml (run train)" in result.output
    committed = yaml.safe_load(repo.git("show", "HEAD:runs/train.yml"))
    assert committed["retry"] == {"on_events": ["no-capacity"], "duration": False}  # `off`, as YAML 1.1 reads it
    assert "gitopsq apply train: new run" == repo.git("log", "-1", "--format=%s")
    # Applying the same again commits nothing.
    head = repo.head()
    again = run_cli("apply", "-Q", "--repo", str(repo.path), str(source))
    assert again.exit_code == 0 and "unchanged, nothing committed" in again.output
    assert repo.head() == head


def test_apply_updates_the_file_that_defines_the_name(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("jobs/mine.yml", task("mine"))
    repo.commit("init")
    source = tmp_path / "x.yml"
    source.write_text(task("mine", priority=42))
    result = run_cli("apply", "--repo", str(repo.path), str(source))
    assert result.exit_code == 0, result.output
    assert "jobs/mine.yml" in result.output and "+priority: 42\n" in result.output
    assert repo.git("log", "-1", "--format=%s") == "gitopsq apply mine: priority changed"
    assert not (repo.path / "runs").exists()


def test_apply_rejects_an_invalid_file(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.commit("init")
    source = tmp_path / "bad.yml"
    source.write_text("type: task\ncommands: [x]\npriority: 101\n")
    result = run_cli("apply", "--repo", str(repo.path), str(source))
    assert result.exit_code == 1
    assert "bad.yml:3: priority: 101 is not a priority" in result.output
    assert repo.git("log", "--format=%s") == "init"


def test_apply_finds_the_file_that_defines_the_name_when_it_has_repos(tmp_path, monkeypatch):
    """Observed: run from another folder, apply could not read a run file with `repos: [.]` (it
    resolved `.` from the current folder), so it wrote a second file claiming the same name."""
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/train/train.yml", task("train") + "repos: [.]\n")
    repo.commit("init")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "x.yml").write_text(task("train", priority=42) + "repos: [.]\n")
    result = run_cli("apply", "--repo", "../repo", "x.yml")
    assert result.exit_code == 0, result.output
    assert "runs/train/train.yml" in result.output and not (repo.path / "runs" / "train.yml").exists()


def test_apply_never_writes_through_a_committed_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    repo = GitRepo(tmp_path / "repo")
    (repo.path / "runs").mkdir()
    (repo.path / "runs" / "train.yml").symlink_to(victim)
    repo.commit("a link where the run file would go")
    source = tmp_path / "train.yml"
    source.write_text(task("train"))
    result = run_cli("apply", "--repo", str(repo.path), str(source))
    assert result.exit_code == 1
    assert "runs/train.yml: is a symlink; gitopsq apply does not write through symlinks" in result.output
    assert victim.read_text() == "keep me\n"
    assert repo.git("log", "--format=%s") == "a link where the run file would go"


def test_apply_never_writes_into_a_linked_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    repo = GitRepo(tmp_path / "repo")
    (repo.path / "runs").symlink_to(elsewhere, target_is_directory=True)
    repo.commit("runs/ is a link")
    source = tmp_path / "train.yml"
    source.write_text(task("train"))
    result = run_cli("apply", "--repo", str(repo.path), str(source))
    assert result.exit_code == 1
    assert "runs: is a symlink; gitopsq apply does not write through symlinks" in result.output
    assert list(elsewhere.iterdir()) == []


def test_apply_refuses_a_config_that_is_a_device(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    (repo.path / ".gitopsq.yml").symlink_to("/dev/zero")
    repo.commit("config is a link")
    source = tmp_path / "train.yml"
    source.write_text(task("train"))
    result = run_cli("apply", "--repo", str(repo.path), str(source))
    assert result.exit_code == 1
    assert ".gitopsq.yml: is a symlink; .gitopsq.yml must be a regular file" in result.output
