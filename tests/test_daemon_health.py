"""A served daemon whose steps fail says so: /healthz degraded (503) with the step's error, the
metrics count the failures and keep the time of the last successful step, and all of it clears
when a step succeeds again.

The disk is made full for the daemon alone: its RLIMIT_FSIZE soft limit is lowered to 1 byte,
so every write to the database (or its WAL) fails with EFBIG, which SQLite reports as
"database or disk is full" (Python ignores SIGXFSZ, so the write fails instead of killing it).
"""

from __future__ import annotations

import resource

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import GitRepo, task
from tests.test_daemon import Daemon, free_port, wait_for


def scrape(base: str, header: dict) -> dict:
    families = text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=5, headers=header).text)
    return {s.name: s.value for f in families for s in f.samples if not s.labels}


def health(base: str):
    try:
        reply = httpx.get(f"{base}/healthz", timeout=5)
    except httpx.HTTPError:
        return None
    return reply.status_code, reply.json()


def set_file_size_limit(pid: int, soft: int) -> None:
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_makes_health_degraded_until_a_step_succeeds(tmp_path, cleanup_nodes):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/first.yml", task("first", "true"))
    repo.commit()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(repo.path, tmp_path / "state" / "gitopsq.db", "--http", f"127.0.0.1:{port}", "--interval", "1s")
    try:
        wait_for(lambda: (h := health(base)) and h[1]["commit"] == repo.head() and h[1]["last_success_at"], what="a first step")
        assert health(base)[0] == 200 and health(base)[1]["status"] == "ok"
        header = daemon.token_header()
        good = scrape(base, header)["gitopsq_last_step_timestamp_seconds"]

        set_file_size_limit(daemon.proc.pid, 1)
        repo.write("runs/second.yml", task("second", "true"))
        repo.commit("second")  # recording it is a write, and writes now fail
        code, body = wait_for(lambda: (h := health(base)) and h[1]["status"] == "degraded" and h, what="degraded health")
        assert code == 503
        # SQLite says "disk I/O error" for EFBIG, "database or disk is full" for ENOSPC
        assert any(error in body["last_step_error"] for error in
                   ("OperationalError: disk I/O error", "OperationalError: database or disk is full"))
        assert body["reason"] == f"last step failed: {body['last_step_error']}"
        wait_for(lambda: scrape(base, header)["gitopsq_step_failures_total"] >= 2, what="a second failed step")
        samples = scrape(base, header)
        assert samples["gitopsq_last_step_success"] == 0
        assert samples["gitopsq_last_step_timestamp_seconds"] == good, "it means the last successful step"
        page = httpx.get(base + "/", timeout=5, headers=header).text
        assert body["last_step_error"] in page

        set_file_size_limit(daemon.proc.pid, resource.RLIM_INFINITY)
        code, body = wait_for(lambda: (h := health(base)) and h[1]["status"] == "ok" and h, what="health ok again")
        assert code == 200 and body["reason"] is None and body["commit"] == repo.head()
        samples = scrape(base, header)
        assert samples["gitopsq_last_step_success"] == 1
        assert samples["gitopsq_last_step_timestamp_seconds"] > good
        assert samples["gitopsq_step_failures_total"] >= 2, "a counter never goes back"
    finally:
        assert daemon.stop() == 0
