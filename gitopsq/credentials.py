"""The daemon's own credentials: read once at start, never left in its environment block.

The cloud provider's credentials come from files (--provider-key-file, --provider-secret-file,
--provider-session-token-file) or from the environment (GITOPSQ_PROVIDER_KEY /
GITOPSQ_PROVIDER_SECRET / GITOPSQ_PROVIDER_SESSION_TOKEN, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN). What a process was started with stays readable in /proc/<pid>/environ
for its whole life, whatever it later removes from os.environ, and a run of the same user can
read that file. So `serve`, started with credentials in its environment, re-executes itself at
once (same pid) with an environment without them, and hands the provider's over through an
anonymous memory file (memfd: no name on disk) that the new image reads and closes first thing.
Other variables that look like credentials (DB_PASSWORD, GITHUB_TOKEN...) are not needed by
gitopsq: they are dropped, and the daemon says which by name.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NoReturn

PROVIDER_VARS = ("GITOPSQ_PROVIDER_KEY", "GITOPSQ_PROVIDER_SECRET", "GITOPSQ_PROVIDER_SESSION_TOKEN",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
HANDOVER_VAR = "GITOPSQ_CREDENTIALS_FD"  # the memfd's number: not a secret
_LOOKS_SECRET = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)
MAX_FILE_BYTES = 64 * 1024  # a key file, not a data set


class CredentialsError(Exception):
    """A credentials file that cannot be used (said without its content)."""


@dataclass(frozen=True)
class Credentials:
    values: Mapping[str, str] = field(default_factory=dict)  # the provider's, by variable name
    dropped: tuple[str, ...] = ()  # other credential-like variables removed from the environment


def is_credential(name: str) -> bool:
    return name in PROVIDER_VARS or bool(_LOOKS_SECRET.search(name))


def split_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], Credentials]:
    """(the environment without credentials, the credentials it held)."""
    kept = {k: v for k, v in environ.items() if not is_credential(k)}
    values = {k: environ[k] for k in PROVIDER_VARS if environ.get(k)}
    dropped = tuple(sorted(k for k in environ if is_credential(k) and k not in PROVIDER_VARS))
    return kept, Credentials(values, dropped)


def read_file(path: str, option: str) -> str:
    """A credential from a file (surrounding whitespace and the trailing newline dropped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CredentialsError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CredentialsError(f"{option}: {path} is over {MAX_FILE_BYTES // 1024} KiB; it must hold one credential")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialsError(f"{option}: {path} is not UTF-8 text") from None
    if not text:
        raise CredentialsError(f"{option}: {path} is empty")
    return text


def reexec_without_credentials(environ: Mapping[str, str], found: Credentials) -> NoReturn:
    """Replace this process (same pid, same arguments) by one whose environment holds no credentials."""
    kept, _ = split_environment(environ)
    fd = os.memfd_create("gitopsq-credentials", 0)  # not close-on-exec: the new image reads it
    payload = json.dumps({"values": dict(found.values), "dropped": list(found.dropped)}).encode()
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]
    kept[HANDOVER_VAR] = str(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, sys.orig_argv, kept)


def take_handover() -> Credentials | None:
    """The credentials the previous image of this process handed over, or None (not re-executed)."""
    number = os.environ.pop(HANDOVER_VAR, None)
    if number is None:
        return None
    fd = int(number)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"the credentials handed over at start could not be read: {exc}") from None
    return Credentials(data["values"], tuple(data["dropped"]))


def serve_credentials(key_file: str | None, secret_file: str | None, scrub: bool,
                      session_token_file: str | None = None) -> Credentials:
    """The credentials `serve` gives its provider: files first, then the environment.

    scrub: a long-lived daemon started with credentials in its environment re-executes itself
    without them (this call then does not return in this image, and the new one takes them over).
    Only a process started as `gitopsq serve` does: never one that runs the command in-process."""
    found = take_handover()
    if found is None:
        _, found = split_environment(os.environ)
        if scrub and (found.values or found.dropped) and _started_as_serve():
            reexec_without_credentials(os.environ, found)
    values = dict(found.values)
    if key_file:
        values["GITOPSQ_PROVIDER_KEY"] = read_file(key_file, "--provider-key-file")
    if secret_file:
        values["GITOPSQ_PROVIDER_SECRET"] = read_file(secret_file, "--provider-secret-file")
    if session_token_file:
        values["GITOPSQ_PROVIDER_SESSION_TOKEN"] = read_file(session_token_file, "--provider-session-token-file")
    return Credentials(values, found.dropped)


def _started_as_serve() -> bool:
    return sys.argv[1:2] == ["serve"] and Path(sys.executable).exists()
