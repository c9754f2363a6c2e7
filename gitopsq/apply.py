"""`gitopsq apply`: put one run file into the config repo and commit it.

The file is validated with the repo's defaults first; `-Q` (queue until it fits) overrides
`retry` whatever the file says. It goes to the file that already defines that run name, else
to runs/<name>.yml. No commit when the content is unchanged. Nothing is written through a
symlink: a committed `runs/train.yml -> /some/file` (or a linked folder) is refused, not followed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from gitopsq.config import CONFIG_FILE, parse_config
from gitopsq.localfiles import collect, read_config_file
from gitopsq.plan import field_changes
from gitopsq.spec import RunSpec, parse_run
from gitopsq.yamlload import MAX_FILE_BYTES, Problem, SpecError

QUEUE_RETRY = {"on_events": ["no-capacity"], "duration": "off"}


@dataclass
class Applied:
    path: str  # relative to the repo
    spec: RunSpec
    content: bytes
    changes: dict
    commit: str | None  # None when nothing changed


def _target(repo_dir: Path, name: str) -> tuple[str, RunSpec | None]:
    """The file that defines `name` in the working tree, else runs/<name>.yml."""
    found = collect([str(repo_dir)])
    for display, raw in found.files.items():
        relative = found.repo_paths[display]
        try:
            spec = parse_run(raw, display, found.configs[display].defaults, repo_path=relative)
        except SpecError:
            continue
        if spec.name == name:
            return relative, spec
    return f"runs/{name}.yml", None


def apply_file(file: Path, repo_dir: Path, queue: bool, push: bool) -> Applied:
    import git  # lazily: GitPython is slow to import

    raw = _read_input(file)
    config = parse_config(read_config_file(repo_dir / CONFIG_FILE))
    spec = parse_run(raw, str(file), config.defaults)  # raises SpecError, naming the file
    if queue:
        data = yaml.load(raw, Loader=yaml.CSafeLoader)
        data["retry"] = dict(QUEUE_RETRY)
        data.setdefault("name", spec.name)
        raw = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()
        spec = parse_run(raw, str(file), config.defaults)
    try:
        repo = git.Repo(repo_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise SpecError([Problem(str(repo_dir), None, "", "is not a git repository (create one with gitopsq init)")]) from None
    relative, old = _target(repo_dir, spec.name)
    if not config.is_run_path(relative):
        raise SpecError([Problem(relative, None, "", f"is outside the run paths of {CONFIG_FILE} ({', '.join(config.paths)})")])
    changes = field_changes(old.to_dict() if old else None, spec.to_dict())
    current = _current(repo_dir, relative)
    if current == raw:
        return Applied(relative, spec, raw, {}, None)
    _write_no_follow(repo_dir, relative, raw)
    repo.git.add("--", relative)
    if not repo.git.diff("--cached", "--name-only", "--", relative):
        return Applied(relative, spec, raw, {}, None)
    what = "new run" if old is None else (", ".join(sorted(changes)) + " changed" if changes else "file rewritten")
    repo.git.commit("-m", f"gitopsq apply {spec.name}: {what}", "--", relative)
    sha = repo.head.commit.hexsha
    if push:
        repo.git.push()
    return Applied(relative, spec, raw, changes, sha)


def _read_input(file: Path) -> bytes:
    """The file to apply, read with a cap (a device named by mistake must not fill the memory)."""
    if not stat.S_ISREG(file.stat().st_mode):
        raise SpecError([Problem(str(file), None, "", "is not a regular file")])
    with open(file, "rb") as handle:
        return handle.read(MAX_FILE_BYTES + 1)  # parse_run refuses what is over the limit


def _not_followed(relative: str, what: str) -> SpecError:
    return SpecError([Problem(relative, None, "", f"is {what}; gitopsq apply does not write through symlinks")])


def _current(repo_dir: Path, relative: str) -> bytes | None:
    """What the target holds now (None: nothing); refused when it, or a folder above it in the repo,
    is a symlink (or not a regular file): the write would land wherever the link points."""
    parts = relative.split("/")
    for depth in range(1, len(parts) + 1):
        shown = "/".join(parts[:depth])
        try:
            info = os.lstat(repo_dir / shown)
        except FileNotFoundError:
            return None  # nothing below a missing folder either
        if stat.S_ISLNK(info.st_mode):
            raise _not_followed(shown, "a symlink")
        if depth < len(parts) and not stat.S_ISDIR(info.st_mode):
            raise SpecError([Problem(shown, None, "", "is not a folder")])
        if depth == len(parts) and not stat.S_ISREG(info.st_mode):
            raise _not_followed(shown, "not a regular file")
    return (repo_dir / relative).read_bytes()


def _write_no_follow(repo_dir: Path, relative: str, raw: bytes) -> None:
    """Write the file; a link swapped in since _current looked makes O_NOFOLLOW fail, never followed.

    (A folder swapped for a link meanwhile is the repo owner racing themselves: the folders
    were checked a moment ago.)"""
    target = repo_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)  # the umask decides, as for any file written
    except OSError as exc:
        raise SpecError([Problem(relative, None, "", f"cannot write: {exc.strerror}")]) from None
    with open(fd, "wb") as handle:
        handle.write(raw)
