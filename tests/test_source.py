"""Tests for gitopsq.source against real git repositories built in tmp_path."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gitopsq.source import Change, ConfigRepo, Entry, SourceError, is_remote_location




def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, check=True)
    return result.stdout.decode().strip()


def blob_sha(content: bytes) -> str:
    return subprocess.run(
        ["git", "hash-object", "--stdin"], input=content, capture_output=True, check=True
    ).stdout.decode().strip()


def commit(work: Path, files: dict[str, str | None], message: str = "change") -> str:
    """Write (str) or delete (None) files, commit everything, return the new sha."""
    for name, content in files.items():
        path = work / name
        if content is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    git(work, "add", "-A")
    git(work, "commit", "-q", "--allow-empty", "-m", message)
    return git(work, "rev-parse", "HEAD")


@pytest.fixture
def work(tmp_path) -> Path:
    path = tmp_path / "config"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


def cat_file_children() -> list[int]:
    """Pids of our child processes running `git cat-file` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"cat-file" in cmdline:
            pids.append(int(entry.name))
    return pids


# -- locations -------------------------------------------------------------------------------


def test_is_remote_location():
    assert is_remote_location("https://example.com/org/config.git")
    assert is_remote_location("ssh://git@example.com/config.git")
    assert is_remote_location("file:///srv/config.git")
    assert is_remote_location("git@example.com:org/config.git")
    assert not is_remote_location("/srv/config")
    assert not is_remote_location("./config.git")
    assert not is_remote_location("relative/dir")
    assert not is_remote_location("/tmp/odd@name:dir")


def test_not_a_repository_names_the_location(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SourceError, match=str(plain)):
        ConfigRepo(str(plain))
    with pytest.raises(SourceError, match="nowhere"):
        ConfigRepo(str(tmp_path / "nowhere"))


def test_invalid_branch_is_refused(work):
    commit(work, {"a.yml": "a"})
    with pytest.raises(SourceError, match="invalid branch"):
        ConfigRepo(str(work), branch="bad..name")
    with pytest.raises(SourceError):
        ConfigRepo(str(work), branch="--upload-pack=x")


def test_local_repo_tip_resolve_and_fetch_noop(work):
    with ConfigRepo(str(work)) as repo:
        assert not repo.is_remote
        assert repo.git_dir == (work / ".git").resolve()
        assert repo.tip() is None  # no commit yet: the branch does not exist
        first = commit(work, {"a.yml": "a"})
        repo.fetch()  # no-op for a local repository
        assert repo.tip() == first
        assert repo.resolve("main") == first
        assert repo.resolve(first[:10]) == first
        assert repo.resolve("HEAD") == first
        assert repo.resolve("no-such-branch") is None
        assert repo.resolve("0" * 40) is None
        assert repo.resolve("--output=/tmp/x") is None
        assert repo.has_commit(first)
        assert not repo.has_commit("1" * 40)


def test_other_branch_and_bare_repo(tmp_path, work):
    first = commit(work, {"a.yml": "a"})
    git(work, "branch", "prod")
    second = commit(work, {"b.yml": "b"})
    assert ConfigRepo(str(work), branch="prod").tip() == first
    bare = tmp_path / "bare.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    with ConfigRepo(str(bare)) as repo:  # a bare path is used in place, not cloned
        assert not repo.is_remote
        assert repo.git_dir == bare.resolve()
        assert repo.tip() == second


def test_linked_worktree_git_dir_is_the_common_dir(tmp_path, work):
    commit(work, {"a.yml": "a"})
    linked = tmp_path / "linked"
    git(work, "worktree", "add", "-q", "-b", "other", str(linked))
    with ConfigRepo(str(linked), branch="other") as repo:
        # branch refs live in the common dir, which is what a watcher must watch
        assert repo.git_dir == (work / ".git").resolve()
        assert repo.tip() == git(work, "rev-parse", "main")


# -- trees -------------------------------------------------------------------------------------


def test_list_files(work):
    (work / "runs" / "team-a" / "deep").mkdir(parents=True)
    (work / "runs" / "team-a" / "deep" / "train.yml").write_text("name: train\n")
    (work / "runs" / "eval run é ✓.yml").write_text("name: eval\n")
    (work / "runs" / "line\nbreak.yml").write_text("name: odd\n")
    (work / "run.sh").write_text("#!/bin/sh\n")
    (work / "run.sh").chmod(0o755)
    os.symlink("runs/team-a/deep/train.yml", work / "link.yml")
    git(work, "add", "-A")
    # a submodule entry (gitlink) is listed, so that a caller can refuse it (it has no size)
    git(work, "update-index", "--add", "--cacheinfo", f"160000,{'a' * 40},vendor/sub")
    git(work, "commit", "-q", "-m", "tree")
    head = git(work, "rev-parse", "HEAD")

    with ConfigRepo(str(work)) as repo:
        files = repo.list_files(head)

    assert sorted(files) == sorted([
        "link.yml",
        "run.sh",
        "runs/eval run é ✓.yml",
        "runs/line\nbreak.yml",
        "runs/team-a/deep/train.yml",
        "vendor/sub",
    ])
    assert files["vendor/sub"] == Entry("vendor/sub", "a" * 40, "160000")
    assert files["runs/team-a/deep/train.yml"] == Entry(
        "runs/team-a/deep/train.yml", blob_sha(b"name: train\n"), "100644", size=len(b"name: train\n")
    )
    assert files["runs/eval run é ✓.yml"].blob == blob_sha(b"name: eval\n")
    assert files["runs/line\nbreak.yml"].blob == blob_sha(b"name: odd\n")
    assert files["run.sh"].mode == "100755"
    # the symlink is kept (callers reject it); its blob is the link target
    assert files["link.yml"] == Entry("link.yml", blob_sha(b"runs/team-a/deep/train.yml"), "120000", size=26)


def test_list_files_of_missing_commit_raises(work):
    commit(work, {"a.yml": "a"})
    with ConfigRepo(str(work)) as repo:
        with pytest.raises(SourceError, match="ls-tree"):
            repo.list_files("1" * 40)
        with pytest.raises(SourceError, match="invalid ref"):
            repo.list_files("--output=/tmp/x")


# -- diffs ---------------------------------------------------------------------------------------


def test_changed_add_modify_delete_move(work):
    base = commit(work, {"keep.yml": "k", "edit.yml": "v1", "gone.yml": "g", "old/dir/m.yml": "m"})
    head = commit(
        work,
        {
            "edit.yml": "v2",
            "gone.yml": None,
            "new file ✓.yml": "n",
            "old/dir/m.yml": None,
            "moved/m.yml": "m",
        },
    )
    with ConfigRepo(str(work)) as repo:
        changes = repo.changed(base, head)
        assert repo.changed(head, head) == []

    assert changes == [
        Change("edit.yml", blob_sha(b"v1"), blob_sha(b"v2"), "100644"),
        Change("gone.yml", blob_sha(b"g"), None, None),
        Change("moved/m.yml", None, blob_sha(b"m"), "100644"),  # a move: an add ...
        Change("new file ✓.yml", None, blob_sha(b"n"), "100644"),
        Change("old/dir/m.yml", blob_sha(b"m"), None, None),  # ... plus a delete
    ]


def test_changed_mode_only_and_type_change(work):
    base = commit(work, {"a.sh": "x", "b.yml": "target"})
    (work / "a.sh").chmod(0o755)
    (work / "b.yml").unlink()
    os.symlink("target", work / "b.yml")
    head = commit(work, {})
    with ConfigRepo(str(work)) as repo:
        assert repo.changed(base, head) == [
            Change("a.sh", blob_sha(b"x"), blob_sha(b"x"), "100755"),
            Change("b.yml", blob_sha(b"target"), blob_sha(b"target"), "120000"),
        ]


def test_changed_without_base_returns_none(work):
    head = commit(work, {"a.yml": "a"})
    with ConfigRepo(str(work)) as repo:
        assert repo.changed(None, head) is None


def test_changed_with_vanished_base_returns_none(work):
    base = commit(work, {"a.yml": "a"})
    lost = commit(work, {"b.yml": "b"})
    with ConfigRepo(str(work)) as repo:
        # start the long-lived cat-file process before gc: it must not make `lost` look alive
        assert repo.read_blobs([blob_sha(b"b")]) == {blob_sha(b"b"): b"b"}
        assert repo.changed(base, lost) == [Change("b.yml", None, blob_sha(b"b"), "100644")]

        git(work, "reset", "-q", "--hard", base)  # force the branch back: `lost` is unreachable
        git(work, "update-ref", "-d", "ORIG_HEAD")
        git(work, "reflog", "expire", "--expire=now", "--all")
        git(work, "gc", "-q", "--prune=now")
        head = commit(work, {"c.yml": "c"})

        assert not repo.has_commit(lost)
        assert repo.resolve(lost) is None
        assert repo.changed(lost, head) is None  # caller falls back to the full tree
        assert set(repo.list_files(head)) == {"a.yml", "c.yml"}
        with pytest.raises(SourceError):  # a missing head is a real error
            repo.changed(base, lost)


def test_changed_with_merge_commit_as_head(work):
    root = commit(work, {"a.yml": "a"})
    git(work, "checkout", "-q", "-b", "feature")
    feature = commit(work, {"feature.yml": "f"})
    git(work, "checkout", "-q", "main")
    main_before = commit(work, {"main.yml": "m", "a.yml": "a2"})
    git(work, "merge", "-q", "--no-edit", "feature")
    merge = git(work, "rev-parse", "HEAD")
    assert len(git(work, "rev-list", "--parents", "-n1", merge).split()) == 3

    with ConfigRepo(str(work)) as repo:
        assert repo.changed(main_before, merge) == [Change("feature.yml", None, blob_sha(b"f"), "100644")]
        assert repo.changed(feature, merge) == [
            Change("a.yml", blob_sha(b"a"), blob_sha(b"a2"), "100644"),
            Change("main.yml", None, blob_sha(b"m"), "100644"),
        ]
        assert {c.path for c in repo.changed(root, merge)} == {"a.yml", "feature.yml", "main.yml"}
        # replaying the merge diffs it against its first parent only
        assert repo.changed_many([merge]) == [repo.changed(main_before, merge)]


def test_changed_many_equals_changed_per_commit(work):
    shas = [
        commit(work, {"a.yml": "1", "dir/b.yml": "1"}, "root"),
        commit(work, {"a.yml": "2"}, "modify"),
        commit(work, {}, "empty"),
        commit(work, {"dir/b.yml": None, "c d ✓.yml": "x"}, "delete and add"),
        commit(work, {"c d ✓.yml": None, "moved/c.yml": "x"}, "move"),
    ]
    with ConfigRepo(str(work)) as repo:
        replay = repo.changed_many(shas)
        per_commit = [repo.changed(parent, sha) for parent, sha in zip(shas, shas[1:])]
        # short names and refs are accepted too
        assert repo.changed_many(["main", shas[1][:12]]) == [per_commit[-1], per_commit[0]]
        assert repo.changed_many([]) == []
        with pytest.raises(SourceError, match="no commit '1111"):
            repo.changed_many([shas[1], "1" * 40])

    assert len(replay) == len(shas)
    # a root commit has no parent: all its files are added
    assert replay[0] == [
        Change("a.yml", None, blob_sha(b"1"), "100644"),
        Change("dir/b.yml", None, blob_sha(b"1"), "100644"),
    ]
    assert replay[1:] == per_commit
    assert replay[2] == []  # the empty commit keeps its slot
    assert replay[4] == [
        Change("c d ✓.yml", blob_sha(b"x"), None, None),
        Change("moved/c.yml", None, blob_sha(b"x"), "100644"),
    ]


# -- blobs -------------------------------------------------------------------------------------


def test_read_blobs_uses_one_long_lived_process(work):
    files = {f"runs/run-{i:03}.yml": f"name: run-{i}\n" for i in range(300)}
    head = commit(work, files)
    with ConfigRepo(str(work)) as repo:
        entries = repo.list_files(head)
        first_half = [e.blob for e in list(entries.values())[:150]]
        second_half = [e.blob for e in list(entries.values())[150:]]

        contents = repo.read_blobs(first_half)
        batch = repo.repo.git.cat_file_all
        pids = cat_file_children()
        assert pids == [batch.proc.pid]  # exactly one cat-file process for 150 blobs

        contents.update(repo.read_blobs(second_half + first_half[:5]))
        assert repo.repo.git.cat_file_all is batch  # the same process is reused
        assert cat_file_children() == pids

        assert len(contents) == 300
        for path, text in files.items():
            assert contents[entries[path].blob] == text.encode()

        with pytest.raises(SourceError, match="no object"):
            repo.read_blobs(["1" * 40])
        # a missing object does not desynchronise the process
        assert repo.read_blobs([entries["runs/run-007.yml"].blob]) == {
            entries["runs/run-007.yml"].blob: b"name: run-7\n"
        }
        with pytest.raises(SourceError, match="not a blob"):
            repo.read_blobs([head])
    # close() stops the long-lived process
    assert cat_file_children() == []


def test_read_blobs_recovers_when_the_process_dies(work):
    commit(work, {"a.yml": "a"})
    with ConfigRepo(str(work)) as repo:
        sha = blob_sha(b"a")
        assert repo.read_blobs([sha]) == {sha: b"a"}
        repo.repo.git.cat_file_all.proc.kill()
        repo.repo.git.cat_file_all.proc.wait()
        assert repo.read_blobs([sha]) == {sha: b"a"}


def test_blob_sizes_without_reading(work):
    head = commit(work, {"a.yml": "12345", "empty.yml": ""})
    with ConfigRepo(str(work)) as repo:
        files = repo.list_files(head)
        assert (files["a.yml"].size, files["empty.yml"].size) == (5, 0)
        assert repo.blob_sizes([files["a.yml"].blob, files["empty.yml"].blob]) == {files["a.yml"].blob: 5, files["empty.yml"].blob: 0}
        assert repo.entry(head, "a.yml") == files["a.yml"] and repo.entry(head, "missing.yml") is None
        repo.repo.git.cat_file_header.proc.kill()  # a dead process is replaced
        repo.repo.git.cat_file_header.proc.wait()
        assert repo.blob_sizes([files["a.yml"].blob]) == {files["a.yml"].blob: 5}
        with pytest.raises(SourceError, match="no object"):
            repo.blob_sizes(["1" * 40])
        with pytest.raises(SourceError, match="not a blob"):
            repo.blob_sizes([head])


def test_many_blob_sizes_in_one_run(work):
    files = {f"r{i:02}.yml": "x" * i for i in range(60)}
    head = commit(work, files)
    with ConfigRepo(str(work)) as repo:
        entries = repo.list_files(head)
        assert repo.blob_sizes(e.blob for e in entries.values()) == {e.blob: e.size for e in entries.values()}
        with pytest.raises(SourceError, match="not a blob"):
            repo.blob_sizes([e.blob for e in entries.values()] + ["1" * 40])


def test_read_file(work):
    (work / "runs").mkdir()
    os.symlink("../x.yml", work / "runs" / "link.yml")
    head = commit(work, {"runs/train ✓.yml": "name: t\n", "runs/line\nbreak.yml": "odd"})
    with ConfigRepo(str(work)) as repo:
        assert repo.read_file(head, "runs/train ✓.yml") == b"name: t\n"
        assert repo.read_file(head, "runs/line\nbreak.yml") == b"odd"
        assert repo.read_file(head, "runs/link.yml") == b"../x.yml"
        assert repo.read_file(head, "runs/missing.yml") is None
        assert repo.read_file(head, "runs") is None  # a directory is not a file
        assert repo.read_file("1" * 40, "runs/train ✓.yml") is None


# -- remote locations ------------------------------------------------------------------------


@pytest.fixture
def upstream(tmp_path, work) -> Path:
    """A bare repository the work tree pushes to."""
    bare = tmp_path / "upstream.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(bare, "config", "receive.denyDeleteCurrent", "ignore")  # tests delete the branch
    git(work, "remote", "add", "origin", str(bare))
    return bare


def test_remote_clone_fetch_and_force_push(tmp_path, work, upstream):
    first = commit(work, {"runs/a.yml": "a"})
    git(work, "push", "-q", "origin", "main")
    state = tmp_path / "state"
    url = f"file://{upstream}"

    with ConfigRepo(url, state_dir=state) as repo:
        assert repo.is_remote
        clones = list((state / "repos").iterdir())
        assert len(clones) == 1 and len(clones[0].name) == 16
        assert repo.git_dir == clones[0].resolve()
        assert repo.tip() == first
        assert repo.read_file(first, "runs/a.yml") == b"a"

        second = commit(work, {"runs/b.yml": "b"})
        git(work, "push", "-q", "origin", "main")
        assert repo.tip() == first  # nothing moves until fetch()
        repo.fetch()
        assert repo.tip() == second
        assert repo.changed(first, second) == [Change("runs/b.yml", None, blob_sha(b"b"), "100644")]

        # rewrite history and force-push: the fetch is a forced update
        git(work, "reset", "-q", "--hard", first)
        rewritten = commit(work, {"runs/c.yml": "c"}, "rewritten")
        git(work, "push", "-q", "--force", "origin", "main")
        repo.fetch()
        assert repo.tip() == rewritten
        # the old tip may linger in the clone until gc; either way the diff is usable or None
        assert repo.changed(second, rewritten) in (
            None,
            [
                Change("runs/b.yml", blob_sha(b"b"), None, None),
                Change("runs/c.yml", None, blob_sha(b"c"), "100644"),
            ],
        )
        assert set(repo.list_files(repo.tip())) == {"runs/a.yml", "runs/c.yml"}

    # the same URL reuses the clone instead of cloning again
    with ConfigRepo(url, state_dir=state) as again:
        assert again.git_dir == repo.git_dir
        assert again.tip() == rewritten
    assert len(list((state / "repos").iterdir())) == 1


def test_remote_branch_appears_later_and_disappears(tmp_path, work, upstream):
    url = f"file://{upstream}"
    with ConfigRepo(url, state_dir=tmp_path / "state") as repo:
        assert repo.tip() is None  # empty upstream: no branch yet, and no error
        first = commit(work, {"a.yml": "a"})
        git(work, "push", "-q", "origin", "main")
        repo.fetch()
        assert repo.tip() == first
        git(work, "push", "-q", "origin", "--delete", "main")
        repo.fetch()
        assert repo.tip() is None  # level-triggered: the branch is gone


def test_remote_flag_with_plain_path(tmp_path, work, upstream):
    first = commit(work, {"a.yml": "a"})
    git(work, "push", "-q", "origin", "main")
    with ConfigRepo(str(upstream), state_dir=tmp_path / "state", remote=True) as repo:
        assert repo.is_remote
        assert repo.git_dir != upstream.resolve()  # cloned, not used in place
        assert repo.tip() == first


def test_remote_errors_name_the_location(tmp_path):
    with pytest.raises(SourceError, match="state_dir"):
        ConfigRepo("https://example.invalid/config.git")
    missing = f"file://{tmp_path}/missing.git"
    with pytest.raises(SourceError, match="fetch of file://.*missing.git failed: fatal:"):
        ConfigRepo(missing, state_dir=tmp_path / "state")
    # credentials in a URL never reach the message
    with pytest.raises(SourceError) as info:
        ConfigRepo("https://user:s3cret@127.0.0.1:9/config.git", state_dir=tmp_path / "state")
    assert "s3cret" not in str(info.value)
    assert "127.0.0.1:9" in str(info.value)


def test_tip_follows_loose_and_packed_refs(tmp_path):
    import subprocess

    work = tmp_path / "w"
    work.mkdir()
    run = lambda *a: subprocess.run(["git", *a], cwd=work, check=True, capture_output=True, text=True).stdout.strip()
    run("init", "-q", "-b", "main")
    with ConfigRepo(str(work)) as repo:
        assert repo.tip() is None  # no branch yet
        (work / "a.yml").write_text("a\n")
        run("add", "-A"); run("commit", "-q", "-m", "one")
        assert repo.tip() == run("rev-parse", "HEAD")
        run("pack-refs", "--all")  # the loose ref is gone, only packed-refs holds it
        assert not (work / ".git" / "refs" / "heads" / "main").exists()
        assert repo.tip() == run("rev-parse", "HEAD")
        run("commit", "-q", "--allow-empty", "-m", "two")
        assert repo.tip() == run("rev-parse", "HEAD")


def test_a_hung_fetch_ends_when_cancelled_and_leaves_no_git_behind(tmp_path, work, upstream):
    import threading

    from tests.gitserver import DumbGitServer, processes_mentioning

    first = commit(work, {"runs/a.yml": "a"})
    git(work, "push", "-q", "origin", "main")
    server = DumbGitServer(upstream)
    try:
        with ConfigRepo(server.url, state_dir=tmp_path / "state") as repo:
            assert repo.tip() == first
            server.hang()  # the server still accepts connections, and never answers
            outcome = []

            def fetch():
                try:
                    repo.fetch()
                    outcome.append("returned")
                except SourceError as exc:
                    outcome.append(str(exc))

            thread = threading.Thread(target=fetch, daemon=True)
            thread.start()
            assert server.held.wait(20), "git never reached the server"
            repo.cancel_fetch()
            thread.join(10)
            assert not thread.is_alive(), "the fetch went on after cancel_fetch()"
            assert outcome == [f"fetch of {server.url} cancelled"]
            assert processes_mentioning(server.url) == []
            with pytest.raises(SourceError, match="cancelled"):
                repo.fetch()  # cancelled for good: the controller is stopping
            assert repo.tip() == first
    finally:
        server.close()


def test_a_file_turned_into_a_submodule_entry_is_a_change_not_a_deletion(work):
    base = commit(work, {"runs/a.yml": "a"})
    git(work, "rm", "-q", "--cached", "runs/a.yml")
    git(work, "update-index", "--add", "--cacheinfo", f"160000,{'b' * 40},runs/a.yml")
    git(work, "commit", "-q", "-m", "a gitlink where a file was")
    head = git(work, "rev-parse", "HEAD")
    with ConfigRepo(str(work)) as repo:
        assert repo.changed(base, head) == [Change("runs/a.yml", blob_sha(b"a"), "b" * 40, "160000")]
        assert repo.changed_many([head]) == [repo.changed(base, head)]
        assert repo.list_files(head)["runs/a.yml"].mode == "160000"
        assert repo.read_file(head, "runs/a.yml") is None


def test_names_that_are_not_utf8_are_escaped_and_flagged(work):
    (work / "runs").mkdir()
    for raw in (b"runs/caf\xe9.yml", b"runs/back\\slash.yml", b"runs/ok \xc3\xa9.yml"):
        with open(bytes(work) + b"/" + raw, "wb") as handle:
            handle.write(raw)
    base = commit(work, {})
    os.unlink(bytes(work) + b"/runs/caf\xe9.yml")
    head = commit(work, {})
    with ConfigRepo(str(work)) as repo:
        files = repo.list_files(base)
        assert sorted((e.path, e.utf8_name) for e in files.values()) == [
            ("runs/back\\\\slash.yml", True),  # a backslash is doubled, so no real name equals an escaped one
            ("runs/caf\\351.yml", False),
            ("runs/ok é.yml", True),
        ]
        assert repo.changed(base, head) == [Change("runs/caf\\351.yml", blob_sha(b"runs/caf\xe9.yml"), None, None, False)]
        assert repo.changed_many([head]) == [repo.changed(base, head)]
