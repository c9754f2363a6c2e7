"""A local node's own Python: makes a venv in the run's working directory, then becomes the run.

Run by the node (so its time is the run's, not the controller's step) as `PYTHON -I
node_python.py VENV PIP_CACHE COMMAND...`, where PYTHON is the interpreter the run asked for
(or the machine's python3): it creates VENV from that interpreter, gives it pip, and then
execs COMMAND in its place (same process, so the node wrapper still waits on the run). Like
node_wrapper.py it imports nothing but the standard library, and it runs on every Python a run
may ask for (3.9 and later).

Why it is fast: `python -m venv` spends about 3 s of its 3.1 s in ensurepip, which installs pip
into the new venv with pip itself. Instead the venv is made without pip (`uv venv` when uv is on
PATH, about 10 ms; else the standard library's venv in this process, about 20 ms: with this
interpreter already started either way, both put the run's first command about 50 ms later than
without a venv), and pip comes from a copy of the interpreter's own pip made once per interpreter
under PIP_CACHE (about 0.2 s, by the first run that needs it), which a .pth file in the venv's
site-packages puts on sys.path, plus `pip` scripts in the venv's bin. The copy
holds pip alone, so nothing else installed in the interpreter leaks into the run; its own folder
is outside the venv, so a `pip install -U pip` in the run installs the new pip into the venv
(which comes first on sys.path) and leaves the copy alone, as pip never uninstalls outside the
environment it runs in. An interpreter without pip gets the copy from ensurepip's bundled wheel;
one without either gets a venv without pip, and the log says so.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import uuid
import zipfile

PTH_NAME = "_gitopsq_pip.pth"

# Runs anywhere below bin/ as pip, pip3 and pipX.Y: /bin/sh finds the venv's python beside the
# script, so no shebang length limit and no absolute path to go stale.
PIP_SCRIPT = """#!/bin/sh
'''exec' "$(dirname -- "$0")/python" "$0" "$@"
' '''
import sys
from pip._internal.cli.main import main
sys.exit(main())
"""


def say(text: str) -> None:
    sys.stdout.write("gitopsq: %s\n" % text)
    sys.stdout.flush()


def make_venv(venv: str) -> None:
    uv = shutil.which("uv")
    if uv:
        done = subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, venv],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode == 0:
            return
        say("uv venv failed (%s); making the venv with python -m venv" % done.stdout.decode(errors="replace").strip())
        shutil.rmtree(venv, ignore_errors=True)
    import venv as stdlib_venv

    stdlib_venv.EnvBuilder(symlinks=True, with_pip=False).create(venv)


def site_packages(venv: str) -> str:
    """The venv's purelib folder, as its own interpreter computes it."""
    return sysconfig.get_path("purelib", scheme="venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix",
                              vars={"base": venv, "platbase": venv})


def pip_source() -> tuple[str, list[str]] | tuple[None, None]:
    """This interpreter's pip: (its site-packages folder, [pip, pip-X.dist-info]), or (None, None)."""
    import importlib.util

    spec = importlib.util.find_spec("pip")
    if spec is None or not spec.origin:
        return None, None
    package = os.path.dirname(spec.origin)
    folder = os.path.dirname(package)
    infos = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "pip-*.dist-info")))
    return folder, ["pip"] + infos[-1:]


def bundled_wheel() -> str | None:
    """ensurepip's pip wheel, for an interpreter that has no pip installed."""
    try:
        import ensurepip
    except ImportError:
        return None
    found = sorted(glob.glob(os.path.join(os.path.dirname(ensurepip.__file__), "_bundled", "pip-*.whl")))
    return found[-1] if found else None


def pip_copy(cache: str) -> str | None:
    """A folder holding only pip for this interpreter, made once and shared by every run's venv."""
    folder, names = pip_source()
    wheel = None if folder else bundled_wheel()
    if folder is None and wheel is None:
        return None
    if folder:
        stamps = [str(os.stat(os.path.join(folder, name)).st_mtime_ns) for name in names]
        origin = "|".join([os.path.realpath(folder)] + names + stamps)
    else:
        origin = os.path.realpath(wheel)
    key = hashlib.sha256(("%s|%s" % (sys.version, origin)).encode()).hexdigest()[:16]
    target = os.path.join(cache, "%d.%d-%s" % (sys.version_info[:2] + (key,)))
    if os.path.isdir(target):
        return target
    os.makedirs(cache, mode=0o700, exist_ok=True)
    tmp = os.path.join(cache, ".tmp-" + uuid.uuid4().hex)
    try:
        if folder:
            os.mkdir(tmp)
            for name in names:
                shutil.copytree(os.path.join(folder, name), os.path.join(tmp, name))  # with __pycache__: no compiling
        else:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(tmp)
        make_private(tmp)  # it lives in the controller's state, where everything is the owner's alone
        os.rename(tmp, target)  # atomic: a run racing us uses whichever copy landed first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(target):
            raise
    return target


def make_private(top: str) -> None:
    for folder, _, files in os.walk(top):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)


def add_pip(venv: str, cache: str) -> None:
    copy = pip_copy(cache)
    if copy is None:
        say("Python %d.%d at %s has no pip and no ensurepip: the run's venv has no pip"
            % (sys.version_info[:2] + (sys.executable,)))
        return
    site = site_packages(venv)
    os.makedirs(site, exist_ok=True)
    with open(os.path.join(site, PTH_NAME), "w") as f:
        f.write(copy + "\n")
    bin_dir = os.path.join(venv, "bin")
    for name in ("pip", "pip3", "pip%d.%d" % sys.version_info[:2]):
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(PIP_SCRIPT)
        os.chmod(path, 0o755)


def main(argv: list[str]) -> int:
    venv, cache, *command = argv
    try:
        make_venv(venv)
        add_pip(venv, cache)
    except Exception as exc:  # the run cannot start: say why in its log
        say("could not make the run's Python environment in %s: %s" % (venv, exc))
        return 1
    # Python ignores these; exec keeps ignored signals, and the run gets a shell's defaults.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        say("cannot run %s: %s" % (command[0], exc))
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
