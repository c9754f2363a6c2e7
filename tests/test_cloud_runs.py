"""A cloud run seen like a local one: its output in `gitopsq logs` and on its page while it runs
and after, what never arrived said in it, and a spot notice from the node. EC2 on moto, the web
app under uvicorn, and the node's user-data run here as cloud-init would run it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from gitopsq import tokens
from gitopsq.nodetoken import attempt_token
from gitopsq.providers import ec2
from gitopsq.providers.base import TAG_CONTROLLER
from gitopsq.interruptions import NOTICE
from gitopsq.secretstore import SecretStore
from gitopsq.store import Store
from gitopsq.web import create_app
from tests.helpers import Recorder, run_cli
from tests.moto_ec2 import MotoEC2Server
from tests.test_cloud_inputs import STATUS, Cloud, cloud, env  # noqa: F401  (fixtures: the world, the credentials)
from tests.test_daemon import wait_for
from tests.webserver import running

SECRET_VALUE = "hf-secret-value-4242"
RESOURCES = "resources: {cpu: 2, memory: 8GB}\n"


class Node:
    """A node's user-data running here in the background, in a process group of its own."""

    def __init__(self, cloud: Cloud, run: str, **env: str):
        self.proc = subprocess.Popen(["bash", "-c", cloud.user_data(run)], env=cloud.node_env(GITOPSQ_LOG_INTERVAL="0.2", **env),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.work = cloud.tmp / "node" / "work"

    def wait(self) -> str:
        out, _ = self.proc.communicate(timeout=60)
        return out

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=10)


def logs(cloud: Cloud, run: str) -> str:
    result = run_cli("logs", run, "--db", str(cloud.store.path))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_cloud_runs_output_is_in_logs_and_on_its_page_while_it_runs_and_after(cloud):
    cloud.repo.write("runs/talk.yml", "type: task\nenv: [HF_TOKEN]\n" + RESOURCES + "commands:\n"
                     "  - echo \"started with $HF_TOKEN\"\n  - while [ ! -e go-on ]; do sleep 0.1; done\n  - echo finished\n")
    cloud.repo.commit()
    SecretStore(cloud.store).set("HF_TOKEN", SECRET_VALUE)
    cloud.controller.step()
    sub = cloud.store.current_submission("talk")
    assert sub["status"] == "running", sub["message"]
    assert logs(cloud, "talk") == "", "an empty log from the launch on"
    node = Node(cloud, "talk")
    try:
        wait_for(lambda: "started" in logs(cloud, "talk"), timeout=30, what="the output shipped while the run runs")
        assert logs(cloud, "talk") == "started with ***\n"
        (node.work / "go-on").touch()
        assert node.wait().strip().endswith("gitopsq: commands exited with 0")
    finally:
        if node.proc.poll() is None:
            node.kill()
    cloud.controller.step()
    assert cloud.store.current_submission("talk")["status"] == "done"
    assert logs(cloud, "talk") == "started with ***\nfinished\n"
    # the same file as the node's own log, with nothing added: it all arrived
    assert cloud.store.current_submission("talk")["log_path"].endswith(f"/gitopsq-logs/{sub['id']}.0.log")
    stored = open(cloud.store.current_submission("talk")["log_path"], "rb").read()
    assert stored == (cloud.tmp / "node" / "run.log").read_bytes()
    token = tokens.create(cloud.store, "viewer", read_only=True)
    page = httpx.get(f"{cloud.url}/runs/talk", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200 and "started with ***" in page.text and "finished" in page.text
    assert SECRET_VALUE not in page.text


def test_what_a_lost_node_never_sent_is_said_in_its_log(cloud):
    cloud.repo.write("runs/lost.yml", "type: task\n" + RESOURCES + "retry: {on_events: [interruption]}\n"
                     "commands: ['echo before', 'sleep 60']\n")
    cloud.repo.commit()
    cloud.controller.step()
    sub = cloud.store.current_submission("lost")
    node = Node(cloud, "lost")
    wait_for(lambda: "before" in logs(cloud, "lost"), timeout=30, what="the first line shipped")
    node.kill()  # the node goes, without its last chunk or a report
    [instance] = [n for n in cloud.provider.adapter.list_owned(cloud.provider.driver, cloud.store.controller_id)]
    cloud.provider.driver.ex_stop_node(instance)
    cloud.controller.step()
    assert cloud.store.current_submission("lost")["status"] == "queued"
    text = open(sub["log_path"]).read() if sub["log_path"] else logs(cloud, "lost")
    assert text == ("before\n\n[gitopsq: node lost: it ended without reporting an exit code; "
                    "the node's output after byte 7 did not reach the controller]\n")


class Metadata:
    """Stands in for EC2's instance metadata endpoint: no interruption notice until `notice` is set."""

    def __init__(self):
        self.notice: dict | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):  # IMDSv2's session token
                self._answer(200, b"imds-token")

            def do_GET(self):
                if self.path == "/latest/meta-data/spot/instance-action" and outer.notice is not None:
                    self._answer(200, json.dumps(outer.notice).encode())
                else:
                    self._answer(404, b"Not Found")

            def _answer(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_spot_nodes_interruption_notice_makes_its_end_an_interruption(cloud):
    cloud.repo.write("runs/spot.yml", "type: task\n" + RESOURCES + "spot_policy: spot\nretry: {on_events: [interruption]}\n"
                     "commands: ['echo working', 'while [ ! -e killed ]; do sleep 0.1; done', 'exit 143']\n")
    cloud.repo.commit()
    cloud.controller.step()
    sub = cloud.store.current_submission("spot")
    metadata = Metadata()
    try:
        node = Node(cloud, "spot", GITOPSQ_METADATA_URL=metadata.url, GITOPSQ_SPOT_POLL="0.1")
        wait_for(lambda: "working" in logs(cloud, "spot"), timeout=30, what="the run started")
        metadata.notice = {"action": "terminate", "time": "2030-01-01T00:02:00Z"}
        noticed = lambda: cloud.store.conn.execute(  # noqa: E731
            "SELECT detail FROM events WHERE submission_id = ? AND kind = ?", (sub["id"], NOTICE)).fetchone()
        row = wait_for(noticed, timeout=30, what="the notice recorded")
        assert json.loads(row["detail"]) == {"attempt": 0, "action": "terminate", "time": "2030-01-01T00:02:00Z"}
        (node.work / "killed").touch()  # the shutdown ends the commands; the node still reports
        node.wait()
    finally:
        metadata.close()
    assert cloud.store.current_submission("spot")["exit_code"] == 143
    cloud.controller.step()
    waiting = cloud.store.current_submission("spot")
    assert (waiting["status"], waiting["reason"], waiting["backoff_event"]) == ("queued", "interrupted", "interruption")
    assert waiting["message"] == "spot interruption (notice: terminate at 2030-01-01T00:02:00Z)"
    assert "gitopsq: the provider takes this node back: {\"action\": \"terminate\"" in logs(cloud, "spot")


def test_the_log_route_takes_64_kib_chunks_at_their_offset_and_the_report_stays_at_4_kib(cloud):
    from gitopsq.nodetoken import attempt_token

    cloud.repo.write("runs/job.yml", "type: task\n" + RESOURCES + "commands: ['true']\n")
    cloud.repo.commit()
    cloud.controller.step()
    sub = cloud.store.current_submission("job")
    node = {"Authorization": f"Bearer {attempt_token(sub['token'], sub['attempts'])}"}
    url = f"{cloud.url}/api/submissions/{sub['id']}"
    chunk = b"x" * (64 * 1024)
    with httpx.Client(timeout=10) as client:
        assert client.post(f"{url}/log?offset=0", content=chunk).status_code == 401
        assert client.post(f"{url}/log?offset=0", content=b"x", headers={"Authorization": "Bearer nope"}).status_code == 403
        taken = client.post(f"{url}/log?offset=0", content=chunk, headers=node)
        assert (taken.status_code, taken.json()) == (200, {"offset": 65536, "complete": False})
        assert client.post(f"{url}/log?offset=65536", content=chunk + b"x", headers=node).status_code == 413
        gap = client.post(f"{url}/log?offset=70000", content=b"late", headers=node)
        assert (gap.status_code, gap.json()) == (409, {"offset": 65536, "complete": False})
        end = client.post(f"{url}/log?offset=65000&final=1", content=chunk[:536] + b"end\n", headers=node)
        assert end.json() == {"offset": 65540, "complete": True}
        big_report = {"token": node["Authorization"][7:], "exit_code": 0, "pad": "x" * 5000}
        assert client.post(f"{url}/report", json=big_report).status_code == 413
    assert open(sub["log_path"], "rb").read() == chunk + b"end\n"


def test_a_service_opens_exactly_its_port_to_the_allowed_cidr_and_the_group_goes_after_the_run(cloud):
    from gitopsq.controller import Controller
    from gitopsq.providers.base import bundles_dir_for, cloud_logs_dir_for
    from gitopsq.providers.cloud import make_cloud_provider

    cloud.provider = make_cloud_provider("ec2", {"region": "us-east-1", "endpoint": cloud.moto.endpoint},
                                         cloud.store.controller_id, None, cloud.url, bundles=bundles_dir_for(cloud.store.path),
                                         logs=cloud_logs_dir_for(cloud.store.path), allow_cidrs=("203.0.113.0/24",))
    cloud.controller = Controller(cloud.store, cloud.provider, cloud.config)
    cloud.repo.write("runs/api.yml", "type: service\nport: 8000\n" + RESOURCES + "commands: ['echo serving']\n")
    cloud.repo.write("runs/quiet.yml", "type: task\n" + RESOURCES + "commands: ['true']\n")
    cloud.repo.commit()
    cloud.controller.step()
    sub = cloud.store.current_submission("api")
    driver = cloud.provider.driver
    ours = lambda: [g for g in driver.ex_get_security_groups() if g.name.startswith("gitopsq-")]  # noqa: E731
    [group] = ours()
    assert group.name == f"gitopsq-{cloud.store.controller_id}-{sub['id']}"
    assert [(r["protocol"], r["from_port"], r["to_port"], r["cidr_ips"]) for r in group.ingress_rules] == [
        ("tcp", "8000", "8000", ["203.0.113.0/24"])]
    groups = {r["TagSpecification.1.Tag.1.Value"]: sorted(v for k, v in r.items() if k.startswith("SecurityGroup."))
              for r in cloud.moto.requests("RunInstances")}  # Name tag -> the groups its node joined
    assert groups == {f"gq-api-{sub['id']}": ["default", group.name], f"gq-quiet-{sub['id'] + 1}": []}
    done = cloud.boot(cloud.user_data("api"))
    assert done.returncode == 0, done.stdout + done.stderr
    cloud.controller.step()  # the report is in: done, its node terminated
    assert cloud.store.current_submission("api")["status"] == "done"
    assert logs(cloud, "api") == "serving\n"
    cloud.controller.step()  # the next listing finds no node using the group
    assert ours() == []


def test_a_cloud_log_keeps_the_tail_past_the_controllers_max_log_size(tmp_path):
    from gitopsq.nodetoken import attempt_token

    store = Store(tmp_path / "state" / "gitopsq.db")
    app = create_app(store.path, Recorder(), lambda: dict(STATUS), None, max_log_size=4096)
    try:
        with MotoEC2Server() as moto, running(app) as url:
            cloud = Cloud(tmp_path, moto, url, store)
            cloud.repo.write("runs/chatty.yml", "type: task\n" + RESOURCES + "commands: ['true']\n")
            cloud.repo.commit()
            cloud.controller.step()
            sub = store.current_submission("chatty")
            node = {"Authorization": f"Bearer {attempt_token(sub['token'], sub['attempts'])}"}
            offset = 0
            for start in range(0, 1000, 50):  # 10,000 bytes, 500 at a time
                chunk = "".join(f"line {i:04d}\n" for i in range(start, start + 50)).encode()
                offset = httpx.post(f"{url}/api/submissions/{sub['id']}/log?offset={offset}", content=chunk,
                                    headers=node).json()["offset"]
            assert offset == 10_000
            cloud.config.close()
        text = logs(cloud, "chatty")
        assert len(text) <= 4096 and text.endswith("line 0999\n")
        assert re.match(r"\[gitopsq: \d+ bytes of output (were cut before they could be shown|cut here)\]\n", text)  # as a local log
    finally:
        store.close()


def test_each_node_of_a_cloud_cluster_run_ships_a_log_of_its_own(cloud):
    cloud.repo.write("runs/dist.yml", "type: task\nnodes: 2\n" + RESOURCES +
                     "commands: ['echo \"hello from rank $DSTACK_NODE_RANK of $DSTACK_NODES_NUM\"']\n")
    cloud.repo.commit()
    cloud.controller.step()
    sub = cloud.store.current_submission("dist")
    assert sub["status"] == "running", sub["message"]
    # A node cannot write the log of a rank its run does not have.
    node = {"Authorization": f"Bearer {attempt_token(sub['token'], sub['attempts'])}"}
    extra = httpx.post(f"{cloud.url}/api/submissions/{sub['id']}/log?offset=0&rank=2", content=b"x", headers=node)
    assert extra.status_code == 403
    instances = {n.extra["tags"]["gitopsq-rank"]: n for n in ec2.list_nodes_by_tag(
        cloud.provider.driver, TAG_CONTROLLER, cloud.store.controller_id)}
    nodes = []
    for rank in ("0", "1"):  # both nodes at once: each waits for the other's address
        script = ec2.get_user_data(cloud.provider.driver, instances[rank])
        env = cloud.node_env(GITOPSQ_LOG_INTERVAL="0.2", GITOPSQ_CLUSTER_BACKOFF="0.2",
                             GITOPSQ_WORKDIR=str(cloud.tmp / f"node{rank}"))
        nodes.append(subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, start_new_session=True))
    for node in nodes:
        out, _ = node.communicate(timeout=90)
        assert node.returncode == 0, out
    cloud.controller.step()
    assert cloud.store.current_submission("dist")["status"] == "done"
    rows = cloud.store.submission_nodes(sub["id"])
    texts = [open(row["log_path"]).read() for row in rows]
    assert texts == ["hello from rank 0 of 2\n", "hello from rank 1 of 2\n"], "one log per node, none mixed"
    shown = logs(cloud, "dist")
    assert f"node 0 ({rows[0]['log_path']})\nhello from rank 0 of 2\n" in shown
    assert f"node 1 ({rows[1]['log_path']})\nhello from rank 1 of 2\n" in shown
