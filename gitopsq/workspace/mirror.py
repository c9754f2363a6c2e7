"""A bare mirror per URL in the cache, fetched only for what a run wants, one fetch at a time.

A `hash` already in the mirror needs no network at all; a `branch` (or the remote's default
branch) is fetched each time, since only the remote knows its tip. A lock file per mirror
(flock, so it also holds between processes and is released when one dies) keeps concurrent
prepares of one URL from racing on its refs; git lock files a killed fetch left behind are
removed under it. Nothing is ever pruned (gc is off), so a commit a run used stays readable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from gitopsq.workspace.auth import Auth
from gitopsq.workspace.gitproc import WorkspaceError, one_line, run

_FULL_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_SHORT_SHA = re.compile(r"[0-9a-fA-F]{4,64}")
DEFAULT_HEAD = "refs/gitopsq/default-branch"


def mirror_path(cache_dir: Path, url: str) -> Path:
    return cache_dir / "mirrors" / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".git")


@contextlib.contextmanager
def locked(mirror: Path) -> Iterator[None]:
    mirror.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{mirror}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def fetch_commit(url: str, branch: str | None, commit_hash: str | None, cache_dir: Path, env: dict[str, str],
                 auth: Auth, timeout: float, what: str) -> tuple[Path, str]:
    """(the mirror's git dir, the full commit sha) for `url` at hash, else branch, else its default branch."""
    mirror = mirror_path(cache_dir, url)
    with locked(mirror):
        _ensure(mirror, url, env, what)
        if commit_hash:
            return mirror, _at_hash(mirror, commit_hash, env, auth, timeout, what)
        if branch:
            check = run(["check-ref-format", f"refs/heads/{branch}"], env, what=what)
            if check.code != 0 or branch.startswith("-"):
                raise WorkspaceError(f"{what}: {branch!r} is not a valid branch name")
            ref = f"refs/heads/{branch}"
            result = _fetch(mirror, [f"+{ref}:{ref}"], env, auth, timeout, what)
            if result is not None:
                if "couldn't find remote ref" in result:
                    raise WorkspaceError(f"{what}: no branch {branch!r} there")
                raise WorkspaceError(f"{what}: {result}")
            return mirror, _resolve(mirror, ref, env, what)
        result = _fetch(mirror, [f"+HEAD:{DEFAULT_HEAD}"], env, auth, timeout, what)
        if result is not None:
            if "couldn't find remote ref" in result:
                raise WorkspaceError(f"{what}: the repository has no default branch (is it empty?); give a branch")
            raise WorkspaceError(f"{what}: {result}")
        return mirror, _resolve(mirror, DEFAULT_HEAD, env, what)


def _ensure(mirror: Path, url: str, env: dict[str, str], what: str) -> None:
    if not (mirror / "HEAD").exists():
        # made aside and renamed: a mirror that exists is complete, whatever was killed before
        fresh = mirror.with_name(mirror.name + ".new")
        shutil.rmtree(fresh, ignore_errors=True)
        _check(run(["init", "--quiet", "--bare", "--template=", str(fresh)], env, what=what), what)
        _check(run(["--git-dir", str(fresh), "config", "remote.origin.url", url], env, what=what), what)
        fresh.rename(mirror)
    _remove_stale_git_locks(mirror)


def _remove_stale_git_locks(mirror: Path) -> None:
    """Under our lock no git runs in the mirror, so any *.lock of git's is from a killed fetch."""
    for name in ("packed-refs.lock", "config.lock", "shallow.lock", "HEAD.lock"):
        with contextlib.suppress(FileNotFoundError):
            (mirror / name).unlink()
    for lock in (mirror / "refs").rglob("*.lock"):
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _at_hash(mirror: Path, commit_hash: str, env: dict[str, str], auth: Auth, timeout: float, what: str) -> str:
    if not _SHORT_SHA.fullmatch(commit_hash):
        raise WorkspaceError(f"{what}: {commit_hash!r} is not a commit hash")
    commit_hash = commit_hash.lower()
    found = _try_resolve(mirror, commit_hash, env)
    if found:
        return found
    if _FULL_SHA.fullmatch(commit_hash):
        # most servers (protocol v2, GitHub, GitLab) give a commit by its sha: fetch just that
        if _fetch(mirror, [f"+{commit_hash}:refs/gitopsq/pins/{commit_hash}"], env, auth, timeout, what) is None:
            found = _try_resolve(mirror, commit_hash, env)
            if found:
                return found
    result = _fetch(mirror, ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"], env, auth, timeout, what)
    if result is not None:
        raise WorkspaceError(f"{what}: {result}")
    found = _try_resolve(mirror, commit_hash, env)
    if not found:
        raise WorkspaceError(f"{what}: no commit {commit_hash} there (looked in every branch and tag)")
    return found


def _fetch(mirror: Path, refspecs: list[str], env: dict[str, str], auth: Auth, timeout: float, what: str) -> str | None:
    """None when the fetch worked, else git's one-line reason, made plain for the common failures."""
    result = run(["--git-dir", str(mirror), "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "origin",
                  *refspecs], {**env, **auth.env}, timeout=timeout, what=what)
    if result.code == 0:
        return None
    return _reason(result.stderr, auth)


def _reason(stderr: str, auth: Auth) -> str:
    text = stderr.lower()
    if "couldn't find remote ref" in text:
        return one_line(stderr, auth.secrets)
    refused = ("authentication failed", "could not read username", "could not read password",
               "permission denied (publickey", "http 401", "http 403", "returned error: 401", "returned error: 403",
               "invalid username or password")
    if any(marker in text for marker in refused):
        if auth.given:
            return f"authentication failed with the secret {auth.key}"
        return (f"authentication failed: no secret {auth.key} (set it to a token or user:token for https, "
                "or a private key for ssh)" if auth.key else "authentication failed")
    if re.search(r"repository (not found|'[^']*' not found)|does not appear to be a git repository|"
                 r"returned error: 404", text):
        return "repository not found (or not readable with the credentials given)"
    return one_line(stderr, auth.secrets)


def _try_resolve(mirror: Path, name: str, env: dict[str, str]) -> str | None:
    result = run(["--git-dir", str(mirror), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], env)
    return result.stdout.strip() if result.code == 0 else None


def _resolve(mirror: Path, ref: str, env: dict[str, str], what: str) -> str:
    found = _try_resolve(mirror, ref, env)
    if not found:
        raise WorkspaceError(f"{what}: fetched {ref} but it names no commit")
    return found


def _check(result, what: str) -> None:
    if result.code != 0:
        raise WorkspaceError(f"{what}: {one_line(result.stderr)}")
