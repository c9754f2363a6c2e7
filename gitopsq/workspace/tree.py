"""Writing trees from git into a folder without a symlink ever taking a write out of it.

Every folder on the way to a write is opened from its parent with O_NOFOLLOW, so a symlink an
earlier entry left there (`x -> /etc`) stops a later write to `x/passwd` instead of redirecting
it. A repo's tree goes into a folder so opened and found empty, streamed by
`git archive | tar -x` with tar working in that very folder (passed to it as an open
descriptor); within one archive GNU tar and bsdtar refuse to write through a symlink the
archive itself made. Smaller copies (`files`) are written member by member from the same
stream, each through the same checks.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

from gitopsq.workspace.gitproc import CONFIG, GIT, WorkspaceError, one_line

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def shown(parts: list[str]) -> str:
    return "/".join(parts) or "."


def open_folder(root: Path, parts: list[str], what: str, create: bool = True) -> int:
    """A descriptor of root/parts, made where missing; refuses a symlink or file on the way."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            try:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(part, 0o755, dir_fd=fd)
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise WorkspaceError(f"{what}: {shown(parts[:index + 1])} is a symlink or a file, not a folder: "
                                         "nothing is written through it") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def is_empty(folder_fd: int) -> bool:
    with os.scandir(folder_fd) as entries:
        return next(entries, None) is None


def empty_folder(root: Path, parts: list[str], what: str) -> int | None:
    """A descriptor of root/parts made or found empty; None when something is already there."""
    if not parts:
        fd = open_folder(root, [], what)
    else:
        parent = open_folder(root, parts[:-1], what)
        try:
            try:
                os.mkdir(parts[-1], 0o755, dir_fd=parent)
            except FileExistsError:
                pass
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    return None  # a file or symlink is there
                raise
        finally:
            os.close(parent)
    if is_empty(fd):
        return fd
    os.close(fd)
    return None


@functools.cache
def tar_program() -> tuple[str, bool]:
    """(the tar to run, is it GNU tar); it must refuse to write through a symlink its archive made."""
    tar = shutil.which("tar")
    version = subprocess.run([tar, "--version"], capture_output=True, text=True).stdout if tar else ""
    if "GNU tar" not in version and "bsdtar" not in version:
        raise WorkspaceError("a working tree needs GNU tar or bsdtar on the controller's PATH")
    return tar, "GNU tar" in version


def extract(archive: list[str], env: dict[str, str], folder_fd: int) -> tuple[int, str, int, str]:
    """`git archive <archive> | tar -x` into an open folder; (git code, git stderr, tar code, tar stderr)."""
    tar_path = tar_program()[0]
    with tempfile.TemporaryFile() as git_err, tempfile.TemporaryFile() as tar_err:
        git = subprocess.Popen([GIT, *CONFIG, "archive", "--format=tar", *archive], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=git_err)
        try:
            tar = subprocess.Popen([tar_path, "-x", "--no-same-owner", "-f", "-", "-C", f"/dev/fd/{folder_fd}"],
                                   stdin=git.stdout, stdout=subprocess.DEVNULL, stderr=tar_err, pass_fds=(folder_fd,),
                                   cwd="/")
        finally:
            git.stdout.close()  # tar holds the pipe now; git gets SIGPIPE if tar dies
        tar_code, git_code = tar.wait(), git.wait()
        return git_code, _read(git_err), tar_code, _read(tar_err)


def _read(handle) -> str:
    handle.seek(0)
    return handle.read().decode("utf-8", "replace")


def write_members(archive: list[str], env: dict[str, str], root: Path, target: Callable[[list[str]], list[str]],
                  what: str) -> None:
    """Stream `git archive <archive>` and write each member at root/target(its parts), file by file."""
    with tempfile.TemporaryFile() as git_err:
        git = subprocess.Popen([GIT, *CONFIG, "archive", "--format=tar", *archive], env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=git_err)
        unreadable = None
        try:
            with tarfile.open(fileobj=git.stdout, mode="r|") as stream:
                for member in stream:
                    parts = [p for p in member.name.rstrip("/").split("/") if p not in ("", ".")]
                    if ".." in parts:
                        raise WorkspaceError(f"{what}: the archive names {member.name!r}")
                    _write(stream, member, root, target(parts), what)
        except tarfile.TarError as exc:
            unreadable = exc  # when git failed (no tar at all), its own reason is the one to give
        finally:
            git.stdout.close()
            code = git.wait()
        if code != 0:
            raise WorkspaceError(f"{what}: {one_line(_read(git_err))}")
        if unreadable is not None:
            raise WorkspaceError(f"{what}: cannot read git's archive ({unreadable})")


def _write(stream: tarfile.TarFile, member: tarfile.TarInfo, root: Path, parts: list[str], what: str) -> None:
    if member.isdir():
        os.close(open_folder(root, parts, what))
        return
    if not parts:
        raise WorkspaceError(f"{what}: a file cannot replace the working directory itself")
    if not (member.isfile() or member.issym()):
        return  # git archives hold only folders, files and symlinks
    parent = open_folder(root, parts[:-1], what)
    try:
        name = parts[-1]
        _make_room(parent, name, parts, what)
        if member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
            return
        fd = os.open(name, _FILE_FLAGS, 0o755 if member.mode & 0o100 else 0o644, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(stream.extractfile(member), out, 1 << 20)
    finally:
        os.close(parent)


def _make_room(parent: int, name: str, parts: list[str], what: str) -> None:
    """A file replaces a file or symlink (unlinking never follows it); never a folder."""
    try:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise WorkspaceError(f"{what}: {shown(parts)} is a folder; a file cannot replace it")
    os.unlink(name, dir_fd=parent)
