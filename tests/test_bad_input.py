"""Bad input never crashes the controller and never touches a running run.

Hypothesis writes junk into a real config repo (syntax errors, wrong types, huge and binary
files, symlinks, files outside `paths`, the running run's own file broken), commits it, and
runs a controller step each time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from gitopsq.controller import Controller
from gitopsq.source import ConfigRepo
from gitopsq.spec import SpecError, parse_run
from gitopsq.store import Store
from tests.fakes import Clock, FakeProvider
from tests.helpers import GitRepo, task

KEEPER = "runs/keeper.yml"

junk_text = st.one_of(
    st.text(max_size=200),
    st.sampled_from([
        "type: task\ncommands: [x\n", "type: task\ncommands: 5\n", "type: [task]\n", "- a\n- b\n", "",
        "type: task\nname: keeper\ncommands: [echo]\npriority: 999\n", "type: task\nname: keeper\ncommands: []\n",
        "a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
        "type: task\nname: keeper\nname: keeper\ncommands: [echo]\n", "type: task\nname: keeper\ncommands: [echo dup]\n", "type: service\nname: keeper\ncommands: [x]\n",
        "%YAML 1.1\n---\n!!python/object:os.system 'echo pwned'\n", "type: !!binary aGVsbG8=\ncommands: [x]\n",
    ]),
)
junk_bytes = st.one_of(st.binary(max_size=300), st.just(b"\xff\xfe\x00\x00" * 50), st.just(b"type: task\n" + b"#" * 300_000))
operation = st.one_of(
    st.tuples(st.just("write"), st.sampled_from([KEEPER, "runs/other.yml", "runs/deep/x.yaml", "elsewhere/y.yml", "runs/z.txt"]), junk_text),
    st.tuples(st.just("bytes"), st.sampled_from([KEEPER, "runs/bin.yml"]), junk_bytes),
    st.tuples(st.just("symlink"), st.sampled_from(["runs/link.yml", "runs/etc.yml"]), st.sampled_from(["keeper.yml", "/etc/passwd", "../../x"])),
    st.tuples(st.just("delete"), st.sampled_from(["runs/other.yml", "runs/link.yml", "runs/bin.yml"]), st.none()),
)


def keeper_file_is_invalid(repo: GitRepo) -> bool:
    path = repo.path / KEEPER
    if not path.exists() or path.is_symlink():
        return False
    try:
        parse_run(path.read_bytes(), KEEPER)
        return False
    except SpecError:
        return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.lists(operation, min_size=1, max_size=4), min_size=1, max_size=4))
def test_junk_commits_never_crash_or_touch_the_running_run(tmp_path_factory, commits):
    root = tmp_path_factory.mktemp("bad")
    repo = GitRepo(root / "repo")
    repo.write(".gitopsq.yml", "paths: ['runs/**/*.yml', 'runs/**/*.yaml']\n")
    repo.write(KEEPER, task("keeper", "sleep 1000"))
    repo.commit("keeper")
    store = Store(root / "s.db")
    provider = FakeProvider(slots=5)
    source = ConfigRepo(str(repo.path))
    controller = Controller(store, provider, source, clock=Clock())
    controller.step()
    keeper = store.current_submission("keeper")
    assert keeper["status"] == "running"
    for ops in commits:
        note(f"commit: {ops!r}")
        keeper_touched_validly = False
        for kind, path, payload in ops:
            target = repo.path / path
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                target.unlink()
            if kind == "write":
                target.write_text(payload)
            elif kind == "bytes":
                target.write_bytes(payload)
            elif kind == "symlink":
                os.symlink(payload, target)
            if path == KEEPER:
                keeper_touched_validly = kind != "delete" and not keeper_file_is_invalid(repo)
        if not (repo.path / KEEPER).exists() or (repo.path / KEEPER).is_symlink() or keeper_touched_validly:
            repo.write(KEEPER, task("keeper", "sleep 1000"))  # the scenario keeps the keeper's file (valid or broken)
        repo.commit("junk")
        controller.step()  # must not raise
        now = store.current_submission("keeper")
        assert (now["id"], now["status"]) == (keeper["id"], "running"), store.file_problems()
        assert provider.stopped == []
        assert store.cursor("main") == repo.head()
    source.close()
    store.close()
