"""A local process run gets a Python of its own: a venv in its working directory, of the version it
asks for (or of the machine's python3), so `pip install` in its commands stays in the run."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from gitopsq.controller import Controller
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local_adapter import make_local_provider
from gitopsq.providers.pythons import default_python, find_python
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.helpers import GitRepo


@pytest.fixture(autouse=True)
def no_leftover_processes(cleanup_nodes):
    yield


def make(tmp_path, slots=2):
    repo = GitRepo(tmp_path / "repo")
    store = Store(tmp_path / "state" / "gitopsq.db")
    provider = make_local_provider(log_dir_for(store.path), store.controller_id, slots=slots, gpus=0)
    return repo, store, Controller(store, provider, ConfigRepo(str(repo.path)))


def finish(store, controller, names, timeout=60.0):
    deadline = time.monotonic() + timeout
    while any(store.current_submission(n) is None or store.current_submission(n)["status"] not in ("done", "failed")
              for n in names):
        assert time.monotonic() < deadline, "the runs did not end in time"
        controller.step()
        time.sleep(0.05)
    return {n: store.current_submission(n) for n in names}


def task(name, commands, extra=""):
    return f"type: task\nname: {name}\ncommands:\n" + "".join(f"  - {c!r}\n" for c in commands) + extra


def wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal pure-Python wheel, built by hand (no network, no build backend needed)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: gitopsq-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
              f"{len(text.encode())}" for path, text in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def can_import(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def test_two_runs_pip_install_two_versions_of_a_package_without_conflict(tmp_path):
    """Observed: a run's `pip install` wrote into whatever Python was first on PATH."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel(wheels, "gqprobe", "1.0")
    wheel(wheels, "gqprobe", "2.0")
    show = "python -c 'import gqprobe, sys; print(gqprobe.__version__, gqprobe.__file__, sys.prefix)'"
    install = f"--no-index --find-links {wheels} --disable-pip-version-check --quiet"
    sync = tmp_path / "sync"
    sync.mkdir()
    repo, store, controller = make(tmp_path, slots=2)
    # Both hold until both have installed, so each imports while the other's version is installed.
    repo.write("runs/one.yml", task("one", [f"pip install {install} gqprobe==1.0", f"touch {sync}/one",
                                            f"while [ ! -e {sync}/two ]; do sleep 0.05; done", show]))
    repo.write("runs/two.yml", task("two", [f"python -m pip install {install} gqprobe==2.0", f"touch {sync}/two",
                                            f"while [ ! -e {sync}/one ]; do sleep 0.05; done", show]))
    repo.commit("two runs, two versions")
    subs = finish(store, controller, ["one", "two"])
    logs = {name: Path(sub["log_path"]).read_text() for name, sub in subs.items()}
    assert [logs[name].split()[:1] for name in ("one", "two")] == [["1.0"], ["2.0"]], logs
    # Neither the controller's Python nor the machine's python3 has it.
    assert not can_import(sys.executable, "gqprobe")
    assert not can_import(shutil.which("python3"), "gqprobe")
    for name, sub in subs.items():
        assert sub["status"] == "done", logs[name]
        _, module, prefix = logs[name].split()
        assert Path(prefix) == Path(sub["workdir"]) / ".venv"  # the run's own, in its working directory
        assert Path(module).is_relative_to(prefix)


def test_a_run_gets_a_venv_of_the_python_it_asks_for(tmp_path):
    if find_python("3.12") is None:
        pytest.skip("this machine has no Python 3.12")
    repo, store, controller = make(tmp_path, slots=1)
    repo.write("runs/py.yml", task("py", ["python --version", "pip --version", "python -m pip --version",
                                          'echo "$VIRTUAL_ENV" "$(command -v python)"'], "python: '3.12'\n"))
    repo.commit()
    sub = finish(store, controller, ["py"])["py"]
    lines = Path(sub["log_path"]).read_text().splitlines()
    assert sub["status"] == "done", lines
    venv = Path(sub["workdir"]) / ".venv"
    assert lines[0].startswith("Python 3.12.")
    assert lines[1].startswith("pip ") and lines[1].endswith("(python 3.12)")
    assert lines[2] == lines[1]
    assert lines[3] == f"{venv} {venv}/bin/python"


def test_a_run_without_python_gets_a_venv_of_the_machines_python3(tmp_path):
    repo, store, controller = make(tmp_path, slots=1)
    repo.write("runs/py.yml", task("py", ["python3 -c 'import sys; print(sys.prefix != sys.base_prefix, sys.base_prefix)'"]))
    repo.commit()
    sub = finish(store, controller, ["py"])["py"]
    log = Path(sub["log_path"]).read_text()
    machine = subprocess.run(["python3", "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True)
    assert log.split() == ["True", machine.stdout.strip()]


def test_the_run_gets_the_signal_defaults_a_shell_gives(tmp_path):
    """The venv is made by a Python process that then becomes the run: Python ignores SIGPIPE."""
    repo, store, controller = make(tmp_path, slots=1)
    repo.write("runs/sig.yml", task("sig", ["grep SigIgn /proc/$$/status", "yes | head -n 1"]))
    repo.commit()
    sub = finish(store, controller, ["sig"])["sig"]
    lines = Path(sub["log_path"]).read_text().splitlines()
    assert lines[1:] == ["y"], "yes ends quietly on SIGPIPE, not with a write error"
    ignored = int(lines[0].split()[1], 16)
    for sig in (13, 25):  # SIGPIPE, SIGXFSZ
        assert not ignored & (1 << (sig - 1))


def test_uv_makes_the_venv_when_it_is_on_path(tmp_path, monkeypatch):
    # A stand-in uv that records its arguments and makes the venv as `uv venv` would (no pip).
    fake = tmp_path / "fakebin"
    fake.mkdir()
    record = tmp_path / "uv-args"
    (fake / "uv").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n'
                             'for last; do :; done\nexec "$4" -m venv --without-pip "$last"\n')
    (fake / "uv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    repo, store, controller = make(tmp_path, slots=1)
    repo.write("runs/uv.yml", task("uv", ["python -m pip --version"]))
    repo.commit()
    sub = finish(store, controller, ["uv"])["uv"]
    assert sub["status"] == "done", Path(sub["log_path"]).read_text()
    venv = Path(sub["workdir"]) / ".venv"
    assert record.read_text().split() == ["venv", "--quiet", "--python", default_python(), str(venv)]
    assert Path(sub["log_path"]).read_text().startswith("pip ")
