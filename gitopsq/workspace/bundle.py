"""One file holding a prepared tree, for a node that downloads its work from the controller.

A gzip'd tar with this layout (members never start with / or contain ..):

    work/<path>         the working directory
    abs/<path>          an entry whose dst is /<path>
    home/<path>         an entry whose dst is ~/<path> (the run's home)
    up/<n>/<path>       an entry whose dst is ../<path> with n leading '..' (from the working directory)

so the node side is `tar -xzf tree.tgz -C "$DIR"` and then, for what is present, copying
`abs/.` to /, `home/.` to $HOME and `up/<n>/.` to the working directory's n-th parent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from gitopsq.workspace.assemble import outside_dir
from gitopsq.workspace.gitproc import WorkspaceError, one_line
from gitopsq.workspace.tree import tar_program

LAYOUT = ("abs", "home", "up")


def archive(dest: Path, out: Path | None = None) -> Path:
    """Write the tree prepared in `dest` (and what was staged beside it) to `out`, by default
    `<dest>.tar.gz`; returns its path."""
    dest = Path(dest).absolute()
    out = Path(out).absolute() if out else dest.with_name(dest.name + ".tar.gz")
    tar, gnu = tar_program()
    if not gnu:
        raise WorkspaceError("making a tree archive needs GNU tar (for --transform)")
    command = [tar, "-czf", str(out), "--owner=0", "--group=0", "--numeric-owner", "--sort=name",
               # rename only member names ('./x' -> 'work/x'), never symlink targets
               "--transform", r"flags=r;s,^\.,work,", "-C", str(dest), "."]
    staged = outside_dir(dest)
    present = [name for name in LAYOUT if (staged / name).is_dir()]
    if present:
        command += ["-C", str(staged), *present]
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)
    if done.returncode != 0:
        raise WorkspaceError(f"cannot archive {dest}: {one_line(done.stderr.decode('utf-8', 'replace'))}")
    return out
