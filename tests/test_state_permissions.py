"""The state holds env values and report tokens: only its owner may read it, whatever the umask."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.store import Store
from tests.helpers import ROOT, GitRepo, task
from tests.test_local_driver import wait_stopped


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_creates_a_private_directory_and_database(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        store = Store(tmp_path / "state" / "gitopsq.db")
        store.set_meta("probe", "x")  # the WAL and its index exist while the store is open
        files = [tmp_path / "state" / name for name in ("gitopsq.db", "gitopsq.db-wal", "gitopsq.db-shm")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert mode(tmp_path / "state") == 0o700
        store.close()
    finally:
        os.umask(old)


def test_existing_database_is_made_private(tmp_path):
    chosen = tmp_path / "chosen"
    chosen.mkdir(mode=0o755)
    chosen.chmod(0o755)
    db = chosen / "gitopsq.db"
    Store(db).close()
    db.chmod(0o644)
    store = Store(db)
    assert mode(db) == 0o600
    assert mode(chosen) == 0o755  # a directory gitopsq did not create is left as it is
    store.close()


def test_state_is_private_after_serve_once(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/hello.yml", task("hello", "echo hello", env="{A: secret-value}"))
    repo.commit()
    state = tmp_path / "state"
    db = state / "gitopsq.db"
    served = subprocess.run(
        [sys.executable, "-m", "gitopsq", "serve", "--once", "--repo", str(repo.path), "--db", str(db)],
        capture_output=True, text=True, timeout=60, umask=0o022, cwd=ROOT,
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout.split() == ["submit", "hello"]
    driver = LocalNodeDriver(log_dir_for(db), slots=1, gpus=0)
    (node,) = driver.list_nodes()
    assert wait_stopped(driver, node.id).extra["exit_code"] == 0

    assert mode(state) == 0o700
    assert mode(db) == 0o600
    for name in ("gitopsq.db-wal", "gitopsq.db-shm"):
        if (state / name).exists():
            assert mode(state / name) == 0o600, name
    nodes = log_dir_for(db)
    workdir = Path(node.extra["workdir"])
    assert mode(workdir) == 0o700  # what the run writes in it (its venv, its outputs) is the run's own
    seen = {p.relative_to(nodes).as_posix(): mode(p) for p in [nodes, *nodes.rglob("*")] if workdir not in p.parents}
    expected = {path: 0o700 if (nodes / path).is_dir() else 0o600 for path in seen}
    assert seen == expected
    # What the checks above cover: the node's script, meta, exit code and log.
    names = {Path(p).name for p in seen}
    assert {"script.sh", "meta.json", "exit_code", f"{node.id}.log", "work"} <= names
