"""Finding a Python interpreter of a given version on this machine (for `python:` on local runs).

Looked for where people install them: `pythonX.Y` on PATH, pyenv's versions, uv's managed
Pythons, and the usual system folders. Every candidate is run once to confirm its version: a
pyenv shim on PATH answers for versions that are not active, and then fails. A run without
`python` gets the machine's default python3 (`default_python`).
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
from pathlib import Path


def _candidates(version: str) -> list[str]:
    exe = f"python{version}"
    found = [shutil.which(exe)]
    pyenv = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    uv = os.environ.get("UV_PYTHON_INSTALL_DIR") or str(Path.home() / ".local" / "share" / "uv" / "python")
    # Newest patch release first (sorted by the patch number, not as text: 3.12.10 after 3.12.9).
    for pattern in (f"{pyenv}/versions/{version}.*/bin/{exe}", f"{uv}/cpython-{version}.*/bin/{exe}"):
        found += sorted(glob.glob(pattern), key=_patch_number, reverse=True)
    found += [f"/usr/local/bin/{exe}", f"/usr/bin/{exe}"]
    seen, out = set(), []
    for path in found:
        if path and path not in seen and os.access(path, os.X_OK):
            seen.add(path)
            out.append(path)
    return out


def _patch_number(path: str) -> int:
    folder = Path(path).parent.parent.name  # 3.12.1 or cpython-3.12.1-linux-x86_64-gnu
    parts = folder.removeprefix("cpython-").split("-")[0].split(".")
    return int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else -1


def _version_of(path: str) -> str | None:
    try:
        out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def find_python(version: str, user=None) -> str | None:
    """The absolute path of a working `pythonX.Y` for version "X.Y", or None.

    user: a run user (runuser.RunUser) that must be able to run it: an interpreter under a folder
    it may not enter (root's pyenv in /root) is passed over."""
    for path in _candidates(version):
        if _version_of(path) == version and _usable(os.path.realpath(path), user):
            return os.path.realpath(path)
    return None


def _usable(path: str, user) -> bool:
    from gitopsq.providers.runuser import blocked_at

    return user is None or blocked_at(path, user) is None


# Where the interpreter behind `python3` is installed: a venv's python3 (the controller's own, when
# it runs from one) and a pyenv shim both answer with the installation they stand for.
_BASE = "import sys; print(sys.base_prefix); print('%d.%d' % sys.version_info[:2]); print(sys.executable)"


@functools.cache
def default_python(user=None) -> str | None:
    """The machine's default python3: the installation behind `python3` on PATH, never a venv
    (runs get venvs of it, and must not see the packages of the controller's own venv).

    user: a run user that must be able to run it; when it cannot run that one, the system's
    python3 (/usr/local/bin, /usr/bin) it can run, else None."""
    found = _base_python(shutil.which("python3"))
    if user is None or _usable_or_none(found, user):
        return found
    for folder in ("/usr/local/bin", "/usr/bin"):
        candidate = _base_python(os.path.join(folder, "python3"))
        if _usable_or_none(candidate, user):
            return candidate
    return None


def _usable_or_none(path: str | None, user) -> bool:
    return path is not None and _usable(path, user)


def _base_python(found: str | None) -> str | None:
    """The installation behind the python3 at `found` (a venv's, a shim's)."""
    if found is None or not os.access(found, os.X_OK):
        return None
    try:
        out = subprocess.run([found, "-I", "-c", _BASE], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split("\n")
    if out.returncode != 0 or len(lines) < 3:
        return None
    base, version, executable = lines[:3]
    installed = os.path.join(base, "bin", f"python{version}")
    return os.path.realpath(installed if os.access(installed, os.X_OK) else executable)
