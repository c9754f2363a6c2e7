"""No file in a config repo can stop or mislead the controller's git sync.

Commits are built with git plumbing (`git mktree`, `git commit-tree`, `git update-ref`), not the
file system, so any byte name is possible: names that are not UTF-8, with newlines, quotes,
backslashes, very long; symlinks, submodule entries (gitlinks), executable files, folders named
*.yml, huge and empty blobs, a broken .gitopsq.yml. Each commit also edits an unrelated valid run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from gitopsq.yamlload import MAX_FILE_BYTES
from tests.helpers import ROOT, GitRepo, task


def git(repo: GitRepo, *args: str, input: bytes | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=repo.path, input=input, capture_output=True, check=True).stdout
    return out.decode().strip()


def big_blob(repo: GitRepo, size: int) -> str:
    """A blob of `size` bytes that starts like a run file, streamed into git (never held here)."""
    head = b"type: task\ncommands: [echo]\n"
    proc = subprocess.Popen(["git", "hash-object", "-w", "--stdin"], cwd=repo.path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(head)
    chunk = b"#" * (1 << 20)
    left = size - len(head)
    while left > 0:
        proc.stdin.write(chunk[:left])
        left -= len(chunk)
    out, _ = proc.communicate()
    assert proc.returncode == 0
    return out.decode().strip()


SYNC_AND_MEASURE = textwrap.dedent("""
    import json, resource, subprocess, sys
    from gitopsq.controller import Controller
    from gitopsq.source import ConfigRepo
    from gitopsq.store import Store
    from tests.fakes import Clock, FakeProvider

    repo_path, state, commits = sys.argv[1], sys.argv[2], sys.argv[3:]
    problems = []
    with ConfigRepo(repo_path) as source:
        controller = Controller(Store(state + "/a.db"), FakeProvider(), source, clock=Clock())
        for commit in commits:  # the first sync lists the tree; the next ones read one diff each
            subprocess.run(["git", "update-ref", "refs/heads/main", commit], cwd=repo_path, check=True)
            controller.sync_git()
            problems.append(controller.store.file_problems())
        fresh = Controller(Store(state + "/b.db"), FakeProvider(), source, clock=Clock())
        fresh.sync_git()  # a first sync of the last commit: the whole tree listed at once
        problems.append(fresh.store.file_problems())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mib": peak_kib / 1024, "problems": problems}))
""")


def test_a_huge_blob_is_refused_by_its_size_without_being_read(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/a.yml", task("a"))
    first = repo.commit("a run")
    size = 300 * 1024 * 1024
    blob = big_blob(repo, size)
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},runs/big.yml")
    git(repo, "commit", "-q", "-m", "a 300 MB run file")
    with_run = repo.head()
    git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},.gitopsq.yml")
    git(repo, "commit", "-q", "-m", "a 300 MB config")
    with_config = repo.head()
    done = subprocess.run([sys.executable, "-c", SYNC_AND_MEASURE, str(repo.path), str(tmp_path), first, with_run, with_config],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    too_big = f"file is {size // 1024} KiB; run files are limited to {MAX_FILE_BYTES // 1024} KiB"
    after_run, after_config, fresh = ({(p["file"], p["message"]) for p in ps} for ps in result["problems"][1:])
    assert after_run == {("runs/big.yml", too_big)}
    assert {("runs/big.yml", too_big), (".gitopsq.yml", too_big)} <= after_config
    assert {("runs/big.yml", too_big), (".gitopsq.yml", too_big)} - fresh == {("runs/big.yml", too_big)}, \
        "without a valid config ever, the run files are not read at all"
    # Reading the blob costs more than 300 MB (363 MB measured); the interpreter and gitopsq about 60.
    assert result["peak_mib"] < 150, result["peak_mib"]
