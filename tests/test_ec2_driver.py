"""EC2 adapter against moto's EC2 server (with injected faults)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import requests
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2NodeDriver
from libcloud.compute.types import NodeState
from libcloud.utils.xml import findall

from gitopsq.providers import ec2
from gitopsq.providers.ec2 import CONTROLLER_TAG, classify_error, make_ec2_driver
from tests.moto_ec2 import TEST_KEY, TEST_SECRET, MotoEC2Server

USER_DATA = "#!/bin/sh\necho 'hello from gitopsq'\n"


@pytest.fixture
def server():
    with MotoEC2Server() as srv:
        yield srv


@pytest.fixture
def driver(server):
    return make_ec2_driver(endpoint=server.endpoint, key=TEST_KEY, secret=TEST_SECRET)


@pytest.fixture
def image(driver):
    return ec2.pick_image(driver)


def launch(driver, image, name="run-1", controller="ctl-a", size="t3.micro", **tags):
    return ec2.create_node(
        driver,
        name=name,
        size=size,
        image=image,
        user_data=USER_DATA,
        tags={CONTROLLER_TAG: controller, **tags},
    )


def raised(fn, *args, **kwargs) -> BaseException:
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return info.value


# --- driver construction ---------------------------------------------------


def test_endpoint_and_signature(server):
    driver = make_ec2_driver("eu-west-1", endpoint=server.endpoint, key="k", secret="s")
    assert isinstance(driver, EC2NodeDriver)
    assert driver.signature_version == "4"
    assert driver.region_name == "eu-west-1"
    conn = driver.connection
    assert (conn.host, conn.port, conn.secure) == ("127.0.0.1", server.port, False)

    tls = make_ec2_driver(endpoint="https://ec2.example.internal", key="k", secret="s")
    assert (tls.connection.host, tls.connection.port, tls.connection.secure) == (
        "ec2.example.internal",
        443,
        True,
    )


def test_credentials_order(monkeypatch):
    monkeypatch.delenv("GITOPSQ_PROVIDER_KEY", raising=False)
    monkeypatch.delenv("GITOPSQ_PROVIDER_SECRET", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aws-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    assert make_ec2_driver().key == "aws-key"
    monkeypatch.setenv("GITOPSQ_PROVIDER_KEY", "gq-key")
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", "gq-secret")
    assert make_ec2_driver().key == "gq-key"
    assert make_ec2_driver(key="arg-key", secret="arg-secret").key == "arg-key"


def test_missing_credentials_names_variables_not_values(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GITOPSQ_PROVIDER_KEY"):
        monkeypatch.delenv(var, raising=False)
    # A lone secret is not usable and must not leak into the message.
    monkeypatch.setenv("GITOPSQ_PROVIDER_SECRET", "very-secret-value")
    with pytest.raises(ec2.EC2CredentialsError) as info:
        make_ec2_driver()
    message = str(info.value)
    for var in (
        "GITOPSQ_PROVIDER_KEY",
        "GITOPSQ_PROVIDER_SECRET",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        assert var in message
    assert "very-secret-value" not in message


# --- sizes and images ------------------------------------------------------


def test_list_sizes_have_ram_and_price(driver):
    sizes = {s.id: s for s in driver.list_sizes()}
    assert len(sizes) > 100
    micro = sizes["t3.micro"]
    assert micro.ram == 1024
    assert micro.price > 0
    assert ec2.get_size(driver, "m5.large").ram == 8192
    with pytest.raises(ValueError):
        ec2.get_size(driver, "no.such-type")


def test_pick_image_default_and_override(driver):
    image = ec2.pick_image(driver)
    # Highest AL2023 x86_64 version by numeric comparison of its name parts.
    assert image.name.startswith("al2023-ami-2023.")
    assert image.name.endswith("-kernel-6.18-x86_64")
    assert ec2.pick_image(driver).id == image.id

    other = ec2.pick_image(driver, name_pattern="amzn2-ami-hvm-*-x86_64-gp2")
    candidates = driver.list_images(ex_owner="amazon", ex_filters={"name": "amzn2-ami-hvm-*"})
    x86 = [i.name for i in candidates if i.name.endswith("-x86_64-gp2")]
    newest = max(x86, key=ec2._version_key)
    assert len(candidates) > 1
    assert other.name == newest

    assert ec2.pick_image(driver, image_id=other.id).id == other.id
    with pytest.raises(LookupError):
        ec2.pick_image(driver, name_pattern="does-not-exist-*")


def test_image_versions_compare_numerically():
    names = ["al2023-ami-2023.9.1-kernel-6.1", "al2023-ami-2023.12.1-kernel-6.1"]
    assert max(names) == names[0]  # plain string order gets it wrong
    assert max(names, key=ec2._version_key) == names[1]


# --- node lifecycle --------------------------------------------------------


def test_create_with_tags_and_user_data(driver, image, server):
    node = launch(driver, image, run="r-42")
    launch(driver, image, name="other", controller="ctl-b")
    assert server.calls["RunInstances"] == 2
    # Tags ride on RunInstances (TagSpecification): no separate CreateTags.
    assert server.calls["CreateTags"] == 0

    found = ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-a")
    assert [n.id for n in found] == [node.id]
    listed = found[0]
    assert listed.name == "run-1"
    assert listed.extra["tags"] == {"Name": "run-1", CONTROLLER_TAG: "ctl-a", "run": "r-42"}
    assert listed.extra["instance_type"] == "t3.micro"
    assert listed.extra["image_id"] == image.id

    assert ec2.get_user_data(driver, node) == USER_DATA
    assert ec2.get_user_data(driver, node.id) == USER_DATA


def test_node_without_user_data(driver, image):
    node = ec2.create_node(driver, name="bare", size="t3.micro", image=image.id)
    assert ec2.get_user_data(driver, node) is None


def test_destroy_terminates(driver, image):
    node = launch(driver, image)
    assert ec2.destroy_node(driver, node) is True

    assert ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-a") == []
    kept = ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-a", include_terminated=True)
    assert [(n.id, n.state) for n in kept] == [(node.id, NodeState.TERMINATED)]


# --- error classification --------------------------------------------------


def test_capacity_error_is_one_shot(driver, image, server):
    server.inject(
        "RunInstances",
        "InsufficientInstanceCapacity",
        status=500,
        message="We currently do not have sufficient t3.micro capacity.",
    )
    exc = raised(launch, driver, image)
    assert isinstance(exc, BaseHTTPError)
    assert classify_error(exc) == (
        "capacity",
        "InsufficientInstanceCapacity",
        "We currently do not have sufficient t3.micro capacity.",
    )
    assert ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-a") == []

    node = launch(driver, image)
    assert server.calls["RunInstances"] == 2
    assert [n.id for n in ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-a")] == [node.id]


@pytest.mark.parametrize(
    "code,status,kind",
    [
        ("RequestLimitExceeded", 503, "throttle"),
        ("VcpuLimitExceeded", 400, "capacity"),
        ("InternalError", 500, "throttle"),
        ("AuthFailure", 401, "auth"),
        ("UnauthorizedOperation", 403, "auth"),
        ("InvalidAMIID.Malformed", 400, "error"),
        ("SomethingNewAndOdd", 400, "error"),
    ],
)
def test_injected_codes_are_classified(driver, image, server, code, status, kind):
    server.inject("RunInstances", code, status=status, message="injected %s" % code)
    exc = raised(launch, driver, image)
    assert classify_error(exc) == (kind, code, "injected %s" % code)


def test_auth_failure_is_libcloud_invalid_creds(driver, server):
    server.inject("DescribeInstances", "AuthFailure", status=401, message="bad key")
    exc = raised(driver.list_nodes)
    assert isinstance(exc, InvalidCredsError)
    assert classify_error(exc) == ("auth", "AuthFailure", "bad key")


def test_plain_503_is_throttle(driver, server):
    server.inject_http("DescribeInstances", status=503, body="upstream overloaded")
    exc = raised(driver.list_nodes)
    kind, code, message = classify_error(exc)
    assert (kind, code) == ("throttle", "HTTP503")
    assert "upstream overloaded" in message
    assert driver.list_nodes() == []  # one-shot


def test_timeout_is_throttle(server):
    slow = make_ec2_driver(endpoint=server.endpoint, key=TEST_KEY, secret=TEST_SECRET, timeout=0.3)
    server.inject_delay("DescribeInstances", seconds=5)
    exc = raised(slow.list_nodes)
    assert isinstance(exc, requests.exceptions.Timeout)
    kind, code, message = classify_error(exc)
    assert (kind, code) == ("throttle", "ReadTimeout")
    assert "timed out" in message


def test_connection_refused_is_throttle():
    with MotoEC2Server() as srv:
        endpoint = srv.endpoint
    dead = make_ec2_driver(endpoint=endpoint, key=TEST_KEY, secret=TEST_SECRET, timeout=2)
    kind, code, _ = classify_error(raised(dead.list_nodes))
    assert (kind, code) == ("throttle", "ConnectionError")


def test_classify_never_blank():
    assert classify_error(ValueError()) == ("error", "ValueError", "ValueError")
    assert classify_error(BaseHTTPError(500, "")) == ("throttle", "HTTP500", "HTTP500")
    assert classify_error(InvalidCredsError("")) == ("auth", "HTTP401", "HTTP401")
    assert classify_error(TimeoutError("slow")) == ("throttle", "TimeoutError", "slow")
    assert classify_error(BaseHTTPError(400, "Throttling: Rate exceeded")) == (
        "throttle",
        "Throttling",
        "Rate exceeded",
    )


# --- namespace normalisation -----------------------------------------------


def test_stock_driver_needs_the_response_subclass(driver, image, server):
    stock = EC2NodeDriver(
        TEST_KEY,
        TEST_SECRET,
        signature_version="4",
        host="127.0.0.1",
        port=server.port,
        secure=False,
    )
    node = launch(driver, image)

    # moto says xmlns=".../2016-11-15" (no slash): the stock parser sees nothing.
    assert stock.list_nodes() == []
    assert [n.id for n in driver.list_nodes()] == [node.id]

    missing = {"InstanceId": "i-0123456789abcdef0", "Attribute": "userData"}
    params = {"Action": "DescribeInstanceAttribute", **missing}
    stock_exc = raised(stock.connection.request, "/", params=params)
    assert str(stock_exc) == ""
    ours_exc = raised(driver.connection.request, "/", params=params)
    kind, code, message = classify_error(ours_exc)
    assert (kind, code) == ("error", "InvalidInstanceID.NotFound")
    assert "i-0123456789abcdef0" in message


def _fake_response(body: str, status: int = 200, reason: str = "OK"):
    return SimpleNamespace(
        headers={"Content-Type": "text/xml"},
        reason=reason,
        status_code=status,
        request=None,
        iter_content=None,
        text=body,
    )


ZONES = (
    '<DescribeAvailabilityZonesResponse xmlns="{ns}"><availabilityZoneInfo>'
    "<item><zoneName>us-east-1a</zoneName></item></availabilityZoneInfo>"
    "</DescribeAvailabilityZonesResponse>"
)


@pytest.mark.parametrize(
    "namespace",
    [
        "http://ec2.amazonaws.com/doc/2016-11-15/",
        "http://ec2.amazonaws.com/doc/2016-11-15",
        "http://ec2.amazonaws.com/doc/2013-10-15/",
        "https://ec2.amazonaws.com/doc/2020-01-01",
    ],
)
def test_any_ec2_namespace_is_normalised(namespace):
    conn = SimpleNamespace(driver=None, context={})
    response = ec2.NormalisingEC2Response(_fake_response(ZONES.format(ns=namespace)), conn)
    items = findall(response.object, "availabilityZoneInfo/item", namespace=NAMESPACE)
    assert len(items) == 1


def test_namespaced_error_is_not_blank():
    body = (
        '<Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><Errors><Error>'
        "<Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message>"
        "</Error></Errors><RequestID>x</RequestID></Response>"
    )
    conn = SimpleNamespace(driver=None, context={})
    with pytest.raises(BaseHTTPError) as info:
        ec2.NormalisingEC2Response(_fake_response(body, 503, "Service Unavailable"), conn)
    assert classify_error(info.value) == (
        "throttle",
        "RequestLimitExceeded",
        "Request limit exceeded.",
    )


# --- listings past one page ------------------------------------------------


def test_listings_follow_every_page(driver, image, server):
    """EC2 answers DescribeInstances a page at a time (moto: 100 reservations): a node on the
    second page must not look gone."""
    made = [launch(driver, image, name=f"n{i}", controller="ctl-many").id for i in range(101)]
    assert sorted(n.id for n in ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-many")) == sorted(made)
    assert len(driver.list_nodes()) == 101
    assert server.calls["DescribeInstances"] >= 4  # two pages each


def test_terminated_instances_do_not_hide_a_running_one(driver, image):
    old = [launch(driver, image, name=f"old{i}", controller="ctl-busy") for i in range(100)]
    for node in old:
        driver.destroy_node(node)
    new = launch(driver, image, name="new", controller="ctl-busy")
    assert [n.id for n in ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-busy")] == [new.id]
    assert len(ec2.list_nodes_by_tag(driver, CONTROLLER_TAG, "ctl-busy", include_terminated=True)) == 101
