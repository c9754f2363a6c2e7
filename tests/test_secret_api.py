"""The secrets API over real HTTP, and the dashboard's log tail: a value goes in and never comes
back out, not in an answer, not in an error, not in a served log."""

from __future__ import annotations

import json

import httpx
import pytest

from gitopsq.secretkey import key_path_for
from gitopsq.secretstore import SecretStore
from gitopsq.spec import RunSpec
from gitopsq.store import Store
from gitopsq.web import create_app
from gitopsq.web.queries import LOG_TAIL_BYTES, log_tail
from gitopsq.web.secrets import MAX_BODY
from tests.browser import parse
from tests.helpers import Recorder
from tests.webserver import add_run, bearer, running

NOW = 1_800_000_000.0
VALUE = "hf_Zq8sXv2LmN4pR7tY1uW3"
STATUS = {"branch": "main", "commit": "0" * 40, "provider": "local", "provider_health": None, "last_step_at": NOW,
          "repo": "/srv/config.git"}


@pytest.fixture
def served(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    spec = RunSpec(name="train", type="task", commands=("python train.py",), env=(("HF_TOKEN", "${{ secrets.HF_TOKEN }}"),))
    with store.transaction():
        store.upsert_run("train", "runs/train.yml", None, spec.to_dict(), True, NOW)
    wake = Recorder()
    app = create_app(db, wake, lambda: dict(STATUS), None, clock=lambda: NOW)
    with running(app) as url, httpx.Client(base_url=url, timeout=10, headers=bearer(store)) as client:
        yield client, store, wake, db
    store.close()


def test_put_list_delete(served):
    client, store, wake, _ = served
    assert client.get("/api/secrets").json() == [
        {"name": "HF_TOKEN", "set": False, "created_at": None, "updated_at": None, "runs": ["train"]}]
    created = client.put("/api/secrets/HF_TOKEN", json={"value": VALUE})
    assert created.status_code == 200
    assert created.json() == {"name": "HF_TOKEN", "created": True, "created_at": NOW, "updated_at": NOW}
    assert wake.calls == ["secrets"]
    assert SecretStore(store).get("HF_TOKEN") == VALUE
    replaced = client.put("/api/secrets/HF_TOKEN", json={"value": VALUE + "-2"})
    assert replaced.json()["created"] is False and SecretStore(store).get("HF_TOKEN") == VALUE + "-2"
    listed = client.get("/api/secrets")
    assert listed.json() == [{"name": "HF_TOKEN", "set": True, "created_at": NOW, "updated_at": NOW, "runs": ["train"]}]
    for reply in (created, replaced, listed, client.get("/api/runs"), client.get("/openapi.json")):
        assert VALUE not in reply.text and VALUE not in str(reply.headers)
    removed = client.delete("/api/secrets/HF_TOKEN")
    assert removed.status_code == 204 and removed.content == b""
    assert SecretStore(store).get("HF_TOKEN") is None
    missing = client.delete("/api/secrets/HF_TOKEN")
    assert missing.status_code == 404 and missing.json() == {"detail": "no secret named 'HF_TOKEN'"}


BAD_BODIES = [
    ("wrong type", json.dumps({"value": [VALUE]})),
    ("an object", json.dumps({"value": {"v": VALUE}})),
    ("extra field", json.dumps({"value": VALUE, "note": VALUE})),
    ("misnamed field", json.dumps({"valeu": VALUE})),
    ("not an object", json.dumps([VALUE])),
    ("a bare string", json.dumps(VALUE)),
    ("broken JSON", '{"value": "' + VALUE),
    ("trailing garbage", json.dumps({"value": VALUE}) + VALUE),
    ("NUL byte", json.dumps({"value": VALUE + "\0"})),
    ("too long", json.dumps({"value": VALUE * 2200})),  # under the body cap, over the value limit
    ("lone surrogate", '{"value": "' + VALUE + '\\ud800"}'),
]


@pytest.mark.parametrize("why, body", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_a_bad_body_is_refused_without_echoing_the_value(served, why, body):
    client, store, wake, _ = served
    reply = client.put("/api/secrets/HF_TOKEN", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert VALUE not in reply.text and VALUE[:8] not in reply.text
    assert isinstance(reply.json()["detail"], list) and all("input" not in e for e in reply.json()["detail"])
    assert SecretStore(store).list() == [] and wake.calls == []


def test_a_body_over_64_kib_is_refused_before_it_is_read(served):
    client, store, *_ = served
    body = json.dumps({"value": VALUE * (MAX_BODY // len(VALUE) + 1)}).encode()
    reply = client.put("/api/secrets/HF_TOKEN", content=body)
    assert reply.status_code == 413 and VALUE not in reply.text
    chunked = client.put("/api/secrets/HF_TOKEN", content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]))
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and VALUE not in chunked.text
    assert SecretStore(store).list() == []


def test_a_bad_name_is_refused_without_echoing_the_body(served):
    client, *_ = served
    reply = client.put("/api/secrets/.hidden", json={"value": VALUE})
    assert reply.status_code == 422 and VALUE not in reply.text
    assert client.delete("/api/secrets/a%20b").status_code == 422


def test_a_missing_key_is_an_error_that_names_no_value(served):
    client, store, _, db = served
    client.put("/api/secrets/HF_TOKEN", json={"value": VALUE})
    key_path_for(db).unlink()
    reply = client.put("/api/secrets/other", json={"value": VALUE + "-other"})
    assert reply.status_code == 500 and "is missing" in reply.json()["detail"]
    assert VALUE not in reply.text
    assert not key_path_for(db).exists()


# --- the dashboard's log tail ---------------------------------------------------------------------

def test_the_dashboard_masks_what_every_attempt_was_given(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    log = tmp_path / "train.log"
    log.write_text(f"login with {VALUE}\nwandb wandb-key-1 ok\nretry with hf-second-value\n")
    sub = add_run(store, "train", NOW, status="running", log=str(log))
    secrets = SecretStore(store)
    secrets.record_attempt(sub, 1, [VALUE, "wandb-key-1"])
    secrets.record_attempt(sub, 2, ["hf-second-value"])
    app = create_app(db, Recorder(), lambda: dict(STATUS), None, clock=lambda: NOW)
    with running(app) as url:
        page = httpx.get(url + "/runs/train", headers=bearer(store))
        assert page.status_code == 200
        assert parse(page.text).one("pre", "log").text().splitlines() == [
            "login with ***", "wandb *** ok", "retry with ***"]
        assert VALUE not in page.text and "wandb-key-1" not in page.text
        key_path_for(db).unlink()
        hidden = httpx.get(url + "/runs/train", headers=bearer(store))
        assert "log hidden: it may hold secrets that cannot be masked" in hidden.text
        assert VALUE not in hidden.text and "login with" not in hidden.text
    store.close()


def test_the_tail_masks_a_value_that_straddles_its_window(tmp_path):
    # A two-line value whose first line is cut by the window's start, and whose short last line
    # (too short to mask alone) is inside the window.
    first_line = "first-line-of-a-key"
    value = first_line + "\nZq"
    prefix, after = "start\n", "y" * (LOG_TAIL_BYTES - 8) + "\n"
    log = tmp_path / "big.log"
    log.write_text(prefix + value + "\n" + after)
    window_start = log.stat().st_size - LOG_TAIL_BYTES
    assert len(prefix) < window_start < len(prefix) + len(first_line)
    tail, problem = log_tail(str(log), lines=5, secrets=[value])
    assert problem is None
    assert tail.splitlines() == ["***", after.strip()]  # not "Zq"
