"""`gitopsq apply`: put one run file into the config repo and commit it on the watched branch.

The file is validated with the repo's defaults first. It goes to the file that already defines
that run name, else to runs/<name>.yml, as the author wrote it: `-Q` (queue until it fits) sets
`retry` and nothing else, and `name` is added only where the target's file name would name the
run otherwise (see gitopsq.yamledit for how the rest of the text is kept). The commit goes only
to the branch the controller watches, and no commit is made when the content is unchanged.
Nothing is written through a symlink: a committed `runs/train.yml -> /some/file` (or a linked
folder) is refused, not followed.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from gitopsq.config import CONFIG_FILE, parse_config
from gitopsq.localfiles import collect, read_config_file
from gitopsq.plan import field_changes
from gitopsq.providercheck import ProviderCheck, ProviderUnavailable
from gitopsq.spec import RunSpec, default_name, parse_run
from gitopsq.yamledit import EditError, edit_mapping, flow_list, set_key, text_diff
from gitopsq.yamlload import MAX_FILE_BYTES, Problem, SpecError

DEFAULT_BRANCH = "main"  # the branch `gitopsq serve` watches unless told otherwise


class ApplyRefused(Exception):
    """apply will not commit: the checked-out branch is not the watched one, or the run can never fit."""


def _unsatisfiable(check: ProviderCheck, spec: RunSpec) -> str | None:
    try:
        return check(spec)
    except ProviderUnavailable as exc:
        raise ApplyRefused(f"cannot check {spec.name} against the {check.name} provider: {exc}") from None


@dataclass
class Applied:
    path: str  # relative to the repo
    spec: RunSpec
    content: bytes
    changes: dict  # normalised fields that changed (for the commit message)
    diff: str  # unified diff of the file's text
    commit: str | None  # None when nothing changed


def queue_until_it_fits(data) -> None:
    """The edit `-Q` makes: retry on no-capacity, forever, over whatever retry said."""
    retry = data.get("retry")
    if isinstance(retry, dict):  # edited where it is: its comments and style stay
        retry["on_events"] = flow_list(["no-capacity"], like=retry.get("on_events"))
        retry["duration"] = "off"
    else:  # absent, or true/false
        from ruamel.yaml.comments import CommentedMap

        new = CommentedMap()
        new["on_events"] = flow_list(["no-capacity"])
        new["duration"] = "off"
        data["retry"] = new


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


def check_branch(repo, watched: str) -> None:
    """Refuse unless `watched` is checked out: a commit elsewhere is one the controller never sees."""
    current = repo.git.symbolic_ref("--short", "-q", "HEAD", with_exceptions=False) or None
    if current == watched:
        return
    where = f"the checked-out branch is {current!r}" if current else "HEAD is detached"
    raise ApplyRefused(f"not committing: {where}, but the controller watches {watched!r}. "
                       f"Check out {watched!r} (git switch {watched}), or pass --branch with the branch "
                       f"`gitopsq serve --branch` watches.")


def _edited(raw: bytes, file: Path, queue: bool, name: str | None) -> bytes:
    """The file's bytes with the keys apply sets; the bytes as they are when it sets none."""
    edits = ([queue_until_it_fits] if queue else []) + ([set_key("name", name, after="type")] if name else [])
    if not edits:
        return raw
    try:
        return edit_mapping(raw.decode("utf-8"), *edits).encode("utf-8")
    except (UnicodeDecodeError, EditError) as exc:
        raise SpecError([Problem(str(file), None, "", str(exc))]) from None


def apply_file(file: Path, repo_dir: Path, queue: bool, push: bool, branch: str = DEFAULT_BRANCH,
               unsatisfiable: "ProviderCheck | None" = None) -> Applied:
    """Validate `file`, write it into the repo and commit it on `branch`.

    unsatisfiable(spec): why the provider can never run it, or None; asked with `queue` only:
    a run that can never fit fails at once whatever its retry says, so -Q would promise a wait
    that never happens."""
    import git  # lazily: GitPython is slow to import

    try:
        repo = git.Repo(repo_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise SpecError([Problem(str(repo_dir), None, "", "is not a git repository (create one with gitopsq init)")]) from None
    check_branch(repo, branch)
    raw = _read_input(file)
    config = parse_config(read_config_file(repo_dir / CONFIG_FILE))
    spec = parse_run(raw, str(file), config.defaults)  # raises SpecError, naming the file
    relative, old = _target(repo_dir, spec.name)
    if not config.is_run_path(relative):
        raise SpecError([Problem(relative, None, "", f"is outside the run paths of {CONFIG_FILE} ({', '.join(config.paths)})")])
    unnamed = spec.name if default_name(relative) != spec.name else None
    raw = _edited(raw, file, queue, unnamed)
    spec = parse_run(raw, str(file), config.defaults, repo_path=relative)
    if queue and unsatisfiable is not None:
        why = _unsatisfiable(unsatisfiable, spec)
        if why:
            raise ApplyRefused(f"not committing: {spec.name} can never run on the {unsatisfiable.name} provider: {why}. "
                               "Queueing does not help a run that no machine can hold (-Q waits for capacity to free).")
    current = _current(repo_dir, relative)
    before = current if current is not None else b""
    diff = text_diff(before.decode("utf-8", "replace"), raw.decode("utf-8", "replace"), relative)
    changes = field_changes(old.to_dict() if old else None, spec.to_dict())
    if current == raw:
        return Applied(relative, spec, raw, {}, "", None)
    _write_no_follow(repo_dir, relative, raw)
    repo.git.add("--", relative)
    if not repo.git.diff("--cached", "--name-only", "--", relative):
        return Applied(relative, spec, raw, {}, "", None)
    what = "new run" if old is None else (", ".join(sorted(changes)) + " changed" if changes else "file rewritten")
    repo.git.commit("-m", f"gitopsq apply {spec.name}: {what}", "--", relative)
    sha = repo.head.commit.hexsha
    if push:
        repo.git.push()
    return Applied(relative, spec, raw, changes, diff, sha)


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
