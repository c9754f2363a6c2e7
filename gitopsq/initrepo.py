"""`gitopsq init`: a new config repository holding the example runs."""

from __future__ import annotations

import shutil
from pathlib import Path

from gitopsq.config import CONFIG_FILE
from gitopsq.resources import examples_dir


class AlreadyThere(Exception):
    """The directory already is a config repository: nothing to do (running init twice is safe)."""


def is_config_repo(target: Path) -> bool:
    return (target / ".git").exists() and (target / CONFIG_FILE).is_file()


def init_repo(directory: str | Path, branch: str = "main") -> str:
    """Copy the examples into a new git repo and commit them; returns the commit sha.

    Raises AlreadyThere for a config repository (left as it is), FileExistsError for a
    folder holding anything else.
    """
    import git

    target = Path(directory)
    if is_config_repo(target):
        raise AlreadyThere(f"{target} is already a gitopsq config repository; left as it is")
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty")
    shutil.copytree(examples_dir(), target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    repo = git.Repo.init(target, initial_branch=branch)
    repo.git.add("--all")
    env = {}
    if not _has_identity(repo):
        # A fresh machine may have no git identity; the first commit should still work.
        env = {"GIT_AUTHOR_NAME": "gitopsq", "GIT_AUTHOR_EMAIL": "gitopsq@localhost",
               "GIT_COMMITTER_NAME": "gitopsq", "GIT_COMMITTER_EMAIL": "gitopsq@localhost"}
    with repo.git.custom_environment(**env):
        repo.git.commit("-m", "gitopsq init: example runs")
    return repo.head.commit.hexsha


def _has_identity(repo) -> bool:
    import git

    try:
        return bool(repo.git.config("user.email"))
    except git.GitCommandError:
        return False
