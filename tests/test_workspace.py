"""A run's working tree from git (gitopsq.workspace): real repos, real git, real HTTP servers."""

from __future__ import annotations

import os
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from gitopsq.inputs import FileSpec, RepoSpec
from gitopsq.source import ConfigRepo
from gitopsq.spec import RunSpec, parse_run
from gitopsq.workspace import WorkspaceError, archive, credential_key, outside_dir, prepare, repo_id
from tests.gitserver import DumbGitServer, SmartGitServer, processes_mentioning
from tests.helpers import GitRepo, bare_upstream, task

NO_CREDENTIALS = lambda key: None  # noqa: E731


def spec_of(repos=(), files=()) -> RunSpec:
    return RunSpec(name="t", type="task", commands=("true",), repos=tuple(repos), files=tuple(files))


def tree(root: Path) -> dict[str, str]:
    """Every file and symlink under root: path -> content (or '-> target')."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            found[rel] = path.read_text()
    return found


@pytest.fixture
def config(tmp_path):
    return GitRepo(tmp_path / "config")


@pytest.fixture
def run_prepare(tmp_path):
    """prepare() into a fresh folder each call, with one cache for the test."""
    count = iter(range(1000))

    def go(spec, commit, repo, credentials=NO_CREDENTIALS, **kwargs):
        dest = tmp_path / f"work-{next(count)}"
        return prepare(spec, commit, repo, dest, credentials=credentials, cache_dir=tmp_path / "cache", **kwargs)

    return go


# --- the config repo at the submission's commit --------------------------------------------------


def test_a_run_gets_its_own_commits_code_after_a_later_commit_changed_it(config, run_prepare):
    config.write("train.py", "print('v1')\n")
    config.write("scripts/run.sh", "#!/bin/sh\necho hi\n")
    (config.path / "scripts/run.sh").chmod(0o755)
    os.symlink("scripts/run.sh", config.path / "run")
    first = config.commit("v1")
    config.write("train.py", "print('v2')\n")
    config.write("new.txt", "later\n")
    second = config.commit("v2")
    spec = spec_of([RepoSpec(local_path="")])
    with ConfigRepo(str(config.path)) as repo:
        old = run_prepare(spec, first, repo)
        new = run_prepare(spec, second, repo)
    assert tree(old.dest) == {"run": "-> scripts/run.sh", "scripts/run.sh": "#!/bin/sh\necho hi\n",
                              "train.py": "print('v1')\n"}
    assert (new.dest / "train.py").read_text() == "print('v2')\n" and (new.dest / "new.txt").exists()
    assert os.access(old.dest / "scripts/run.sh", os.X_OK)
    assert not (old.dest / ".git").exists()  # no history
    assert old.env["GITOPSQ_COMMIT"] == first and new.env["GITOPSQ_COMMIT"] == second
    assert old.commit == first and old.checkouts[0].commit == first


def test_a_short_commit_name_is_resolved_and_a_missing_commit_is_an_error(config, run_prepare):
    config.write("a.txt", "a")
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        assert run_prepare(spec_of([RepoSpec(local_path="")]), commit[:10], repo).commit == commit
        with pytest.raises(WorkspaceError, match="commit '0{40}' is not in the config repository"):
            run_prepare(spec_of([RepoSpec(local_path="")]), "0" * 40, repo)
        with pytest.raises(WorkspaceError, match="commit '--output=x' is not in the config repository"):
            run_prepare(spec_of([RepoSpec(local_path="")]), "--output=x", repo)


def test_a_folder_local_path_puts_only_that_folder_at_its_path(config, run_prepare):
    config.write("src/model.py", "m")
    config.write("src/pkg/__init__.py", "")
    config.write("other.txt", "not wanted")
    commit = config.commit()
    spec = spec_of([RepoSpec(local_path="src", path="code")])
    with ConfigRepo(str(config.path)) as repo:
        prepared = run_prepare(spec, commit, repo)
    assert tree(prepared.dest) == {"code/model.py": "m", "code/pkg/__init__.py": ""}


def test_dotdot_from_a_run_file_in_a_subfolder_is_the_whole_repo(config, run_prepare):
    config.write("train.py", "print('train')\n")
    config.write("data/labels.csv", "a,b\n")
    config.write("runs/train.yml", task("train", repos="['..']", files="['../data/labels.csv:inputs/labels.csv']"))
    commit = config.commit()
    spec = parse_run((config.path / "runs/train.yml").read_bytes(), "runs/train.yml")
    with ConfigRepo(str(config.path)) as repo:
        prepared = run_prepare(spec, commit, repo)
    assert (prepared.dest / "train.py").read_text() == "print('train')\n"
    assert (prepared.dest / "runs/train.yml").exists()
    assert (prepared.dest / "inputs/labels.csv").read_text() == "a,b\n"


def test_export_attributes_do_not_change_the_tree(config, run_prepare):
    """`git archive` honours export-ignore and export-subst; a checkout does not, nor may we."""
    config.write(".gitattributes", "secret.cfg export-ignore\nversion.txt export-subst\n")
    config.write("secret.cfg", "kept\n")
    config.write("version.txt", "$Format:%H$\n")
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        prepared = run_prepare(spec_of([RepoSpec(local_path="")]), commit, repo)
    assert (prepared.dest / "secret.cfg").read_text() == "kept\n"
    assert (prepared.dest / "version.txt").read_text() == "$Format:%H$\n"


def test_a_missing_or_wrong_kind_of_path_is_an_error_naming_the_entry(config, run_prepare):
    config.write("file.txt", "x")
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        with pytest.raises(WorkspaceError, match=r"^repos\[0\] gone: no such folder at commit"):
            run_prepare(spec_of([RepoSpec(local_path="gone")]), commit, repo)
        with pytest.raises(WorkspaceError, match=r"^repos\[0\] file.txt: is a file, not a folder"):
            run_prepare(spec_of([RepoSpec(local_path="file.txt")]), commit, repo)
        with pytest.raises(WorkspaceError, match=r"^files\[0\] nothing.txt: no such file or folder"):
            run_prepare(spec_of(files=[FileSpec("nothing.txt", "nothing.txt")]), commit, repo)


def test_if_exists_error_fails_and_skip_keeps_what_is_there(config, run_prepare):
    config.write("a/x.txt", "from a")
    config.write("b/x.txt", "from b")
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        with pytest.raises(WorkspaceError, match=r"repos\[1\] b: code is not empty"):
            run_prepare(spec_of([RepoSpec(local_path="a", path="code"), RepoSpec(local_path="b", path="code")]),
                        commit, repo)
        prepared = run_prepare(spec_of([RepoSpec(local_path="a", path="code"),
                                        RepoSpec(local_path="b", path="code", if_exists="skip")]), commit, repo)
    assert (prepared.dest / "code/x.txt").read_text() == "from a"
    assert [c.placed for c in prepared.checkouts] == [True, False]


def test_files_copy_a_file_or_a_folder_over_the_tree(config, run_prepare):
    config.write("train.py", "code")
    config.write("configs/base.yaml", "base")
    config.write("configs/nested/deep.yaml", "deep")
    config.write("tool.sh", "#!/bin/sh\n")
    (config.path / "tool.sh").chmod(0o755)
    commit = config.commit()
    spec = spec_of([RepoSpec(local_path="")],
                   [FileSpec("configs", "conf"), FileSpec("tool.sh", "bin/tool"), FileSpec("configs/base.yaml", "train.py")])
    with ConfigRepo(str(config.path)) as repo:
        prepared = run_prepare(spec, commit, repo)
    assert (prepared.dest / "conf/nested/deep.yaml").read_text() == "deep"
    assert (prepared.dest / "conf/base.yaml").read_text() == "base"
    assert os.access(prepared.dest / "bin/tool", os.X_OK)
    assert (prepared.dest / "train.py").read_text() == "base"  # a file entry replaces the repo's file


# --- symlinks never take a write out of the working directory ------------------------------------


def test_a_symlink_in_the_tree_cannot_redirect_a_later_entry(tmp_path, config, run_prepare):
    outside = tmp_path / "etc"  # stands in for /etc: a folder the run must never write into
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    os.symlink(str(outside), config.path / "x")
    os.symlink(str(outside / "passwd"), config.path / "link")
    config.write("evil/passwd", "owned\n")
    config.write("evil/x/passwd", "owned\n")
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        attacks = [
            spec_of([RepoSpec(local_path="")], [FileSpec("evil/passwd", "x/passwd")]),  # a file through x
            spec_of([RepoSpec(local_path="")], [FileSpec("evil", ".")]),  # a folder whose x/passwd meets x
            spec_of([RepoSpec(local_path=""), RepoSpec(local_path="evil", path="x/sub")]),  # a repo below x
            spec_of([RepoSpec(local_path=""), RepoSpec(local_path="evil", path="x")]),  # a repo at x
        ]
        for spec in attacks:
            with pytest.raises(WorkspaceError, match=r"x is a symlink or a file|x is not empty"):
                run_prepare(spec, commit, repo)
        # a file entry at the symlink's own name replaces the link, never what it points to
        prepared = run_prepare(spec_of([RepoSpec(local_path="")], [FileSpec("evil/passwd", "link")]), commit, repo)
    assert (prepared.dest / "link").read_text() == "owned\n" and not (prepared.dest / "link").is_symlink()
    assert tree(outside) == {"passwd": "root:x:0:0\n"}
    assert os.readlink(prepared.dest / "x") == str(outside)  # the run still gets the repo's symlink


# --- entries outside the working directory --------------------------------------------------------


def test_entries_outside_the_working_directory_are_staged_never_written_there(tmp_path, config, run_prepare):
    config.write("train.py", "code")
    config.write("ssh/config", "Host *\n")
    config.write("data/x.csv", "1\n")
    commit = config.commit()
    target = tmp_path / "absolute" / "config"
    spec = spec_of([RepoSpec(local_path=""), RepoSpec(local_path="data", path="/srv/data")],
                   [FileSpec("ssh/config", str(target)), FileSpec("ssh", "~/.ssh"), FileSpec("data/x.csv", "../x.csv")])
    with ConfigRepo(str(config.path)) as repo:
        prepared = run_prepare(spec, commit, repo)
    assert not target.exists() and not (prepared.dest.parent / "x.csv").exists()
    staged = outside_dir(prepared.dest)
    assert [(o.entry, o.dst, o.source.relative_to(staged).as_posix()) for o in prepared.outside] == [
        ("repos[1]", "/srv/data", "abs/srv/data"),
        ("files[0]", str(target), "abs" + str(target)),
        ("files[1]", "~/.ssh", "home/.ssh"),
        ("files[2]", "../x.csv", "up/1/x.csv"),
    ]
    assert (staged / "home/.ssh/config").read_text() == "Host *\n"
    assert (staged / "abs/srv/data/x.csv").read_text() == "1\n"

    with tarfile.open(archive(prepared.dest)) as packed:
        members = {m.name: m for m in packed.getmembers()}
        assert packed.extractfile("work/train.py").read() == b"code"
        assert packed.extractfile("abs" + str(target)).read() == b"Host *\n"
        assert packed.extractfile("home/.ssh/config").read() == b"Host *\n"
        assert packed.extractfile("up/1/x.csv").read() == b"1\n"
        assert packed.extractfile("abs/srv/data/x.csv").read() == b"1\n"
    assert all(name.split("/")[0] in ("work", "abs", "home", "up") and ".." not in name.split("/") for name in members)


def test_the_archive_keeps_symlinks_as_they_are(config, run_prepare):
    config.write("a.txt", "a")
    os.symlink("a.txt", config.path / "link")
    os.symlink("/etc/hostname", config.path / "absolute")
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        prepared = run_prepare(spec_of([RepoSpec(local_path="")]), commit, repo)
    with tarfile.open(archive(prepared.dest)) as packed:
        assert packed.getmember("work/link").linkname == "a.txt"
        assert packed.getmember("work/absolute").linkname == "/etc/hostname"  # never rewritten to work/...
        assert "abs" not in {m.name.split("/")[0] for m in packed.getmembers()}


# --- URL repos ---------------------------------------------------------------------------------------


def test_a_url_repo_at_its_default_branch_a_branch_and_a_hash(tmp_path, config, run_prepare):
    work, bare = bare_upstream(tmp_path)
    first = work.git("rev-parse", "main~1")
    url = f"file://{bare}"
    commit = config.commit("empty config")
    with ConfigRepo(str(config.path)) as repo:
        default = run_prepare(spec_of([RepoSpec(url=url)]), commit, repo)
        feature = run_prepare(spec_of([RepoSpec(url=url, branch="feature", path="lib")]), commit, repo)
        pinned = run_prepare(spec_of([RepoSpec(url=url, hash=first)]), commit, repo)
        short = run_prepare(spec_of([RepoSpec(url=url, hash=first[:8])]), commit, repo)
        # the branch moves upstream: the next prepare gets the new tip
        work.write("model.py", "VERSION = 3\n")
        work.commit("v3")
        work.git("push", "-q", str(bare), "main")
        moved = run_prepare(spec_of([RepoSpec(url=url, branch="main")]), commit, repo)
    assert (default.dest / "model.py").read_text() == "VERSION = 2\n"
    assert (feature.dest / "lib/model.py").read_text() == "VERSION = 'feature'\n"
    assert (pinned.dest / "model.py").read_text() == "VERSION = 1\n"
    assert short.checkouts[0].commit == first
    assert (moved.dest / "model.py").read_text() == "VERSION = 3\n"
    for prepared in (default, feature, pinned, moved):
        assert not list(prepared.dest.rglob(".git"))
    assert pinned.checkouts[0].commit == first and pinned.checkouts[0].source == url
    assert default.env["GITOPSQ_COMMIT"] == commit


def test_a_hash_already_in_the_mirror_needs_no_network(tmp_path, config, run_prepare):
    work, bare = bare_upstream(tmp_path)
    first = work.git("rev-parse", "main~1")
    url = f"file://{bare}"
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        run_prepare(spec_of([RepoSpec(url=url, hash=first)]), commit, repo)
        bare.rename(tmp_path / "gone.git")  # the remote is unreachable from now on
        again = run_prepare(spec_of([RepoSpec(url=url, hash=first)]), commit, repo)
        with pytest.raises(WorkspaceError, match="repository not found"):
            run_prepare(spec_of([RepoSpec(url=url, branch="main")]), commit, repo)  # a branch asks the remote
    assert (again.dest / "model.py").read_text() == "VERSION = 1\n"


def test_git_lock_files_a_killed_fetch_left_in_the_mirror_do_not_block_the_next(tmp_path, config, run_prepare):
    work, bare = bare_upstream(tmp_path)
    url = f"file://{bare}"
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        run_prepare(spec_of([RepoSpec(url=url, branch="main")]), commit, repo)
        (mirror,) = (tmp_path / "cache" / "mirrors").glob("*.git")
        (mirror / "refs/heads/main.lock").write_text("")
        (mirror / "packed-refs.lock").write_text("")
        work.write("model.py", "VERSION = 3\n")
        work.commit("v3")
        work.git("push", "-q", str(bare), "main")
        prepared = run_prepare(spec_of([RepoSpec(url=url, branch="main")]), commit, repo)
    assert (prepared.dest / "model.py").read_text() == "VERSION = 3\n"


def test_a_url_that_does_not_exist_or_an_unknown_branch_or_hash_is_a_clear_error(tmp_path, config, run_prepare):
    _, bare = bare_upstream(tmp_path)
    commit = config.commit()
    url = f"file://{bare}"
    with ConfigRepo(str(config.path)) as repo:
        with pytest.raises(WorkspaceError) as missing:
            run_prepare(spec_of([RepoSpec(url=f"file://{tmp_path}/nope.git")]), commit, repo)
        with pytest.raises(WorkspaceError) as branch:
            run_prepare(spec_of([RepoSpec(url=url, branch="no-such-branch")]), commit, repo)
        with pytest.raises(WorkspaceError) as commit_hash:
            run_prepare(spec_of([RepoSpec(url=url, hash="ab" * 20)]), commit, repo)
    assert str(missing.value) == (f"repos[0] file://{tmp_path}/nope.git: repository not found "
                                  "(or not readable with the credentials given)")
    assert str(branch.value) == f"repos[0] {url}: no branch 'no-such-branch' there"
    assert str(commit_hash.value) == f"repos[0] {url}: no commit {'ab' * 20} there (looked in every branch and tag)"
    for error in (missing, branch, commit_hash):
        assert "\n" not in str(error.value)


def test_a_url_with_a_password_in_it_is_refused_without_showing_it(config, run_prepare):
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        with pytest.raises(WorkspaceError) as error:
            run_prepare(spec_of([RepoSpec(url="https://bob:hunter2@git.example.com/x.git")]), commit, repo)
    assert "hunter2" not in str(error.value)
    assert "store it in the secret git.git.example.com" in str(error.value)


def test_a_server_that_never_answers_fails_at_the_deadline_and_leaves_no_process(tmp_path, config, run_prepare):
    _, bare = bare_upstream(tmp_path)
    server = DumbGitServer(bare)
    try:
        server.hang()
        commit = config.commit()
        with ConfigRepo(str(config.path)) as repo:
            with pytest.raises(WorkspaceError, match=r"^repos\[0\] http://127\.0\.0\.1:\d+/: no answer within 1s$"):
                run_prepare(spec_of([RepoSpec(url=server.url)]), commit, repo, timeout=1)
        assert processes_mentioning(server.url) == []
    finally:
        server.close()


def test_concurrent_prepares_of_one_url_share_a_mirror_safely(tmp_path, config):
    work, bare = bare_upstream(tmp_path)
    commit = config.commit()
    url = f"file://{bare}"
    results, errors = {}, []

    def one(index: int) -> None:
        spec = spec_of([RepoSpec(url=url, branch="feature" if index % 2 else "main")])
        try:
            with ConfigRepo(str(config.path)) as repo:
                results[index] = prepare(spec, commit, repo, tmp_path / f"work-{index}", credentials=NO_CREDENTIALS,
                                         cache_dir=tmp_path / "cache")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index, prepared in results.items():
        expected = "VERSION = 'feature'\n" if index % 2 else "VERSION = 2\n"
        assert (prepared.dest / "model.py").read_text() == expected
    mirrors = list((tmp_path / "cache" / "mirrors").glob("*.git"))
    assert len(mirrors) == 1
    subprocess.run(["git", "--git-dir", str(mirrors[0]), "fsck", "--no-progress"], check=True, capture_output=True)


# --- private repos: credentials only from the secret store ------------------------------------------


@pytest.fixture
def private_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    _, bare = bare_upstream(tmp_path, "private")
    subprocess.run(["git", "clone", "-q", "--bare", str(bare), str(root / "private.git")], check=True)
    server = SmartGitServer(root, "alice", "s3cret-token")
    yield server
    server.close()


@pytest.fixture
def leaky_controller(tmp_path, monkeypatch, private_server):
    """The controller's own HOME holds working credentials three ways (a credential helper with
    ~/.git-credentials, GIT_ASKPASS, an ssh agent socket): a run must get none of them."""
    home = tmp_path / "controller-home"
    home.mkdir()
    host = private_server.url.split("//")[1].rstrip("/")
    (home / ".git-credentials").write_text(f"http://alice:s3cret-token@{host}\n")
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    askpass = home / "askpass.sh"
    askpass.write_text("#!/bin/sh\ncase \"$1\" in Username*) echo alice;; *) echo s3cret-token;; esac\n")
    askpass.chmod(0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_ASKPASS", str(askpass))
    monkeypatch.setenv("SSH_AUTH_SOCK", str(home / "agent.sock"))
    # the trap is real: plain git, run as the controller would, gets in with those credentials
    subprocess.run(["git", "ls-remote", private_server.url + "private.git"], check=True, capture_output=True)
    return home


def test_a_private_repo_is_cloned_with_the_stored_credential_only(tmp_path, config, run_prepare, private_server,
                                                                 leaky_controller):
    url = private_server.url + "private.git"
    assert credential_key(url) == "git.127.0.0.1"
    commit = config.commit()
    asked = []

    def store(key):
        asked.append(key)
        return {"git.127.0.0.1": "alice:s3cret-token"}.get(key)

    with ConfigRepo(str(config.path)) as repo:
        prepared = run_prepare(spec_of([RepoSpec(url=url, branch="feature")]), commit, repo, credentials=store)
        assert (prepared.dest / "model.py").read_text() == "VERSION = 'feature'\n"
        assert asked == ["git.127.0.0.1"]

        # a token alone goes with the URL's user name
        token_only = run_prepare(spec_of([RepoSpec(url=url.replace("//", "//alice@"), hash=prepared.checkouts[0].commit)]),
                                 commit, repo, credentials=lambda key: "s3cret-token")
        assert (token_only.dest / "model.py").read_text() == "VERSION = 'feature'\n"

        private_server.authorizations.clear()
        with pytest.raises(WorkspaceError) as anonymous:
            run_prepare(spec_of([RepoSpec(url=url, branch="main")]), commit, repo)
        # nothing of the controller's reached the server: it saw no credentials at all
        assert set(private_server.authorizations) == {None}

        with pytest.raises(WorkspaceError) as wrong:
            run_prepare(spec_of([RepoSpec(url=url, branch="main")]), commit, repo,
                        credentials=lambda key: "alice:wrong-token-value")
        with pytest.raises(WorkspaceError) as no_such_repo:
            run_prepare(spec_of([RepoSpec(url=private_server.url + "nope.git")]), commit, repo, credentials=store)
    assert str(anonymous.value) == (f"repos[0] {url}: authentication failed: no secret git.127.0.0.1 (set it to a "
                                    "token or user:token for https, or a private key for ssh)")
    assert str(wrong.value) == f"repos[0] {url}: authentication failed with the secret git.127.0.0.1"
    assert str(no_such_repo.value) == (f"repos[0] {private_server.url}nope.git: repository not found "
                                       "(or not readable with the credentials given)")
    # the credential is in no file the controller keeps (mirror config, known_hosts, ...)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"s3cret-token" not in data and b"wrong-token-value" not in data, path


def test_an_ssh_url_needs_a_private_key_and_never_shows_it(tmp_path, config, run_prepare):
    commit = config.commit()
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAAsecretkeymaterial\n-----END OPENSSH PRIVATE KEY-----"
    with ConfigRepo(str(config.path)) as repo:
        with pytest.raises(WorkspaceError) as not_a_key:
            run_prepare(spec_of([RepoSpec(url="git@127.0.0.1:team/x.git")]), commit, repo,
                        credentials=lambda k: "just-a-token")
        # a port nothing listens on: ssh really runs, with our key, and fails to connect
        with pytest.raises(WorkspaceError) as refused:
            run_prepare(spec_of([RepoSpec(url="ssh://git@127.0.0.1:1/team/x.git")]), commit, repo,
                        credentials=lambda k: key)
        with pytest.raises(WorkspaceError) as wrong_kind:
            run_prepare(spec_of([RepoSpec(url="https://127.0.0.1:1/x.git")]), commit, repo,
                        credentials=lambda k: key)
    assert str(not_a_key.value) == ("repos[0] git@127.0.0.1:team/x.git: the secret git.127.0.0.1 holds no private "
                                    "key, which an ssh URL needs (a token works with an https URL)")
    assert str(refused.value).startswith("repos[0] ssh://git@127.0.0.1:1/team/x.git: ")
    assert "Connection refused" in str(refused.value) or "connect" in str(refused.value)
    assert "secretkeymaterial" not in str(refused.value)
    assert "holds a private key, which only an ssh URL can use" in str(wrong_kind.value)


# --- DSTACK_REPO_ID ---------------------------------------------------------------------------------


def test_the_repo_id_is_stable_per_repo_and_set_only_for_runs_with_repos(tmp_path, config, run_prepare):
    commit = config.commit()
    with ConfigRepo(str(config.path)) as repo:
        assert "DSTACK_REPO_ID" not in run_prepare(spec_of(), commit, repo).env
        local = repo_id((RepoSpec(local_path=""),), repo)
        assert local == repo_id((RepoSpec(local_path="sub", path="x"),), repo)  # one repo, whatever the folder
        assert local.startswith("config-")
    ids = {repo_id((RepoSpec(url=u),), None) for u in ("https://github.com/acme/train.git", "git@github.com:acme/train",
                                                      "ssh://git@github.com/acme/train.git/",
                                                      "https://user@github.com/acme/train")}
    assert len(ids) == 1 and ids.pop().startswith("train-")
    assert repo_id((RepoSpec(url="https://github.com/other/train.git"),), None) != \
        repo_id((RepoSpec(url="https://github.com/acme/train.git"),), None)
