"""The secret store: values encrypted at rest under a key kept beside the database (never in it),
what each attempt was given remembered for masking, and clear errors when the key is gone."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat

import pytest
import sqlite_utils

from gitopsq import store as store_module
from gitopsq.secretkey import create_key, key_path_for
from gitopsq.secretstore import MAX_VALUE_BYTES, SecretError, SecretKeyError, SecretStore
from gitopsq.store import SCHEMA_VERSION, Store, open_readonly

VALUE = "hf_Zq8sXv2LmN4pR7tY1uW3"


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state" / "gitopsq.db"


@pytest.fixture
def secrets(db):
    store = Store(db)
    yield SecretStore(store)
    store.close()


def test_set_get_resolve_list_remove(secrets):
    assert secrets.set("HF_TOKEN", VALUE, now=100.0) is True
    assert secrets.set("wandb", "w" * 40, now=101.0) is True
    assert secrets.get("HF_TOKEN") == VALUE
    assert secrets.get("nope") is None
    assert secrets.resolve(["wandb", "HF_TOKEN", "zz", "aa", "wandb"]) == ({"HF_TOKEN": VALUE, "wandb": "w" * 40}, ["aa", "zz"])
    assert secrets.set("HF_TOKEN", VALUE + "-2", now=200.0) is False
    assert secrets.get("HF_TOKEN") == VALUE + "-2"
    assert secrets.list() == [{"name": "HF_TOKEN", "created_at": 100.0, "updated_at": 200.0},
                              {"name": "wandb", "created_at": 101.0, "updated_at": 101.0}]
    assert secrets.remove("HF_TOKEN") is True
    assert secrets.remove("HF_TOKEN") is False
    assert [row["name"] for row in secrets.list()] == ["wandb"]


def test_values_survive_a_new_store_and_multiline_text(db, secrets):
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    secrets.set("deploy_key", key)
    secrets.set("unicode", "pässwörd ✓")
    again = SecretStore(Store(db))
    assert again.get("deploy_key") == key and again.get("unicode") == "pässwörd ✓"


def state_bytes(db) -> bytes:
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")) if p.exists())


def test_the_database_files_hold_no_plaintext_value(db, secrets):
    secrets.set("HF_TOKEN", VALUE)
    secrets.set("HF_TOKEN", VALUE + "x")  # the old value may linger in free pages: encrypted too
    secrets.record_attempt(7, 1, [VALUE + "x", "another-secret-value"])
    assert (db.with_name(db.name + "-wal")).exists()  # the check reads the WAL, where writes land first
    for value in (VALUE, VALUE + "x", "another-secret-value"):
        raw = value.encode()
        for form in (raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"=")):
            assert form not in state_bytes(db), f"{form!r} found in the state database files"
    secrets.store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert VALUE.encode() not in db.read_bytes()
    assert VALUE.encode() not in key_path_for(db).read_bytes()


def test_the_key_is_a_0600_file_beside_the_database_never_replaced(db, secrets):
    old = os.umask(0o022)
    try:
        key = key_path_for(db)
        assert key == db.parent / "gitopsq.key"  # not gitopsq.db.key: a copy of gitopsq.db* leaves it behind
        assert not key.exists()  # created on first use, not by opening the store
        secrets.set("a", VALUE)
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        first = key.read_bytes()
        create_key(key)  # a second creation keeps the key there
        SecretStore(Store(db)).set("b", VALUE)
        assert key.read_bytes() == first
        assert [p.name for p in db.parent.iterdir() if p.name.endswith(".tmp")] == []
    finally:
        os.umask(old)


def test_a_readable_key_is_made_private(db, secrets):
    secrets.set("a", VALUE)
    key = key_path_for(db)
    key.chmod(0o644)
    assert SecretStore(secrets.store).get("a") == VALUE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_missing_key_is_a_clear_error_never_a_new_key(db, secrets):
    secrets.set("HF_TOKEN", VALUE)
    key = key_path_for(db)
    key.unlink()
    fresh = SecretStore(Store(db))
    for attempt in (lambda: fresh.get("HF_TOKEN"), lambda: fresh.resolve(["HF_TOKEN"]), lambda: fresh.set("other", "value-2"),
                    lambda: fresh.record_attempt(1, 1, ["value-3"])):
        with pytest.raises(SecretKeyError) as caught:
            attempt()
        assert f"the secrets key {key} is missing" in str(caught.value) and "restore that file" in str(caught.value)
        assert VALUE not in str(caught.value)
        assert not key.exists()
    assert fresh.get("never-set") is None  # nothing to decrypt: no key needed
    assert [row["name"] for row in fresh.list()] == ["HF_TOKEN"]  # names need no key
    assert fresh.remove("HF_TOKEN") is True
    fresh.set("HF_TOKEN", VALUE)  # nothing encrypted is left: a new key may be made
    assert key.exists() and fresh.get("HF_TOKEN") == VALUE


def test_a_replaced_key_is_a_clear_error_and_mixes_nothing(db, secrets):
    secrets.set("HF_TOKEN", VALUE)
    key = key_path_for(db)
    key.unlink()
    create_key(key)
    fresh = SecretStore(Store(db))
    with pytest.raises(SecretKeyError, match="does not decrypt the stored secrets"):
        fresh.get("HF_TOKEN")
    with pytest.raises(SecretKeyError, match="does not decrypt"):
        fresh.set("other", "value-2")
    assert [row["name"] for row in fresh.list()] == ["HF_TOKEN"]


def test_a_key_file_that_is_not_a_key(db, secrets):
    secrets.set("HF_TOKEN", VALUE)
    key_path_for(db).write_bytes(b"not a key\n")
    with pytest.raises(SecretKeyError, match="is not a gitopsq secrets key"):
        SecretStore(Store(db)).get("HF_TOKEN")


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a/b", "a b", "a\n", "x" * 129, "a$"])
def test_bad_names_are_refused(secrets, name):
    with pytest.raises(SecretError, match="is not a secret name"):
        secrets.set(name, VALUE)


@pytest.mark.parametrize("value, why", [("", "empty"), (VALUE + "\0", "NUL byte"), ("\ud800" + VALUE, "not valid UTF-8"),
                                        ("x" * (MAX_VALUE_BYTES + 1), f"at most {MAX_VALUE_BYTES}")])
def test_bad_values_are_refused_without_echoing_them(secrets, value, why):
    with pytest.raises(SecretError) as caught:
        secrets.set("a", value)
    assert why in str(caught.value)
    assert value[:20] not in str(caught.value) or value == ""
    assert secrets.list() == []


def test_what_an_attempt_was_given_is_masked_after_a_change_or_removal(secrets):
    secrets.set("HF_TOKEN", VALUE)
    secrets.set("wandb", "wandb-key-1")
    values, missing = secrets.resolve(["HF_TOKEN", "wandb"])
    secrets.record_attempt(1, 1, values.values())
    secrets.set("HF_TOKEN", "hf-second-value")
    secrets.remove("wandb")
    secrets.record_attempt(1, 2, secrets.resolve(["HF_TOKEN"])[0].values())
    secrets.record_attempt(2, 1, ["other-submission"])
    secrets.record_attempt(3, 1, [])  # a run without secrets records nothing
    assert secrets.mask_values(1) == sorted([VALUE, "wandb-key-1", "hf-second-value"])
    assert secrets.mask_values(2) == ["other-submission"]
    assert secrets.mask_values(3) == [] and secrets.mask_values(99) == []


def test_mask_values_from_a_read_only_store(db, secrets):
    secrets.record_attempt(5, 1, [VALUE])
    secrets.store.close()
    assert SecretStore(open_readonly(db)).mask_values(5) == [VALUE]


def test_a_state_from_before_secrets_gains_their_tables(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    for number in (1, 2, 3):
        store_module.MIGRATIONS[number](sqlite_utils.Database(conn))
    conn.execute("INSERT INTO meta VALUES ('schema_version', '3'), ('controller_id', 'abc123')")
    conn.commit()
    conn.close()
    store = Store(db)
    assert store.meta("schema_version") == str(SCHEMA_VERSION)
    SecretStore(store).set("a", VALUE)
    assert SecretStore(store).get("a") == VALUE
