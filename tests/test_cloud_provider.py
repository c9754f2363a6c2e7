"""The cloud provider: size choice, the node's user-data script, and EC2 against moto."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from libcloud.compute.base import NodeSize

from gitopsq.providers import ec2
from gitopsq.providers.base import AUTH, CAPACITY, ERROR, TAG_CONTROLLER, THROTTLE, Launch, ProviderConfigError, ProviderError
from gitopsq.providers.cloud import choose_size, make_cloud_provider, size_info, user_data
from gitopsq.spec import parse_run
from tests.moto_ec2 import TEST_KEY, TEST_SECRET, MotoEC2Server

PUBLIC_URL = "http://127.0.0.1:8765"


def spec_of(text: str):
    return parse_run(text.encode(), "runs/r.yml")


def task(resources: str = "{}", extra: str = ""):
    return spec_of(f"type: task\ncommands: [echo hi]\nresources: {resources}\n{extra}")


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("GITOPSQ_PROVIDER_KEY", TEST_KEY)
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", TEST_SECRET)


# --- size choice -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def us_east_1_sizes():
    # Libcloud's EC2 catalogue and prices ship with it: no API call.
    return ec2.make_ec2_driver("us-east-1", key="k", secret="s").list_sizes()


@pytest.mark.parametrize("resources, arch, expected", [
    ("{}", "x86_64", "t3a.large"),  # dstack's defaults: 2.. vCPUs, 8GB..
    ("{cpu: 2, memory: 8GB}", "x86_64", "t3a.large"),
    ("{cpu: 2, memory: 8GB}", "arm64", "t4g.large"),  # Graviton only for an arm64 image
    ("{cpu: 4.., memory: 16GB..}", "x86_64", "t3a.xlarge"),
    ("{gpu: T4}", "x86_64", "g4dn.xlarge"),
    ("{gpu: A10G}", "x86_64", "g5.xlarge"),
    ("{gpu: 24GB}", "x86_64", "g6.xlarge"),  # L4 24GB is cheaper than A10G 24GB
    ("{gpu: 'amd:1'}", "x86_64", "g4ad.xlarge"),
    ("{gpu: H100:8}", "x86_64", "p5.48xlarge"),
    ("{gpu: A100:80GB:8}", "x86_64", "p4de.24xlarge"),
    ("{gpu: '40GB..80GB:4'}", "x86_64", "g6e.12xlarge"),
])
def test_cheapest_ec2_size(us_east_1_sizes, resources, arch, expected):
    size, why = choose_size(us_east_1_sizes, task(resources).resources, arch=arch, provider="ec2", region="us-east-1")
    assert why is None
    assert size.id == expected
    # and it really is the cheapest priced x86/arm size that fits
    info = size_info(size)
    assert info.price > 0 and info.arch == arch


@pytest.mark.parametrize("resources, extra, message", [
    ("{gpu: H100:16}", "", "resources.gpu: no ec2 size has 16x H100 in us-east-1"),
    ("{gpu: {name: [H100], count: 1..2}}", "", "resources.gpu: no ec2 size has 1..2x H100 in us-east-1"),
    ("{memory: 100TB}", "", "resources.memory: no ec2 size has 102400GB of memory in us-east-1"),
    ("{cpu: 64, memory: 4GB..8GB}", "", "resources: no ec2 size has all of 64 vCPUs, 4GB..8GB of memory, no GPU in us-east-1"),
    ("{gpu: A100:8}", "max_price: 10\n", "max_price: the cheapest ec2 size that fits in us-east-1 (p4d.24xlarge) costs 36.0499/h, above 10"),
])
def test_unsatisfiable_names_the_resource(us_east_1_sizes, resources, extra, message):
    spec = task(resources, extra)
    assert choose_size(us_east_1_sizes, spec.resources, max_price=spec.max_price, provider="ec2", region="us-east-1") == (None, message)


def test_max_price_keeps_a_cheap_enough_size(us_east_1_sizes):
    spec = task("{gpu: T4}", "max_price: 0.6\n")
    assert choose_size(us_east_1_sizes, spec.resources, max_price=spec.max_price)[0].id == "g4dn.xlarge"


def _size(id, price, cpus, ram_gb, **extra):
    return NodeSize(id, id, int(ram_gb * 1024), 0, 0, price, driver=None, extra={"vcpus": cpus, **extra})


def test_sizes_without_a_price_go_last():
    sizes = [_size("unpriced", None, 2, 8), _size("zero", 0.0, 2, 8), _size("dear", 0.5, 8, 32), _size("cheap", 0.1, 4, 16)]
    assert choose_size(sizes, task().resources, arch=None)[0].id == "cheap"
    assert choose_size(sizes[:2], task().resources, arch=None)[0].id in ("unpriced", "zero")
    # an unknown price never passes max_price
    assert choose_size(sizes[:2], task().resources, max_price=1.0, arch=None)[0] is None


def test_generic_size_gpu_count_and_no_gpu_unless_asked():
    sizes = [_size("gpu", 0.1, 4, 16, gpu_count=1), _size("plain", 0.2, 4, 16)]
    assert choose_size(sizes, task().resources, arch=None)[0].id == "plain"
    assert choose_size(sizes, task("{gpu: 1}").resources, arch=None)[0].id == "gpu"
    # a GPU name the driver does not report cannot be promised
    assert choose_size(sizes, task("{gpu: H100}").resources, arch=None)[0] is None


# --- the node's user-data script ---------------------------------------------------------------


class ReportServer:
    """Stands in for the controller's node routes on 127.0.0.1: records reports (answered 503
    `fail` times first) and keeps the log's chunks where they start, as the controller does
    (answering 503 to the first `log_down` of them)."""

    def __init__(self, fail: int = 0, log_down: int = 0):
        self.posts: list[tuple[str, str, dict]] = []
        self.fail = fail
        self.log_down = log_down
        self.log = b""
        self.final = False
        self.chunks: list[tuple[int, int, bool]] = []  # (offset, length, final) of each chunk taken
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                path, _, query = self.path.partition("?")
                if path.endswith("/log"):
                    status, answer = outer._chunk(parse_qs(query), body)
                else:
                    outer.posts.append((self.path, self.headers["Content-Type"], json.loads(body)))
                    status, answer = (503 if outer.fail > 0 else 200), b""
                    outer.fail -= 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _chunk(self, params: dict, body: bytes) -> tuple[int, bytes]:
        if self.log_down > 0:
            self.log_down -= 1
            return 503, b"down"
        offset, final = int(params["offset"][0]), params.get("final") == ["1"]
        if offset > len(self.log):
            return 409, json.dumps({"offset": len(self.log)}).encode()
        self.log += body[len(self.log) - offset:]
        self.final = self.final or (final and offset + len(body) == len(self.log))
        self.chunks.append((offset, len(body), final))
        return 200, json.dumps({"offset": len(self.log), "complete": self.final}).encode()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _bin_without_curl(tmp_path: Path) -> str:
    """A PATH with what the script needs (python3 included) but no curl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "base64", "tee", "sleep", "sync", "cat", "env", "wc", "tail", "head", "sed", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    (bin_dir / "python3").symlink_to(sys.executable)
    return str(bin_dir)


def _run_user_data(script: str, tmp_path: Path, path: str | None = None, **extra: str):
    env = {"PATH": path or os.environ["PATH"], "HOME": str(tmp_path), "GITOPSQ_NO_POWEROFF": "1",
           "GITOPSQ_WORKDIR": str(tmp_path / "node"), "GITOPSQ_REPORT_BACKOFF": "0", **extra}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("client", ["curl", "python3"])
def test_user_data_runs_commands_and_reports_exit_code(tmp_path, client):
    spec = spec_of("type: task\nenv: {GREETING: \"hello 'world'\"}\ncommands:\n"
                   "  - echo \"$GREETING\" > greeting.txt\n  - env > env.txt\n  - echo ran-commands\n  - exit 3\n")
    launch = Launch(41, "r", 2, spec, "secret-token-41")
    path = None if client == "curl" else _bin_without_curl(tmp_path)
    if client == "curl":
        assert shutil.which("curl")
    with ReportServer() as server:
        done = _run_user_data(user_data(launch, server.url + "/"), tmp_path, path)
    assert done.returncode == 3, done.stderr
    assert "ran-commands" in done.stdout
    work = tmp_path / "node" / "work"
    assert (work / "greeting.txt").read_text() == "hello 'world'\n"
    run_env = (work / "env.txt").read_text()
    assert "GITOPSQ_SUBMISSION_ID=41" in run_env and "GITOPSQ_RUN=r" in run_env
    assert "secret-token-41" not in run_env  # the token is the script's, not the run's
    assert "ran-commands" in (tmp_path / "node" / "run.log").read_text()
    assert server.posts == [("/api/submissions/41/report", "application/json", {"token": "secret-token-41", "exit_code": 3})]
    assert server.log == (tmp_path / "node" / "run.log").read_bytes() and server.final, "the whole log was shipped"


@pytest.mark.parametrize("client", ["curl", "python3"])
def test_user_data_ships_the_log_while_the_run_runs(tmp_path, client):
    # Output for a while, in more than one 64 KiB chunk: the controller has some before the end.
    spec = spec_of("type: task\ncommands: ['for i in 1 2 3 4 5 6; do yes x | head -c 30000; echo \" $i\"; sleep 0.3; done']\n")
    path = None if client == "curl" else _bin_without_curl(tmp_path)
    if path:
        for tool in ("yes",):
            (Path(path) / tool).symlink_to(shutil.which(tool))
    with ReportServer() as server:
        done = _run_user_data(user_data(Launch(3, "r", 1, spec, "tok"), server.url), tmp_path, path,
                              GITOPSQ_LOG_INTERVAL="0.2")
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "node" / "run.log").read_bytes()
    assert len(log) == 6 * 30003 and server.log == log and server.final
    assert any(not final for _, _, final in server.chunks), "chunks went out while the run ran"
    assert all(length <= 64 * 1024 for _, length, _ in server.chunks)


def test_user_data_keeps_the_log_while_the_controller_is_down_and_sends_it_after(tmp_path):
    spec = spec_of("type: task\ncommands: ['for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done']\n")
    with ReportServer(log_down=1000) as server:
        script = user_data(Launch(3, "r", 1, spec, "tok"), server.url)
        timer = threading.Timer(1.5, lambda: setattr(server, "log_down", 0))  # back before the end's tries are over
        timer.start()
        done = _run_user_data(script, tmp_path, GITOPSQ_LOG_INTERVAL="0.1", GITOPSQ_REPORT_BACKOFF="1")
        timer.join()
    assert done.returncode == 0, done.stderr
    assert server.log == b"".join(b"line %d\n" % i for i in range(1, 6)) and server.final, done.stderr
    assert server.posts[0][2] == {"token": "tok", "exit_code": 0}


def test_user_data_retries_the_report(tmp_path):
    launch = Launch(7, "r", 1, spec_of("type: task\ncommands: [\"true\"]\n"), "tok")
    with ReportServer(fail=2) as server:
        done = _run_user_data(user_data(launch, server.url), tmp_path)
    assert done.returncode == 0
    assert [post[2] for post in server.posts] == [{"token": "tok", "exit_code": 0}] * 3
    assert done.stderr.count("report attempt") == 2


def test_user_data_runs_image_through_docker(tmp_path):
    # A stand-in docker records how it is called and runs the script as the container would.
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "docker").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$GITOPSQ_WORKDIR/docker-args"\n'
                                 'exec bash "$GITOPSQ_WORKDIR/script.sh"\n')
    (fake / "docker").chmod(0o755)
    spec = spec_of("type: task\nimage: python:3.11-slim\nenv: {A: b}\nresources: {gpu: 1}\ncommands: [echo in-container]\n")
    with ReportServer() as server:
        done = _run_user_data(user_data(Launch(5, "r", 1, spec, "tok"), server.url), tmp_path,
                              f"{fake}:{os.environ['PATH']}")
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "node" / "docker-args").read_text().splitlines()
    assert "in-container" in done.stdout
    assert args[:4] == ["run", "--rm", "--network", "host"]
    assert "--gpus" in args and args[args.index("-e") + 1] == "PYTHONUNBUFFERED"
    assert "A" in args and args[-3:] == ["python:3.11-slim", "bash", "/gitopsq/script.sh"]
    assert server.posts[0][2] == {"token": "tok", "exit_code": 0}


def _decoded_parts(script: str) -> list[str]:
    """The user-data and every base64 blob in it (the run's script and env travel encoded)."""
    import base64

    blobs = re.findall(r"echo ([A-Za-z0-9+/=]{8,}) \| base64 -d", script)
    return [script, *(base64.b64decode(blob).decode() for blob in blobs)]


def test_user_data_holds_no_secret_value():
    spec = spec_of("type: task\nimage: python:3.12-slim\nenv:\n  - HF_TOKEN\n  - WANDB_API_KEY=key-${{ secrets.wandb }}\n"
                   "  - PLAIN=visible\ncommands: [echo hi]\n")
    launch = Launch(9, "r", 1, spec, "tok-9", secrets={"HF_TOKEN": "hf-value-1234", "wandb": "wandb-value-5678"})
    script = user_data(launch, PUBLIC_URL)
    for part in _decoded_parts(script):
        assert "hf-value-1234" not in part and "wandb-value-5678" not in part
    assert any("export PLAIN=visible" in part for part in _decoded_parts(script))
    # the secret-holding variables are downloaded by the node, and passed into the container by name
    assert "submission=http://127.0.0.1:8765/api/submissions/9\n" in script and 'inputs="$submission/inputs"' in script
    assert 'fetch env "$GITOPSQ_DIR/secrets.env"' in script
    assert "-e HF_TOKEN" in script and "-e WANDB_API_KEY" in script


def test_user_data_powers_off_unless_told_not_to():
    script = user_data(Launch(1, "r", 1, task(), "t"), PUBLIC_URL)
    assert 'if [ "${GITOPSQ_NO_POWEROFF:-0}" != 1 ]; then' in script
    assert "shutdown -h now" in script


# --- EC2 through the provider, against moto ----------------------------------------------------


@pytest.fixture
def server():
    with MotoEC2Server() as srv:
        yield srv


@pytest.fixture
def provider(server, creds):
    return make_cloud_provider("ec2", {"region": "us-east-1", "endpoint": server.endpoint}, "ctl-test", None, PUBLIC_URL)


def test_launch_tags_size_user_data_and_client_token(server, provider):
    spec = task("{cpu: 4, memory: 16GB}")
    status = provider.launch(Launch(12, "train", 3, spec, "tok-12", attempt=2))
    assert (status.submission_id, status.run, status.running, status.lost) == (12, "train", True, False)
    [node] = ec2.list_nodes_by_tag(provider.driver, TAG_CONTROLLER, "ctl-test")
    assert node.id == status.node_id
    assert node.extra["tags"] == {"Name": "gq-train-12", "gitopsq-controller": "ctl-test", "gitopsq-run": "train",
                                  "gitopsq-submission": "12", "gitopsq-attempt": "2"}
    assert node.extra["instance_type"] == "t3a.xlarge"
    assert node.extra["client_token"] == "gq-ctl-test-12-2"
    script = ec2.get_user_data(provider.driver, node)
    assert script.startswith("#!/bin/bash\n") and "/api/submissions/12/report" in script and "tok-12" in script
    assert [n.node_id for n in provider.nodes()] == [node.id]


def test_capacity_is_max_nodes_minus_running(server, creds):
    capped = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-cap", 3, PUBLIC_URL)
    assert capped.capacity() == {"nodes": 3}
    capped.launch(Launch(1, "a", 1, task(), "t"))
    assert capped.capacity() == {"nodes": 2}
    assert capped.demand(task()) == {"nodes": 1}
    unlimited = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-cap", None, PUBLIC_URL)
    assert unlimited.capacity() == {}


def test_stopped_or_terminated_node_is_lost(server, provider):
    status = provider.launch(Launch(1, "a", 1, task(), "t"))
    [node] = ec2.list_nodes_by_tag(provider.driver, TAG_CONTROLLER, "ctl-test")
    provider.driver.ex_stop_node(node)
    [stopped] = provider.nodes()
    assert (stopped.node_id, stopped.running, stopped.lost, stopped.exit_code) == (status.node_id, False, True, None)
    provider.stop(status.node_id)
    assert provider.nodes() == []


@pytest.mark.parametrize("inject, kind, code", [
    (lambda s: s.inject("RunInstances", "InsufficientInstanceCapacity", status=500), CAPACITY, "InsufficientInstanceCapacity"),
    (lambda s: s.inject("RunInstances", "VcpuLimitExceeded", status=400), CAPACITY, "VcpuLimitExceeded"),
    (lambda s: s.inject("RunInstances", "RequestLimitExceeded", status=503), THROTTLE, "RequestLimitExceeded"),
    (lambda s: s.inject_http("RunInstances", status=503), THROTTLE, "HTTP503"),
    (lambda s: s.inject("RunInstances", "AuthFailure", status=401), AUTH, "AuthFailure"),
    (lambda s: s.inject("RunInstances", "InvalidParameterValue", status=400), ERROR, "InvalidParameterValue"),
])
def test_launch_errors_are_classified(server, provider, inject, kind, code):
    provider.adapter.image()  # the image lookup is not the call under test
    inject(server)
    with pytest.raises(ProviderError) as info:
        provider.launch(Launch(1, "a", 1, task(), "t"))
    assert (info.value.kind, info.value.code) == (kind, code)
    assert server.calls["RunInstances"] == 1
    assert provider.nodes() == []


def test_unsatisfiable_placement(provider):
    assert provider.unsatisfiable(task()) is None
    assert provider.unsatisfiable(task(extra="regions: [us-east-1, eu-west-1]\nbackends: [aws]\n")) is None
    assert provider.unsatisfiable(task(extra="regions: [eu-west-1]\n")) == \
        "regions: this controller provisions in us-east-1 only, not eu-west-1"
    assert provider.unsatisfiable(task(extra="backends: [gcp]\n")) == "backends: this controller provisions on ec2 only, not gcp"
    assert provider.unsatisfiable(task("{gpu: H100:16}")) == "resources.gpu: no ec2 size has 16x H100 in us-east-1"


def test_spot_request_reaches_ec2(server, provider):
    spec = task(extra="spot_policy: spot\nmax_price: 0.5\n")
    assert provider.unsatisfiable(spec) is None
    args = provider.adapter.create_args(Launch(1, "a", 1, spec, "t"), {})
    assert (args["ex_spot"], args["ex_spot_max_price"]) == (True, 0.5)
    provider.launch(Launch(1, "a", 1, spec, "t"))
    [node] = ec2.list_nodes_by_tag(provider.driver, TAG_CONTROLLER, "ctl-test")
    assert node.extra["instance_lifecycle"] == "spot"


def test_config_errors_name_the_problem_never_a_secret(monkeypatch, server):
    opts = {"endpoint": server.endpoint}
    with pytest.raises(ProviderConfigError, match="--public-url is required"):
        make_cloud_provider("ec2", opts, "c", None, None)
    with pytest.raises(ProviderConfigError, match="credentials come from the environment"):
        make_cloud_provider("ec2", {**opts, "secret": "hunter2"}, "c", None, PUBLIC_URL)
    with pytest.raises(ProviderConfigError, match=r"zone: not an ec2 option; ec2 takes region"):
        make_cloud_provider("ec2", {**opts, "zone": "a"}, "c", None, PUBLIC_URL)
    for var in ("GITOPSQ_PROVIDER_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", "very-secret-value")
    with pytest.raises(ProviderConfigError) as info:
        make_cloud_provider("ec2", opts, "c", None, PUBLIC_URL)
    assert "GITOPSQ_PROVIDER_KEY" in str(info.value) and "very-secret-value" not in str(info.value)
    with pytest.raises(ProviderConfigError, match="not a Libcloud compute provider"):
        make_cloud_provider("no-such-cloud", {}, "c", None, PUBLIC_URL)


@pytest.mark.parametrize("url", ["https://gitopsq.example.com", "https://10.0.0.5:8443", "http://127.0.0.1:8765",
                                 "http://127.9.0.1", "http://localhost:8765", "http://[::1]:8765"])
def test_public_url_is_https_or_loopback(creds, server, url):
    assert make_cloud_provider("ec2", {"endpoint": server.endpoint}, "c", None, url).adapter.public_url == url


@pytest.mark.parametrize("url", ["http://gitopsq.example.com", "http://10.0.0.5:8765", "http://0.0.0.0:8765",
                                 "http://[2001:db8::1]:8765", "http://localhost.example.com"])
def test_an_http_public_url_off_loopback_needs_insecure_public_url(creds, server, url):
    with pytest.raises(ProviderConfigError, match=r"must be https://.*--insecure-public-url"):
        make_cloud_provider("ec2", {"endpoint": server.endpoint}, "c", None, url)
    provider = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "c", None, url, insecure_public_url=True)
    assert provider.adapter.public_url == url


def test_aws_environment_credentials_work_for_ec2(monkeypatch, server):
    for var in ("GITOPSQ_PROVIDER_KEY", "GITOPSQ_PROVIDER_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aws-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    provider = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "c", None, PUBLIC_URL)
    assert provider.driver.key == "aws-key"
    assert provider.nodes() == []


def test_controller_tag_is_one_constant():
    assert ec2.CONTROLLER_TAG is TAG_CONTROLLER
    assert re.fullmatch(r"[a-z-]+", TAG_CONTROLLER)


def test_a_home_path_in_a_container_is_refused(provider):
    assert provider.unsatisfiable(task(extra="files: ['a.txt:~/a.txt']\n")) is None  # the node's own home
    why = provider.unsatisfiable(task(extra="image: ubuntu\nfiles: ['a.txt:~/a.txt']\n"))
    assert why == "files[0]: '~/a.txt': the home of the image's user is not known to the ec2 provider; use an absolute path"
    assert provider.unsatisfiable(task(extra="image: ubuntu\nfiles: ['a.txt:/etc/a.txt']\n")) is None


# --- cluster runs (nodes: N) -----------------------------------------------------------------------

NS = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'
NO_GROUPS = f"<DescribePlacementGroupsResponse {NS}><requestId>r</requestId><placementGroupSet/></DescribePlacementGroupsResponse>"
MADE = f"<CreatePlacementGroupResponse {NS}><requestId>r</requestId><return>true</return></CreatePlacementGroupResponse>"


def test_a_cluster_run_makes_its_instances_together_in_a_placement_group(server, provider):
    server.answer("DescribePlacementGroups", NO_GROUPS)  # moto has no placement groups
    server.answer("CreatePlacementGroup", MADE)
    spec = task("{gpu: T4}", "nodes: 2")  # g4dn.xlarge: can be in a cluster placement group
    nodes = provider.launch_gang(Launch(12, "train", 3, spec, "tok-12", attempt=1))
    assert [n.rank for n in nodes] == [0, 1] and all(n.running and n.ip for n in nodes)
    assert server.calls["RunInstances"] == 2 and server.calls["CreatePlacementGroup"] == 1
    assert server.params["CreatePlacementGroup"][0]["GroupName"] == "gq-ctl-test-cluster"
    assert {p["Placement.GroupName"] for p in server.params["RunInstances"]} == {"gq-ctl-test-cluster"}
    listed = {n.rank: n for n in provider.nodes()}
    assert sorted(listed) == [0, 1]
    for rank, node in sorted(listed.items()):
        [instance] = [i for i in ec2.list_nodes_by_tag(provider.driver, TAG_CONTROLLER, "ctl-test") if i.id == node.node_id]
        assert instance.extra["tags"]["gitopsq-rank"] == str(rank) and instance.extra["tags"]["Name"] == f"gq-train-12-{rank}"
        assert instance.extra["client_token"] == f"gq-ctl-test-12-1-r{rank}"
        script = ec2.get_user_data(provider.driver, instance)
        script += "".join(base64.b64decode(b).decode() for b in re.findall(r"echo (\S+) \| base64 -d", script))
        assert f"export DSTACK_NODE_RANK={rank}\n" in script and "export DSTACK_NODES_NUM=2\n" in script
        assert "export DSTACK_GPUS_PER_NODE=1\n" in script and "export DSTACK_GPUS_NUM=2\n" in script
        assert "fetch cluster" in script and f'"rank": {rank}, "exit_code": ' in script
    # the group is made once for every cluster run of this controller
    provider.launch_gang(Launch(13, "other", 1, spec, "tok-13"))
    assert server.calls["CreatePlacementGroup"] == 1 and server.calls["RunInstances"] == 4


def test_a_burstable_cluster_run_goes_without_a_placement_group(server, provider):
    provider.launch_gang(Launch(12, "train", 3, task("{cpu: 2, memory: 8GB}", "nodes: 2"), "tok-12"))
    assert server.calls["RunInstances"] == 2 and server.calls["DescribePlacementGroups"] == 0
    assert all("Placement.GroupName" not in p for p in server.params["RunInstances"])


def test_when_one_instance_of_a_cluster_cannot_be_made_the_others_are_destroyed(server, provider):
    provider.adapter.image()
    server.inject("RunInstances", "InsufficientInstanceCapacity", status=500, after=1)
    with pytest.raises(ProviderError) as info:
        provider.launch_gang(Launch(12, "train", 3, task("{cpu: 2, memory: 8GB}", "nodes: 2"), "tok-12"))
    assert (info.value.kind, info.value.code) == (CAPACITY, "InsufficientInstanceCapacity")
    assert server.calls["RunInstances"] == 2 and server.calls["TerminateInstances"] == 1
    assert provider.nodes() == []


def test_a_cluster_run_counts_all_its_nodes_against_max_nodes(server, creds):
    capped = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-cap", 3, PUBLIC_URL)
    assert capped.demand(task(extra="nodes: 3")) == {"nodes": 3}
    assert capped.unsatisfiable(task(extra="nodes: 3")) is None
    assert capped.unsatisfiable(task(extra="nodes: 4")) == "nodes: needs 4 nodes at once; this controller runs at most 3 (--max-nodes)"
    capped.launch_gang(Launch(1, "a", 1, task(extra="nodes: 2"), "t"))
    assert capped.capacity() == {"nodes": 1}


class ClusterServer(ReportServer):
    """The controller's node endpoints for a cluster node: 409 on inputs/cluster until `ready` asks."""

    def __init__(self, ready_after: int = 1):
        super().__init__()
        self.asked = 0
        outer = self
        handler = self.httpd.RequestHandlerClass

        def do_GET(req):
            outer.asked += 1
            body = b"export DSTACK_MASTER_NODE_IP=10.0.0.7\nexport DSTACK_NODES_IPS='10.0.0.7\n10.0.0.8'\n"
            ready = outer.asked > ready_after and req.path.endswith("/inputs/cluster")
            req.send_response(200 if ready else 409)
            req.send_header("Content-Length", str(len(body) if ready else 0))
            req.end_headers()
            if ready:
                req.wfile.write(body)

        handler.do_GET = do_GET


@pytest.mark.parametrize("client", ["curl", "python3"])
def test_a_cluster_node_waits_for_its_nodes_addresses_then_runs_and_reports_its_rank(tmp_path, client):
    spec = spec_of("type: task\nnodes: 2\ncommands: ['env > env.txt']\n")
    launch = Launch(41, "r", 2, spec, "tok-41", rank=1)
    path = None if client == "curl" else _bin_without_curl(tmp_path)
    with ClusterServer(ready_after=2) as server:
        script = user_data(launch, server.url, gpus_per_node=4)
        env = {"GITOPSQ_CLUSTER_BACKOFF": "0", "GITOPSQ_DOWNLOAD_BACKOFF": "0"}
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                              env={"PATH": path or os.environ["PATH"], "HOME": str(tmp_path), "GITOPSQ_NO_POWEROFF": "1",
                                   "GITOPSQ_WORKDIR": str(tmp_path / "node"), "GITOPSQ_REPORT_BACKOFF": "0", **env})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("waiting for the other nodes") == 2
    seen = dict(line.split("=", 1) for line in (tmp_path / "node" / "work" / "env.txt").read_text().splitlines() if "=" in line)
    assert (seen["DSTACK_NODE_RANK"], seen["DSTACK_NODES_NUM"], seen["DSTACK_MASTER_NODE_IP"]) == ("1", "2", "10.0.0.7")
    assert (seen["DSTACK_GPUS_PER_NODE"], seen["DSTACK_GPUS_NUM"]) == ("4", "8")
    assert server.posts == [("/api/submissions/41/report", "application/json", {"token": "tok-41", "rank": 1, "exit_code": 0})]


def test_a_single_cloud_node_is_its_own_master(tmp_path):
    spec = spec_of("type: task\ncommands: ['env > env.txt']\n")
    with ReportServer() as server:
        done = _run_user_data(user_data(Launch(5, "r", 1, spec, "tok"), server.url), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = (tmp_path / "node" / "work" / "env.txt").read_text()
    assert "DSTACK_NODES_NUM=1\n" in seen and "DSTACK_NODE_RANK=0\n" in seen and "DSTACK_MASTER_NODE_IP=" in seen


# --- temporary credentials -----------------------------------------------------------------------


@pytest.mark.parametrize("pair", ["gitopsq", "aws"])
def test_a_session_token_signs_every_request(monkeypatch, server, pair):
    for var in ("GITOPSQ_PROVIDER_KEY", "GITOPSQ_PROVIDER_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    if pair == "gitopsq":
        monkeypatch.setenv("GITOPSQ_PROVIDER_KEY", "ASIA-temporary")
        monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", "temporary-secret")
        monkeypatch.setenv("GITOPSQ_PROVIDER_SESSION_TOKEN", "session-token-gq")
        monkeypatch.setenv("AWS_SESSION_TOKEN", "not-this-pairs-token")
        token = "session-token-gq"
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIA-temporary")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "temporary-secret")
        monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-aws")
        monkeypatch.setenv("GITOPSQ_PROVIDER_SESSION_TOKEN", "a-token-without-its-key")
        token = "session-token-aws"
    provider = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-sts", None, PUBLIC_URL)
    provider.launch(Launch(1, "a", 1, task(), "t"))
    assert [n.run for n in provider.nodes()] == ["a"]  # moto accepted the signed requests
    calls = sum(server.calls.values())
    assert server.session_tokens == {token: calls}, "every request carries the pair's own token"
    assert server.access_keys == {"ASIA-temporary": calls}


def test_without_a_session_token_none_is_sent(server, provider):
    provider.nodes()
    assert server.session_tokens == {} and sum(server.calls.values()) == 1


# --- spot ----------------------------------------------------------------------------------------

SPOT = {"InstanceMarketOptions.MarketType": "spot"}


def test_auto_asks_for_spot_first(server, provider):
    status = provider.launch(Launch(1, "a", 1, task(extra="spot_policy: auto\n"), "t"))
    [node] = ec2.list_nodes_by_tag(provider.driver, TAG_CONTROLLER, "ctl-test")
    assert node.id == status.node_id and node.extra["instance_lifecycle"] == "spot"
    assert [r.get("InstanceMarketOptions.MarketType") for r in server.requests("RunInstances")] == ["spot"]


@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded"])
def test_auto_falls_back_to_on_demand_when_spot_has_no_capacity(server, provider, code):
    provider.adapter.image()
    server.inject("RunInstances", code, status=500 if code == "InsufficientInstanceCapacity" else 400, times=5, when=SPOT)
    status = provider.launch(Launch(1, "a", 1, task(extra="spot_policy: auto\nmax_price: 0.5\n"), "t", attempt=3))
    [node] = ec2.list_nodes_by_tag(provider.driver, TAG_CONTROLLER, "ctl-test")
    assert node.id == status.node_id and node.extra.get("instance_lifecycle") in (None, "", "on-demand")
    spot, on_demand = server.requests("RunInstances")
    assert (spot.get("InstanceMarketOptions.MarketType"), on_demand.get("InstanceMarketOptions.MarketType")) == ("spot", None)
    # Each market has its own idempotency token: EC2 refuses one token for two different requests.
    assert (spot["ClientToken"], on_demand["ClientToken"]) == ("gq-ctl-test-1-3", "gq-ctl-test-1-3-on-demand")


def test_auto_without_on_demand_capacity_either_is_no_capacity(server, provider):
    provider.adapter.image()
    server.inject("RunInstances", "InsufficientInstanceCapacity", status=500, times=2)
    with pytest.raises(ProviderError) as info:
        provider.launch(Launch(1, "a", 1, task(extra="spot_policy: auto\n"), "t"))
    assert (info.value.kind, info.value.code) == (CAPACITY, "InsufficientInstanceCapacity")
    assert len(server.requests("RunInstances")) == 2 and provider.nodes() == []


@pytest.mark.parametrize("policy", ["spot", "on-demand"])
def test_spot_and_on_demand_never_switch_market(server, provider, policy):
    provider.adapter.image()
    server.inject("RunInstances", "InsufficientInstanceCapacity", status=500, times=1)
    with pytest.raises(ProviderError) as info:
        provider.launch(Launch(1, "a", 1, task(extra=f"spot_policy: {policy}\n"), "t"))
    assert info.value.kind == CAPACITY and len(server.requests("RunInstances")) == 1


def test_a_reclaimed_spot_instance_is_told_apart_from_a_stopped_one(server, provider):
    spot = provider.launch(Launch(1, "a", 1, task(extra="spot_policy: spot\n"), "t"))
    plain = provider.launch(Launch(2, "b", 1, task(), "t"))
    server.reclaim_spot(spot.node_id)
    provider.stop(plain.node_id)
    assert provider.interruption(spot.node_id) == "spot interruption (Server.SpotInstanceTermination)"
    assert provider.interruption(plain.node_id) is None
    assert provider.nodes() == [], "a reclaimed instance is gone like any terminated one"


# --- ports ---------------------------------------------------------------------------------------


def _ingress(provider, name):
    [group] = [g for g in provider.driver.ex_get_security_groups() if g.name == name]
    return group, sorted((r["protocol"], int(r["from_port"]), int(r["to_port"]), tuple(sorted(r["cidr_ips"])))
                         for r in group.ingress_rules)


def test_a_service_gets_a_group_opening_exactly_its_port_to_the_allowed_cidrs(server, creds):
    provider = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-fw", None, PUBLIC_URL,
                                   allow_cidrs=("203.0.113.0/24", "2001:db8::/32"))
    spec = spec_of("type: service\ncommands: [serve]\nport: 8000\n")
    status = provider.launch(Launch(5, "api", 1, spec, "t"))
    group, rules = _ingress(provider, "gitopsq-ctl-fw-5")
    assert rules == [("tcp", 8000, 8000, ("203.0.113.0/24",))]
    [authorized] = server.requests("AuthorizeSecurityGroupIngress")  # libcloud's rules show IPv4 ranges only
    assert authorized["IpPermissions.1.Ipv6Ranges.1.CidrIpv6"] == "2001:db8::/32"
    assert group.extra["tags"] == {"Name": "gitopsq-ctl-fw-5", TAG_CONTROLLER: "ctl-fw", "gitopsq-run": "api",
                                   "gitopsq-submission": "5"}
    [run] = server.requests("RunInstances")
    assert sorted(v for k, v in run.items() if k.startswith("SecurityGroup.")) == ["default", "gitopsq-ctl-fw-5"]
    # the group goes once no node uses it
    provider.stop(status.node_id)
    provider.nodes()
    assert [g.name for g in provider.driver.ex_get_security_groups() if g.name.startswith("gitopsq-")] == []


def test_a_tasks_ports_and_a_relaunch_reuse_its_group(server, creds):
    provider = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-fw", None, PUBLIC_URL,
                                   allow_cidrs=("198.51.100.7/32",))
    spec = task(extra="ports: [6006, 8888]\n")
    first = provider.launch(Launch(6, "board", 1, spec, "t"))
    provider.driver.ex_stop_node(next(n for n in provider.driver.list_nodes() if n.id == first.node_id))
    provider.launch(Launch(6, "board", 1, spec, "t", attempt=1))  # a retry while the first node still holds it
    _, rules = _ingress(provider, "gitopsq-ctl-fw-6")
    assert rules == [("tcp", 6006, 6006, ("198.51.100.7/32",)), ("tcp", 8888, 8888, ("198.51.100.7/32",))]
    assert len([g for g in provider.driver.ex_get_security_groups() if g.name.startswith("gitopsq-")]) == 1


def test_without_allow_cidr_no_port_is_opened(server, provider):
    provider.launch(Launch(5, "api", 1, spec_of("type: service\ncommands: [serve]\nport: 8000\n"), "t"))
    assert server.calls["CreateSecurityGroup"] == 0 and server.calls["AuthorizeSecurityGroupIngress"] == 0
    [run] = server.requests("RunInstances")
    assert not [k for k in run if k.startswith("SecurityGroup")]


def test_a_group_left_by_a_crash_is_removed_at_the_first_listing(server, creds):
    provider = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-fw", None, PUBLIC_URL,
                                   allow_cidrs=("0.0.0.0/0",))
    provider.adapter.firewall.open("api", 9, (80,))  # its node never made: the controller died here
    kept = provider.launch(Launch(10, "web", 1, task(extra="ports: [80]\n"), "t"))
    other = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-other", None, PUBLIC_URL, allow_cidrs=("0.0.0.0/0",))
    other.adapter.firewall.open("x", 9, (80,))  # another controller's: not ours to remove
    restarted = make_cloud_provider("ec2", {"endpoint": server.endpoint}, "ctl-fw", None, PUBLIC_URL,
                                    allow_cidrs=("0.0.0.0/0",))
    assert [n.node_id for n in restarted.nodes()] == [kept.node_id]
    names = sorted(g.name for g in restarted.driver.ex_get_security_groups() if g.name.startswith("gitopsq-"))
    assert names == ["gitopsq-ctl-fw-10", "gitopsq-ctl-other-9"]


@pytest.mark.parametrize("value", ["everyone", "10.0.0.1/8", "300.1.1.1/32"])
def test_a_bad_allow_cidr_is_a_config_error(server, creds, value):
    with pytest.raises(ProviderConfigError, match=f"--allow-cidr '{re.escape(value)}': not a network"):
        make_cloud_provider("ec2", {"endpoint": server.endpoint}, "c", None, PUBLIC_URL, allow_cidrs=(value,))
