"""What a run gets besides its commands: code (`repos`), `files`, `volumes`, secrets and
registry credentials, normalised from dstack's forms (the schema has checked the types).

Everything a run reads from the config repo is named relative to the run file's folder and
must stay inside the config repo: the controller reads it from git at the submission's
commit, never from its own disk. Secrets are referenced, never resolved here: a spec holds
`${{ secrets.name }}`, and the value is put in at launch, for that launch only.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any

SECRET_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_INTERPOLATION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
_SECRET_REF = re.compile(r"secrets\.(" + SECRET_NAME + r")\Z")
_ENV_REF = re.compile(r"env\.([A-Za-z_][A-Za-z0-9_]*)\Z")
_SCP_LIKE = re.compile(r"^[^/@:\s]+@[^/:\s]+:")


class InputError(ValueError):
    """One field of what a run gets is wrong: `path` is the field's path, the message says why."""

    def __init__(self, path: tuple, message: str):
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class RepoSpec:
    local_path: str | None = None  # a folder of the config repo, relative to its root ("" = the root)
    url: str | None = None
    branch: str | None = None
    hash: str | None = None
    path: str = "."  # where in the working directory (relative), or an absolute path
    if_exists: str = "error"  # when path is not empty: error, or skip this repo (dstack's if_exists)

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


@dataclass(frozen=True)
class FileSpec:
    src: str  # relative to the config repo's root
    dst: str  # relative to the working directory, or absolute (~ = the run's home)


@dataclass(frozen=True)
class VolumeSpec:
    instance_path: str  # absolute, on the machine that runs the run
    path: str  # where the run sees it: absolute, or relative to the working directory
    optional: bool = False


@dataclass(frozen=True)
class RegistryAuth:
    username: str  # may hold ${{ secrets.x }} or ${{ env.X }}
    password: str


# --- secrets in values ---------------------------------------------------------------------------


def secret_ref(name: str) -> str:
    return "${{ secrets.%s }}" % name


def check_interpolations(value: str, path: tuple, env_names: frozenset[str] | None = None) -> None:
    """Only ${{ secrets.name }} (and, where env_names is given, ${{ env.NAME }}) may appear."""
    for match in _INTERPOLATION.finditer(value):
        expression = match.group(1)
        if _SECRET_REF.match(expression):
            continue
        env = _ENV_REF.match(expression)
        if env and env_names is not None:
            if env.group(1) not in env_names:
                raise InputError(path, f"${{{{ {expression} }}}}: the run has no env {env.group(1)}")
            continue
        allowed = "${{ secrets.name }}" + (" or ${{ env.NAME }}" if env_names is not None else "")
        raise InputError(path, f"${{{{ {expression} }}}} is not supported here (use {allowed})")


def secret_names(text: str) -> set[str]:
    """The secrets a value refers to."""
    return {m.group(1) for m in (_SECRET_REF.match(x.group(1)) for x in _INTERPOLATION.finditer(text)) if m}


def substitute(text: str, secrets: dict[str, str], env: dict[str, str] | None = None) -> str:
    """Put in the values of ${{ secrets.x }} (and ${{ env.X }}); every referenced name must be given."""
    def value(match: re.Match) -> str:
        expression = match.group(1)
        secret = _SECRET_REF.match(expression)
        if secret:
            return secrets[secret.group(1)]
        named = _ENV_REF.match(expression)
        if named and env is not None:
            return env[named.group(1)]
        return match.group(0)

    return _INTERPOLATION.sub(value, text)


def env_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """dstack's env forms as (NAME, value) pairs; a name alone is the secret of that name."""
    if isinstance(value, dict):
        pairs = [(k, _scalar_text(v)) for k, v in value.items()]
    else:
        pairs = [tuple(item.split("=", 1)) if "=" in item else (item, secret_ref(item)) for item in value or ()]
    for index, (name, text) in enumerate(pairs):
        check_interpolations(text, ("env", name) if isinstance(value, dict) else ("env", index))
    return tuple(pairs)


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- paths inside the config repo ----------------------------------------------------------------


def repo_relative(src: str, run_file: str, path: tuple, what: str) -> str:
    """`src` (from the run file's folder) as a path from the config repo's root; refuses what leaves it."""
    if src.startswith("~") or src.startswith("/"):
        raise InputError(path, f"{src!r} is outside the config repository: a run's {what} come from the config repo "
                               "at the submission's commit (the controller's disk is not the author's laptop)")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(run_file), src))
    if joined == ".." or joined.startswith("../"):
        raise InputError(path, f"{src!r} leaves the config repository (from {posixpath.dirname(run_file) or 'its root'}); "
                               f"a run's {what} come from the config repo at the submission's commit")
    return "" if joined == "." else joined


def _target(path: str, field: tuple) -> str:
    if path.startswith("~") and not (path == "~" or path.startswith("~/")):
        raise InputError(field, f"{path!r}: ~user is not supported (use ~/ or a path)")
    return path


def _split_url_target(text: str) -> tuple[str, str | None]:
    """A URL and the :path after it, if any (a port, https://host:8443/x, is part of the URL)."""
    if "://" in text:
        scheme, rest = text.split("://", 1)
        slash = rest.find("/")
        if slash < 0:
            return text, None
        tail = rest[slash:]
        if ":" in tail:
            url_tail, target = tail.split(":", 1)
            return f"{scheme}://{rest[:slash]}{url_tail}", target
        return text, None
    host, remote = text.split(":", 1)  # user@host:path[:target]
    if ":" in remote:
        remote, target = remote.split(":", 1)
        return f"{host}:{remote}", target
    return text, None


def is_url(text: str) -> bool:
    return "://" in text or bool(_SCP_LIKE.match(text))


def parse_repos(value: list, run_file: str) -> tuple[RepoSpec, ...]:
    out = []
    for index, item in enumerate(value):
        field = ("repos", index)
        if isinstance(item, str):
            if is_url(item):
                url, target = _split_url_target(item)
                item = {"url": url, **({"path": target} if target else {})}
            else:
                local, _, target = item.partition(":")
                item = {"local_path": local, **({"path": target} if target else {})}
        if ("local_path" in item) == ("url" in item):
            raise InputError(field, "give local_path or url (exactly one)")
        target = _target(item.get("path", "."), field + ("path",))
        if "local_path" in item:
            for key in ("branch", "hash"):
                if key in item:
                    raise InputError(field + (key,), "applies to a url only: a local path is the config repo "
                                                       "at the submission's commit")
            local = repo_relative(item["local_path"], run_file, field, "repos")
            out.append(RepoSpec(local_path=local, path=target, if_exists=item.get("if_exists", "error")))
        else:
            url = item["url"]
            if not is_url(url):
                raise InputError(field + ("url",), f"{url!r} is not a git URL (https://, ssh://, file:// or user@host:path)")
            out.append(RepoSpec(url=url, branch=item.get("branch"), hash=item.get("hash"), path=target,
                                if_exists=item.get("if_exists", "error")))
    targets = [r.path for r in out]
    for index, target in enumerate(targets):
        if target in targets[:index]:
            raise InputError(("repos", index), f"two repos are checked out at {target!r}")
    return tuple(out)


def parse_files(value: list, run_file: str) -> tuple[FileSpec, ...]:
    out = []
    for index, item in enumerate(value):
        field = ("files", index)
        if isinstance(item, str):
            src, _, dst = item.partition(":")
            item = {"local_path": src, **({"path": dst} if dst else {})}
        src = repo_relative(item["local_path"], run_file, field, "files")
        if src == "":
            raise InputError(field, "is the whole config repo: use repos: [.] for that")
        dst = _target(item.get("path", item["local_path"]), field)
        if not dst.startswith(("/", "~")):
            # dstack puts ../x at <working dir>/../x: outside the working directory, like an absolute
            # path, which only a run with a filesystem of its own can honour (the provider decides).
            dst = posixpath.normpath(dst)
        out.append(FileSpec(src, dst))
    return tuple(out)


def parse_volumes(value: list) -> tuple[VolumeSpec, ...]:
    out = []
    for index, item in enumerate(value):
        field = ("volumes", index)
        if isinstance(item, str):
            host, sep, target = item.partition(":")
            if not sep or not target:
                raise InputError(field, f"{item!r} is not /host/path:/path")
            item = {"instance_path": host, "path": target} if host.startswith("/") else {"name": host, "path": target}
        if "name" in item or "instance_path" not in item:
            name = item.get("name", "?")
            raise InputError(field, f"network volume {name!r} is not supported by gitopsq; use an instance volume "
                                    "(/host/path:/path, or instance_path and path)")
        if not item["instance_path"].startswith("/"):
            raise InputError(field + ("instance_path",), f"{item['instance_path']!r} is not an absolute path on the machine")
        out.append(VolumeSpec(posixpath.normpath(item["instance_path"]), _target(item["path"], field + ("path",)),
                              bool(item.get("optional", False))))
    return tuple(out)


def parse_registry_auth(value: dict | None, env_names: frozenset[str]) -> RegistryAuth | None:
    if value is None:
        return None
    for key in ("username", "password"):
        check_interpolations(value[key], ("registry_auth", key), env_names)
    return RegistryAuth(value["username"], value["password"])
