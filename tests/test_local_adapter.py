"""How runs map onto the local driver: scripts, capacity, what can never fit."""

from __future__ import annotations

import subprocess

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
    assert env == {"A": "1", "GITOPSQ_RUN": "x", "GITOPSQ_SUBMISSION": "2", "GITOPSQ_SUBMISSION_ID": "7", "DSTACK_RUN_NAME": "x"}
    assert "tok" not in env.values()


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
