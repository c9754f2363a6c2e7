"""Finding a Python interpreter of a given version on this machine (for `python:` on local runs).

Looked for where people install them: `pythonX.Y` on PATH, pyenv's versions, uv's managed
Pythons, and the usual system folders. Every candidate is run once to confirm its version: a
pyenv shim on PATH answers for versions that are not active, and then fails.
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
def find_python(version: str) -> str | None:
    """The absolute path of a working `pythonX.Y` for version "X.Y", or None."""
    for path in _candidates(version):
        if _version_of(path) == version:
            return os.path.realpath(path)
    return None
