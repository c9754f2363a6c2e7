"""The desired state patched commit by commit equals the one built from scratch."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitopsq.desired import read_tree
from gitopsq.source import ConfigRepo
from tests.helpers import GitRepo, task

PATHS = ["runs/a.yml", "runs/b.yml", "runs/c.yml", "runs/d/e.yml", "notes/x.yml"]
CONTENT = st.sampled_from([
    None,  # delete
    task("one"), task("one", "echo other"), task("two"), task("three", priority=5),
    "type: task\ncommands: [x\n", "type: task\ncommands: []\n", "type: task\ncommands: [echo]\n",
])
CONFIG = st.sampled_from([None, "paths: ['runs/**/*.yml']\n", "paths: ['runs/*.yml']\ndefaults: {priority: 3}\n", "paths: x\n"])


def snapshot(tree):
    problems = {path: sorted((p.line or 0, p.field, p.message) for p in ps) for path, ps in tree.problems.items()}
    return tree.files, tree.valid, tree.claims, problems


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.dictionaries(st.sampled_from(PATHS), CONTENT, min_size=1, max_size=3), st.one_of(st.none(), CONFIG)),
                min_size=1, max_size=6))
def test_patched_equals_rebuilt(tmp_path_factory, commits):
    repo = GitRepo(tmp_path_factory.mktemp("inc") / "repo")
    repo.write("runs/a.yml", task("one"))
    base = repo.commit("start")
    with ConfigRepo(str(repo.path)) as source:
        tree = read_tree(source, base)
        for files, config in commits:
            for path, content in files.items():
                if content is None:
                    if (repo.path / path).exists():
                        repo.remove(path)
                else:
                    repo.write(path, content)
            if config is not None:
                repo.write(".gitopsq.yml", config)
            head = repo.commit("step")
            patched = read_tree(source, head, base=tree.commit, previous=tree)
            rebuilt = read_tree(source, head, last_good=tree.applied)  # the config in force if .gitopsq.yml broke
            assert snapshot(patched) == snapshot(rebuilt)
            tree = patched
