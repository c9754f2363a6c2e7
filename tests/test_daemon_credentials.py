"""The daemon's credentials: from files or the environment, and never left in its environment block.

A run of the same user can read /proc/<pid>/environ of the controller; what a process was started
with stays there for its whole life, whatever it later removes from os.environ.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from gitopsq.store import Store
from tests.helpers import ROOT, GitRepo, run_cli
from tests.moto_ec2 import MotoEC2Server
from tests.test_daemon import wait_for

PUBLIC_URL = "http://127.0.0.1:8765"
CREDENTIAL_VARS = ("GITOPSQ_PROVIDER_KEY", "GITOPSQ_PROVIDER_SECRET", "GITOPSQ_PROVIDER_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
                   "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@pytest.fixture
def server():
    with MotoEC2Server() as srv:
        yield srv


@pytest.fixture
def repo(tmp_path):
    repo = GitRepo(tmp_path / "config")
    repo.write("runs/job.yml", "type: task\ncommands: ['echo hi']\nresources: {cpu: 2, memory: 8GB}\n")
    repo.commit()
    return repo


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    return {**env, **extra}


def ec2_args(server: MotoEC2Server) -> list[str]:
    return ["--provider", "ec2", "--provider-opt", "region=us-east-1", "--provider-opt", f"endpoint={server.endpoint}",
            "--public-url", PUBLIC_URL]


def environ_of(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return f.read()


def job_running(db: Path) -> bool:
    if not db.exists():
        return False
    store = Store(db)
    try:
        sub = store.current_submission("job")
        return sub is not None and sub["status"] == "running"
    finally:
        store.close()


def test_the_daemon_keeps_no_credential_in_its_environment_and_the_provider_still_gets_them(tmp_path, server, repo):
    marker = uuid.uuid4().hex
    key, secret, other = f"AKIDMARKER{marker[:10]}", f"marker-secret-{marker}", f"marker-db-{marker}"
    token = f"marker-token-{marker}"
    db = tmp_path / "state" / "gitopsq.db"
    log = tmp_path / "daemon.log"
    env = clean_env(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_SESSION_TOKEN=token, DB_PASSWORD=other)
    proc = subprocess.Popen([sys.executable, "-m", "gitopsq", "serve", "--repo", str(repo.path), "--db", str(db),
                             "--http", "off", *ec2_args(server)],
                            env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: job_running(db), what="the job running on EC2")
        seen = environ_of(proc.pid)  # the same process: it re-executed itself, it did not fork
    finally:
        proc.terminate()
        assert proc.wait(10) == 0, log.read_text()
    assert server.access_keys[key] >= 1, "the provider signed its calls with the key from the environment"
    assert set(server.session_tokens) == {token}, "and sent the session token that came with it"
    assert marker.encode() not in seen
    names = {entry.split(b"=", 1)[0].decode() for entry in seen.split(b"\0") if entry}
    assert not names & {*CREDENTIAL_VARS, "DB_PASSWORD"}
    text = log.read_text()
    assert "DB_PASSWORD" in text and marker not in text  # said by name, never by value


def test_credentials_from_files(tmp_path, server, repo, monkeypatch):
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    key_file, secret_file = tmp_path / "key", tmp_path / "secret"
    key_file.write_text("AKIDFROMFILE\n")
    secret_file.write_text("secret-from-file\n")
    result = run_cli("serve", "--once", "--repo", str(repo.path), "--db", str(tmp_path / "s.db"), *ec2_args(server),
                     "--provider-key-file", str(key_file), "--provider-secret-file", str(secret_file))
    assert result.exit_code == 0, result.output
    assert result.output == "submit job\n"
    assert set(server.access_keys) == {"AKIDFROMFILE"}


def test_a_session_token_from_a_file(tmp_path, server, repo, monkeypatch):
    for name in CREDENTIAL_VARS:
        monkeypatch.delenv(name, raising=False)
    files = {"key": "ASIAFROMFILE\n", "secret": "secret-from-file\n", "token": "session-token-from-file\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = run_cli("serve", "--once", "--repo", str(repo.path), "--db", str(tmp_path / "s.db"), *ec2_args(server),
                     "--provider-key-file", str(tmp_path / "key"), "--provider-secret-file", str(tmp_path / "secret"),
                     "--provider-session-token-file", str(tmp_path / "token"))
    assert result.exit_code == 0, result.output
    assert set(server.access_keys) == {"ASIAFROMFILE"}
    assert server.session_tokens == {"session-token-from-file": sum(server.calls.values())}


def test_a_credentials_file_wins_over_the_environment(tmp_path, server, repo, monkeypatch):
    monkeypatch.setenv("GITOPSQ_PROVIDER_KEY", "AKIDFROMENV")
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", "secret-from-env")
    key_file = tmp_path / "key"
    key_file.write_text("AKIDFROMFILE")
    result = run_cli("serve", "--once", "--repo", str(repo.path), "--db", str(tmp_path / "s.db"), *ec2_args(server),
                     "--provider-key-file", str(key_file))
    assert result.exit_code == 0, result.output
    assert set(server.access_keys) == {"AKIDFROMFILE"}


def test_an_empty_credentials_file_is_an_error(tmp_path, repo):
    empty = tmp_path / "secret"
    empty.write_text("\n")
    result = run_cli("serve", "--once", "--repo", str(repo.path), "--db", str(tmp_path / "s.db"),
                     "--provider-secret-file", str(empty))
    assert result.exit_code == 2
    assert f"{empty} is empty" in result.output
