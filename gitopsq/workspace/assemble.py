"""Filling a run's working directory from git: its `repos` and `files` at the submission's commit."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gitopsq.inputs import FileSpec, RepoSpec
from gitopsq.source import ConfigRepo, redact_url
from gitopsq.workspace.auth import Credentials, auth_for, credential_key, parse_remote
from gitopsq.workspace.gitproc import FETCH_TIMEOUT, WorkspaceError, one_line, run, scrubbed_env
from gitopsq.workspace.mirror import fetch_commit
from gitopsq.workspace.tree import empty_folder, extract, shown, write_members

# Attributes that would make `git archive` differ from a checkout: export-ignore drops files,
# export-subst rewrites them. A shadow git dir's info/attributes (the strongest source) turns
# them off without touching the config repo.
_NO_EXPORT_ATTRIBUTES = "* -export-ignore -export-subst\n"
_COMMIT = re.compile(r"[0-9a-fA-F]{4,64}")  # what a submission records: a commit's (full) hex name


@dataclass(frozen=True)
class Outside:
    """An entry the run wants outside its working directory (/x, ~/x, ../x), staged for a
    provider with a filesystem of its own; nothing is written at dst itself."""

    source: Path  # the staged file or folder, under outside_dir(dest)
    dst: str  # as the run file wrote it
    entry: str  # 'repos[2]', 'files[0]'
    if_exists: str  # a repo's: error | skip; a file's: replace


@dataclass(frozen=True)
class Checkout:
    """Which commit one `repos` entry got (a URL's branch moves: a retry can pin this hash)."""

    entry: str
    source: str  # '.' for the config repo, else the URL (without a password)
    commit: str
    path: str
    placed: bool  # False when if_exists: skip kept what was there


@dataclass(frozen=True)
class Prepared:
    dest: Path
    commit: str  # the config repo's commit
    env: dict[str, str]  # what the run's environment carries: GITOPSQ_COMMIT, DSTACK_REPO_ID
    checkouts: tuple[Checkout, ...] = ()
    outside: tuple[Outside, ...] = field(default=())


def outside_dir(dest: Path) -> Path:
    """Where entries bound outside `dest` are staged: abs/<path>, home/<path>, up/<n>/<path>."""
    dest = Path(dest).absolute()
    return dest.with_name(dest.name + ".outside")


def prepare(spec, commit: str, repo: ConfigRepo, dest: Path, *, credentials: Credentials, cache_dir: Path,
            timeout: float = FETCH_TIMEOUT) -> Prepared:
    """Fill `dest` (empty or missing) with the run's `repos` and `files`, without history.

    Raises WorkspaceError with a one-line reason naming the entry; what was written by then
    stays (the caller throws the folder away)."""
    dest, cache_dir = Path(dest).absolute(), Path(cache_dir).absolute()
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = outside_dir(dest)
    shutil.rmtree(staging, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="gitopsq-git-") as private:  # 0700; holds HOME and credentials
        home = Path(private) / "home"
        home.mkdir()
        job = _Job(dest, staging, cache_dir, scrubbed_env(home), Path(private), credentials, timeout)
        local = job.archive_env(Path(repo.git_dir) / "objects")
        sha = _resolve_commit(commit, local, repo)
        checkouts = [job.repo(index, item, sha, local) for index, item in enumerate(spec.repos)]
        for index, item in enumerate(spec.files):
            job.file(index, item, sha, local)
    env = {"GITOPSQ_COMMIT": sha}
    identity = repo_id(spec.repos, repo)
    if identity:
        env["DSTACK_REPO_ID"] = identity
    return Prepared(dest, sha, env, tuple(checkouts), tuple(job.outside))


def _resolve_commit(commit: str, env: dict[str, str], repo: ConfigRepo) -> str:
    found = run(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], env) if _COMMIT.fullmatch(commit) else None
    if found is None or found.code != 0:
        raise WorkspaceError(f"commit {commit!r} is not in the config repository {repo.display_location}")
    return found.stdout.strip()


class _Job:
    """One prepare: where things go, the scrubbed environment, the credentials."""

    def __init__(self, dest, staging, cache_dir, env, private, credentials, timeout):
        self.dest, self.staging, self.cache_dir = dest, staging, cache_dir
        self.env, self.private, self.credentials, self.timeout = env, private, credentials, timeout
        self.outside: list[Outside] = []
        self.shadow = _shadow_git_dir(cache_dir, env)

    def archive_env(self, objects: Path) -> dict[str, str]:
        return {**self.env, "GIT_DIR": str(self.shadow), "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects)}

    def root_for(self, path: str, entry: str, if_exists: str) -> tuple[Path, list[str]]:
        inside, parts = where(path, entry)
        if inside:
            return self.dest, parts
        self.staging.mkdir(mode=0o700, exist_ok=True)
        self.outside.append(Outside(self.staging.joinpath(*parts), path, entry, if_exists))
        return self.staging, parts

    def repo(self, index: int, item: RepoSpec, sha: str, local: dict[str, str]) -> Checkout:
        entry = f"repos[{index}]"
        if item.is_local:
            what = f"{entry} {item.local_path or '.'}"
            treeish = f"{sha}:{item.local_path}" if item.local_path else sha
            placed = self.tree(item, treeish, local, what, entry)
            return Checkout(entry, ".", sha, item.path, placed)
        url = item.url
        what = f"{entry} {redact_url(url)}"
        _check_url(url, what)
        private = self.private / f"auth-{index}"
        private.mkdir(mode=0o700)
        auth = auth_for(url, self.credentials, private, self.cache_dir / "known_hosts", what)
        mirror, commit = fetch_commit(url, item.branch, item.hash, self.cache_dir, self.env, auth, self.timeout, what)
        placed = self.tree(item, commit, self.archive_env(mirror / "objects"), what, entry)
        return Checkout(entry, redact_url(url), commit, item.path, placed)

    def tree(self, item: RepoSpec, treeish: str, env: dict[str, str], what: str, entry: str) -> bool:
        root, parts = self.root_for(item.path, entry, item.if_exists)
        fd = empty_folder(root, parts, what)
        if fd is None:
            if item.if_exists == "skip":
                return False
            raise WorkspaceError(f"{what}: {item.path} is not empty (if_exists: skip keeps what is there)")
        try:
            git_code, git_err, tar_code, tar_err = extract([treeish], env, fd)
        finally:
            os.close(fd)
        if git_code != 0:
            if "not a valid object name" in git_err:
                raise WorkspaceError(f"{what}: no such folder at commit {treeish.split(':')[0][:12]}")
            if "not a tree object" in git_err:
                raise WorkspaceError(f"{what}: is a file, not a folder")
            raise WorkspaceError(f"{what}: {one_line(git_err)}")
        if tar_code != 0:
            raise WorkspaceError(f"{what}: writing the tree failed: {one_line(tar_err)}")
        return True

    def file(self, index: int, item: FileSpec, sha: str, env: dict[str, str]) -> None:
        what = f"files[{index}] {item.src}"
        kind = run(["cat-file", "-t", f"{sha}:{item.src}"], env)
        if kind.code != 0:
            raise WorkspaceError(f"{what}: no such file or folder at commit {sha[:12]}")
        root, base = self.root_for(item.dst, f"files[{index}]", "replace")
        if kind.stdout.strip() == "tree":
            write_members([f"{sha}:{item.src}"], env, root, lambda parts: base + parts, what)
            return
        if kind.stdout.strip() != "blob":
            raise WorkspaceError(f"{what}: is a {kind.stdout.strip()}, not a file or folder")
        folder, name = posixpath.split(item.src)
        treeish = f"{sha}:{folder}" if folder else sha
        write_members([treeish, "--", f":(literal){name}"], env, root, lambda parts: base, what)


def where(path: str, entry: str) -> tuple[bool, list[str]]:
    """(inside the working directory?, the parts from it, or from the staging folder when not)."""
    if path.startswith("/"):
        parts = [p for p in posixpath.normpath("/" + path.lstrip("/")).split("/") if p]
        if not parts:
            raise WorkspaceError(f"{entry}: '/' cannot be a destination")
        return False, ["abs", *parts]
    if path == "~" or path.startswith("~/"):
        parts = [p for p in posixpath.normpath(path[2:] or ".").split("/") if p not in ("", ".")]
        if ".." in parts:
            raise WorkspaceError(f"{entry}: {path!r} leaves the home folder")
        return False, ["home", *parts]
    parts = [p for p in posixpath.normpath(path).split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ups:
        return False, ["up", str(ups), *parts[ups:]]
    return True, parts


def _check_url(url: str, what: str) -> None:
    if url.startswith("-") or any(c in url for c in "\n\r\0"):
        raise WorkspaceError(f"{what}: not a usable git URL")
    if "://" in url and urlsplit(url).password is not None:
        raise WorkspaceError(f"{what}: a URL must not carry a password; store it in the secret {credential_key(url)}")


def _shadow_git_dir(cache_dir: Path, env: dict[str, str]) -> Path:
    shadow = cache_dir / "archive.git"
    if (shadow / "info" / "attributes").is_file():
        return shadow
    fresh = Path(tempfile.mkdtemp(prefix="archive.git.", dir=cache_dir))
    made = run(["init", "--quiet", "--bare", "--template=", str(fresh)], env)
    if made.code != 0:
        raise WorkspaceError(f"cannot make {shadow}: {one_line(made.stderr)}")
    (fresh / "info").mkdir(exist_ok=True)
    (fresh / "info" / "attributes").write_text(_NO_EXPORT_ATTRIBUTES)
    try:
        fresh.rename(shadow)
    except OSError:  # another prepare made it first
        shutil.rmtree(fresh, ignore_errors=True)
    return shadow


# --- DSTACK_REPO_ID ------------------------------------------------------------------------------


def repo_id(repos: tuple[RepoSpec, ...], repo: ConfigRepo) -> str | None:
    """dstack's repo id for a run with repos: named after its first repo, `<name>-<8 hex>`, the hex
    a hash of where that repo lives (host and path; no scheme, user or password), so it is the
    same for every run and submission of that repo and differs between repos of one name."""
    if not repos:
        return None
    first = repos[0]
    if first.url:
        location = first.url
    elif repo.is_remote:
        location = repo.location
    else:
        git_dir = Path(repo.git_dir)
        location = str(git_dir.parent if git_dir.name == ".git" else git_dir)
    identity = _identity(location)
    name = re.sub(r"[^a-z0-9]+", "-", identity.rsplit("/", 1)[-1].lower()).strip("-") or "repo"
    return f"{name}-{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def _identity(location: str) -> str:
    remote = parse_remote(location)
    if remote.scheme == "file" and "://" not in location:
        path = location
    elif "://" in location:
        path = urlsplit(location).path
    else:
        path = location.split(":", 1)[1]
    path = path.strip("/")
    if path.endswith(".git"):
        path = path[:-4]
    return f"{remote.host}/{path}" if remote.host else "/" + path
