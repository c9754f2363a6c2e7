"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from click.testing import CliRunner

from gitopsq.cli import main

ROOT = Path(__file__).resolve().parent.parent
COMPAT = ROOT.parent / "shared" / "compat" / "dstack"


def run_cli(*args: str, input: str | None = None, env: dict | None = None):
    """Run the gitopsq CLI in-process; returns click's Result (exit_code, output)."""
    return CliRunner().invoke(main, list(args), input=input, env=env, catch_exceptions=False)


def cli_json(*args: str):
    result = run_cli(*args)
    return result.exit_code, json.loads(result.output)


class GitRepo:
    """A real git repository in a temp dir, driven like a user would."""

    def __init__(self, path: Path, branch: str = "main"):
        import subprocess

        self.path = path
        self.branch = branch
        path.mkdir(parents=True, exist_ok=True)
        self._run = lambda *a: subprocess.run(["git", *a], cwd=path, check=True, capture_output=True, text=True).stdout.strip()
        self.git("init", "-q", "-b", branch)
        self.git("config", "user.email", "test@gitopsq.dev")
        self.git("config", "user.name", "gitopsq test")
        self.git("config", "commit.gpgsign", "false")

    def git(self, *args: str) -> str:
        return self._run(*args)

    def write(self, rel: str, text: str) -> None:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def remove(self, rel: str) -> None:
        (self.path / rel).unlink()

    def commit(self, message: str = "change", **files: str) -> str:
        self.git("add", "--all")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")


def task(name: str, commands: str = "echo hi", **fields) -> str:
    """A run file's text."""
    lines = ["type: task", f"name: {name}", f"commands: [{commands!r}]"]
    lines += [f"{k}: {v}" for k, v in fields.items()]
    return "\n".join(lines) + "\n"


class Recorder:
    """A callable that remembers its calls (stands in for the loop's wake)."""

    def __init__(self):
        self.calls: list[str] = []

    def __call__(self, reason: str) -> None:
        self.calls.append(reason)


def write_first_release_state(path: Path) -> None:
    """A state database as the first release (schema 1) left it, to test upgrades and refusals."""
    import sqlite3

    import sqlite_utils

    from gitopsq import store as store_module

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    store_module._migrate_1(sqlite_utils.Database(conn))
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('controller_id', 'abc123')")
    conn.commit()
    conn.close()


def bare_upstream(tmp_path: Path, name: str = "upstream") -> tuple[GitRepo, Path]:
    """A work repo and its bare copy (the 'remote'), with main and a feature branch."""
    work = GitRepo(tmp_path / f"{name}-work")
    work.write("model.py", "VERSION = 1\n")
    work.commit("v1")
    work.write("model.py", "VERSION = 2\n")
    work.commit("v2")
    work.git("checkout", "-q", "-b", "feature")
    work.write("model.py", "VERSION = 'feature'\n")
    work.commit("feature")
    work.git("checkout", "-q", "main")
    bare = tmp_path / f"{name}.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work.path), str(bare)], check=True)
    return work, bare
