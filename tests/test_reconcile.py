"""From commits to actions, end to end on real git repositories and a real store."""

from __future__ import annotations

import json
import os

import pytest

from gitopsq.controller import Controller
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import Clock, fake_world
from tests.helpers import task


@pytest.fixture
def env(tmp_path):
    with fake_world(tmp_path, {"runs/a.yml": task("a")}) as world:
        yield world.repo, world.store, world.provider, world.controller


def sync(controller):
    _, actions = controller.sync_git()
    return [(a.kind, a.run) for a in actions]


def status(store, run):
    return store.current_submission(run)["status"]


def test_add_submits(env):
    repo, store, provider, controller = env
    assert sync(controller) == [("submit", "a")]
    assert status(store, "a") == "queued"
    assert store.current_submission("a")["number"] == 1


def test_replaying_the_same_commit_does_nothing(env):
    repo, store, provider, controller = env
    sync(controller)
    events = len(store.events(limit=1000))
    assert sync(controller) == []
    controller.recovered = True
    store.set_cursor("main", "0" * 40, 0)  # even a lost cursor: a full comparison finds nothing to do
    assert sync(controller) == []
    assert len(store.history("a")) == 1
    assert len(store.events(limit=1000)) == events + 1  # only the "reconciled" event of the full comparison


def test_in_place_edit_updates_without_restart(env):
    repo, store, provider, controller = env
    sync(controller)
    controller.step()
    assert provider.running_runs() == ["a"]
    repo.write("runs/a.yml", task("a", priority=70))
    repo.commit()
    assert sync(controller) == [("update", "a")]
    current = store.current_submission("a")
    assert current["number"] == 1 and current["status"] == "running" and current["priority"] == 70
    assert json.loads(current["spec"])["priority"] == 70
    assert provider.stopped == []


def test_commands_edit_restarts(env):
    repo, store, provider, controller = env
    sync(controller)
    controller.step()
    repo.write("runs/a.yml", task("a", "echo changed"))
    repo.commit()
    assert sync(controller) == [("restart", "a")]
    old, new = store.history("a")
    assert old["status"] == "stopping" and old["stop_reason"] == "replaced"
    assert new["status"] == "queued" and new["number"] == 2
    controller.step()
    assert store.history("a")[0]["status"] == "cancelled"
    assert store.history("a")[0]["reason"] == "replaced"
    assert provider.stopped == ["node-0"]
    assert [l.number for l in provider.launched] == [1, 2]


def test_delete_cancels(env):
    repo, store, provider, controller = env
    sync(controller)
    controller.step()
    repo.remove("runs/a.yml")
    repo.commit()
    assert sync(controller) == [("cancel", "a")]
    controller.step()
    sub = store.current_submission("a")
    assert (sub["status"], sub["reason"]) == ("cancelled", "deleted")
    assert provider.running_runs() == []


def test_move_without_rename_does_nothing(env):
    repo, store, provider, controller = env
    sync(controller)
    repo.git("mv", "runs/a.yml", "runs/moved.yml")
    repo.commit()
    assert sync(controller) == []
    assert store.run("a")["file"] == "runs/moved.yml"


def test_rename_cancels_old_and_submits_new(env):
    repo, store, provider, controller = env
    sync(controller)
    repo.write("runs/a.yml", task("b"))
    repo.commit()
    assert sync(controller) == [("cancel", "a"), ("submit", "b")]


def test_invalid_edit_keeps_running_then_fix_applies(env):
    repo, store, provider, controller = env
    sync(controller)
    controller.step()
    repo.write("runs/a.yml", task("a", priority=500))
    repo.commit()
    assert sync(controller) == []
    assert status(store, "a") == "running"
    problems = store.file_problems()
    assert [(p["file"], p["line"], p["field"]) for p in problems] == [("runs/a.yml", 4, "priority")]
    repo.write("runs/a.yml", task("a", priority=60))
    repo.commit()
    assert sync(controller) == [("update", "a")]
    assert store.file_problems() == []


def test_invalid_new_file_is_reported_not_submitted(env):
    repo, store, provider, controller = env
    sync(controller)
    repo.write("runs/bad.yml", "type: task\ncommands: [x\n")
    repo.commit()
    assert sync(controller) == []
    assert store.file_problems()[0]["file"] == "runs/bad.yml"


def test_re_adding_finished_run_submits_again(env):
    repo, store, provider, controller = env
    sync(controller)
    controller.step()
    provider.finish("node-0", 0)
    controller.step()
    assert status(store, "a") == "done"
    repo.remove("runs/a.yml")
    repo.commit()
    assert sync(controller) == []
    repo.write("runs/a.yml", task("a"))
    repo.commit()
    assert sync(controller) == [("submit", "a")]
    first, second = store.history("a")
    assert (first["number"], first["status"]) == (1, "done")
    assert (second["number"], second["status"]) == (2, "queued")


def test_two_files_one_name(env):
    repo, store, provider, controller = env
    sync(controller)
    controller.step()
    repo.write("runs/copy.yml", task("a", "echo copy"))
    repo.commit()
    assert sync(controller) == []  # both invalid: the run already running keeps running
    assert status(store, "a") == "running"
    assert sorted(p["file"] for p in store.file_problems()) == ["runs/a.yml", "runs/copy.yml"]
    repo.remove("runs/copy.yml")
    repo.commit()
    assert sync(controller) == []
    assert store.file_problems() == []


def test_force_push_dropping_the_cursor(env):
    repo, store, provider, controller = env
    repo.write("runs/b.yml", task("b"))
    repo.commit("adds b")
    assert sync(controller) == [("submit", "a"), ("submit", "b")]
    # Rewrite history: drop the commit that added b, edit a, and make the old commit unreachable.
    repo.git("reset", "-q", "--hard", "HEAD~1")
    repo.write("runs/a.yml", task("a", priority=3))
    repo.commit("rewritten")
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    assert sync(controller) == [("update", "a"), ("cancel", "b")]
    assert status(store, "b") == "cancelled"
    assert store.current_submission("a")["priority"] == 3


def test_merge_commit(env):
    repo, store, provider, controller = env
    sync(controller)
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("runs/f.yml", task("f"))
    repo.commit("feature")
    repo.git("checkout", "-q", "main")
    repo.write("runs/a.yml", task("a", priority=9))
    repo.commit("main edit")
    repo.git("merge", "-q", "--no-ff", "-m", "merge", "feature")
    assert sync(controller) == [("update", "a"), ("submit", "f")]
    assert store.current_submission("f")["status"] == "queued"
    assert store.current_submission("a")["priority"] == 9


def test_crash_inside_the_transaction_leaves_the_store_as_it_was(env, monkeypatch):
    repo, store, provider, controller = env
    sync(controller)
    repo.write("runs/a.yml", task("a", "echo new"))
    repo.write("runs/c.yml", task("c"))
    repo.commit()

    def dump():
        out = {}
        for table in ("runs", "submissions", "events", "cursors", "files"):
            out[table] = [tuple(r) for r in store.conn.execute(f"SELECT * FROM {table} ORDER BY 1")]
        return out

    before = dump()
    original = store.set_cursor

    def crash(*args):
        raise RuntimeError("simulated crash before commit")

    monkeypatch.setattr(store, "set_cursor", crash)
    with pytest.raises(RuntimeError):
        controller.sync_git()
    assert dump() == before
    monkeypatch.setattr(store, "set_cursor", original)
    assert sorted(sync(controller)) == [("restart", "a"), ("submit", "c")]


def test_unchanged_blobs_are_not_parsed_again(env, tmp_path):
    repo, store, provider, controller = env
    for i in range(5):
        repo.write(f"runs/r{i}.yml", task(f"r{i}"))
    repo.commit()
    sync(controller)
    repo.write("runs/r0.yml", task("r0", priority=1))
    repo.commit()
    sync(controller)
    last = json.loads(store.events(limit=1)[0]["detail"])
    assert last["parsed"] == 1
    # A restart of the controller (new objects, same database) parses nothing for an unchanged tip.
    store.set_cursor("main", "0" * 40, 0)
    fresh = Controller(Store(store.path), provider, ConfigRepo(str(repo.path)), clock=Clock())
    fresh.sync_git()
    assert json.loads(fresh.store.events(limit=1)[0]["detail"])["parsed"] == 0


def test_files_outside_paths_are_ignored_on_every_path(env):
    repo, store, provider, controller = env
    repo.write(".gitopsq.yml", "paths: ['runs/*.yml']\n")
    repo.commit("limit paths")
    assert sync(controller) == [("submit", "a")]
    # A later commit (the one-diff fast path) touching files outside `paths` changes nothing.
    repo.write("docs/example.yml", task("example"))
    repo.write("runs/notes.txt", "not yaml: [\n")
    repo.write("runs/nested/deep.yml", task("deep"))
    repo.commit("docs")
    assert sync(controller) == []
    assert store.file_problems() == []
    assert store.run("example") is None and store.run("deep") is None


def test_broken_config_is_reported_and_stays_reported(env):
    repo, store, provider, controller = env
    sync(controller)
    repo.write(".gitopsq.yml", "paths: runs\n")
    repo.commit("break the config")
    sync(controller)
    shown = [(".gitopsq.yml", "paths"), (".gitopsq.yml", "")]  # the last valid config (none: built-in) stays
    assert [(p["file"], p["field"]) for p in store.file_problems()] == shown
    repo.write("runs/b.yml", task("b"))
    repo.commit("another run")  # the one-diff path, with the broken config still in place
    assert sync(controller) == [("submit", "b")]
    assert [(p["file"], p["field"]) for p in store.file_problems()] == shown


def test_broken_file_keeps_its_run_when_another_file_claims_the_name(env):
    repo, store, provider, controller = env
    sync(controller)
    controller.step()
    repo.write("runs/a.yml", "type: task\ncommands: [x\n")
    repo.write("runs/other.yml", task("a", "echo other"))
    repo.commit("break a, and claim its name elsewhere")
    assert sync(controller) == []
    assert store.current_submission("a")["number"] == 1 and store.run("a")["file"] == "runs/a.yml"
    assert [(p["file"], p["field"]) for p in store.file_problems()] == [("runs/a.yml", ""), ("runs/other.yml", "name")]
    repo.write("runs/unrelated.yml", task("u"))
    repo.commit("unrelated")
    assert sync(controller) == [("submit", "u")]
    assert ("runs/other.yml", "name") in [(p["file"], p["field"]) for p in store.file_problems()], "still shown"
    repo.remove("runs/a.yml")
    repo.commit("drop the broken file")
    assert sync(controller) == [("restart", "a")]
    assert store.run("a")["file"] == "runs/other.yml" and store.file_problems() == []


def write_bytes_name(repo, rel: bytes, text: str) -> None:
    """A file whose name is raw bytes (not necessarily UTF-8), written through the file system."""
    os.makedirs(os.path.dirname(os.path.join(bytes(repo.path), rel)), exist_ok=True)
    with open(os.path.join(bytes(repo.path), rel), "wb") as handle:
        handle.write(text.encode())


def test_a_file_name_that_is_not_utf8_is_a_problem_of_that_file_alone(env, tmp_path):
    repo, store, provider, controller = env
    repo.write("runs/b.yml", task("b", "sleep 100"))
    repo.commit()
    controller.step()
    assert provider.running_runs() == ["a", "b"]
    write_bytes_name(repo, b"runs/caf\xe9.yml", "type: task\ncommands: [echo hi]\n")
    repo.write("runs/a.yml", task("a", priority=7))
    repo.remove("runs/b.yml")
    repo.commit("a latin-1 file name, an edit and a deletion")
    controller.step()  # must not raise
    assert store.cursor("main") == repo.head()
    assert store.current_submission("a")["priority"] == 7, "the edit of another run is applied in the same step"
    assert status(store, "b") == "cancelled", "the deletion of another run is applied in the same step"
    problems = [(p["file"], p["line"], p["field"]) for p in store.file_problems()]
    assert problems == [("runs/caf\\351.yml", None, "")]
    assert "not UTF-8" in store.file_problems()[0]["message"] and "rename" in store.file_problems()[0]["message"]
    # A restart reads the same identity back from the store, and the file's deletion matches it.
    fresh = Controller(Store(store.path), provider, ConfigRepo(str(repo.path)), clock=Clock())
    fresh.store.set_cursor("main", "0" * 40, 0)  # a full comparison against what the store recorded
    fresh.step()
    assert [p["file"] for p in fresh.store.file_problems()] == ["runs/caf\\351.yml"]
    os.unlink(os.path.join(bytes(repo.path), b"runs/caf\xe9.yml"))
    repo.commit("rename it away")
    fresh.step()
    assert fresh.store.file_problems() == []
    assert [row["path"] for row in fresh.store.conn.execute("SELECT path FROM files ORDER BY path")] == ["runs/a.yml"]


def test_escaped_names_never_collide_with_real_ones(env):
    repo, store, provider, controller = env
    # 'caf\351.yml' written literally (valid UTF-8, with a backslash) next to the latin-1 'caf\xe9.yml'
    write_bytes_name(repo, b"runs/caf\\351.yml", task("literal"))
    write_bytes_name(repo, b"runs/caf\xe9.yml", task("latin"))
    repo.commit()
    assert sorted(sync(controller)) == [("submit", "a"), ("submit", "literal")]
    assert [p["file"] for p in store.file_problems()] == ["runs/caf\\351.yml"]
    assert store.run("literal")["file"] == "runs/caf\\\\351.yml"
    os.unlink(os.path.join(bytes(repo.path), b"runs/caf\xe9.yml"))
    repo.commit("drop the latin-1 one")
    assert sync(controller) == [], "deleting one never cancels the other"
    assert store.file_problems() == []


def test_a_run_and_its_submission_record_the_spec_the_file_gives(env):
    """A sync records the spec text it parsed once for the file, the run and the submission (and
    the blob with the run): each is exactly the spec encoded as the store encodes one."""
    repo, store, provider, controller = env
    repo.write("runs/b.yml", task("b", priority=10, env="{A: '1'}"))
    repo.commit()
    sync(controller)
    controller.step()
    repo.write("runs/a.yml", task("a", priority=70))
    repo.write("runs/b.yml", task("b", priority=10, env="{A: '2'}"))
    repo.commit()
    assert sync(controller) == [("update", "a"), ("restart", "b")]
    files = store.files()
    for name in ("a", "b"):
        run, sub = store.run(name), store.current_submission(name)
        spec = json.loads(run["spec"])
        assert run["spec"] == sub["spec"] == files[run["file"]]["spec"] == json.dumps(spec, sort_keys=True)
        assert run["blob"] == files[run["file"]]["blob"]
    assert spec["env"] == [["A", "2"]] and json.loads(store.run("a")["spec"])["priority"] == 70
