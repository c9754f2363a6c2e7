"""Following a submission's output: `gitopsq logs -f`, `--tail`, and GET /api/runs/{name}/logs?follow=1.

The runs are real processes under a real daemon; each waits for a file the test creates, so the
follower is seen printing output before the run ends, and then ending with it.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import httpx

from gitopsq.logfollow import AttemptLog, read_submission
from gitopsq.store import Store
from tests.helpers import GitRepo, run_cli, task
from tests.test_daemon import Daemon, free_port, wait_for
from tests.webserver import add_run

SECRET = "hunter2-very-secret"


def gated_run(tmp_path):
    """A config repo whose run prints a line and its secret, waits for `go`, prints another line and ends."""
    go = tmp_path / "go"
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/count.yml", "type: task\nname: count\nenv: [TOKEN]\ncommands:\n"
                                 f"  - echo \"first $TOKEN\"; while [ ! -e {go} ]; do sleep 0.1; done; echo second\n")
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    db.parent.mkdir(parents=True)
    assert run_cli("secret", "set", "TOKEN", "--db", str(db), input=SECRET).exit_code == 0
    return repo, db, go


def read_until(stream, text: str, timeout: float = 30.0) -> str:
    """What a pipe gives until `text` has come (a test that hangs would hang the suite)."""
    got, deadline = b"", time.monotonic() + timeout
    while text.encode() not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"{text!r} did not come; got {got!r}"
        if select.select([stream], [], [], left)[0]:
            chunk = os.read(stream.fileno(), 4096)
            assert chunk, f"the stream ended before {text!r}; got {got!r}"
            got += chunk
    return got.decode()


def status_of(daemon, name):
    return next((r["status"] for r in daemon.rows() if r["name"] == name), None)


def test_logs_follow_prints_a_running_runs_output_masked_and_exits_0_when_it_ends(tmp_path, cleanup_nodes):
    repo, db, go = gated_run(tmp_path)
    daemon = Daemon(repo.path, db, "--http", "off")
    try:
        wait_for(lambda: status_of(daemon, "count") == "running", what="count running")
        follower = subprocess.Popen([sys.executable, "-m", "gitopsq", "logs", "-f", "count", "--db", str(db)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            first = read_until(follower.stdout, "first *** \n".replace(" \n", "\n"))
            assert follower.poll() is None, "it follows: the run has not ended"
            go.touch()
            out, err = follower.communicate(timeout=60)
        finally:
            if follower.poll() is None:
                follower.kill()
        assert follower.returncode == 0
        assert first + out.decode() == "first ***\nsecond\n"
        assert "count submission 1 done (exit code 0)" in err.decode()
        assert status_of(daemon, "count") == "done"
    finally:
        go.touch()
        daemon.stop()


def test_the_streaming_route_ends_with_the_submission(tmp_path, cleanup_nodes):
    repo, db, go = gated_run(tmp_path)
    port = free_port()
    daemon = Daemon(repo.path, db, "--http", f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: status_of(daemon, "count") == "running", what="count running")
        auth = daemon.token_header()
        assert httpx.get(f"{base}/api/runs/count/logs").status_code == 401  # a read token, as every API route
        body = ""
        with httpx.stream("GET", f"{base}/api/runs/count/logs", params={"follow": 1}, headers=auth,
                          timeout=60) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
            assert response.headers["x-gitopsq-submission"] == "1"
            for chunk in response.iter_text():
                body += chunk
                if "first" in body and not go.exists():
                    assert status_of(daemon, "count") == "running"
                    go.touch()
        assert body == "first ***\nsecond\n"
        assert status_of(daemon, "count") == "done"
        assert SECRET not in body
        # Without follow, what is there; with tail, its last lines; unknown runs and submissions are 404.
        assert httpx.get(f"{base}/api/runs/count/logs", params={"tail": 1}, headers=auth).text == "second\n"
        assert httpx.get(f"{base}/api/runs/nope/logs", headers=auth).status_code == 404
        assert httpx.get(f"{base}/api/runs/count/logs", params={"submission": 2}, headers=auth).status_code == 404
    finally:
        go.touch()
        daemon.stop()


def test_tail_starts_with_the_last_lines_of_the_latest_attempt(tmp_path):
    first, second = tmp_path / "a1.log", tmp_path / "a2.log"
    first.write_text("attempt one\n")
    second.write_text("".join(f"line {i}\n" for i in range(1, 8)))
    store = Store(tmp_path / "state.db")
    sub = add_run(store, "job", 1000.0, status="done", log=str(first), exit_code=0)
    store.event("job", sub, "running", {"log": str(second)}, None, 1001.0)  # a retry ran on a second node
    db = str(tmp_path / "state.db")
    assert run_cli("logs", "job", "--tail", "2", "--db", db).output == "line 6\nline 7\n"
    assert run_cli("logs", "job", "--db", db).output.startswith(f"--- attempt 1 ({first})\nattempt one\n--- attempt 2")
    followed = run_cli("logs", "job", "-f", "--tail", "1", "--db", db)  # ended: nothing to wait for
    assert followed.exit_code == 0 and followed.stdout == "line 7\n"
    assert followed.stderr == "--- job submission 1 done (exit code 0)\n"
    store.close()


def test_the_reader_goes_on_where_it_was_after_the_cap_cut_the_log(tmp_path):
    log = tmp_path / "run.log"
    log.write_bytes(b"one\ntwo\n")
    reader = AttemptLog(str(log))
    assert reader.read_new() == (b"one\ntwo\n", 0)
    # The node's cap keeps the tail under a line saying how much of the whole output was cut.
    log.write_bytes(b"[gitopsq: 4 bytes of output cut here]\ntwo\nthree\n")
    assert reader.read_new() == (b"three\n", 0)
    log.write_bytes(b"[gitopsq: 19 bytes of output cut here]\nfive\n")  # four was cut before it was read
    assert reader.read_new() == (b"five\n", 5)


def test_follow_waits_for_the_next_attempt_and_masks_a_value_split_between_reads(tmp_path):
    store = Store(tmp_path / "state.db")
    log = tmp_path / "a1.log"
    log.write_text("x hunter2-")
    sub = add_run(store, "job", 1000.0, status="running", log=str(log))
    looks = []

    def sleep(_):
        looks.append(1)
        if len(looks) == 1:
            with open(log, "a") as f:
                f.write("very-secret y\n")
        elif len(looks) == 2:
            with store.transaction():
                store.set_status(sub, "done", 1010.0, exit_code=0)

    text = "".join(read_submission(lambda: store, sub, lambda: [SECRET], follow=True, sleep=sleep))
    assert text == "x *** y\n" and len(looks) == 2
    store.close()


def test_the_run_page_follows_the_log_live_in_chromium(tmp_path):
    """The page is rendered with the log so far; its script streams what comes after (with the
    dashboard's login cookie), until the run ends."""
    import threading

    from gitopsq import tokens
    from gitopsq.web import create_app
    from tests.browser import Browser, squash
    from tests.test_web_dashboard import log_in
    from tests.webserver import running

    store = Store(tmp_path / "state.db")
    log = tmp_path / "job.log"
    log.write_text("before the page\n")
    sub = add_run(store, "job", time.time() - 60, status="running", log=str(log))
    token = tokens.create(store, "viewer", read_only=True)
    asked = threading.Event()

    def app_recording_streams(app):
        async def wrapped(scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/api/runs/job/logs":
                asked.set()
            await app(scope, receive, send)
        return wrapped

    def write_then_end():
        if asked.wait(60):  # the page is rendered and its script is following: now the run writes and ends
            with open(log, "a") as f:
                f.write("after the page <b>x</b>\n")
            with store.transaction():
                store.set_status(sub, "done", time.time(), exit_code=0)

    app = create_app(tmp_path / "state.db", lambda reason: None, lambda: {"branch": "main"}, None)
    with running(app_recording_streams(app)) as url, Browser(tmp_path) as browser:
        log_in(browser, url + "/runs/job", token)
        writer = threading.Thread(target=write_then_end)
        writer.start()
        ended = wait_for(lambda: browser.evaluate(
            "(document.querySelector('.live-state') || {}).getAttribute && "
            "document.querySelector('.live-state').getAttribute('data-state') === 'ended'"), what="the tail to end")
        writer.join(70)
        dom = browser.dom()
    store.close()
    assert ended and asked.is_set(), "the page did not follow the log"
    log_box = dom.one("pre", "log")
    assert log_box.text() == "before the page\nafter the page <b>x</b>\n" and log_box.find_all("b") == []
    assert dom.one(cls="live-state").attrs["data-state"] == "ended"
    assert squash(dom.one(cls="live-state").text()) == "The submission ended; reload for its status."


def test_follow_reads_every_node_of_a_cluster_run_until_it_ends(tmp_path):
    """A cluster run's nodes all write at once: following reads each of them, not only the last."""
    store = Store(tmp_path / "state.db")
    logs = [tmp_path / "rank0.log", tmp_path / "rank1.log"]
    logs[0].write_text("zero starts\n")
    logs[1].write_text("one starts\n")
    sub = add_run(store, "train", 1000.0, status="running")  # its nodes are in the event below
    store.event("train", sub, "running", {"log": str(logs[0]), "nodes": [{"rank": r, "log": str(p)} for r, p in enumerate(logs)]},
                None, 1001.0)
    looks = []

    def sleep(_):
        looks.append(1)
        if len(looks) == 1:
            with open(logs[0], "a") as f:
                f.write("zero ends\n")
            with open(logs[1], "a") as f:
                f.write("one ends\n")
        elif len(looks) == 2:
            with store.transaction():
                store.set_status(sub, "done", 1010.0, exit_code=0)

    text = "".join(read_submission(lambda: store, sub, lambda: [], follow=True, sleep=sleep))
    assert text == (f"--- attempt 1, node 0 ({logs[0]})\nzero starts\n--- attempt 1, node 1 ({logs[1]})\none starts\n"
                    f"--- attempt 1, node 0 ({logs[0]})\nzero ends\n--- attempt 1, node 1 ({logs[1]})\none ends\n")
    tailed = "".join(read_submission(lambda: store, sub, lambda: [], tail=1))
    assert tailed == f"--- attempt 1, node 0 ({logs[0]})\nzero ends\n--- attempt 1, node 1 ({logs[1]})\none ends\n"
    store.close()
