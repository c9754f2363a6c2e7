"""What a new user meets on a fresh machine: the README's commands run twice, and the test suite
passes without the optional system packages (their tests skip, saying why), while CI, which
installs them, cannot pass by skipping."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tomllib

from tests.helpers import ROOT, run_cli


def _pytest(tmp_path, *args: str, require: str = "") -> subprocess.CompletedProcess:
    empty = tmp_path / "bin"  # a PATH with git (GitPython needs it) and without chromium
    empty.mkdir(exist_ok=True)
    if not (empty / "git").exists():
        (empty / "git").symlink_to(shutil.which("git"))
    env = {**os.environ, "PATH": str(empty), "GITOPSQ_REQUIRE": require}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_browser_tests_skip_with_the_reason_where_chromium_is_missing(tmp_path):
    done = _pytest(tmp_path, "tests/test_web_dashboard.py")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "SKIPPED" in done.stdout and "chromium is not installed" in done.stdout


def test_ci_fails_when_a_required_browser_is_missing(tmp_path):
    done = _pytest(tmp_path, "tests/test_web_dashboard.py", require="chromium")
    assert done.returncode == 1
    assert "GITOPSQ_REQUIRE says this run must have it" in done.stdout


def test_slurm_tests_skip_with_the_reason_where_slurm_is_missing(tmp_path):
    done = _pytest(tmp_path, "tests/test_slurm.py", "-k", "a_commit_runs_a_task")
    assert done.returncode == 0, done.stdout[-3000:]
    assert "SKIPPED" in done.stdout and "Slurm is not installed" in done.stdout and "slurm-wlm munge" in done.stdout


def test_ci_fails_when_required_slurm_is_missing(tmp_path):
    done = _pytest(tmp_path, "tests/test_slurm.py", "-k", "a_commit_runs_a_task", require="chromium,slurm")
    assert done.returncode == 1
    assert "GITOPSQ_REQUIRE says this run must have it" in done.stdout


def test_ci_requires_the_browser_and_slurm():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "GITOPSQ_REQUIRE=chromium,slurm" in ci and "slurm-wlm munge" in ci


def test_init_twice_leaves_the_config_repo_as_it_is(tmp_path):
    """Observed: the README's first command failed when run a second time."""
    target = tmp_path / "my-runs"
    first = run_cli("init", str(target))
    assert first.exit_code == 0, first.output
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=target, capture_output=True, text=True).stdout
    again = run_cli("init", str(target))
    assert again.exit_code == 0, again.output
    assert "already a gitopsq config repository" in again.output
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=target, capture_output=True, text=True).stdout == head


def test_init_refuses_a_folder_holding_something_else(tmp_path):
    target = tmp_path / "photos"
    target.mkdir()
    (target / "cat.jpg").write_bytes(b"\xff\xd8")
    result = run_cli("init", str(target))
    assert result.exit_code == 1 and "not empty" in result.output


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_pip_install_ships_every_package():
    """Observed: `pip install .` left out gitopsq.workspace, so the README's first command failed
    with ModuleNotFoundError as soon as `serve` started."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "gitopsq").rglob("__init__.py")}
    assert found - set(_setuptools()["packages"]) == set()


def test_pip_install_ships_every_file_of_the_examples():
    """`gitopsq init` copies what the installed package carries: the example runs' code and data
    too. The package-data globs are expanded as setuptools expands them (recursive, no hidden files)."""
    examples = ROOT / "examples-repo"
    shipped = {path for pattern in _setuptools()["package-data"]["gitopsq.examples_repo"]
               for path in glob.glob(pattern, root_dir=examples, recursive=True) if (examples / path).is_file()}
    tracked = subprocess.run(["git", "ls-files", "-z", "."], cwd=examples, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    assert {path for path in tracked if path} - shipped == set()
