"""`ports` on tasks and dev environments, and how to reach a run: `ps`, the API and the run page."""

from __future__ import annotations

import json
import os

import httpx
import pytest

from gitopsq.connect import Reach, connection
from gitopsq.spec import PortMap, RunSpec, SpecError, parse_run
from tests.helpers import GitRepo, run_cli, task
from tests.test_daemon import Daemon, free_port, wait_for
from tests.test_local_container_inputs import engine  # noqa: F401 (a fixture)


def parse(text: str) -> RunSpec:
    return parse_run(text.encode(), "runs/x.yml")


# --- the field ----------------------------------------------------------------------------------

def test_ports_take_dstacks_forms_on_tasks_and_dev_environments():
    spec = parse("type: task\ncommands: [x]\nports: [8080, '8081', '9000:80', '*:81', {container_port: 82, local_port: 9002}]\n")
    assert spec.ports == (PortMap(8080, 8080), PortMap(8081, 8081), PortMap(80, 9000), PortMap(81, None), PortMap(82, 9002))
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert parse("type: dev-environment\nide: vscode\nports: [8888]\n").ports == (PortMap(8888, 8888),)
    assert RunSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "ports"}).ports == ()  # stored before ports


@pytest.mark.parametrize("text, line, field, message", [
    ("type: service\ncommands: [x]\nport: 80\nports: [8080]\n", 4, "ports", "applies to tasks and dev environments"),
    ("type: task\ncommands: [x]\nports:\n  - 8080\n  - '70000'\n", 5, "ports[1]", "70000 is not a port"),
    ("type: task\ncommands: [x]\nports: [0]\n", 3, "ports[0]", "is not a port"),
    ("type: task\ncommands: [x]\nports: ['80:x']\n", 3, "ports[0]", "is not a port"),
    ("type: task\ncommands: [x]\nports: [8080, '9000:8080']\n", 3, "ports[1]", "port 8080 is listed twice"),
])
def test_bad_ports_name_the_line_and_the_entry(text, line, field, message):
    with pytest.raises(SpecError) as caught:
        parse(text)
    problem = caught.value.problems[0]
    assert (problem.line, problem.field) == (line, field) and message in problem.message, str(problem)


# --- how to reach a run ---------------------------------------------------------------------------

LOCAL = Reach("gpu-box.lan", "local")


def spec_dict(text: str) -> dict:
    return parse(text).to_dict()


def test_a_service_is_reached_at_its_url():
    found = connection(spec_dict("type: service\ncommands: [x]\nport: 8000\n"), "running", None, LOCAL)
    assert found["url"] == "http://gpu-box.lan:8000" and found["ports"] == []


def test_ports_are_reached_at_host_and_port_with_a_forward_for_a_local_side():
    found = connection(spec_dict("type: task\ncommands: [x]\nports: [6006, '9000:80', '*:81']\n"), "running", None, LOCAL)
    assert found["ports"] == [
        {"port": 6006, "local_port": 6006, "address": "gpu-box.lan:6006", "forward": None},
        {"port": 80, "local_port": 9000, "address": "gpu-box.lan:80", "forward": "ssh -N -L 9000:localhost:80 gpu-box.lan"},
        {"port": 81, "local_port": None, "address": "gpu-box.lan:81", "forward": None}]
    assert found["url"] is None and found["ide"] is None


def test_a_local_dev_environment_gives_its_working_directory_and_the_ides_way_in():
    spec = spec_dict("type: dev-environment\nide: vscode\n")
    found = connection(spec, "running", "/srv/state/work dir", LOCAL)
    assert found["workdir"] == "/srv/state/work dir"
    assert found["ide"] == {"name": "vscode", "command": "code '/srv/state/work dir'",
                            "url": "vscode://file/srv/state/work%20dir"}
    cursor = connection(spec_dict("type: dev-environment\nide: cursor\n"), "running", "/w", LOCAL)
    assert cursor["ide"] == {"name": "cursor", "command": "cursor /w", "url": "cursor://file/w"}


def test_only_a_running_run_is_reachable_and_an_ipv6_host_is_bracketed():
    spec = spec_dict("type: service\ncommands: [x]\nport: 8000\n")
    assert connection(spec, "queued", None, LOCAL) is None and connection(spec, "done", None, LOCAL) is None
    assert connection(spec, "running", None, Reach("::1", "local"))["url"] == "http://[::1]:8000"


def test_on_a_cloud_provider_the_ports_are_listed_without_an_address():
    ec2 = Reach("controller.example", "ec2")  # the node's address is not the controller's
    service = connection(spec_dict("type: service\ncommands: [x]\nport: 8000\n"), "running", "/var/lib/gitopsq/work", ec2)
    assert service == {"host": None, "url": None, "ports": [], "workdir": None, "ide": None}
    found = connection(spec_dict("type: task\ncommands: [x]\nports: [6006]\n"), "running", None, ec2)
    assert found["ports"] == [{"port": 6006, "local_port": 6006, "address": None, "forward": None}]


# --- end to end: a daemon, real processes -------------------------------------------------------

def test_ps_and_the_api_tell_how_to_reach_running_runs_and_the_address_answers(tmp_path, cleanup_nodes):
    port, service_port, api = free_port(), free_port(), free_port()
    repo = GitRepo(tmp_path / "repo")
    repo.write("runs/board.yml", task("board", f"python3 -m http.server {port} --bind 127.0.0.1") + f"ports: [{port}]\n")
    repo.write("runs/web.yml", f"type: service\nname: web\ncommands: ['python3 -m http.server {service_port} --bind 127.0.0.1']\n"
                               f"port: {service_port}\n")
    repo.write("runs/notebook.yml", "type: dev-environment\nname: notebook\nide: vscode\n")
    repo.commit()
    db = tmp_path / "state" / "gitopsq.db"
    daemon = Daemon(repo.path, db, "--http", f"127.0.0.1:{api}", "--local-slots", "3", "--public-host", "127.0.0.1")
    try:
        wait_for(lambda: sorted(r["status"] for r in daemon.rows()) == ["running"] * 3, what="three running")
        ps = run_cli("ps", "--json", "--db", str(db))
        reach = {row["name"]: row["connect"] for row in json.loads(ps.stdout)}
        board = reach["board"]["ports"][0]
        assert board["address"] == f"127.0.0.1:{port}"
        assert wait_for(lambda: _answers(f"http://{board['address']}/"), what="the task's port answering")
        assert reach["web"]["url"] == f"http://127.0.0.1:{service_port}"
        assert wait_for(lambda: _answers(reach["web"]["url"]), what="the service answering")
        notebook = reach["notebook"]
        assert os.path.isdir(notebook["workdir"]) and notebook["ide"]["command"] == f"code {notebook['workdir']}"
        assert notebook["ide"]["url"] == f"vscode://file{notebook['workdir']}"
        table = run_cli("ps", "--db", str(db), env={"COLUMNS": "250"}).stdout
        assert "CONNECT" in table and f"http://127.0.0.1:{service_port}" in table and f"code {notebook['workdir']}" in table
        detail = httpx.get(f"http://127.0.0.1:{api}/api/runs/notebook", headers=daemon.token_header()).json()
        assert detail["connect"] == notebook
    finally:
        daemon.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_local_container_run_shares_this_machines_network(state_dir, engine):
    """So that its port and ports are this machine's, as for a process run and on a cloud node."""
    from gitopsq.providers.local import LocalNodeDriver
    from tests.test_local_volumes import wait_ended

    driver = LocalNodeDriver(state_dir, slots=1, gpus=0)
    node = driver.create_node("c", ex_script="true", ex_image="python:3.12")
    assert wait_ended(driver, node).extra["exit_code"] == 0
    args = (engine / "args").read_text().splitlines()
    assert args[args.index("--network") + 1] == "host"


def test_the_run_page_shows_how_to_reach_a_run_in_chromium(tmp_path):
    from gitopsq import tokens
    from gitopsq.connect import Reach
    from gitopsq.store import Store, set_reach
    from gitopsq.web import create_app
    from tests.browser import Browser, squash
    from tests.test_web_dashboard import log_in
    from tests.webserver import add_run, running

    store = Store(tmp_path / "state.db")
    set_reach(store, Reach("gpu-box.lan", "local"))
    token = tokens.create(store, "viewer", read_only=True)
    specs = {"notebook": "type: dev-environment\nide: cursor\nports: ['9000:8888']\n",
             "web": "type: service\ncommands: [x]\nport: 8000\n", "old": "type: service\ncommands: [x]\nport: 8001\n"}
    for name, text in specs.items():
        sub = add_run(store, name, 1000.0, status="done" if name == "old" else "running", exit_code=0)
        with store.transaction():
            store.update_submission(sub, spec=json.dumps(parse(text).to_dict()), workdir=f"/srv/work/{name}")
    app = create_app(tmp_path / "state.db", lambda reason: None, lambda: {"branch": "main"}, None)
    with running(app) as url, Browser(tmp_path) as browser:
        log_in(browser, url + "/runs/notebook", token)
        notebook = browser.dom()
        browser.goto(url + "/runs/web")
        web = browser.dom()
        browser.goto(url + "/runs/old")
        old = browser.dom()
    store.close()
    port = notebook.one("li", "connect-port")
    assert port.attrs["data-port"] == "8888" and squash(port.one(cls="address").text()) == "gpu-box.lan:8888"
    assert squash(port.one("code", "forward").text()) == "ssh -N -L 9000:localhost:8888 gpu-box.lan"
    assert squash(notebook.one("code", "workdir").text()) == "/srv/work/notebook"
    ide = notebook.one("li", "connect-ide")
    assert ide.attrs["data-ide"] == "cursor" and squash(ide.one("code", "ide-command").text()) == "cursor /srv/work/notebook"
    assert ide.one("a", "ide-link").attrs["href"] == "cursor://file/srv/work/notebook"
    link = web.one("li", "connect-url").one("a")
    assert link.attrs["href"] == "http://gpu-box.lan:8000" and squash(link.text()) == "http://gpu-box.lan:8000"
    assert web.find_all("li", "connect-workdir") == [] and old.find_all("ul", "connect") == []  # a finished run: nothing to reach


def test_a_run_recorded_before_a_field_existed_is_not_restarted_for_it():
    """A spec stored by an older gitopsq lacks the fields added since (ports, shell...): they are
    their defaults, so a priority bump of an active run stays an update in place."""
    from gitopsq.plan import Desired, Known, plan

    new = json.loads(json.dumps(parse("type: task\nname: x\ncommands: [x]\npriority: 5\n").to_dict()))
    old = {k: v for k, v in new.items() if k not in ("ports", "shell", "volumes")} | {"priority": 1}
    actions = plan({"x": Desired("x", "runs/x.yml", "b2", new)}, set(), {"x": Known("x", "runs/x.yml", old, True, "running")})
    assert [(a.kind, a.changes) for a in actions] == [("update", {"priority": (1, 5)})]
    # A field the new spec really sets is a change, and a restart.
    new["ports"] = [{"container_port": 80, "local_port": 80}]
    actions = plan({"x": Desired("x", "runs/x.yml", "b3", new)}, set(), {"x": Known("x", "runs/x.yml", old, True, "running")})
    assert actions[0].kind == "restart" and set(actions[0].changes) == {"priority", "ports"}
