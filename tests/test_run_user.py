"""Local process runs as an unprivileged run user: they cannot read the controller's state.

These need root (as CI has): a controller that is not root cannot switch users. The run user is
`nobody`, which every Linux machine has; the state lives under a folder it may pass through.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gitopsq.providers import runuser
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local import LocalError, LocalNodeDriver
from gitopsq.providers.pythons import default_python
from tests.helpers import ROOT
from tests.test_local_volumes import wait_ended


def _nobody():
    try:
        return runuser.lookup("nobody")
    except runuser.RunUserError:
        return None


NOBODY = _nobody()
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or NOBODY is None,
                                reason="switching to a run user needs root and a user named nobody")


@pytest.fixture
def base():
    """A folder the run user may pass through (pytest's own tmp folder is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="gitopsq-runuser-"))
    folder.chmod(0o711)
    yield folder
    for nodes in (folder / "state-nodes", folder / "state" / "gitopsq-nodes"):
        if nodes.exists():
            driver = LocalNodeDriver(nodes, slots=2, gpus=0)
            for node in driver.list_nodes():
                driver.destroy_node(node, ex_timeout=1)
    shutil.rmtree(folder, ignore_errors=True)


def driver_in(base: Path) -> LocalNodeDriver:
    return LocalNodeDriver(base / "state-nodes", slots=2, gpus=0, run_user=NOBODY)


def log_of(driver, node) -> str:
    return Path(driver.ex_log_path(node)).read_text()


def test_a_process_run_executes_as_the_run_user_with_a_home_and_a_workdir_of_its_own(base):
    key = base / "state.key"  # stands for the secrets key and the database beside the nodes' folder
    key.write_text("root only\n")
    key.chmod(0o600)
    driver = driver_in(base)
    script = ("id -u; echo \"home=$HOME user=$USER\"; pwd; echo made > out.txt; touch \"$HOME/h\"; echo v > data/v\n"
              "for p in \"$KEY\" \"$STATE\" \"$STATE/nodes\" \"$STATE/logs\"; do\n"
              "  if { { [ -d \"$p\" ] && ls \"$p\"; } || { [ -f \"$p\" ] && cat \"$p\"; }; } >/dev/null 2>&1; then\n"
              "    echo \"READ $p\"; else echo \"DENIED $p\"; fi\n"
              "done\n")
    node = driver.create_node("u", ex_script=script, ex_env={"KEY": str(key), "STATE": str(driver.state_dir)},
                              ex_volumes=((str(base / "volumes" / "data"), "data", False),))
    ended = wait_ended(driver, node)
    text = log_of(driver, node)
    assert ended.extra["exit_code"] == 0, text
    workdir = Path(ended.extra["workdir"])
    home = workdir.parent / "home"
    lines = text.splitlines()
    assert lines[:3] == [str(NOBODY.uid), f"home={home} user=nobody", str(workdir)]
    assert [line.split()[0] for line in lines[3:]] == ["DENIED"] * 4, text
    for path in (workdir / "out.txt", home / "h", base / "volumes" / "data" / "v"):
        assert path.stat().st_uid == NOBODY.uid, path
    # What the wrapper writes stays the controller's.
    assert Path(driver.ex_log_path(node)).stat().st_uid == 0
    assert (driver.nodes_dir / node.id / "exit_code").stat().st_uid == 0


def test_the_run_users_venv_and_pip_work(base):
    python = default_python(NOBODY)
    if python is None:
        pytest.skip("no python3 on this machine that nobody may run")
    driver = driver_in(base)
    node = driver.create_node("v", ex_script='python -c "import sys; print(sys.prefix)"\npip --version\n', ex_python=python)
    ended = wait_ended(driver, node, timeout=60)
    text = log_of(driver, node)
    assert ended.extra["exit_code"] == 0, text
    prefix, pip = text.splitlines()[-2:]
    assert prefix == str(Path(ended.extra["workdir"]) / ".venv")
    assert pip.startswith("pip ") and str(driver.pip_dir) in pip
    assert driver.pip_dir.stat().st_uid == NOBODY.uid


def test_a_link_in_the_tree_is_given_to_the_run_user_and_its_target_is_not(base):
    target = base / "root-file"
    target.write_text("root's\n")
    tree = base / "staged"
    tree.mkdir()
    (tree / "escape").symlink_to(target)
    driver = driver_in(base)
    node = driver.create_node("t", ex_script="echo x > escape || echo refused", ex_tree=str(tree))
    ended = wait_ended(driver, node)
    assert "refused" in log_of(driver, node)
    link = Path(ended.extra["workdir"]) / "escape"
    assert link.lstat().st_uid == NOBODY.uid
    assert target.stat().st_uid == 0 and target.read_text() == "root's\n"


def test_nothing_of_the_state_but_the_runs_own_folders_is_readable_by_the_run_user(base):
    driver = driver_in(base)
    node = driver.create_node("s", ex_script="echo hi", ex_env={"TOKEN": "value"})
    wait_ended(driver, node)
    driver.destroy_node(node)
    own = driver.workdirs_dir / node.id
    for path in [driver.state_dir, *driver.state_dir.rglob("*")]:
        if path == own or own in path.parents or path == driver.pip_dir:
            continue
        info = path.lstat()
        if path in (driver.state_dir, driver.workdirs_dir):
            assert stat.S_IMODE(info.st_mode) == 0o711, path  # passed through, never listed
        elif path.name == "node_python.py":
            assert runuser._allows(info, NOBODY, 4)  # the venv maker, readable on purpose
        else:
            assert not runuser._allows(info, NOBODY, 4), path


def test_a_state_the_run_user_cannot_reach_is_an_error_at_start(tmp_path):
    with pytest.raises(LocalError, match="the run user nobody cannot reach the runs' working directories") as caught:
        LocalNodeDriver(tmp_path / "nodes", slots=1, gpus=0, run_user=NOBODY)
    blocked = next(p for p in reversed([tmp_path, *tmp_path.parents]) if stat.S_IMODE(p.stat().st_mode) & 0o001 == 0)
    assert f"it may not pass through {blocked}" in str(caught.value)


def test_choosing_the_run_user():
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert runuser.choose("nobody", False).user == NOBODY
    assert runuser.choose(None, True) == runuser.Choice(None, f"--no-run-user: runs execute as the controller's user ({me})")
    assert runuser.choose(me, False) == runuser.Choice(None, f"--run-user {me} is the controller's own user")
    with pytest.raises(runuser.RunUserError, match="no such user"):
        runuser.choose("no-such-user-here", False)
    default = runuser.choose(None, False)
    try:
        pwd.getpwnam(runuser.DEFAULT_RUN_USER)
    except KeyError:
        assert default.user is None and f"{runuser.DEFAULT_RUN_USER} does not exist" in default.why_not
    else:
        assert default.user is not None and default.user.name == runuser.DEFAULT_RUN_USER


def test_serve_leaves_the_run_user_nothing_of_the_state_to_read(base, tmp_path):
    # A config repo fetched from a URL (its clone sits beside the database) and a run with files
    # (staged beside it too, then moved into the run's folder): the run user reads its own folder
    # and nothing else, whatever the umask gave the folders that git and the staging made.
    from tests.helpers import GitRepo, task

    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/a.yml", task("a", "cat x.txt", env="{A: in-the-database}", files="[x.txt]"))
    repo.write("runs/x.txt", "x\n")
    repo.commit()
    db = base / "state" / "gitopsq.db"
    served = subprocess.run([sys.executable, "-m", "gitopsq", "serve", "--once", "--repo", f"file://{repo.path}",
                             "--db", str(db), "--run-user", "nobody"],
                            capture_output=True, text=True, timeout=60, umask=0o022, cwd=ROOT)
    assert served.returncode == 0, served.stderr
    driver = LocalNodeDriver(log_dir_for(db), slots=1, gpus=0, run_user=NOBODY)
    (node,) = driver.list_nodes()
    assert wait_ended(driver, node).extra["exit_code"] == 0, log_of(driver, node)
    own = [driver.workdirs_dir / node.id, driver.pip_dir, driver.state_dir / "node_python.py"]
    readable = [p for p in db.parent.rglob("*") if runuser.blocked_at(p, NOBODY, last=4) is None]
    assert [p for p in readable if not any(p == o or o in p.parents for o in own)] == []
    assert (db.parent / "gitopsq-repos").exists()  # there was a clone to keep away from it


def test_a_driver_made_while_runs_go_never_closes_the_run_users_way(base):
    """Observed: a second driver over the same state (as `ps` or a restart makes) set the state
    folder to 0700 for a moment, and a run user copying pip into it then got Permission denied."""
    driver_in(base)
    nodes = base / "state-nodes"
    assert stat.S_IMODE(nodes.stat().st_mode) == 0o711
    seen = []
    real_chmod = os.chmod

    def watch(path, mode, *args, **kwargs):
        if Path(path) == nodes:
            seen.append(mode)
        return real_chmod(path, mode, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "chmod", watch)
        patch.setattr(Path, "chmod", lambda self, mode: watch(self, mode))
        driver_in(base)
    assert all(mode & 0o011 for mode in seen), [oct(m) for m in seen]
    assert stat.S_IMODE(nodes.stat().st_mode) == 0o711
