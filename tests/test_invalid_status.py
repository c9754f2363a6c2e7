"""A file that turns invalid is not silent: a log line when it breaks and when it is fixed, a
gauge, /healthz, and `ps`, the API and the run page say the run keeps its last valid spec because
its file is invalid since commit X."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from gitopsq.web import create_app
from tests.fakes import fake_world
from tests.helpers import run_cli, task
from tests.webserver import bearer, running


@pytest.fixture
def env(tmp_path):
    with fake_world(tmp_path, {"runs/train.yml": task("train", "sleep 1000"), "runs/other.yml": task("other")},
                    slots=5, message="two runs") as world:
        world.controller.step()
        yield world.repo, world.db, world.store, world.controller


def ps(db) -> dict:
    return {row["name"]: row for row in json.loads(run_cli("ps", "--db", str(db), "--json").output)}


def test_a_broken_file_is_shown_everywhere_until_it_is_fixed(env, caplog):
    repo, db, store, controller = env
    repo.write("runs/train.yml", "type: task\ncommands: [sleep 1000]\npriority: urgent\n")
    broke = repo.commit("a typo")
    with caplog.at_level(logging.INFO, logger="gitopsq.controller"):
        controller.step()
    assert f"runs/train.yml is invalid since {broke[:12]} (run train keeps its last valid spec): runs/train.yml:3: priority:" in caplog.text
    row = ps(db)["train"]
    assert row["status"] == "running" and row["file_invalid"]["since"] == broke
    assert row["why"].startswith(f"runs its last valid spec: file invalid since {broke[:10]} (runs/train.yml:3: priority:")
    table = " ".join(run_cli("ps", "--db", str(db), env={"COLUMNS": "300"}).output.split())
    assert f"file invalid since {broke[:10]}" in table

    repo.write("runs/other.yml", task("other", priority=5))
    repo.commit("an unrelated edit")
    controller.step()
    assert ps(db)["train"]["file_invalid"]["since"] == broke, "invalid since the commit that broke it, not the latest"

    app = create_app(db, lambda reason: None, lambda: {"branch": "main", "commit": None, "provider": "fake",
                                                        "provider_health": None, "last_step_at": None, "repo": None}, None)
    with running(app) as url, httpx.Client(base_url=url, headers=bearer(db)) as client:
        assert client.get("/api/runs/train").json()["file_invalid"]["since"] == broke
        health = client.get("/healthz")
        assert health.status_code == 200 and health.json()["invalid_files"] == 1
        assert "gitopsq_invalid_files 1.0" in client.get("/metrics").text
        page = client.get("/runs/train").text
        assert "Its file is invalid since commit" in page and "keeps running its last valid spec" in page

    repo.write("runs/train.yml", task("train", "sleep 1000"))
    fixed = repo.commit("fixed")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gitopsq.controller"):
        controller.step()
    assert f"runs/train.yml is valid again at {fixed[:12]}" in caplog.text
    assert ps(db)["train"]["file_invalid"] is None and ps(db)["train"]["why"] == ""
