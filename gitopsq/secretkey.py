"""The key that encrypts secrets at rest: a file of its own beside the state database.

The database alone reveals nothing: its secrets are Fernet tokens, and the key lives in
`<db stem>.key` (gitopsq.db -> gitopsq.key, so a copy of `gitopsq.db*` does not take the key
along), 0600, written once and never replaced. A new key cannot read what an old one wrote, so
a missing key is only ever created while nothing encrypted exists.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet


class SecretKeyError(Exception):
    """The key is missing, unreadable or not the one the stored secrets were encrypted with."""


def key_path_for(db_path: str | Path) -> Path:
    db_path = Path(db_path)
    path = db_path.with_name(db_path.stem + ".key")
    return path if path != db_path else db_path.with_name(db_path.name + ".key")


def load_key(path: Path) -> Fernet | None:
    """The key at `path`, or None when there is no file."""
    try:
        with open(path, "rb") as f:
            _make_private(f.fileno())
            raw = f.read(1024)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretKeyError(f"cannot read the secrets key {path}: {exc.strerror or exc}") from None
    try:
        return Fernet(raw.strip())
    except ValueError:
        raise SecretKeyError(f"{path} is not a gitopsq secrets key (expected 32 url-safe base64-encoded bytes)") from None


def create_key(path: Path) -> Fernet:
    """A new key at `path`, or the one already there (never overwritten).

    Written to a temporary file first and linked into place: a reader never sees a half-written
    key, and of two processes creating it at once, one wins and both use its key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _make_private(fd)
        os.write(fd, Fernet.generate_key() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails when the key exists: never overwritten
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    key = load_key(path)
    assert key is not None
    return key


def _make_private(fd: int) -> None:
    """0600 whatever the umask (also a key an older version or a user left readable)."""
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    except OSError:
        pass  # not ours, or a read-only file system: read, not changed
