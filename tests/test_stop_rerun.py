"""`gitopsq stop` and `rerun` through the API (a write token), the run page's buttons (a write
session and its CSRF token) and the CLI (--server, or --db as the OS user); end to end on a served
daemon: the history and `ps` name who did it."""

from __future__ import annotations

import getpass
import json
import re

import httpx
import pytest

from gitopsq import intents, tokens
from gitopsq.store import Store
from gitopsq.web import create_app
from gitopsq.web.auth import COOKIE, csrf_token
from tests.helpers import GitRepo, Recorder, run_cli, task
from tests.test_daemon import Daemon, free_port, wait_for
from tests.webserver import add_run, bearer, running

NOW = 1_800_000_000.0


@pytest.fixture
def site(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    add_run(store, "train", NOW - 600, status="running")
    add_run(store, "done", NOW - 900, status="done", exit_code=0)
    wake = Recorder()
    app = create_app(db, wake, lambda: {"branch": "main"}, None, clock=lambda: NOW)
    with running(app) as url:
        yield url, store, wake
    store.close()


def test_the_api_records_a_stop_and_a_rerun_with_the_tokens_name(site):
    url, store, wake = site
    writer, reader = bearer(store, name="ci"), bearer(store, read_only=True, name="viewer")
    refused = httpx.post(f"{url}/api/runs/train/stop", headers=reader)
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    assert httpx.post(f"{url}/api/runs/train/stop").status_code == 401
    reply = httpx.post(f"{url}/api/runs/train/stop", headers=writer)
    assert reply.status_code == 202
    body = reply.json()
    assert (body["run"], body["kind"], body["actor"], body["via"], body["done_at"]) == ("train", "stop", "ci", "api", None)
    assert body["submission_id"] == store.current_submission("train")["id"] and wake.calls == ["intents"]
    again = httpx.post(f"{url}/api/runs/train/stop", headers=writer)  # asked twice: one intent
    assert again.json()["id"] == body["id"] and len(intents.pending(store)) == 1
    finished = httpx.post(f"{url}/api/runs/done/stop", headers=writer)
    assert finished.status_code == 409 and "not active" in finished.json()["detail"]
    assert httpx.post(f"{url}/api/runs/nope/rerun", headers=writer).status_code == 404
    rerun = httpx.post(f"{url}/api/runs/done/rerun", headers=writer)
    assert rerun.status_code == 202 and rerun.json()["kind"] == "rerun"
    events = [(e["kind"], json.loads(e["detail"])) for e in store.events("done")]
    assert ("rerun-requested", {"by": "ci", "via": "api"}) in events


def test_the_run_pages_buttons_need_a_write_session_and_its_csrf_token(site):
    url, store, wake = site
    write_token = tokens.create(store, "alice")
    read_token = tokens.create(store, "bob", read_only=True)
    with httpx.Client(base_url=url, cookies={COOKIE: write_token}) as alice:
        page = alice.get("/runs/train").text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)[1]
        assert csrf == csrf_token(write_token) and 'action="/runs/train/stop"' in page
        assert alice.post("/runs/train/stop", data={}).status_code == 403  # no CSRF token: a form from elsewhere
        assert alice.post("/runs/train/stop", data={"csrf": csrf_token(read_token)}).status_code == 403
        assert intents.pending(store) == []
        done = alice.post("/runs/train/stop", data={"csrf": csrf})
        assert done.status_code == 303 and done.headers["location"] == "/runs/train"
        shown = alice.get("/runs/train").text
        assert "Stop asked by <b class=\"actor\">alice</b>" in shown
        refused = alice.post("/runs/done/stop", data={"csrf": csrf})
        assert refused.status_code == 409 and "nothing to stop" in refused.text
    [intent] = intents.pending(store)
    assert (intent.actor, intent.via) == ("alice", "dashboard")
    with httpx.Client(base_url=url, cookies={COOKIE: read_token}) as bob:
        page = bob.get("/runs/train").text
        assert 'name="csrf"' not in page and "/stop" not in page  # a read-only session gets no buttons
        refused = bob.post("/runs/train/rerun", data={"csrf": csrf_token(read_token)})
        assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    # An API token in a header is no session: a page fetched with it has no forms, a form post with it is refused.
    header = {"Authorization": f"Bearer {write_token}"}
    assert 'name="csrf"' not in httpx.get(f"{url}/runs/train", headers=header).text
    assert httpx.post(f"{url}/runs/train/rerun", headers=header, data={"csrf": csrf}).status_code == 401


def test_the_cli_with_db_records_the_os_user(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    add_run(store, "train", NOW, status="running")
    result = run_cli("stop", "train", "--db", str(db))
    assert result.exit_code == 0, result.output
    me = getpass.getuser()
    assert result.output == (f"Stop of train asked as {me}; no controller runs on this state: it applies it when it "
                             "starts.\n")
    [intent] = intents.pending(store)
    assert (intent.kind, intent.actor, intent.via) == ("stop", me, "cli")
    missing = run_cli("rerun", "nope", "--db", str(db))
    assert missing.exit_code == 1 and "no run named 'nope'" in missing.output
    store.close()


def test_the_cli_with_server_and_a_wrong_token_names_the_server_and_the_401(site):
    url, store, _ = site
    result = run_cli("stop", "train", "--server", url, "--token", "gq_wrong")
    assert result.exit_code == 1
    assert f"{url} refused the token: 401 Unauthorized (the token is not valid (unknown or revoked))" in result.output
    assert "gq_wrong" not in result.output
    bare = run_cli("stop", "train", "--server", url, env={"GITOPSQ_TOKEN": ""})
    assert bare.exit_code == 1 and "needs an API token" in bare.output


# --- end to end: a served daemon over a real repo, real processes -----------------------------------

def test_stop_and_rerun_change_the_history_with_the_actor(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/serve.yml", task("serve", "sleep 600"))
    repo.write("runs/once.yml", task("once", "echo once"))
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    daemon = Daemon(repo.path, db, "--http", f"127.0.0.1:{port}", "--local-slots", "2")
    try:
        status = lambda name: next((r["status"] for r in daemon.rows() if r["name"] == name), None)
        wait_for(lambda: status("serve") == "running" and status("once") == "done", what="serve running, once done")
        daemon.token_header()  # the admin token exists: make one named for the team's CI
        ci = run_cli("token", "create", "ci", "--db", str(db)).stdout.strip()
        stopped = run_cli("stop", "serve", "--server", url, "--token", ci)
        assert stopped.exit_code == 0 and "Stop of serve asked as token ci" in stopped.output, stopped.output
        wait_for(lambda: status("serve") == "cancelled", what="serve stopped")
        ps = run_cli("ps", "--db", str(db), env={"COLUMNS": "200"}).output
        assert re.search(r"serve\s+cancelled.*stopped by ci", ps), ps
        history = run_cli("history", "serve", "--db", str(db), "--json")
        assert [(s["status"], s["reason"], s["stopped_by"]) for s in json.loads(history.output)] == [
            ("cancelled", "stopped", "ci")]
        api = httpx.get(f"{url}/api/runs/serve", headers=daemon.token_header()).json()
        assert api["why"] == "stopped by ci" and api["stopped_by"] == "ci"

        rerun = run_cli("rerun", "once", "--db", str(db))
        assert rerun.exit_code == 0 and "the controller (pid" in rerun.output, rerun.output
        wait_for(lambda: len(json.loads(run_cli("history", "once", "--db", str(db), "--json").output)) == 2,
                 what="a second submission of once")
        wait_for(lambda: status("once") == "done", what="the rerun to finish")
        rows = json.loads(run_cli("history", "once", "--db", str(db), "--json").output)
        me = getpass.getuser()
        assert [(s["submission"], s["status"], s["submitted_by"]) for s in rows] == [(1, "done", None), (2, "done", me)]
        table = run_cli("history", "once", "--db", str(db), env={"COLUMNS": "200"}).output
        assert f"rerun by {me}" in table
        # The file did not change: the stopped run stays stopped through an unrelated commit.
        repo.write("README.md", "notes\n")
        repo.commit()
        wait_for(lambda: _cursor(db) == repo.head(), what="the commit reconciled")
        assert [s["status"] for s in json.loads(run_cli("history", "serve", "--db", str(db), "--json").output)] == [
            "cancelled"]
    finally:
        daemon.stop()


def _cursor(db) -> str | None:
    store = Store(db)
    try:
        return store.cursor("main")
    finally:
        store.close()


def test_the_run_pages_stop_and_rerun_buttons_in_chromium(site, tmp_path):
    """A person logged in with a write token presses the buttons; a read-only session sees none."""
    from tests.browser import Browser, squash
    from tests.test_web_dashboard import log_in

    url, store, wake = site
    write_token = tokens.create(store, "alice")
    read_token = tokens.create(store, "bob", read_only=True)
    with Browser(tmp_path) as browser:
        log_in(browser, url + "/runs/train", write_token)
        page = browser.dom()
        assert squash(page.one("form", "stop").one("button").text()) == "Stop submission 1"
        browser.click_and_wait("form.stop button")
        page = browser.dom()
        assert squash(page.one("p", "intent").text()).startswith("Stop asked by alice")
        browser.goto(url + "/runs/done")
        browser.click_and_wait("form.rerun button")
        assert squash(browser.dom().one("p", "intent").text()).startswith("Rerun asked by alice")
    assert [(i.run, i.kind, i.actor, i.via) for i in intents.pending(store)] == [
        ("train", "stop", "alice", "dashboard"), ("done", "rerun", "alice", "dashboard")]
    assert wake.calls == ["intents", "intents"]
    (tmp_path / "bob").mkdir()
    with Browser(tmp_path / "bob") as browser:  # a profile of its own: no cookie of alice's
        log_in(browser, url + "/runs/train", read_token)
        page = browser.dom()
        assert page.find_all("form", "stop") == [] and page.find_all("form", "rerun") == []
