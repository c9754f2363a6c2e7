"""Any Libcloud compute driver through the generic adapter, run for real: Libcloud's Nimbus
driver (an EC2-API cloud of its own: SigV2, a static size list, no EC2 subclass of ours) against
moto's EC2 server, driven by the controller like EC2 is."""

from __future__ import annotations

import random

import pytest
from libcloud.compute.drivers.ec2 import NimbusNodeDriver

from gitopsq.controller import Controller, record_report
from gitopsq.nodetoken import attempt_token
from gitopsq.providers import ec2
from gitopsq.providers.base import ProviderConfigError
from gitopsq.providers.cloud import make_cloud_provider
from gitopsq.source import ConfigRepo
from gitopsq.store import Store
from tests.fakes import Clock
from tests.helpers import GitRepo, run_cli
from tests.moto_ec2 import TEST_KEY, TEST_SECRET, MotoEC2Server

PUBLIC_URL = "http://127.0.0.1:8765"
RUN = "type: task\ncommands: ['echo hi']\nresources: {cpu: 2, memory: 7GB..}\n"


@pytest.fixture(autouse=True)
def creds(monkeypatch):
    monkeypatch.setenv("GITOPSQ_PROVIDER_KEY", TEST_KEY)
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", TEST_SECRET)


@pytest.fixture
def server():
    with MotoEC2Server(ec2_only=True) as srv:
        yield srv


@pytest.fixture
def image(server):
    aws = ec2.make_ec2_driver(endpoint=server.endpoint, key=TEST_KEY, secret=TEST_SECRET)
    return ec2.pick_image(aws).id


def nimbus(server, image, controller_id, **extra):
    options = {"endpoint": server.endpoint, "image": image}
    return make_cloud_provider("nimbus", options, controller_id, None, PUBLIC_URL, **extra)


def test_the_generic_adapter_launches_lists_reports_and_destroys_through_another_driver(tmp_path, server, image):
    repo = GitRepo(tmp_path / "config")
    repo.write("runs/job.yml", RUN)
    repo.commit()
    store = Store(tmp_path / "state" / "gitopsq.db")
    provider = nimbus(server, image, store.controller_id)
    assert type(provider.driver) is NimbusNodeDriver and provider.name == "nimbus"
    assert provider.cannot == ()
    clock = Clock()
    controller = Controller(store, provider, ConfigRepo(str(repo.path)), clock=clock, rng=random.Random(0))
    try:
        controller.step()
        sub = store.current_submission("job")
        assert sub["status"] == "running", sub["message"]
        [node] = [n for n in provider.nodes()]
        assert (node.node_id, node.submission_id, node.run, node.running) == (sub["node_id"], sub["id"], "job", True)
        [created] = server.requests("RunInstances")
        assert created["SignatureVersion"] == "2" and created["InstanceType"] == "m1.large"  # Nimbus's own sizes
        assert created["ImageId"] == image and "UserData" in created
        clock.now += 1
        controller.step()  # nothing changed: no second instance
        assert server.calls["RunInstances"] == 1 and [n.node_id for n in provider.nodes()] == [sub["node_id"]]
        assert record_report(store, sub["id"], attempt_token(sub["token"], sub["attempts"]), 0, clock.now)
        clock.now += 1
        controller.step()
        assert store.current_submission("job")["status"] == "done"
        assert provider.nodes() == [] and server.calls["TerminateInstances"] == 1
        clock.now += 1
        controller.step()
        assert server.calls["RunInstances"] == 1
    finally:
        store.close()


def test_a_restarted_controller_adopts_its_node_and_makes_no_second(tmp_path, server, image):
    repo = GitRepo(tmp_path / "config")
    repo.write("runs/job.yml", RUN)
    repo.commit()
    store = Store(tmp_path / "state" / "gitopsq.db")
    try:
        Controller(store, nimbus(server, image, store.controller_id), ConfigRepo(str(repo.path))).step()
        node_id = store.current_submission("job")["node_id"]
        again = Controller(store, nimbus(server, image, store.controller_id), ConfigRepo(str(repo.path)))
        again.step()
        again.step()
        assert store.current_submission("job")["node_id"] == node_id
        assert server.calls["RunInstances"] == 1
    finally:
        store.close()


def test_what_a_driver_cannot_do_is_said_by_name():
    provider = make_cloud_provider("cloudstack", {"endpoint": "https://cloud.example.com/client/api", "image": "tmpl-1"},
                                   "0123456789ab", None, PUBLIC_URL, allow_cidrs=("203.0.113.0/24",))
    assert [line.split(" (")[0] for line in provider.cannot] == [
        "ex_metadata", "ex_spot", "ex_clienttoken", "ex_terminate_on_shutdown", "security groups"]
    spec_text = "type: service\ncommands: [serve]\nport: 80\n"
    from gitopsq.spec import parse_run

    assert provider.unsatisfiable(parse_run(spec_text.encode(), "runs/a.yml")) == \
        "port: the cloudstack driver has no security groups to open them to --allow-cidr"


def test_nodes_of_a_driver_without_tags_are_found_by_their_names(server, image):
    from gitopsq.providers.base import Launch
    from gitopsq.spec import parse_run

    provider = nimbus(server, image, "0123456789ab")
    provider.adapter._accepts.discard("ex_metadata")  # as a driver without tags is
    status = provider.launch(Launch(4, "train", 1, parse_run(RUN.encode(), "runs/train.yml"), "t", attempt=2))
    [created] = server.requests("RunInstances")
    assert not [k for k in created if k.startswith("TagSpecification.1.Tag.2")]  # only the Name
    [node] = provider.nodes()
    assert (node.node_id, node.submission_id, node.run) == (status.node_id, 4, "train")
    other = nimbus(server, image, "ba9876543210")
    assert other.nodes() == []


def test_a_cluster_nodes_rank_is_found_in_its_name_without_tags(server, image):
    from gitopsq.providers.base import Launch
    from gitopsq.spec import parse_run

    provider = nimbus(server, image, "0123456789ab")
    provider.adapter._accepts.discard("ex_metadata")
    spec = parse_run((RUN + "nodes: 2\n").encode(), "runs/dist.yml")
    made = provider.launch_gang(Launch(7, "dist", 1, spec, "t", attempt=1))
    listed = sorted(provider.nodes(), key=lambda n: n.rank)
    assert [(n.node_id, n.submission_id, n.rank) for n in listed] == [(m.node_id, 7, m.rank) for m in made] and \
        [n.rank for n in listed] == [0, 1]


def test_an_image_the_driver_cannot_find_is_named(server, image):
    from gitopsq.providers.base import ERROR, Launch, ProviderError
    from gitopsq.spec import parse_run

    provider = make_cloud_provider("nimbus", {"endpoint": server.endpoint, "image": "ami-0000dead"}, "0123456789ab",
                                   None, PUBLIC_URL)
    # As some EC2-API servers answer an unknown id: an empty listing, not an error.
    server.answer("DescribeImages", '<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                                    "<requestId>r</requestId><imagesSet/></DescribeImagesResponse>")
    with pytest.raises(ProviderError) as info:
        provider.launch(Launch(4, "train", 1, parse_run(RUN.encode(), "runs/train.yml"), "t"))
    assert (info.value.kind, info.value.code) == (ERROR, "no-image")
    assert "ami-0000dead" in str(info.value) and "--provider-opt image" in str(info.value)


@pytest.mark.parametrize("options, message", [
    ({"endpoint": "http://127.0.0.1:1"}, "give --provider-opt image=IMAGE_ID"),
])
def test_what_a_driver_must_do_is_checked_at_start(options, message):
    with pytest.raises(ProviderConfigError, match=message):
        make_cloud_provider("nimbus", options, "c", None, PUBLIC_URL)
    with pytest.raises(ProviderConfigError, match=r"cannot pass user-data \(ex_userdata\)"):
        make_cloud_provider("dummy", {"image": "1"}, "c", None, PUBLIC_URL)


def test_serve_says_what_the_driver_cannot_at_start(tmp_path):
    repo = GitRepo(tmp_path / "config")
    repo.write("README.md", "no runs\n")
    repo.commit()
    result = run_cli("serve", "--once", "--repo", str(repo.path), "--db", str(tmp_path / "s.db"), "--provider", "cloudstack",
                     "--provider-opt", "endpoint=http://127.0.0.1:9/client/api", "--provider-opt", "image=t",
                     "--public-url", PUBLIC_URL)
    assert "provider cloudstack: its driver cannot: ex_metadata (tags: its nodes are found by their names instead)" in result.output
    assert "its driver cannot: ex_spot (spot instances" in result.output
