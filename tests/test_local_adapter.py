"""How runs map onto the local driver: scripts, capacity, what can never fit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gitopsq.providers.base import Launch, run_env, run_script
from gitopsq.providers.local import LocalNodeDriver
from gitopsq.providers.local_adapter import LocalAdapter
from gitopsq.spec import parse_run


def spec(text):
    return parse_run(text.encode(), "runs/x.yml")


def test_script_stops_at_the_first_failing_command(tmp_path):
    script = run_script(spec("type: task\ncommands: ['echo one', 'false', 'echo never']\n"))
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert out.returncode == 1 and out.stdout == "one\n"


def test_sh_shell_script(tmp_path):
    script = run_script(spec("type: task\nshell: sh\ncommands: ['echo $0', 'exit 4']\n"))
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert out.returncode == 4 and out.stdout.strip() == "/bin/sh"


def test_dev_environment_runs_init_then_stays_up():
    script = run_script(spec("type: dev-environment\nide: vscode\ninit: ['echo ready']\n"))
    assert script.startswith("set -e\necho ready\n") and "while :; do sleep 3600; done" in script


def test_env_carries_run_and_submission():
    s = spec("type: task\ncommands: [x]\nenv: {A: '1'}\n")
    env = run_env(s, Launch(7, "x", 2, s, "tok"))
    assert env == {"A": "1", "GITOPSQ_RUN": "x", "GITOPSQ_SUBMISSION": "2", "GITOPSQ_SUBMISSION_ID": "7",
                   "DSTACK_RUN_NAME": "x", "DSTACK_NODES_NUM": "1", "DSTACK_NODE_RANK": "0",
                   "DSTACK_GPUS_PER_NODE": "0", "DSTACK_GPUS_NUM": "0"}
    assert "tok" not in env.values()


def test_env_puts_in_secrets_for_the_launch_and_says_what_it_got():
    s = spec("type: task\ncommands: [x]\nenv: [HF_TOKEN, 'W=key:${{ secrets.wandb }}', PLAIN=1]\n")
    launch = Launch(7, "x", 2, s, "tok", commit="abc123", secrets={"HF_TOKEN": "hf_1", "wandb": "w_2"},
                    tree_env={"GITOPSQ_COMMIT": "abc123", "DSTACK_REPO_ID": "r1"})
    env = run_env(s, launch)
    assert (env["HF_TOKEN"], env["W"], env["PLAIN"]) == ("hf_1", "key:w_2", "1")
    assert (env["GITOPSQ_COMMIT"], env["DSTACK_REPO_ID"], env["DSTACK_RUN_NAME"]) == ("abc123", "r1", "x")
    assert "HF_TOKEN" not in run_env(s, launch, with_secrets=False) and "hf_1" not in repr(launch)


def test_demand_and_unsatisfiable(tmp_path):
    adapter = LocalAdapter(LocalNodeDriver(tmp_path, slots=2, gpus=1))
    one = spec("type: task\ncommands: [x]\nresources: {gpu: 1}\n")
    assert adapter.demand(one) == {"slots": 1, "gpus": 1}
    assert adapter.unsatisfiable(one) is None
    many = spec("type: task\ncommands: [x]\nresources: {gpu: 'H100:4'}\n")
    assert adapter.unsatisfiable(many) == "resources.gpu: needs 4 GPU(s); this machine has 1 (--local-gpus)"
    huge = spec("type: task\ncommands: [x]\nresources: {memory: 100TB}\n")
    assert adapter.unsatisfiable(huge).startswith("resources.memory: needs 102400GB")


def test_image_without_commands_runs_the_images_own_command(tmp_path):
    adapter = LocalAdapter(LocalNodeDriver(tmp_path, slots=1, gpus=0))
    own = spec("type: service\nimage: nginx\nport: 80\n")
    args = adapter.create_args(Launch(1, "x", 1, own, "t"), {})
    assert args["ex_script"] == "" and args["ex_image"] == "nginx"
    script = tmp_path / "script.sh"
    script.write_text("")
    cmd = LocalNodeDriver._command("n1", script, tmp_path, {"PATH": "/usr/bin"}, {}, "nginx", "docker", [])
    assert cmd[-1] == "nginx"
    script.write_text("set -e\necho hi\n")
    cmd = LocalNodeDriver._command("n1", script, tmp_path, {"PATH": "/usr/bin"}, {}, "nginx", "docker", [])
    assert cmd[-3:] == ["nginx", "bash", "/gitopsq/script.sh"]


def test_each_node_of_a_cluster_run_gets_dstacks_variables(tmp_path):
    adapter = LocalAdapter(LocalNodeDriver(tmp_path / "nodes", slots=4, gpus=4))
    s = spec("type: task\ncommands: [x]\nnodes: 2\nresources: {gpu: 2}\n")
    tree = tmp_path / "staging" / "t1"
    (tree / "src").mkdir(parents=True)
    (tree / "src" / "train.py").write_text("print(1)\n")
    launch = Launch(7, "x", 2, s, "tok", tree=tree)
    args = {rank: adapter.create_args(launch.for_rank(rank), {}) for rank in (1, 0)}
    for rank, made in args.items():
        assert made["ex_env"]["DSTACK_NODE_RANK"] == str(rank) and made["ex_gpus"] == 2
        assert {k: v for k, v in made["ex_env"].items() if k.startswith("DSTACK_") and k != "DSTACK_NODE_RANK"} == {
            "DSTACK_RUN_NAME": "x", "DSTACK_NODES_NUM": "2", "DSTACK_GPUS_PER_NODE": "2", "DSTACK_GPUS_NUM": "4",
            "DSTACK_MASTER_NODE_IP": "127.0.0.1", "DSTACK_NODES_IPS": "127.0.0.1\n127.0.0.1"}
        assert made["name"] == f"gq-x-7-{rank}"
    # the master takes the staged tree; the other node a copy of its own
    assert args[0]["ex_tree"] == str(tree) and args[1]["ex_tree"] != str(tree)
    assert (Path(args[1]["ex_tree"]) / "src" / "train.py").read_text() == "print(1)\n"


def test_a_cluster_run_must_fit_on_this_machine_all_at_once(tmp_path):
    adapter = LocalAdapter(LocalNodeDriver(tmp_path / "nodes", slots=3, gpus=4))
    assert adapter.demand(spec("type: task\ncommands: [x]\nnodes: 3\nresources: {gpu: 1}\n")) == {"slots": 3, "gpus": 3}
    assert adapter.unsatisfiable(spec("type: task\ncommands: [x]\nnodes: 3\n")) is None
    assert adapter.unsatisfiable(spec("type: task\ncommands: [x]\nnodes: 4\n")).startswith(
        "nodes: needs 4 slots at once (one per node); this machine has 3")
    assert adapter.unsatisfiable(spec("type: task\ncommands: [x]\nnodes: 3\nresources: {gpu: 2}\n")).startswith(
        "nodes: needs 6 GPUs at once (2 on each of 3 nodes); this machine has 4")
