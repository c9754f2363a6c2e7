"""`gitopsq plan --server/--db` against a served daemon over a real repo, with real processes: what a
pull request does to the runs the controller holds and to its queue."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import GitRepo, run_cli, task
from tests.test_daemon import Daemon, free_port, wait_for

FOREVER = "retry: {on_events: [no-capacity], duration: off}"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One daemon (1 slot, no GPU): hello done, sleeper running, waiting queued behind it; and two
    branches: `bump` (edits hello, adds urgent, gpu and needy), `edit` (changes sleeper's command)."""
    tmp_path = tmp_path_factory.mktemp("served")
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/hello.yml", task("hello"))
    repo.commit("hello")
    db = tmp_path / "state" / "gitopsq.db"
    port = free_port()
    daemon = Daemon(repo.path, db, "--http", f"127.0.0.1:{port}", "--local-slots", "1", "--local-gpus", "0")
    try:
        status = lambda name: next((r for r in daemon.rows() if r["name"] == name), {}).get("status")
        wait_for(lambda: status("hello") == "done", what="hello done")
        repo.write("runs/sleeper.yml", task("sleeper", "sleep 600"))
        repo.commit("sleeper")
        wait_for(lambda: status("sleeper") == "running", what="sleeper running")
        repo.write("runs/waiting.yml", task("waiting", "sleep 600", priority=1) + FOREVER + "\n")
        repo.commit("waiting")
        wait_for(lambda: any(r["name"] == "waiting" and r["status"] == "queued" and r["needs"] for r in daemon.rows()),
                 what="waiting queued behind sleeper")
        repo.git("checkout", "-q", "-b", "bump")
        repo.write("runs/hello.yml", task("hello", priority=3))
        repo.write("runs/urgent.yml", task("urgent", priority=5) + FOREVER + "\n")
        repo.write("runs/gpu.yml", task("gpu") + "resources: {gpu: 1}\n")
        repo.write("runs/needy.yml", "type: task\nname: needy\ncommands: [x]\nenv: [HF_TOKEN]\n")
        repo.commit("bump")
        repo.git("checkout", "-q", "-b", "edit", "main")
        repo.write("runs/sleeper.yml", task("sleeper", "sleep 601"))
        repo.commit("edit")
        repo.git("checkout", "-q", "main")
        daemon.token_header()  # serve made its admin token: the state has tokens
        reader = run_cli("token", "create", "reader", "--read-only", "--db", str(db)).stdout.strip()
        yield repo, db, f"http://127.0.0.1:{port}", reader
    finally:
        daemon.stop()
        from gitopsq.providers.base import log_dir_for
        from gitopsq.providers.local import LocalNodeDriver

        driver = LocalNodeDriver(log_dir_for(db), slots=1, gpus=0)
        for node in driver.list_nodes():
            driver.destroy_node(node, ex_timeout=2)


def plan(repo, head, *args, env=None):
    return run_cli("plan", "--repo", str(repo.path), "--base", "main", "--head", head, *args, env=env)


def test_a_finished_runs_bump_plans_as_a_new_submission(served):
    repo, db, url, reader = served
    alone = plan(repo, "bump").output
    assert alone.startswith("Planned from git alone") and "~ hello (update in place)" in alone
    live = plan(repo, "bump", "--server", url, "--token", reader)
    assert live.exit_code == 0, live.output
    assert f"Planned against the controller at {url} (branch main, commit" in live.output
    assert "  + hello: submit (new submission 2) runs/hello.yml priority 3" in live.output
    assert "submission 1 done" in live.output and "a change to a finished run is a new submission" in live.output
    detailed = plan(repo, "bump", "--server", url, "--detailed-exitcode", env={"GITOPSQ_TOKEN": reader})
    assert detailed.exit_code == 2
    as_json = json.loads(plan(repo, "bump", "--server", url, "--token", reader, "--format", "json").output)
    assert as_json["state"]["source"] == "server" and as_json["state"]["free"] == {"gpus": 0, "slots": 0}
    hello = next(a for a in as_json["actions"] if a["run"] == "hello")
    assert hello["action"] == "submit" and hello["live"]["submission"] == 2 and hello["live"]["status"] == "done"


def test_the_markdown_names_queue_positions_what_is_lacking_and_no_preemption(served):
    repo, db, url, reader = served
    md = plan(repo, "bump", "--server", url, "--token", reader, "--format", "markdown").output
    assert "| `+` | **urgent** | submit (new submission 1) | 5 | position 1 of 3, ahead of **waiting**; waits |" in md
    assert "| `+` | **hello** | submit (new submission 2) | 3 | position 2 of 3, ahead of **waiting**; fails: no-capacity |" in md
    assert "| `+` | **gpu** | submit (new submission 1) | 0 | never runs: unsatisfiable |" in md
    assert "| `+` | **needy** | submit (new submission 1) | 0 | waits for secrets: HF_TOKEN |" in md
    assert "sleeper keep running at a lower priority (gitopsq does not preempt)" in md
    assert "can never run on the local provider: resources.gpu" in md
    assert md.rstrip().endswith("<!-- gitopsq-plan -->")
    alone = plan(repo, "bump", "--format", "markdown").output
    assert "_Planned from git alone" in alone and "| queue |" not in alone


def test_a_running_runs_edit_plans_as_a_restart_with_its_running_time(served):
    repo, db, url, reader = served
    text = plan(repo, "edit", "--db", str(db)).output
    assert f"Planned against the state file {db}" in text
    assert re.search(r"-/\+ sleeper: restart \(running for \d+(s|m\d\ds)\) runs/sleeper.yml", text), text
    assert re.search(r"stops submission 1 after \S+ of running: what it has not saved is lost; submission 2 starts "
                     r"from the beginning", text), text
    as_json = json.loads(plan(repo, "edit", "--db", str(db), "--format", "json").output)
    [sleeper] = as_json["actions"]
    assert sleeper["action"] == "restart" and sleeper["live"]["discards"]["status"] == "running"
    assert sleeper["live"]["discards"]["seconds"] > 0 and sleeper["live"]["submission"] == 2
    # Its slot goes to `waiting`, which has a higher priority than the new submission: without a
    # retry on no-capacity, the new one fails at once. The plan says so before the merge.
    assert sleeper["live"]["queue"] == {"position": 2, "of": 2, "overtakes": [], "outcome": "fails",
                                        "reason": "no-capacity"}
    assert "queue: position 2 of 2; fails at once: no-capacity" in text


def test_a_wrong_token_fails_clearly(served):
    repo, db, url, reader = served
    result = plan(repo, "bump", "--server", url, "--token", "gq_not-a-token")
    assert result.exit_code == 1 and result.stdout == ""
    assert (f"Error: {url} refused the token: 401 Unauthorized (the token is not valid (unknown or revoked)); check "
            "--token or $GITOPSQ_TOKEN") in result.output
    unreachable = plan(repo, "bump", "--server", f"http://127.0.0.1:{free_port()}", "--token", reader)
    assert unreachable.exit_code == 1 and "cannot reach the controller at http://127.0.0.1:" in unreachable.output
    elsewhere = plan(repo, "bump", "--server", f"{url}/not-gitopsq", "--token", reader)
    assert elsewhere.exit_code == 1 and f"{url}/not-gitopsq has no /api/state (Not Found)" in elsewhere.output


def test_the_state_route_reads_only_and_judges_what_it_can(tmp_path):
    import httpx

    from gitopsq.providercheck import ProviderCheck, judgment
    from gitopsq.spec import parse_run
    from gitopsq.store import Store
    from gitopsq.web import create_app
    from tests.webserver import add_run, bearer, running

    db = tmp_path / "state.db"
    store = Store(db)
    add_run(store, "train", 1000.0, status="running")
    add_run(store, "later", 1001.0, priority=2)
    header = bearer(store, read_only=True)
    before = store.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    good = json.loads(json.dumps(parse_run(b"type: task\nname: big\ncommands: [x]\nresources: {gpu: 2}\n", "big.yml").to_dict()))
    with ProviderCheck("local", local_gpus=0, local_slots=1).provider() as provider:
        app = create_app(db, lambda reason: None, lambda: {"branch": "main", "commit": "c0ffee"}, None,
                         judge=lambda spec: judgment(provider, spec))
        with running(app) as url:
            reply = httpx.post(f"{url}/api/state", headers=header,
                               json={"runs": ["train", "nope"], "specs": {"big": good, "junk": {"type": 1}}})
            assert httpx.post(f"{url}/api/state", json={}).status_code == 401
            assert httpx.post(f"{url}/api/state", headers=header, json={"runs": "x"}).status_code == 422
    assert reply.status_code == 200
    body = reply.json()
    assert set(body["runs"]) == {"train"} and body["runs"]["train"]["status"] == "running"
    assert [(q["run"], q["priority"]) for q in body["queue"]] == [("later", 2)]
    assert body["running"] == [{"run": "train", "priority": 0}] and (body["branch"], body["commit"]) == ("main", "c0ffee")
    assert body["judged"]["big"]["needs"] == {"slots": 1, "gpus": 2}
    assert "GPU" in body["judged"]["big"]["unsatisfiable"]
    assert body["judged"]["junk"] == {"needs": None, "unsatisfiable": None} and body["unjudged"].startswith("junk: ")
    assert store.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == before  # nothing recorded
    store.close()


def test_the_example_workflow_plans_live_with_its_secrets_and_edits_one_comment(served, tmp_path):
    """The workflow's own shell steps, run as Actions runs them (bash -e), with `gh` recording its calls."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    repo, db, url, reader = served
    steps = {step.get("name"): step for step in yaml.safe_load(
        (Path(__file__).parent.parent / "examples-repo/.github/workflows/gitopsq.yml").read_text())["jobs"]["plan"]["steps"]}
    checkout = tmp_path / "pr"
    subprocess.run(["git", "clone", "-q", "-b", "bump", str(repo.path), str(checkout)], check=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gh-calls"
    existing = tmp_path / "existing-comment"
    (bin_dir / "gh").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                                f'case "$*" in *--paginate*) [ -f {existing} ] && cat {existing};; esac\nexit 0\n')
    (bin_dir / "gh").chmod(0o755)

    def run(step: str, **env) -> subprocess.CompletedProcess:
        base = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "GITHUB_OUTPUT": str(tmp_path / "output")}
        return subprocess.run(["bash", "-e", "-c", steps[step]["run"]], cwd=checkout, env={**base, **env},
                              capture_output=True, text=True)

    planned = run("Plan", BASE_REF="main", GITOPSQ_URL=url, GITOPSQ_TOKEN=reader)
    assert planned.returncode == 0, planned.stderr
    text = (checkout / "plan.md").read_text()
    assert f"Planned against the controller at `{url}`" in text and "submit (new submission 2)" in text
    assert (tmp_path / "output").read_text() == "code=2\n"
    comment = {"REPO": "team/runs", "PR": "7", "CODE": "2", "GH_TOKEN": "x"}
    assert run("Comment the plan", **comment).returncode == 0
    assert calls.read_text().splitlines()[-1] == "api -X POST repos/team/runs/issues/7/comments -F body=@plan.md"
    existing.write_text("4242\n")  # the next push: the comment made before is found by its marker
    assert run("Comment the plan", **comment).returncode == 0
    assert calls.read_text().splitlines()[-1] == "api -X PATCH repos/team/runs/issues/comments/4242 -F body=@plan.md"

    alone = run("Plan", BASE_REF="main", GITOPSQ_URL="", GITOPSQ_TOKEN="")  # no secrets (a fork): git alone
    assert alone.returncode == 0 and "Planned from git alone" in (checkout / "plan.md").read_text()
    wrong = run("Plan", BASE_REF="main", GITOPSQ_URL=url, GITOPSQ_TOKEN="gq_wrong")
    assert wrong.returncode != 0 and "refused the token: 401 Unauthorized" in wrong.stderr


def test_the_state_carries_a_waiting_cluster_runs_nodes(tmp_path):
    """The queue in the state says which entries are gangs, so the plan's admission reserves for them."""
    from gitopsq.livestate import live_state, state_json
    from gitopsq.spec import RunSpec
    from gitopsq.store import Store

    store = Store(tmp_path / "state.db")
    spec = RunSpec(name="wide", type="task", commands=("x",), nodes=3).to_dict()
    with store.transaction():
        store.upsert_run("wide", "runs/wide.yml", None, spec, True, 100.0)
        store.add_submission("wide", spec, "c0ffee", 100.0)
    data = json.loads(json.dumps(state_json(store, [], {}, None, 200.0)))
    assert [(entry["run"], entry["nodes"]) for entry in data["queue"]] == [("wide", 3)]
    assert live_state(data).queue[0].gang
    store.close()
