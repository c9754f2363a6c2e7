"""`ps` says why a run waits (what it needs, what is free, how many are ahead, when it tries
again) and why one failed; `logs` of a run that never started says why it has no log."""

from __future__ import annotations

import json
import time

import pytest

from tests.fakes import Clock, fake_world
from tests.helpers import run_cli, task

QUEUE = "retry: {on_events: [no-capacity], duration: off}"


@pytest.fixture
def env(tmp_path):
    files = {"runs/holder.yml": task("holder", "sleep 100", priority=90),
             **{f"runs/{name}.yml": task(name, priority=priority) + QUEUE + "\n" for name, priority in (("second", 50), ("third", 40))},
             "runs/flaky.yml": task("flaky", priority=10) + "retry: {on_events: [no-capacity, error], duration: 1h}\n"}
    with fake_world(tmp_path, files, slots=2, clock=Clock(time.time()), message="four runs, two slots") as world:
        yield str(world.db), world.store, world.provider, world.controller


def ps_rows(db):
    result = run_cli("ps", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.output)}


def test_queued_runs_say_what_they_need_what_is_free_and_how_many_are_ahead(env):
    db, store, provider, controller = env
    controller.step()  # holder and second take both slots
    assert provider.running_runs() == ["holder", "second"]
    rows = ps_rows(db)
    third, flaky = rows["third"], rows["flaky"]
    assert (third["needs"], third["free"], third["ahead"]) == ({"slots": 1}, {"slots": 0}, 0)
    assert flaky["ahead"] == 1
    assert third["why"] == "needs 1 slot; free: 0 slots"
    assert flaky["why"] == "needs 1 slot; free: 0 slots; 1 ahead"
    table = run_cli("ps", "--db", db, env={"COLUMNS": "250"}).output
    assert "needs 1 slot; free: 0 slots; 1 ahead" in " ".join(table.split())


def test_a_run_backing_off_after_an_error_says_when_it_tries_again(env):
    db, store, provider, controller = env
    provider.slots = 4
    controller.step()
    flaky = store.current_submission("flaky")
    provider.finish(flaky["node_id"], exit_code=127)
    controller.step()
    why = ps_rows(db)["flaky"]["why"]
    assert why.startswith("exit code 127; next attempt in 1")  # 13.5 to 16.5 s, with jitter


def test_a_failure_shows_its_detail_in_the_table_and_in_logs(env):
    db, store, provider, controller = env
    provider.unsatisfiable = lambda spec: "resources.gpu: needs 1 GPU(s); this machine has 0" if spec.name == "third" else None
    controller.step()
    table = " ".join(run_cli("ps", "--db", db, env={"COLUMNS": "250"}).output.split())
    assert "unsatisfiable: resources.gpu: needs 1 GPU(s); this machine has 0" in table
    result = run_cli("logs", "third", "--db", db)
    assert result.exit_code == 1
    assert "third submission 1 has no log: it never started (failed: unsatisfiable: resources.gpu" in " ".join(result.output.split())


def test_the_api_says_the_same(env):
    from gitopsq.web.queries import run_detail

    db, store, provider, controller = env
    controller.step()
    detail = run_detail(store, "flaky", controller.clock())
    assert detail["why"] == ps_rows(db)["flaky"]["why"] == "needs 1 slot; free: 0 slots; 1 ahead"


def test_a_run_whose_secret_is_set_then_says_it_waits_for_room(tmp_path):
    """Observed: once `secret set` gave a waiting run its secret, `ps` kept saying
    secret-missing for as long as the run then waited for a free slot."""
    from gitopsq.secretstore import SecretStore

    files = {"runs/holder.yml": task("holder", "sleep 100", priority=90),
             "runs/train.yml": task("train") + "env: [CHECKPOINT_KEY]\n" + QUEUE + "\n"}
    with fake_world(tmp_path, files, slots=1, clock=Clock(time.time())) as world:
        world.controller.step()
        assert ps_rows(str(world.db))["train"]["why"] == "secret-missing: CHECKPOINT_KEY"
        SecretStore(world.store).set("CHECKPOINT_KEY", "0123456789abcdef")
        world.controller.step()
        train = ps_rows(str(world.db))["train"]
        assert (train["status"], train["why"]) == ("queued", "needs 1 slot; free: 0 slots")
        world.provider.finish(world.store.current_submission("holder")["node_id"])
        world.controller.step()
        assert world.provider.running_runs() == ["train"]


def test_ps_prints_a_scheduled_run_and_text_with_brackets_as_written(capsys, monkeypatch):
    """Observed: `ps` with a scheduled run (a status without a style) crashed with rich's
    MarkupError; text from a run or a provider (an error's '[Errno 13]') is not markup either."""
    from gitopsq.views import runs_table

    monkeypatch.setenv("COLUMNS", "200")  # one line per run, whatever the terminal
    now = time.time()
    rows = [{"name": "nightly", "status": "scheduled", "priority": 0, "submission": None, "retry": None,
             "schedule": ["0 3 * * *"], "next_tick_at": now + 3600},
            {"name": "copy[/]", "status": "failed", "priority": 0, "submission": 1, "retry": None,
             "reason": "provider-error", "message": "[Errno 13] Permission denied: '[/]x'", "finished_at": now - 5}]
    runs_table(rows)
    out = capsys.readouterr().out
    assert "scheduled" in out and "None" not in out and "copy[/]" in out and "[Errno 13] Permission denied: '[/]x'" in out.replace("\n", " ")


def test_history_prints_actors_and_paths_with_brackets_as_written(capsys, monkeypatch):
    from gitopsq.views import history_table

    monkeypatch.setenv("COLUMNS", "200")
    now = time.time()
    history_table([{"name": "t", "submission": 1, "status": "cancelled", "priority": 0, "queued_at": now - 60,
                    "submitted_by": "ci[/]bot", "reason": "deleted", "commit_sha": "abc", "log_path": "/x/[/]y.log"}])
    assert "ci[/]bot" in capsys.readouterr().out
