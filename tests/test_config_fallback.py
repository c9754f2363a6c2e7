"""A broken .gitopsq.yml changes no run: the last valid configuration stays in force until it is fixed."""

from __future__ import annotations

import json
import subprocess

import pytest

from gitopsq.controller import Controller
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import Clock, FakeProvider, fake_world
from tests.helpers import ROOT, GitRepo, cli_json, task

CONFIG = (ROOT / "examples-repo" / ".gitopsq.yml").read_text()  # paths and defaults: {retry: ...}
BROKEN = "paths: ['runs/**/*.yml']\ndefaults:\n  retry: {on_events: [no-capacity]}\n priority: 3\n"  # a YAML syntax error on line 4
QUEUE_RETRY = {"on_events": ["no-capacity"], "duration": 3600}


@pytest.fixture
def env(tmp_path):
    files = {".gitopsq.yml": CONFIG, "runs/a.yml": task("a"), "runs/b.yml": task("b", "sleep 100")}
    with fake_world(tmp_path, files) as world:
        yield world.repo, world.store, world.provider, world.controller


def numbers(store, run):
    return [(s["number"], s["status"]) for s in store.history(run)]


def spec(store, run):
    return json.loads(store.current_submission(run)["spec"])


def config_problems(store):
    return [(p["file"], p["line"], p["message"]) for p in store.file_problems() if p["file"] == ".gitopsq.yml"]


def test_a_broken_config_changes_no_run_until_it_is_fixed(env):
    repo, store, provider, controller = env
    controller.step()
    node_a = next(n for n, s in provider.nodes_by_id.items() if s.run == "a")
    provider.finish(node_a, 0)
    controller.step()
    assert numbers(store, "a") == [(1, "done")] and numbers(store, "b") == [(1, "running")]

    repo.write(".gitopsq.yml", BROKEN)
    repo.write("runs/c.yml", task("c"))
    repo.commit("break the config, add a run")
    controller.step()
    assert numbers(store, "a") == [(1, "done")], "a finished run is not submitted again"
    assert numbers(store, "b") == [(1, "running")], "a running run is not restarted"
    assert spec(store, "c")["retry"] == QUEUE_RETRY, "a file changed meanwhile is read with the last valid config"
    problems = config_problems(store)
    assert problems[0][:2] == (".gitopsq.yml", 4) and "YAML syntax error" in problems[0][2]
    assert "last valid configuration" in problems[-1][2]
    assert store.cursor("main") == repo.head()

    repo.write("runs/b.yml", task("b", "sleep 100", priority=5))
    repo.commit("an edit while the config is still broken")
    controller.step()
    assert numbers(store, "b") == [(1, "running")] and store.current_submission("b")["priority"] == 5
    assert spec(store, "b")["retry"] == QUEUE_RETRY
    assert config_problems(store), "still shown"

    repo.write(".gitopsq.yml", CONFIG)
    repo.commit("fix the config")
    controller.step()
    assert numbers(store, "a") == [(1, "done")] and numbers(store, "b") == [(1, "running")]
    assert len(store.history("c")) == 1
    assert store.file_problems() == []


def test_the_last_valid_config_survives_a_restart_and_a_gc_of_its_blob(env, tmp_path):
    repo, store, provider, controller = env
    controller.step()
    old_blob = repo.git("rev-parse", "HEAD:.gitopsq.yml")
    # Rewrite history: one commit holding a broken config, the same runs and a new one; the old
    # config blob is then unreachable and pruned.
    repo.write(".gitopsq.yml", BROKEN)
    repo.write("runs/d.yml", task("d"))
    repo.git("checkout", "-q", "--orphan", "rewritten")
    repo.commit("rewritten")
    repo.git("branch", "-M", "rewritten", "main")
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    gone = subprocess.run(["git", "cat-file", "-e", old_blob], cwd=repo.path, capture_output=True)
    assert gone.returncode != 0, "the old config blob is gone"

    with ConfigRepo(str(repo.path)) as source:
        fresh = Controller(Store(store.path), provider, source, clock=Clock())
        _, actions = fresh.sync_git()
        assert [(a.kind, a.run) for a in actions] == [("submit", "d")]
        assert spec(fresh.store, "d")["retry"] == QUEUE_RETRY
        assert numbers(fresh.store, "a") == [(1, "running")] and numbers(fresh.store, "b") == [(1, "running")]
        assert config_problems(fresh.store)
        fresh.store.close()


def test_without_any_valid_config_nothing_is_reconciled(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write(".gitopsq.yml", BROKEN)
    repo.write("runs/a.yml", task("a"))
    repo.commit("a broken config from the start")
    store = Store(tmp_path / "state.db")
    with ConfigRepo(str(repo.path)) as source:
        controller = Controller(store, FakeProvider(), source, clock=Clock())
        controller.step()
        controller.step()  # the same broken tip again: still nothing, no error
        assert store.run("a") is None
        assert store.cursor("main") is None, "the commit is not applied"
        problems = config_problems(store)
        assert problems[0][:2] == (".gitopsq.yml", 4)
        assert "nothing is reconciled" in problems[-1][2]
        repo.write(".gitopsq.yml", CONFIG)
        repo.commit("fixed")
        _, actions = controller.sync_git()
        assert [(a.kind, a.run) for a in actions] == [("submit", "a")]
        assert spec(store, "a")["retry"] == QUEUE_RETRY
        assert store.file_problems() == [] and store.cursor("main") == repo.head()
    store.close()


def test_plan_and_validate_show_the_broken_config_and_plan_keeps_the_base_config(env, monkeypatch):
    repo, store, provider, controller = env
    base = repo.head()
    repo.write(".gitopsq.yml", BROKEN)
    repo.write("runs/a.yml", task("a", priority=9))
    repo.commit("break the config and edit a run")
    code, out = cli_json("plan", "--repo", str(repo.path), "--base", base, "--head", "HEAD", "--format", "json")
    assert code == 1
    assert [(a["action"], a["run"]) for a in out["actions"]] == [("update", "a")], "a's retry still comes from the base config"
    assert [(e["file"], e["line"]) for e in out["errors"]][0] == (".gitopsq.yml", 4)
    monkeypatch.chdir(repo.path)
    code, out = cli_json("validate", "--format", "json", ".")
    assert code == 1 and [(e["file"], e["line"]) for e in out["errors"]][0] == (".gitopsq.yml", 4)


@pytest.mark.parametrize("text", ["", "# settings come later\n"])
def test_an_empty_config_means_the_built_in_settings(tmp_path, text):
    repo = GitRepo(tmp_path / "repo")
    repo.write(".gitopsq.yml", text)
    repo.write("runs/a.yml", task("a"))
    repo.commit()
    store = Store(tmp_path / "state.db")
    with ConfigRepo(str(repo.path)) as source:
        _, actions = Controller(store, FakeProvider(), source, clock=Clock()).sync_git()
    assert [(a.kind, a.run) for a in actions] == [("submit", "a")] and store.file_problems() == []
    store.close()
