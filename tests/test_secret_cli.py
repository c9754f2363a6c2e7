"""`gitopsq secret set/list/rm` on a real state database, `logs` masking what each attempt was
given, and `secret set` waking a running controller (and nothing else) through the lock file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gitopsq.masking import CHUNK_BYTES
from gitopsq.secretkey import key_path_for
from gitopsq.secretstore import SecretStore
from gitopsq.spec import RunSpec
from gitopsq.store import Store, lock_path
from tests.helpers import ROOT, run_cli
from tests.webserver import add_run

VALUE = "hf_Zq8sXv2LmN4pR7tY1uW3"
NOW = 1_800_000_000.0


@pytest.fixture
def db(tmp_path):
    return tmp_path / "state" / "gitopsq.db"


def stored(db, name):
    store = Store(db)
    try:
        return SecretStore(store).get(name)
    finally:
        store.close()


def add_spec_run(store, name, env=(), present=True, registry_auth=None):
    spec = RunSpec(name=name, type="task", commands=("python train.py",), env=tuple(env), image="ghcr.io/x/y" if registry_auth else None,
                   registry_auth=registry_auth).to_dict()
    with store.transaction():
        store.upsert_run(name, f"runs/{name}.yml", None, spec, present, NOW)


def test_set_reads_stdin_without_its_trailing_newline(db):
    result = run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input=VALUE + "\n")
    assert result.exit_code == 0, result.output
    assert result.output == "Secret HF_TOKEN created.\n"
    assert VALUE not in result.output
    assert stored(db, "HF_TOKEN") == VALUE
    assert run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input="second\n\n").output == "Secret HF_TOKEN updated.\n"
    assert stored(db, "HF_TOKEN") == "second\n"  # one newline is the terminator, the other is the value's
    run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input="no-newline")
    assert stored(db, "HF_TOKEN") == "no-newline"
    run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input="crlf-ended\r\n")
    assert stored(db, "HF_TOKEN") == "crlf-ended"


def test_set_from_file_keeps_its_bytes(db, tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n")
    result = run_cli("secret", "set", "deploy_key", "--from-file", str(key), "--db", str(db))
    assert result.exit_code == 0, result.output
    assert stored(db, "deploy_key") == key.read_text()  # the trailing newline is part of the file
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00binary")
    refused = run_cli("secret", "set", "blob", "--from-file", str(binary), "--db", str(db))
    assert refused.exit_code == 1 and "is not UTF-8 text" in refused.output


def test_set_warns_about_values_too_short_to_mask(db):
    result = run_cli("secret", "set", "pin", "--db", str(db), input="123\n")
    assert result.exit_code == 0
    assert "warning: the value of pin is shorter than 4 characters: it will not be masked in logs" in result.output
    assert "warning" not in run_cli("secret", "set", "pin", "--db", str(db), input="1234\n").output


@pytest.mark.parametrize("args, input, exit_code, message", [
    (("secret", "set", ".bad"), VALUE, 2, "is not a secret name"),
    (("secret", "set", "a/b"), VALUE, 2, "is not a secret name"),
    (("secret", "set", "empty"), "\n", 1, "the value is empty"),
    (("secret", "set", "nul"), VALUE + "\0x", 1, "NUL byte"),
])
def test_set_refuses_bad_names_and_values_without_echoing_them(db, args, input, exit_code, message):
    result = run_cli(*args, "--db", str(db), input=input)
    assert result.exit_code == exit_code and message in result.output
    assert VALUE not in result.output


def test_list_shows_names_times_and_referencing_runs_never_values(db):
    from gitopsq.inputs import RegistryAuth

    run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input=VALUE)
    run_cli("secret", "set", "unused", "--db", str(db), input="unused-value")
    store = Store(db)
    add_spec_run(store, "train", env=[("HF_TOKEN", "${{ secrets.HF_TOKEN }}"), ("WANDB", "key-${{ secrets.wandb }}")])
    add_spec_run(store, "eval", env=[("TOKEN", "${{ secrets.HF_TOKEN }}")])
    add_spec_run(store, "private", registry_auth=RegistryAuth("bot", "${{ secrets.registry }}"))
    add_spec_run(store, "gone", env=[("X", "${{ secrets.old }}")], present=False)
    store.close()
    result = run_cli("secret", "list", "--json", "--db", str(db))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["name"], r["set"], r["runs"]) for r in rows] == [
        ("HF_TOKEN", True, ["eval", "train"]), ("registry", False, ["private"]), ("unused", True, []),
        ("wandb", False, ["train"])]
    assert rows[0]["created_at"] <= rows[0]["updated_at"] and rows[1]["created_at"] is None
    assert VALUE not in result.output and "unused-value" not in result.output
    table = run_cli("secret", "list", "--db", str(db), env={"COLUMNS": "120"})
    assert table.exit_code == 0
    lines = {line.split()[0]: line for line in table.output.splitlines()[1:] if line.strip()}
    assert set(lines) == {"HF_TOKEN", "registry", "unused", "wandb"}
    assert "eval, train" in lines["HF_TOKEN"] and "missing" in lines["wandb"] and "ago" in lines["unused"]
    assert VALUE not in table.output


def test_list_of_a_state_with_no_secrets_and_a_wrong_db(db, tmp_path):
    Store(db).close()
    assert run_cli("secret", "list", "--json", "--db", str(db)).output.strip() == "[]"
    assert "No secrets" in run_cli("secret", "list", "--db", str(db)).output
    typo = run_cli("secret", "list", "--db", str(tmp_path / "typo.db"))
    assert typo.exit_code == 1 and "no gitopsq state at" in typo.output


def test_rm_removes_and_an_unknown_name_is_an_error(db):
    run_cli("secret", "set", "HF_TOKEN", "--db", str(db), input=VALUE)
    store = Store(db)
    add_spec_run(store, "train", env=[("HF_TOKEN", "${{ secrets.HF_TOKEN }}")])
    store.close()
    result = run_cli("secret", "rm", "HF_TOKEN", "--db", str(db))
    assert result.exit_code == 0
    assert "Secret HF_TOKEN removed." in result.output and "still referenced by train" in result.output
    assert stored(db, "HF_TOKEN") is None
    unknown = run_cli("secret", "rm", "HF_TOKEN", "--db", str(db))
    assert unknown.exit_code == 1 and "no secret named 'HF_TOKEN'" in unknown.output


# --- logs ---------------------------------------------------------------------------------------

def test_logs_mask_every_value_any_attempt_was_given(db, tmp_path):
    first, second = tmp_path / "attempt1.log", tmp_path / "attempt2.log"
    # The first log is longer than a read chunk and a value straddles the chunk boundary.
    filler = "x" * (CHUNK_BYTES - 5)
    first.write_text(f"{filler}{VALUE}\nwandb=wandb-key-1\n")
    second.write_text(f"token {VALUE} then hf-second-value, wandb-key-1 and a pin 123\n")
    store = Store(db)
    sub = add_run(store, "train", NOW, status="running", log=str(first))
    secrets = SecretStore(store)
    secrets.set("HF_TOKEN", VALUE)
    secrets.set("wandb", "wandb-key-1")
    secrets.record_attempt(sub, 1, secrets.resolve(["HF_TOKEN", "wandb"])[0].values())
    secrets.set("HF_TOKEN", "hf-second-value")  # changed and removed since: the logs stay masked
    secrets.remove("wandb")
    secrets.record_attempt(sub, 2, ["hf-second-value", "123"])
    with store.transaction():
        store.event("train", sub, "running", {"log": str(second)}, None, NOW + 10)
    store.close()
    result = run_cli("logs", "train", "--db", str(db))
    assert result.exit_code == 0, result.output
    assert f"--- attempt 1 ({first})\n{filler}***\nwandb=***\n" in result.output
    assert f"--- attempt 2 ({second})\ntoken *** then ***, *** and a pin 123\n" in result.output
    assert VALUE not in result.output and "wandb-key-1" not in result.output


def test_logs_refuse_to_show_what_they_cannot_mask(db, tmp_path):
    log = tmp_path / "train.log"
    log.write_text(f"token {VALUE}\n")
    store = Store(db)
    sub = add_run(store, "train", NOW, status="running", log=str(log))
    SecretStore(store).record_attempt(sub, 1, [VALUE])
    store.close()
    key_path_for(db).unlink()
    result = run_cli("logs", "train", "--db", str(db))
    assert result.exit_code == 1
    assert "is missing" in result.output and "the log may hold secrets that cannot be masked" in result.output
    assert VALUE not in result.output and "token" not in result.output


# --- waking a running controller -------------------------------------------------------------------

def write_lock(db, pid, started_at):
    db.parent.mkdir(parents=True, exist_ok=True)
    lock_path(db).write_text(json.dumps({"pid": pid, "started_at": started_at}) + "\n")


def test_no_controller_or_a_dead_one_is_fine(db):
    assert "Woke" not in run_cli("secret", "set", "a", "--db", str(db), input=VALUE).output  # no lock file
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lock(db, gone.pid, time.time())
    result = run_cli("secret", "set", "a", "--db", str(db), input=VALUE)
    assert result.exit_code == 0 and "Woke" not in result.output


def test_a_stale_lock_naming_a_reused_pid_signals_nothing(db):
    # The lock says its controller took it an hour ago; this process began now: not that controller.
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        write_lock(db, bystander.pid, time.time() - 3600)
        result = run_cli("secret", "set", "a", "--db", str(db), input=VALUE)
        assert result.exit_code == 0 and "Woke" not in result.output
    finally:
        bystander.terminate()
    # SIGUSR1 (10) is delivered before SIGTERM (15): had it been sent, it would have ended the process.
    assert bystander.wait(5) == -signal.SIGTERM


def test_set_signals_the_controller_named_by_the_lock(db, tmp_path):
    woken = tmp_path / "woken"
    code = ("import signal, sys, time, pathlib\n"
            f"signal.signal(signal.SIGUSR1, lambda *a: pathlib.Path({str(woken)!r}).write_text('yes'))\n"
            "print('ready', flush=True)\n"
            "time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "ready\n"
        write_lock(db, holder.pid, time.time())
        result = run_cli("secret", "set", "a", "--db", str(db), input=VALUE)
        assert result.exit_code == 0
        assert f"Woke the controller (pid {holder.pid}): runs waiting for a are tried now." in result.output
        deadline = time.monotonic() + 10
        # the file exists before its text is written: wait for the text
        while not (woken.exists() and woken.read_text() == "yes") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert woken.read_text() == "yes"
    finally:
        holder.kill()
        holder.wait()


# --- a terminal -------------------------------------------------------------------------------------

def test_set_on_a_terminal_prompts_without_echo(db):
    import fcntl
    import pty
    import termios

    parent, child = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "gitopsq", "secret", "set", "HF_TOKEN", "--db", str(db)],
                            stdin=child, stdout=child, stderr=child, preexec_fn=controlling_terminal, cwd=ROOT)
    os.close(child)
    seen = b""
    try:
        while b"not echoed" not in seen:
            seen += os.read(parent, 1024)
        os.write(parent, VALUE.encode() + b"\n")
        assert proc.wait(30) == 0
        while True:
            try:
                chunk = os.read(parent, 1024)
            except OSError:  # EIO: the terminal's other end has closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(parent)
        if proc.poll() is None:
            proc.kill()
    assert b"Value of HF_TOKEN (not echoed): " in seen and b"Secret HF_TOKEN created." in seen
    assert VALUE.encode() not in seen
    assert stored(db, "HF_TOKEN") == VALUE
