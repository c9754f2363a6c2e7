"""The git side of gitopsq: read run files from a config repository.

The controller is level-triggered: the desired state is the set of files at the
tip of the tracked branch. Diffs between commits are only a cheap way to learn
which files changed; when a base commit is gone (force-push, gc) callers fall
back to listing the full tree.

Everything goes through the git command line (`repo.git.*`): plumbing commands
with `-z` output are fast on large trees and safe for any path name. Blob
contents come from one long-lived `git cat-file --batch` process.

A ConfigRepo is not thread-safe (it shares one cat-file process); use one per
thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import git

from gitopsq.config import path_text

__all__ = ["ConfigRepo", "Change", "Entry", "SourceError", "is_remote_location"]

SUBMODULE_MODE = "160000"
FETCH_TIMEOUT = 300  # seconds; a hung network fetch must not stall the controller forever
FETCH_POLL = 0.1  # seconds between looks at a running fetch: how soon cancel_fetch() takes effect

# scp-like remote: user@host:path (a leading '/' or '.' makes it a local path)
_SCP_LIKE = re.compile(r"^[^/@:\s]+@[^/:\s]+:")
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")  # SHA-1 or SHA-256 object name


class SourceError(Exception):
    """The config repository cannot be opened, fetched or read."""


@dataclass(frozen=True)
class Entry:
    """One file at a commit."""

    path: str  # as gitopsq names it: see config.path_text
    blob: str  # blob sha (a commit sha for a submodule entry)
    mode: str  # '100644', '100755', '120000' (symlink), '160000' (submodule entry: not a file to read)
    utf8_name: bool = True  # False: the name is not UTF-8 and `path` is its escaped form
    size: int | None = None  # bytes, when the listing gave it


@dataclass(frozen=True)
class Change:
    """One path changed between two commits."""

    path: str
    old_blob: str | None  # None when added
    new_blob: str | None  # None when deleted
    new_mode: str | None
    utf8_name: bool = True  # see Entry


def is_remote_location(location: str) -> bool:
    """True for URLs (anything with '://') and scp-like 'user@host:path'."""
    return "://" in location or bool(_SCP_LIKE.match(location))


def redact_url(location: str) -> str:
    """Hide a password or token in a URL before it goes into a message."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    if parts.password is None:
        return location
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _stderr(exc: git.GitCommandError, location: str) -> str:
    """git's own message from a failed command, without the wrapper's framing or credentials."""
    text = re.sub(r"^\s*stderr: '(.*)'$", r"\1", str(exc.stderr or ""), flags=re.S).strip()
    return text.replace(location, redact_url(location))


def _arg(ref: str) -> str:
    """Refuse refs that git would parse as options (e.g. '--output=...')."""
    if not ref or ref.startswith("-") or "\n" in ref or "\0" in ref:
        raise SourceError(f"invalid ref or sha: {ref!r}")
    return ref


def _side(mode: str, sha: str) -> tuple[str | None, str | None]:
    """(object, mode) of one side of a raw diff; an absent side is (None, None)."""
    if not sha.strip("0"):  # all zeros: no object on this side
        return None, None
    return sha, mode


def _parse_raw_diff(out: bytes) -> list[list[Change]]:
    """Parse `diff-tree -r -z --no-renames` raw output.

    Records are ':<old mode> <new mode> <old sha> <new sha> <status>' NUL <path> NUL.
    Any other token at a record boundary is a commit header (with --stdin) and
    starts a new group; without headers everything lands in one group.
    """
    groups: list[list[Change]] = [[]]
    fields = out.split(b"\0")
    i, saw_header = 0, False
    while i < len(fields):
        field = fields[i]
        if not field:  # trailing NUL
            i += 1
            continue
        if not field.startswith(b":"):
            if saw_header:
                groups.append([])
            saw_header = True
            i += 1
            continue
        old_mode, new_mode, old_sha, new_sha, _status = field[1:].decode("ascii").split(" ")
        path, utf8_name = path_text(fields[i + 1])
        i += 2
        old_blob, _ = _side(old_mode, old_sha)
        new_blob, mode = _side(new_mode, new_sha)
        groups[-1].append(Change(path, old_blob, new_blob, mode, utf8_name))
    return groups


def _parse_ls_tree(out: bytes) -> dict[str, Entry]:
    """Parse `ls-tree -z -l` output: '<mode> <type> <sha> <size>' TAB <path> NUL per entry; no trees."""
    files: dict[str, Entry] = {}
    for record in out.split(b"\0"):
        if not record:
            continue
        meta, _, raw_path = record.partition(b"\t")
        mode, kind, sha, size = meta.decode("ascii").split()  # the size is padded with spaces
        if kind in ("blob", "commit"):  # a commit: a submodule entry, which has no size
            path, utf8_name = path_text(raw_path)
            files[path] = Entry(path, sha, mode, utf8_name, int(size) if size.isdigit() else None)
    return files


class ConfigRepo:
    """A config repository: a local path used in place, or a URL cloned under state_dir."""

    def __init__(
        self,
        location: str,
        branch: str = "main",
        state_dir: Path | None = None,
        *,
        remote: bool | None = None,
    ) -> None:
        self.location = location
        self.branch = branch
        self.is_remote = is_remote_location(location) if remote is None else remote
        self._check_branch(branch)
        if self.is_remote:
            self.repo = self._open_mirror(state_dir)
            # remote branches land in a tracking ref; the clone has no work tree
            self._tip_ref = f"refs/remotes/origin/{branch}"
        else:
            self.repo = self._open_local(location)
            self._tip_ref = f"refs/heads/{branch}"
        # the common dir holds refs/ and packed-refs even for a linked worktree,
        # so that is what a watcher must watch
        self.git_dir = Path(self.repo.common_dir).resolve()
        if self.is_remote and self.tip() is None:
            # first use (or an earlier clone failed): fetch now so tip() is meaningful
            try:
                self.fetch()
            except SourceError:
                self.close()
                raise

    # -- opening ---------------------------------------------------------------

    def _check_branch(self, branch: str) -> None:
        # a bad name would corrupt the fetch refspec, so refuse it early
        try:
            git.Git().check_ref_format(f"refs/heads/{_arg(branch)}")
        except git.GitCommandError:
            raise SourceError(f"invalid branch name {branch!r} for {redact_url(self.location)}") from None

    def _open_local(self, location: str) -> git.Repo:
        try:
            return git.Repo(location)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise SourceError(f"not a git repository: {location}") from None

    def _open_mirror(self, state_dir: Path | None) -> git.Repo:
        if state_dir is None:
            raise SourceError(f"a state_dir is needed to clone {redact_url(self.location)}")
        url = self.location
        if not is_remote_location(url):
            # remote=True with a plain path: git runs inside the clone, so make it absolute
            url = os.path.abspath(url)
        key = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        path = Path(state_dir) / "repos" / key
        # init + remote config is idempotent, so a half-made clone is simply redone
        repo = git.Repo.init(path, bare=True, mkdir=True)
        repo.git.config("remote.origin.url", url)
        # never wait for a password prompt in a controller
        repo.git.update_environment(GIT_TERMINAL_PROMPT="0")
        return repo

    # -- refs and commits --------------------------------------------------------

    @property
    def display_location(self) -> str:
        """The location with any credentials in a URL hidden, for logs and the dashboard."""
        return redact_url(self.location)

    _fetch_cancelled = False  # set by cancel_fetch(), from another thread

    def fetch(self) -> None:
        """Remote: force-fetch the branch into the tracking ref. Local: nothing to do.

        git runs as a process group of its own, killed on cancel_fetch() or after FETCH_TIMEOUT,
        so a server that accepts and never answers cannot hold the controller."""
        if not self.is_remote:
            return
        refspec = f"+refs/heads/{self.branch}:{self._tip_ref}"  # '+': force-pushes are normal
        code, stderr = self._git_killable("fetch", "--no-tags", "origin", refspec)
        if code == 0:
            return
        if "couldn't find remote ref" in stderr:
            # the branch does not exist (yet, or any more): mirror that, tip() is None
            self.repo.git.update_ref("-d", self._tip_ref)
            return
        reason = stderr.strip().replace(self.location, redact_url(self.location))
        raise SourceError(f"fetch of {redact_url(self.location)} failed: {reason}")

    def cancel_fetch(self) -> None:
        """End a running fetch at once and refuse later ones (the controller is stopping)."""
        self._fetch_cancelled = True

    def _git_killable(self, *args: str) -> tuple[int, str]:
        """(exit code, stderr) of a git command that cancel_fetch() or FETCH_TIMEOUT can end."""
        what = f"fetch of {redact_url(self.location)}"
        if self._fetch_cancelled:
            raise SourceError(f"{what} cancelled")
        env = {**os.environ, **self.repo.git.environment(), "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "LANGUAGE": ""}
        proc = subprocess.Popen([git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *args], cwd=self.repo.git_dir, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)  # its own group: the transport helpers die with it
        deadline = time.monotonic() + FETCH_TIMEOUT
        try:
            while True:
                try:
                    _, stderr = proc.communicate(timeout=FETCH_POLL)
                    return proc.returncode, stderr.decode("utf-8", "replace")
                except subprocess.TimeoutExpired:
                    if self._fetch_cancelled:
                        raise SourceError(f"{what} cancelled") from None
                    if time.monotonic() > deadline:
                        raise SourceError(f"{what} failed: no answer within {FETCH_TIMEOUT}s") from None
        finally:  # also on KeyboardInterrupt: never leave a git process behind
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()

    def tip(self) -> str | None:
        """Commit sha of the tracked branch; None while the branch does not exist."""
        try:
            # Read from the ref files (loose or packed): every controller step asks, and a spawned
            # `git rev-parse` would cost as much as the whole diff of a commit.
            return git.SymbolicReference.dereference_recursive(self.repo, self._tip_ref)
        except (ValueError, OSError):
            return self.resolve(self._tip_ref)

    def resolve(self, ref: str) -> str | None:
        """Any ref or sha to a full commit sha; None when it does not exist."""
        if not ref or ref.startswith("-") or "\n" in ref:
            return None
        # a fresh process each time: a long-lived one could still see gc'd objects
        try:
            return self.repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}")
        except git.GitCommandError:
            return None

    def has_commit(self, sha: str) -> bool:
        return self.resolve(sha) is not None

    # -- trees and diffs -----------------------------------------------------------

    def list_files(self, commit: str) -> dict[str, Entry]:
        """Every file at `commit`, by path, with its size: symlinks (120000) and submodule entries
        (160000) included, so that callers can refuse them by path rather than not see them."""
        # -l: sizes come with the listing (about 2 ms per 10,000 files), not one lookup per blob
        return _parse_ls_tree(self._run("ls_tree", "-r", "-z", "-l", "--full-tree", _arg(commit)))

    def entry(self, commit: str, path: str) -> Entry | None:
        """The file at `path` at `commit`; None when there is none (or it is not a file)."""
        # git reads the path as a pattern; of what it lists, only the exact path is taken
        out = self._run("ls_tree", "-z", "-l", "--full-tree", _arg(commit), "--", path)
        return _parse_ls_tree(out).get(path)

    def changed(self, base: str | None, head: str) -> list[Change] | None:
        """Files changed from `base` to `head`; None when base is None or gone (use the full tree)."""
        if base is None:
            return None
        try:
            out = self.repo.git.diff_tree(
                "-r", "-z", "--no-renames", "--no-commit-id", _arg(base), _arg(head),
                stdout_as_string=False, strip_newline_in_stdout=False,
            )
        except git.GitCommandError as exc:
            if not self.has_commit(base):
                return None
            raise SourceError(f"cannot diff {base}..{head}: {_stderr(exc, self.location)}") from None
        return _parse_raw_diff(out)[0]

    def changed_many(self, commits: list[str]) -> list[list[Change]]:
        """For each commit, its changes against its first parent (a root commit: all files added).

        All diffs come from one `git diff-tree --stdin` run, for fast catch-up.
        """
        if not commits:
            return []
        # --stdin wants full commit shas; one batch-check resolves any number of names
        answers = self._run(
            "cat_file", "--batch-check=%(objectname)",
            stdin="".join(f"{_arg(c)}^{{commit}}\n" for c in commits),
        ).decode("utf-8", "replace").splitlines()
        shas = []
        for name, answer in zip(commits, answers):
            if not _SHA.fullmatch(answer):  # '<name> missing' / 'ambiguous'
                raise SourceError(f"no commit {name!r} in {redact_url(self.location)}")
            shas.append(answer)
        out = self._run(
            "diff_tree", "--stdin", "-r", "-z", "--no-renames", "--root",
            "--always",  # a header even for empty commits, so groups line up with the input
            "--diff-merges=first-parent",
            stdin="".join(f"{sha}\n" for sha in shas),
        )
        groups = _parse_raw_diff(out)
        if len(groups) != len(shas):
            raise SourceError(f"diff-tree gave {len(groups)} diffs for {len(shas)} commits")
        return groups

    # -- blobs -------------------------------------------------------------------------

    def read_blobs(self, blobs: Iterable[str]) -> dict[str, bytes]:
        """Contents of many blobs, read through one long-lived `cat-file --batch` process."""
        contents: dict[str, bytes] = {}
        for sha in blobs:
            if sha not in contents:
                contents[sha] = self._read_object(sha, want="blob")
        return contents

    def blob_sizes(self, blobs: Iterable[str]) -> dict[str, int]:
        """Sizes of blobs, without reading them.

        A few (one commit's) through the long-lived `cat-file --batch-check` (about 20 us each); many
        (a catch-up over many commits) in one spawned run, which costs about 3 ms for a thousand.
        """
        wanted = list(dict.fromkeys(blobs))
        if len(wanted) <= 32:
            return {sha: self._object_size(sha, want="blob") for sha in wanted}
        answers = self._run("cat_file", "--batch-check=%(objecttype) %(objectsize)",
                            stdin="".join(f"{_arg(sha)}\n" for sha in wanted)).decode("ascii", "replace").splitlines()
        sizes = {}
        for sha, answer in zip(wanted, answers):
            kind, _, size = answer.partition(" ")
            if kind != "blob" or not size.isdigit():  # '<sha> missing', or another kind of object
                raise SourceError(f"{sha!r} is not a blob in {redact_url(self.location)}: {answer}")
            sizes[sha] = int(size)
        return sizes

    def read_file(self, commit: str, path: str) -> bytes | None:
        """Contents of one file at `commit`; None when there is no such file."""
        if "\n" in path:
            # batch input is line based; such paths go through the tree listing
            entry = self.list_files(commit).get(path)
            return None if entry is None or entry.mode == SUBMODULE_MODE else self.read_blobs([entry.blob])[entry.blob]
        try:
            return self._read_object(f"{_arg(commit)}:{path}", want="blob")
        except SourceError:
            return None

    def _object_size(self, name: str, want: str) -> int:
        return self._cat_file(name, want, header_only=True)[2]

    def _read_object(self, name: str, want: str) -> bytes:
        return self._cat_file(name, want, header_only=False)[3]

    def _cat_file(self, name: str, want: str, header_only: bool) -> tuple:
        """One answer of the wrapper's long-lived `cat-file --batch-check` (header_only) or
        `cat-file --batch`: (sha, kind, size) or (sha, kind, size, data)."""
        git_cmd = self.repo.git
        process = git_cmd.cat_file_header if header_only else git_cmd.cat_file_all
        if process is not None and process.proc.poll() is not None:
            git_cmd.clear_cache()  # it died (killed?): the next call starts a new one
        try:
            answer = git_cmd.get_object_header(name) if header_only else git_cmd.get_object_data(name)
        except ValueError:  # cat-file answered 'missing' (or 'ambiguous')
            raise SourceError(f"no object {name!r} in {redact_url(self.location)}") from None
        kind = answer[1].decode("ascii") if isinstance(answer[1], bytes) else answer[1]  # handed back as bytes
        if kind != want:
            raise SourceError(f"{name!r} is a {kind}, not a {want}")
        return answer

    # -- plumbing ----------------------------------------------------------------------

    def _run(self, cmd: str, *args: str, stdin: str | None = None) -> bytes:
        """Run a git command, return raw stdout bytes; failures become SourceError."""
        kwargs = {"stdout_as_string": False, "strip_newline_in_stdout": False}
        try:
            if stdin is None:
                return getattr(self.repo.git, cmd)(*args, **kwargs)
            # stdin from a file, not a pipe: cannot deadlock against a large stdout
            with tempfile.TemporaryFile() as istream:
                istream.write(stdin.encode())
                istream.seek(0)
                return getattr(self.repo.git, cmd)(*args, istream=istream, **kwargs)
        except git.GitCommandError as exc:
            command, reason = cmd.replace("_", "-"), _stderr(exc, self.location)
            raise SourceError(f"git {command} failed in {redact_url(self.location)}: {reason}") from None

    def close(self) -> None:
        """Stop the long-lived git processes."""
        self.repo.git.clear_cache()
        self.repo.close()

    def __enter__(self) -> ConfigRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
