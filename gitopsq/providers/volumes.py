"""Instance volumes on this machine: a folder (instance_path) a run sees at its `path`.

A process run has no filesystem of its own, so its volumes are links in its working directory
(a relative `path` only); a container run gets bind mounts (`-v`), a relative `path` being under
its working directory /work. The folder outlives the run, so the attempts of a submission (and
later submissions) share it: a retry resumes from the checkpoints the last attempt left there.
As in dstack, a missing instance_path is created, unless the volume is `optional`: then the run
goes without it.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

CONTAINER_WORKDIR = "/work"  # where a container run's working directory is mounted


def process_path_problem(path: str) -> str | None:
    """Why `path` cannot be a link in a process run's working directory, or None."""
    if path.startswith(("/", "~")):
        return "is an absolute path"
    normal = posixpath.normpath(path)
    if normal == ".":
        return "is the working directory itself"
    if normal == ".." or normal.startswith("../"):
        return "leaves the working directory"
    return None


def container_path(path: str) -> str:
    """Where a volume is mounted in a container: a relative path is under its working directory."""
    return posixpath.normpath(posixpath.join(CONTAINER_WORKDIR, path))


def overlap(paths: list[str], nested: bool = True) -> tuple[int, int, str] | None:
    """(i, j, how) for the first volume j whose (normalised) path is also volume i's, or is inside
    it or contains it (when `nested` counts: a link inside a link would write into the other volume)."""
    for j, path in enumerate(paths):
        for i, earlier in enumerate(paths[:j]):
            if path == earlier:
                return i, j, "is also"
            if nested and path.startswith(earlier.rstrip("/") + "/"):
                return i, j, "is inside"
            if nested and earlier.startswith(path.rstrip("/") + "/"):
                return i, j, "contains"
    return None


def check(paths: list[str], container: bool) -> None:
    """Raises ValueError for a path a run cannot have a volume at (the adapter refuses these first)."""
    for path in paths:
        if container:
            problem = "is in the home of the image's user, which is not known here" if path.startswith("~") else None
        else:
            problem = process_path_problem(path)
        if problem:
            raise ValueError(f"volumes: {path!r} {problem}")


def prepare(volumes, owner=None) -> list[tuple[str, str]]:
    """(instance_path, path) of each volume the run gets: a missing instance_path is created (and
    given to `owner`, a run user, when there is one; one that exists is left as it is), or the
    volume is left out when it is optional. Raises OSError naming what could not be made."""
    mounts = []
    for instance_path, path, optional in volumes:
        if not os.path.lexists(instance_path):
            if optional:
                continue
            try:
                os.makedirs(instance_path, exist_ok=True)
                if owner is not None:
                    os.chown(instance_path, owner.uid, owner.gid)
            except OSError as exc:
                raise OSError(exc.errno, f"volumes: cannot create {instance_path}: {exc.strerror or exc}") from None
        mounts.append((instance_path, path))
    return mounts


def link(workdir: Path, mounts: list[tuple[str, str]]) -> None:
    """A process run's volumes: links in its working directory (paths passed `check`).

    The working directory may already hold the run's tree (its repos and files): a volume never
    replaces what is there, and no folder is made through a link the tree holds (it could point
    anywhere). Raises OSError naming the volume."""
    for instance_path, path in mounts:
        parts = posixpath.normpath(path).split("/")
        folder = workdir
        for part in parts[:-1]:
            folder = folder / part
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                raise OSError(f"volumes: {path!r}: {part!r} in the working tree is not a folder")
            folder.mkdir(exist_ok=True)
        target = folder / parts[-1]
        if os.path.lexists(target):
            raise OSError(f"volumes: {path!r} is already in the working tree (from repos or files); "
                          f"mount the volume at a path the tree does not have")
        target.symlink_to(instance_path, target_is_directory=os.path.isdir(instance_path))


def docker_args(mounts: list[tuple[str, str]]) -> list[str]:
    """A container run's volumes: bind mounts (paths passed `check`)."""
    args = []
    for instance_path, path in mounts:
        args += ["-v", f"{instance_path}:{container_path(path)}"]
    return args
