"""A cluster run on this machine: N process groups, the master at 127.0.0.1, GPUs split per node."""

from __future__ import annotations

import socket
import time

import pytest

from gitopsq.controller import Controller
from gitopsq.providers.base import log_dir_for
from gitopsq.providers.local_adapter import make_local_provider
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.helpers import GitRepo, run_cli

# Rank 0 listens on $PORT at its address; every other rank connects to $DSTACK_MASTER_NODE_IP and
# says who it is: what torchrun's rendezvous does, in a few lines.
RENDEZVOUS = r"""
import os, socket, time
rank, port = int(os.environ["DSTACK_NODE_RANK"]), int(os.environ["PORT"])
print(f"rank {rank} of {os.environ['DSTACK_NODES_NUM']}, master {os.environ['DSTACK_MASTER_NODE_IP']}, "
      f"gpus {os.environ['CUDA_VISIBLE_DEVICES']} of {os.environ['DSTACK_GPUS_NUM']}", flush=True)
if rank == 0:
    server = socket.create_server(("0.0.0.0", port))
    server.settimeout(60)
    conn, _ = server.accept()
    print("master got:", conn.recv(100).decode(), flush=True)
else:
    for _ in range(600):
        try:
            with socket.create_connection((os.environ["DSTACK_MASTER_NODE_IP"], port), timeout=1) as conn:
                conn.sendall(f"hello from rank {rank}".encode())
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit("no master")
    print("sent to master", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def no_leftover_processes(cleanup_nodes):
    yield


def test_a_two_node_task_meets_at_its_master_and_both_logs_are_shown(tmp_path):
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/rendezvous.py", RENDEZVOUS)  # repos: [.] is the run file's folder
    repo.write("runs/train.yml", f"type: task\nname: train\nnodes: 2\nresources: {{gpu: 1}}\nenv: {{PORT: '{free_port()}'}}\n"
                                 "repos: [.]\ncommands: ['python3 rendezvous.py']\n")
    repo.commit("a cluster run")
    db = tmp_path / "state" / "gitopsq.db"
    store = Store(db)
    provider = make_local_provider(log_dir_for(db), store.controller_id, slots=2, gpus=2)
    controller = Controller(store, provider, ConfigRepo(str(repo.path)))
    deadline = time.monotonic() + 60
    while (store.current_submission("train") is None
           or store.current_submission("train")["status"] not in ("done", "failed")):
        assert time.monotonic() < deadline, "the cluster run did not end"
        controller.step()
        time.sleep(0.1)
    sub = store.current_submission("train")
    assert sub["status"] == "done", sub["message"]
    nodes = store.submission_nodes(sub["id"])
    assert [(n["rank"], n["status"], n["exit_code"], n["ip"]) for n in nodes] == [
        (0, "done", 0, "127.0.0.1"), (1, "done", 0, "127.0.0.1")]
    assert nodes[0]["workdir"] != nodes[1]["workdir"], "each node has a working directory of its own"

    shown = run_cli("logs", "train", "--db", str(db)).output
    assert "--- attempt 1, node 0" in shown and "--- attempt 1, node 1" in shown
    assert "master got: hello from rank 1" in shown and "sent to master" in shown
    gpus = {line.split("gpus ")[1] for line in shown.splitlines() if line.startswith("rank ")}
    assert gpus == {"0 of 2", "1 of 2"}, "each node has its own GPU"
    ps = run_cli("ps", "--db", str(db), "--json").output
    assert '"nodes_num": 2' in ps and '"rank": 1' in ps
    store.close()
