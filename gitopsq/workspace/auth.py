"""Credentials for a URL repo: looked up by host, handed to git for one fetch, never written to
its config, a command line or a message.

The secret `git.<host>` (host in lower case, without port) holds, for an https/http URL, a token
(sent with the URL's user name, or `x-access-token`, which GitHub expects and GitLab accepts)
or `user:token`; for an ssh or scp-like URL, a private key (OpenSSH or PEM). A URL without a
secret is fetched anonymously. https credentials reach git through GIT_ASKPASS, a script that
reads them from 0600 files in a private temporary folder; an ssh key is such a file too, used
with `IdentitiesOnly` and no ssh config or agent, and host keys are learnt on first use into a
known_hosts file of the cache (`StrictHostKeyChecking=accept-new`).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from gitopsq.workspace.gitproc import WorkspaceError

Credentials = Callable[[str], "str | None"]

_SCP_LIKE = re.compile(r"^(?:([^/@:\s]+)@)?([^/:\s]+):")
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_DEFAULT_USER = "x-access-token"

_ASKPASS = """#!/bin/sh
case "$1" in
  [Uu]sername*) exec cat "$GITOPSQ_ASKPASS_DIR/user" ;;
  *) exec cat "$GITOPSQ_ASKPASS_DIR/password" ;;
esac
"""


@dataclass(frozen=True)
class Remote:
    scheme: str  # https, http, ssh, git, file
    host: str | None
    user: str | None


def parse_remote(url: str) -> Remote:
    if "://" in url:
        parts = urlsplit(url)
        return Remote(parts.scheme.lower(), (parts.hostname or "").lower() or None, parts.username)
    match = _SCP_LIKE.match(url)
    if match:
        return Remote("ssh", match.group(2).lower(), match.group(1))
    return Remote("file", None, None)


def credential_key(url: str) -> str | None:
    """The secret that holds the credentials for this URL; None for a URL that takes none."""
    remote = parse_remote(url)
    if remote.host is None or remote.scheme not in ("https", "http", "ssh"):
        return None
    return f"git.{remote.host}"


@dataclass
class Auth:
    """What git needs for one fetch: extra environment, and the strings to hide in messages."""

    env: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    key: str | None = None  # the secret's name, for messages
    given: bool = False  # a secret was found and used


def auth_for(url: str, credentials: Credentials, private: Path, known_hosts: Path, what: str) -> Auth:
    """Write what git needs for `url` into `private` (a 0700 folder, removed by the caller)."""
    remote = parse_remote(url)
    key = credential_key(url)
    value = credentials(key) if key else None
    if remote.scheme == "ssh":
        return _ssh(value, key, private, known_hosts, what)
    if value is None:
        return Auth(key=key)
    if _PRIVATE_KEY.search(value):
        raise WorkspaceError(f"{what}: the secret {key} holds a private key, which only an ssh URL can use "
                             "(an https URL needs a token or user:token)")
    user, sep, password = value.strip().partition(":")
    if not sep:
        user, password = remote.user or _DEFAULT_USER, user
    _write_private(private / "user", user)
    _write_private(private / "password", password)
    script = private / "askpass"
    _write_private(script, _ASKPASS)
    script.chmod(0o700)
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    env = {"GIT_ASKPASS": str(script), "GITOPSQ_ASKPASS_DIR": str(private)}
    return Auth(env, (value, value.strip(), password, basic), key, True)


def _ssh(value: str | None, key: str | None, private: Path, known_hosts: Path, what: str) -> Auth:
    if value is not None and not _PRIVATE_KEY.search(value):
        raise WorkspaceError(f"{what}: the secret {key} holds no private key, which an ssh URL needs "
                             "(a token works with an https URL)")
    identity = private / "id"  # without a secret: a file that does not exist, so ssh tries no key of ours
    if value is not None:
        _write_private(identity, value.strip() + "\n")
    command = ["ssh", "-F", os.devnull, "-i", str(identity), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
               "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ControlMaster=no", "-o", "ControlPath=none",
               "-o", "ConnectTimeout=30"]
    secrets = (value, value.strip()) if value else ()
    return Auth({"GIT_SSH_COMMAND": shlex.join(command), "GIT_SSH_VARIANT": "ssh"}, secrets, key, value is not None)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
