"""API tokens: who may read (read-only tokens) or also write (write tokens) the HTTP API and the dashboard.

A token is `gq_` followed by 43 URL-safe characters: 256 random bits from `secrets`. Only its
SHA-256 is stored, and a request's token is found by the hash of what it presents. No slow KDF
(bcrypt, scrypt, argon2) is needed: those make guessing a low-entropy password from a leaked
hash expensive, but 256 random bits cannot be guessed however cheap each try is, so one SHA-256
protects a leaked database as well and keeps every request's check cheap. Looking a hash up by
index is not constant-time, but it can only tell an attacker about hashes of strings they chose,
never about a stored token.

The token itself is shown once, when it is created (and, for the admin token `serve` creates on
its first start, kept in a 0600 file beside the state database, for the CLI and the operator).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path

from gitopsq.store import Store

PREFIX = "gq_"
ADMIN = "admin"  # the name of the token `serve` creates when there is none
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
MAX_TOKEN = 200  # longer strings are not tokens: refused before they are hashed
LAST_USED_RESOLUTION = 60.0  # seconds: last_used_at is written at most this often per token


class TokenError(Exception):
    """A bad token name, or a name already taken."""


@dataclass(frozen=True)
class Token:
    name: str
    read_only: bool
    created_at: float
    last_used_at: float | None

    @property
    def access(self) -> str:
        return "read-only" if self.read_only else "write"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise TokenError(f"{name!r} is not a token name: use letters, digits, '.', '_' and '-' (at most 64)")


def create(store: Store, name: str, read_only: bool = False, now: float | None = None) -> str:
    """A new token named `name`; returns the token, which is never stored or shown again."""
    check_name(name)
    token = PREFIX + secrets.token_urlsafe(32)
    with store.transaction():
        if store.conn.execute("SELECT 1 FROM api_tokens WHERE name = ?", (name,)).fetchone():
            raise TokenError(f"a token named {name!r} exists already (revoke it first to replace it)")
        store.conn.execute("INSERT INTO api_tokens(name, hash, read_only, created_at) VALUES(?, ?, ?, ?)",
                           (name, digest(token), int(read_only), time.time() if now is None else now))
    return token


def verify(store: Store, token: str, now: float | None = None) -> Token | None:
    """The token's record, or None when it is not a token of this state (never created, or revoked).

    Records when it was last used, at most every LAST_USED_RESOLUTION seconds (not a write per request)."""
    if not token.startswith(PREFIX) or len(token) > MAX_TOKEN:
        return None
    row = store.conn.execute("SELECT * FROM api_tokens WHERE hash = ?", (digest(token),)).fetchone()
    if row is None:
        return None
    found, now = _token(row), time.time() if now is None else now
    if found.last_used_at is None or now - found.last_used_at >= LAST_USED_RESOLUTION:
        try:
            with store.transaction():
                store.conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE name = ?", (now, found.name))
        except sqlite3.OperationalError:  # a full disk, a read-only database: the token is valid all the same
            return found
        found = replace(found, last_used_at=now)
    return found


def listing(store: Store) -> list[Token]:
    return [_token(row) for row in store.conn.execute("SELECT * FROM api_tokens ORDER BY created_at, name")]


def revoke(store: Store, name: str) -> bool:
    """Remove token `name` at once (the next request presenting it gets 401); False when unknown."""
    with store.transaction():
        return store.conn.execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount == 1


def admin_token_path(db_path: str | Path) -> Path:
    """Where `serve` keeps the admin token it created: beside the database (gitopsq.db -> gitopsq.admin-token)."""
    db_path = Path(db_path)
    return db_path.with_name(f"{db_path.stem}.admin-token")


def ensure_admin_token(store: Store, now: float | None = None) -> Path | None:
    """When the state has no token at all: create a write token named `admin` and write it, 0600,
    to admin_token_path(); returns that path (None when a token existed already)."""
    path = admin_token_path(store.path)
    with store.transaction():  # a file that cannot be written leaves no token nobody knows
        if store.conn.execute("SELECT EXISTS(SELECT 1 FROM api_tokens)").fetchone()[0]:
            return None
        token = create(store, ADMIN, read_only=False, now=now)
        _write_private(path, token + "\n")
    return path


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, 0600 from its creation whatever the umask, replacing it atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _token(row) -> Token:
    return Token(row["name"], bool(row["read_only"]), row["created_at"], row["last_used_at"])
