"""API tokens on a real state database: created once and shown once, stored hashed, listed without
the token, revoked at once; `gitopsq token` wraps them; the admin token `serve` writes is private."""

from __future__ import annotations

import json
import stat

import pytest

from gitopsq import tokens
from gitopsq.store import Store
from tests.helpers import run_cli


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "state" / "gitopsq.db")
    yield store
    store.close()


def test_a_token_is_stored_as_its_hash_only(store):
    token = tokens.create(store, "ci", now=100.0)
    assert token.startswith("gq_") and len(token) >= 40
    dump = "\n".join(store.conn.iterdump())
    assert token not in dump and tokens.digest(token) in dump
    found = tokens.verify(store, token, now=200.0)
    assert found == tokens.Token("ci", False, 100.0, 200.0) and found.access == "write"
    assert tokens.create(store, "other") != token


@pytest.mark.parametrize("presented", ["", "gq_", "gq_wrong", "Bearer gq_x", "x" * 5000, "gq_\udcff"])
def test_strings_that_are_not_a_token_verify_to_none(store, presented):
    tokens.create(store, "ci")
    assert tokens.verify(store, presented) is None


def test_last_used_is_recorded_without_a_write_per_request(store):
    token = tokens.create(store, "ci", now=100.0)
    assert tokens.listing(store)[0].last_used_at is None
    tokens.verify(store, token, now=1000.0)
    tokens.verify(store, token, now=1000.0 + tokens.LAST_USED_RESOLUTION - 1)
    assert tokens.listing(store)[0].last_used_at == 1000.0
    tokens.verify(store, token, now=1000.0 + tokens.LAST_USED_RESOLUTION)
    assert tokens.listing(store)[0].last_used_at == 1000.0 + tokens.LAST_USED_RESOLUTION


def test_names_are_checked_and_unique(store):
    tokens.create(store, "ci")
    with pytest.raises(tokens.TokenError, match="exists already"):
        tokens.create(store, "ci", read_only=True)
    for bad in ("", "-x", "a b", "a/b", "x" * 65):
        with pytest.raises(tokens.TokenError, match="is not a token name"):
            tokens.create(store, bad)


def test_revoke_takes_effect_at_once(store):
    token = tokens.create(store, "ci")
    assert tokens.revoke(store, "ci") is True
    assert tokens.verify(store, token) is None
    assert tokens.revoke(store, "ci") is False


def test_admin_token_is_written_0600_once(store, monkeypatch):
    monkeypatch.setattr("os.umask", lambda mask: 0)  # whatever the umask: the file is private
    path = tokens.ensure_admin_token(store, now=5.0)
    assert path == store.path.with_name("gitopsq.admin-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert tokens.verify(store, token).name == "admin" and not tokens.verify(store, token).read_only
    assert tokens.ensure_admin_token(store) is None  # a token exists: nothing new
    assert path.read_text().strip() == token
    assert [p.name for p in path.parent.iterdir() if "admin-token" in p.name] == ["gitopsq.admin-token"]


def test_no_admin_token_when_another_exists(store):
    tokens.create(store, "ci", read_only=True)
    assert tokens.ensure_admin_token(store) is None
    assert not tokens.admin_token_path(store.path).exists()


def test_cli_create_list_revoke(tmp_path):
    db = str(tmp_path / "state" / "gitopsq.db")
    created = run_cli("token", "create", "dash", "--read-only", "--db", db)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("gq_") and "created (read-only)" in created.stderr and token not in created.stderr
    assert run_cli("token", "create", "ci", "--db", db).exit_code == 0

    listed = run_cli("token", "list", "--json", "--db", db)
    rows = json.loads(listed.output)
    assert [(r["name"], r["access"], r["read_only"], r["last_used_at"]) for r in rows] == [
        ("dash", "read-only", True, None), ("ci", "write", False, None)]
    assert token not in listed.output
    table = run_cli("token", "list", "--db", db).output
    assert "dash" in table and "read-only" in table and "never" in table and token not in table

    again = run_cli("token", "create", "dash", "--db", db)
    assert again.exit_code == 1 and "exists already" in again.output
    assert run_cli("token", "revoke", "dash", "--db", db).output == "Token dash revoked.\n"
    gone = run_cli("token", "revoke", "dash", "--db", db)
    assert gone.exit_code == 1 and "no token named 'dash'" in gone.output
    store = Store(db)
    try:
        assert tokens.verify(store, token) is None
    finally:
        store.close()
