"""Run files on disk (a checkout, or files named on the command line), for `gitopsq validate`."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from gitopsq.config import (CONFIG_FILE, RepoConfig, bad_name_problem, config_not_a_file_problem, not_a_file_problem,
                            parse_config, path_text)
from gitopsq.yamlload import MAX_FILE_BYTES, Problem, SpecError, too_large


@dataclass
class Collected:
    files: dict[str, bytes] = field(default_factory=dict)  # display path -> content
    configs: dict[str, RepoConfig] = field(default_factory=dict)  # display path -> its repo's config
    # display path -> its path in its config repo, from which `repos` and `files` resolve
    repo_paths: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def find_root(path: Path) -> Path:
    """The config repo a file belongs to: the nearest parent holding .gitopsq.yml or .git."""
    for parent in [path, *path.parents]:
        if os.path.lexists(parent / CONFIG_FILE) or (parent / ".git").exists():
            return parent
    return path if path.is_dir() else path.parent


def _read(path: Path) -> bytes:
    # Read one byte past the limit so the parser can report an oversized file without loading it all.
    with open(path, "rb") as handle:
        return handle.read(MAX_FILE_BYTES + 1)


def read_config_file(path: Path, shown: str = CONFIG_FILE) -> bytes | None:
    """A working tree's .gitopsq.yml by the controller's rules (None when absent; else raises SpecError).

    The controller reads it from git, where a symlink is a link and never its target: here too a
    symlink is refused unread, and so is anything but a regular file (a FIFO or a device would
    block or never end) or a file over the size limit."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise SpecError([config_not_a_file_problem(shown, "a symlink")])
    if not stat.S_ISREG(info.st_mode):
        raise SpecError([config_not_a_file_problem(shown, "not a regular file")])
    if info.st_size > MAX_FILE_BYTES:
        raise SpecError([too_large(shown, info.st_size)])
    try:  # O_NOFOLLOW and a second look: it may have been swapped for a link or a FIFO meanwhile
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SpecError([Problem(shown, None, "", f"cannot read: {exc.strerror}")]) from None
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise SpecError([config_not_a_file_problem(shown, "not a regular file")])
        return handle.read(MAX_FILE_BYTES + 1)


def _config_of(root: Path, display: str, out: Collected, cache: dict[Path, RepoConfig]) -> RepoConfig:
    if root not in cache:
        config_path = root / CONFIG_FILE
        try:
            shown = path_text(os.fsencode(_display(config_path, display)))[0]
            cache[root] = parse_config(read_config_file(config_path, shown), shown)
        except SpecError as exc:
            out.problems.extend(exc.problems)
            cache[root] = RepoConfig()
    return cache[root]


def _display(path: Path, _hint: str = "") -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def collect(paths: list[str]) -> Collected:
    """Files named directly are run files; folders contribute what their config's `paths` select."""
    out = Collected()
    cache: dict[Path, RepoConfig] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            out.problems.append(Problem(path_text(os.fsencode(given))[0], None, "", "no such file or folder"))
            continue
        if path.is_file():
            root = find_root(path.resolve())
            config = _config_of(root, given, out, cache)
            _add(out, path, given, config, _in_repo(path, root))
            continue
        root = find_root(path.resolve())
        config = _config_of(root, given, out, cache)
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                full = Path(dirpath) / name
                relative = _in_repo(full, root)
                if config.is_run_path(relative):
                    _add(out, full, _display(full), config, relative)
    return out


def _in_repo(path: Path, root: Path) -> str:
    """A file's path in its config repo (as git names it), whatever folder validate runs in."""
    return path.resolve().relative_to(root).as_posix() if not path.is_symlink() else os.path.relpath(path, root)


def _add(out: Collected, path: Path, display: str, config: RepoConfig, repo_path: str) -> None:
    # The name as the controller shows it: a name that is not UTF-8 is escaped, never printed raw.
    display, utf8_name = path_text(os.fsencode(display))
    if not utf8_name:
        out.problems.append(bad_name_problem(display))
        return
    if path.is_symlink():
        out.problems.append(not_a_file_problem(display, "a symlink"))
        return
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            out.problems.append(Problem(display, None, "", "is not a regular file"))
            return
        size = info.st_size
        if size > MAX_FILE_BYTES:  # told from its size: a huge file is never read
            out.problems.append(too_large(display, size))
            return
        out.files[display] = _read(path)
    except OSError as exc:
        out.problems.append(Problem(display, None, "", f"cannot read: {exc.strerror}"))
        return
    out.configs[display] = config
    out.repo_paths[display] = repo_path
