"""kill -9 of the running daemon on EC2 (moto) at random points, while runs are created, reported
and cancelled: no submission gets a second instance, no instance or security group is left, and
every submission ends as an uninterrupted run's does.

Each round commits two new runs (A_k, a service whose port is opened to --allow-cidr, and B_k, a
task), deletes B_{k-2} and reports the earlier As' exit code 0 as their nodes would (POST
.../report with the attempt's token, again after a restart when the daemon was down), then kills
the daemon at a random moment and starts it again. Whatever the moments, A_k ends done and B_k cancelled, each as
its first and only submission.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from gitopsq.nodetoken import attempt_token
from gitopsq.providers import ec2
from gitopsq.providers.base import TAG_CONTROLLER, TAG_SUBMISSION
from gitopsq.store import Store, listing
from tests.helpers import ROOT, GitRepo
from tests.moto_ec2 import TEST_KEY, TEST_SECRET, MotoEC2Server
from tests.test_daemon import free_port, wait_for

RESOURCES = "resources: {cpu: 2, memory: 8GB}\n"


def service(k: int) -> str:
    return f"type: service\nport: {8000 + k}\n{RESOURCES}commands: ['python3 -m http.server {8000 + k}']\n"


def task() -> str:
    return f"type: task\n{RESOURCES}commands: ['sleep 600']\n"


class Suite:
    """A config repo, moto, and `gitopsq serve` on EC2 started (and killed) as a process."""

    def __init__(self, root: Path, moto: MotoEC2Server):
        self.root = root
        self.moto = moto
        self.repo = GitRepo(root / "repo")
        self.repo.write("README.md", "runs\n")
        self.repo.commit()
        self.db = root / "state" / "gitopsq.db"
        self.db.parent.mkdir(parents=True)
        (root / "key").write_text(TEST_KEY)
        (root / "secret").write_text(TEST_SECRET)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        image = ec2.pick_image(self.driver()).id  # by id: the daemon need not search the images at each start
        self.args = [sys.executable, "-m", "gitopsq", "serve", "--repo", str(self.repo.path), "--db", str(self.db),
                     "--provider", "ec2", "--provider-opt", f"endpoint={moto.endpoint}", "--provider-opt", f"image={image}",
                     "--provider-key-file", str(root / "key"), "--provider-secret-file", str(root / "secret"),
                     "--public-url", self.url, "--http", f"127.0.0.1:{self.port}", "--interval", "1s",
                     "--allow-cidr", "203.0.113.0/24"]
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.reported: set[str] = set()

    def driver(self):
        return ec2.make_ec2_driver(endpoint=self.moto.endpoint, key=TEST_KEY, secret=TEST_SECRET)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def submissions(self) -> dict[str, dict]:
        store = Store(self.db)
        try:
            return {row["name"]: dict(row) | {"token": store.submission(row["submission_id"])["token"]}
                    for row in listing(store, include_all=True)}
        finally:
            store.close()

    def report(self, run: str) -> bool:
        """The node of `run` reports exit code 0: True once the daemon took it (or had taken it)."""
        if run in self.reported:
            return True
        sub = self.submissions().get(run)
        if sub is None or sub["status"] != "running":
            return False
        token = attempt_token(sub["token"], sub["attempts"])
        try:
            reply = httpx.post(f"{self.url}/api/submissions/{sub['submission_id']}/report",
                               json={"token": token, "exit_code": 0}, timeout=5)
        except httpx.HTTPError:  # the daemon is down: the node tries again later
            return False
        if reply.status_code == 200:
            self.reported.add(run)
        return reply.status_code == 200

    def instances(self) -> list:
        return ec2.list_nodes_by_tag(self.driver(), TAG_CONTROLLER, Store(self.db).controller_id)

    def groups(self) -> list[str]:
        return [g.name for g in self.driver().ex_get_security_groups() if g.name.startswith("gitopsq-")]

    def check_no_duplicate(self, where: str) -> None:
        per_submission = Counter(n.extra["tags"][TAG_SUBMISSION] for n in self.instances())
        doubled = {sub: count for sub, count in per_submission.items() if count > 1}
        assert not doubled, f"{where}: submissions with more than one instance: {doubled}"


def run_suite(root: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    with MotoEC2Server() as moto:
        suite = Suite(root, moto)
        suite.start()
        try:
            for k in range(kills):
                change = {f"runs/a{k}.yml": service(k), f"runs/b{k}.yml": task()}
                for name, text in change.items():
                    suite.repo.write(name, text)
                if k >= 2:  # once submitted: a file added and deleted between two reconciles is never a run
                    wait_for(lambda: f"b{k - 2}" in suite.submissions(), timeout=30, what=f"b{k - 2} submitted")
                    suite.repo.remove(f"runs/b{k - 2}.yml")
                suite.repo.commit(f"round {k}")
                deadline = time.monotonic() + rng.uniform(0.0, 1.5)
                while time.monotonic() < deadline:  # reports go out until the kill, as nodes send them
                    for j in range(k):
                        suite.report(f"a{j}")
                    time.sleep(0.05)
                suite.kill()
                suite.check_no_duplicate(f"kill {k}")
                suite.start()
            # No more kills: every A reported, the last Bs deleted, everything settles.
            last = [f"b{k}" for k in range(max(0, kills - 2), kills)]
            wait_for(lambda: all(b in suite.submissions() for b in last), timeout=30, what="the last Bs submitted")
            for b in last:
                suite.repo.remove(f"runs/{b}.yml")
            suite.repo.commit("the last rounds' tasks deleted")
            runs = [f"a{k}" for k in range(kills)]
            wait_for(lambda: all(suite.report(run) for run in runs), timeout=60, what="every A reported")
            try:
                wait_for(lambda: all(s["status"] in ("done", "cancelled") for s in suite.submissions().values())
                         and not suite.instances() and not suite.groups(), timeout=60, what="everything settled")
            except AssertionError:
                rows = sorted((n, s["status"], s["reason"], s["message"]) for n, s in suite.submissions().items())
                raise AssertionError(f"not settled: {rows}\ninstances {[n.id for n in suite.instances()]}, "
                                     f"groups {suite.groups()}\n{suite.log.read_text()[-3000:]}") from None
        finally:
            if suite.proc.poll() is None:
                assert suite.stop() == 0
        state = {name: (s["status"], s["submission"]) for name, s in suite.submissions().items()}
        expected = {**{f"a{k}": ("done", 1) for k in range(kills)}, **{f"b{k}": ("cancelled", 1) for k in range(kills)}}
        assert state == expected
        assert suite.instances() == [] and suite.groups() == []
        store = Store(suite.db)
        try:
            kinds: dict[str, list[str]] = {}
            for row in store.conn.execute("SELECT run, kind FROM events WHERE run IS NOT NULL ORDER BY id"):
                kinds.setdefault(row["run"], []).append(row["kind"])
            created = Counter(row["detail"] for row in store.conn.execute(
                "SELECT submission_id AS detail FROM events WHERE kind = 'running'"))
        finally:
            store.close()
        for k in range(kills):
            assert [x for x in kinds[f"a{k}"] if x in ("submit", "reported", "done")] == ["submit", "reported", "done"]
            assert kinds[f"b{k}"].count("submit") == 1 and kinds[f"b{k}"][-1] == "cancelled"
        assert all(count == 1 for count in created.values()), f"a submission started twice: {created}"
        # RunInstances for as many instances as ran: none made twice, none made for nothing
        made = len(suite.driver().list_nodes(ex_filters={f"tag:{TAG_CONTROLLER}": Store(suite.db).controller_id}))
        assert made == sum(created.values())


@pytest.mark.parametrize("kills", [pytest.param(20, id="20-kills"), pytest.param(100, id="100-kills", marks=pytest.mark.slow)])
def test_the_daemon_killed_at_random_points_on_ec2(tmp_path, kills):
    run_suite(tmp_path, kills, seed=kills)
