"""Secrets in the state database, encrypted at rest, resolved at launch, remembered for masking.

A secret is a name and a value a run references (`env: [HF_TOKEN]`, `${{ secrets.wandb }}`).
Values are Fernet tokens in the database under a key kept in a file of its own
(gitopsq.secretkey), so the database alone reveals nothing. At launch the controller resolves
the names a spec needs and records, per attempt, the values that attempt was given: served logs
mask those, even after the secret is changed or removed.

A value never goes into a log line or an exception message here.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterable

from cryptography.fernet import Fernet, InvalidToken

from gitopsq.inputs import SECRET_NAME
from gitopsq.secretkey import SecretKeyError, create_key, key_path_for, load_key
from gitopsq.store import Store

__all__ = ["SecretStore", "SecretError", "SecretKeyError", "check_name", "check_value", "secret_listing"]

MAX_NAME = 128
MAX_VALUE_BYTES = 48 * 1024  # an ssh key or a service account's JSON fits; an env variable must stay small
_NAME = re.compile(SECRET_NAME)


class SecretError(ValueError):
    """A name or value that cannot be stored; the message says why and never holds the value."""


def check_name(name: str) -> None:
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise SecretError(f"{name[:MAX_NAME]!r} is not a secret name: use letters, digits, _ . - "
                          f"(not first: . -), at most {MAX_NAME} characters")


def check_value(value: str) -> None:
    """A value a run can be given in its environment."""
    if not isinstance(value, str):
        raise SecretError("the value must be text")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SecretError("the value is not valid UTF-8 text") from None
    if size == 0:
        raise SecretError("the value is empty")
    if "\0" in value:
        raise SecretError("the value holds a NUL byte, which an environment variable cannot carry")
    if size > MAX_VALUE_BYTES:
        raise SecretError(f"the value is {size} bytes; at most {MAX_VALUE_BYTES} are accepted")


class SecretStore:
    """The secrets of one state database. Writes need a writable Store; reads work read-only."""

    def __init__(self, store: Store, key_path: Path | None = None):
        self.store = store
        self.key_path = Path(key_path) if key_path else key_path_for(store.path)
        self._fernet: Fernet | None = None

    # --- the secrets ------------------------------------------------------------------------

    def set(self, name: str, value: str, now: float | None = None) -> bool:
        """Store a value (replacing the old one); True when the name is new."""
        check_name(name)
        check_value(value)
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            fernet = self._key(create=True)
            self._check_key_reads_what_is_stored(conn)
            existed = conn.execute("SELECT 1 FROM secrets WHERE name = ?", (name,)).fetchone() is not None
            conn.execute(
                """INSERT INTO secrets(name, token, created_at, updated_at) VALUES(?, ?, ?, ?)
                   ON CONFLICT(name) DO UPDATE SET token = excluded.token, updated_at = excluded.updated_at""",
                (name, fernet.encrypt(value.encode("utf-8")).decode("ascii"), now, now))
        return not existed

    def get(self, name: str) -> str | None:
        row = self.store.conn.execute("SELECT token FROM secrets WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._decrypt(row[0]).decode("utf-8")

    def resolve(self, names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
        """(values of the names that are set, sorted names that are not)."""
        values, missing = {}, []
        for name in sorted(set(names)):
            value = self.get(name)
            if value is None:
                missing.append(name)
            else:
                values[name] = value
        return values, missing

    def remove(self, name: str) -> bool:
        """False when no secret has that name."""
        with self.store.transaction() as conn:
            return conn.execute("DELETE FROM secrets WHERE name = ?", (name,)).rowcount > 0

    def list(self) -> list[dict]:
        """Names with when they were set and last changed, by name; never values."""
        rows = self.store.conn.execute("SELECT name, created_at, updated_at FROM secrets ORDER BY name")
        return [dict(row) for row in rows]

    # --- what each attempt was given, for masking -------------------------------------------

    def record_attempt(self, submission_id: int, attempt: int, values: Iterable[str], now: float | None = None) -> None:
        """Remember the values attempt `attempt` of a submission was given (before it launches)."""
        values = sorted(set(values))
        if not values:
            return
        now = time.time() if now is None else now
        with self.store.transaction() as conn:
            token = self._key(create=True).encrypt(json.dumps(values).encode("utf-8")).decode("ascii")
            conn.execute("INSERT OR REPLACE INTO attempt_secrets(submission_id, attempt, token, at) VALUES(?, ?, ?, ?)",
                         (submission_id, attempt, token, now))

    def mask_values(self, submission_id: int) -> list[str]:
        """Every value any attempt of the submission was given: what its logs must hide."""
        values: set[str] = set()
        for (token,) in self.store.conn.execute("SELECT token FROM attempt_secrets WHERE submission_id = ?", (submission_id,)):
            values.update(json.loads(self._decrypt(token)))
        return sorted(values)

    # --- the key ------------------------------------------------------------------------------

    def _key(self, create: bool = False) -> Fernet:
        if self._fernet is None:
            self._fernet = load_key(self.key_path)
        if self._fernet is None:
            if self._holds_encrypted():
                raise SecretKeyError(f"the secrets key {self.key_path} is missing, but the state holds encrypted secrets: "
                                     "restore that file (a new key cannot read them)")
            if not create:
                raise SecretKeyError(f"no secrets key at {self.key_path}")
            self._fernet = create_key(self.key_path)
        return self._fernet

    def _holds_encrypted(self) -> bool:
        return self.store.conn.execute(
            "SELECT EXISTS(SELECT 1 FROM secrets) OR EXISTS(SELECT 1 FROM attempt_secrets)").fetchone()[0] == 1

    def _decrypt(self, token: str) -> bytes:
        try:
            return self._key().decrypt(token.encode("ascii"))
        except InvalidToken:
            raise SecretKeyError(f"the secrets key {self.key_path} does not decrypt the stored secrets "
                                 "(was the key file replaced?)") from None

    def _check_key_reads_what_is_stored(self, conn) -> None:
        """Refuse to mix keys: a replaced key file must not encrypt new secrets beside old ones."""
        row = conn.execute("SELECT token FROM secrets UNION ALL SELECT token FROM attempt_secrets LIMIT 1").fetchone()
        if row is not None:
            self._decrypt(row[0])


def secret_listing(store: Store) -> list[dict]:
    """Every secret that is set or referenced by a present run: {name, set, created_at,
    updated_at, runs} by name; a referenced name that is not set has set false."""
    from gitopsq.spec import RunSpec

    referenced: dict[str, list[str]] = {}
    for name, spec in store.conn.execute("SELECT name, spec FROM runs WHERE present = 1 AND spec IS NOT NULL ORDER BY name"):
        for secret in RunSpec.from_dict(json.loads(spec)).secrets:
            referenced.setdefault(secret, []).append(name)
    stored = {row["name"]: row for row in SecretStore(store).list()}
    return [{"name": name, "set": name in stored,
             "created_at": stored[name]["created_at"] if name in stored else None,
             "updated_at": stored[name]["updated_at"] if name in stored else None,
             "runs": referenced.get(name, [])}
            for name in sorted(stored.keys() | referenced.keys())]
