"""A run cannot read the controller: a probe run looks for a marker credential given to the daemon.

The probe greps every /proc/*/environ it can open and the whole state directory for the marker,
and tries to list the state and read the database. As the run user it finds nothing and is
refused; as the controller's own user (--no-run-user) it reads the state (where a run's env is
kept in clear), and the daemon said at start, and /healthz says, that runs are not isolated.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gitopsq.store import Store, listing
from gitopsq.web import dashboard
from tests.helpers import ROOT, GitRepo, task
from tests.test_daemon import free_port, wait_for

def _has_nobody() -> bool:
    try:
        return bool(pwd.getpwnam("nobody"))
    except KeyError:
        return False


ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 or not _has_nobody(),
                               reason="runs execute as another user (nobody) only under a root controller")

# The probe never holds the marker whole, in its environment or its script: it joins two halves.
PROBE = r"""
m="${MARK_A}${MARK_B}"
id -u
for f in /proc/[0-9]*/environ; do
  if grep -qaF -- "$m" "$f" 2>/dev/null; then echo "FOUND-ENVIRON $f"; fi
done
grep -rlaF -- "$m" "$STATE" 2>/dev/null | sed 's/^/FOUND-STATE /'
if cat "$STATE/gitopsq.db" >/dev/null 2>&1; then echo READ-DB; else echo NO-DB; fi
if ls "$STATE" >/dev/null 2>&1; then echo LIST-STATE; else echo NO-LIST; fi
echo PROBE-DONE
"""


@pytest.fixture
def world(tmp_path):
    """A state directory under a folder a run user may pass through; nodes left are destroyed."""
    base = Path(tempfile.mkdtemp(prefix="gitopsq-isolation-"))
    base.chmod(0o711)
    yield tmp_path, base
    from gitopsq.providers.local import LocalNodeDriver

    nodes = base / "state" / "gitopsq-nodes"
    if nodes.exists():
        driver = LocalNodeDriver(nodes, slots=2, gpus=0)
        for node in driver.list_nodes():
            driver.destroy_node(node, ex_timeout=1)
    shutil.rmtree(base, ignore_errors=True)


def probe_daemon(tmp_path: Path, base: Path, *extra: str) -> tuple[list[str], str, dict]:
    """Serve a repo whose probe run looks for the marker; (the probe's output, the daemon's log, /healthz)."""
    marker = f"marker-{uuid.uuid4().hex}"
    half = len(marker) // 2
    state = base / "state"
    repo = GitRepo(tmp_path / "repo")
    # Another team's run whose env holds the marker, and that never starts (it asks for a GPU): its
    # spec is in the state database, in clear, as every run's env is.
    repo.write("runs/other.yml", task("other", "true", env=f"{{OTHER_ENV: {marker}}}", resources="{gpu: 1}"))
    repo.write("runs/probe.yml", task("probe", "bash probe.sh",
                                      env=f"{{MARK_A: {marker[:half]}, MARK_B: {marker[half:]}, STATE: '{state}'}}",
                                      files="['probe.sh']"))
    repo.write("runs/probe.sh", PROBE)  # files are relative to the run file
    repo.commit()
    port = free_port()
    log = tmp_path / "daemon.log"
    env = {**os.environ, "GITOPSQ_PROVIDER_SECRET": marker, "AWS_SECRET_ACCESS_KEY": marker}
    proc = subprocess.Popen([sys.executable, "-m", "gitopsq", "serve", "--repo", str(repo.path), "--db",
                             str(state / "gitopsq.db"), "--http", f"127.0.0.1:{port}", "--local-gpus", "0", *extra],
                            env=env, cwd=ROOT, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        done = wait_for(lambda: probe_ended(state / "gitopsq.db"), timeout=60, what="the probe run to end")
        health = wait_for(lambda: _health(port), what="/healthz")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert done["log_path"], ({k: done[k] for k in ("status", "reason", "message")}, log.read_text())
    output = Path(done["log_path"]).read_text().splitlines()
    assert output[-1:] == ["PROBE-DONE"], (output, log.read_text())
    return output, log.read_text(), health


def probe_ended(db: Path):
    if not db.exists():
        return None
    store = Store(db)
    try:
        row = next((r for r in listing(store) if r["name"] == "probe"), None)
        return row if row and row["status"] in ("done", "failed") else None
    finally:
        store.close()


def _health(port: int):
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
    except httpx.HTTPError:
        time.sleep(0.1)
        return None


@ROOT_ONLY
def test_a_run_as_the_run_user_finds_no_credential_of_the_controller(world):
    tmp_path, base = world
    output, log, health = probe_daemon(tmp_path, base, "--run-user", "nobody")
    assert output[0] == str(pwd.getpwnam("nobody").pw_uid)
    assert [line for line in output if line.startswith("FOUND")] == []
    assert "NO-DB" in output and "NO-LIST" in output
    assert "not isolated" not in log
    assert health["runs_isolated"] is True and "nobody" in health["runs_isolation"]


@ROOT_ONLY
def test_a_run_as_the_controllers_user_reads_its_state_and_the_daemon_says_so(world):
    tmp_path, base = world
    output, log, health = probe_daemon(tmp_path, base, "--no-run-user")
    assert output[0] == "0"
    found = [line.split(" ", 1)[1] for line in output if line.startswith("FOUND-STATE")]
    assert any(path.startswith(str(base / "state" / "gitopsq.db")) for path in found), output
    assert "READ-DB" in output
    # Not in any environment even so: the daemon re-executed itself without its credentials.
    assert [line for line in output if line.startswith("FOUND-ENVIRON")] == []
    assert "WARNING gitopsq.daemon: runs are not isolated from the controller: --no-run-user" in log
    assert health["runs_isolated"] is False and health["runs_isolation"].startswith("--no-run-user")


def test_the_dashboard_says_when_runs_are_not_isolated(tmp_path):
    store = Store(tmp_path / "s.db")
    info = {"branch": "main", "runs_isolated": False, "runs_isolation": "the controller runs as alice, not root"}
    page = dashboard.render_index(store, info, time.time())
    assert 'data-isolated="false"' in page
    assert "runs are not isolated from the controller: the controller runs as alice, not root" in page
    page = dashboard.render_index(store, {**info, "runs_isolated": True, "runs_isolation": "as nobody"}, time.time())
    assert "not isolated" not in page
    store.close()
