"""EC2 adapter built on Apache Libcloud.

The stock libcloud EC2 driver assumes real AWS: SigV2 by default and an exact
XML namespace.  EC2-compatible endpoints (moto, emulators, private clouds)
need SigV4 and answer with a slightly different namespace, so this module
wraps the driver once and offers the few helpers the cloud provider needs.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import socket
import ssl
from typing import Mapping
from urllib.parse import urlsplit

import requests
from libcloud.common.exceptions import BaseHTTPError
from libcloud.common.types import InvalidCredsError, LibcloudError, MalformedResponseError
from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.ec2 import NAMESPACE, EC2Connection, EC2NodeDriver, EC2Response
from libcloud.compute.types import NodeState
from libcloud.utils.xml import findall, findtext

from gitopsq.providers.base import TAG_CONTROLLER

__all__ = [
    "CONTROLLER_TAG",
    "DEFAULT_IMAGE_NAME",
    "DEFAULT_IMAGE_OWNER",
    "EC2CredentialsError",
    "GitopsqEC2Driver",
    "classify_error",
    "create_node",
    "destroy_node",
    "get_size",
    "get_user_data",
    "list_nodes_by_tag",
    "make_ec2_driver",
    "pick_image",
]

# Tag put on every instance so a controller can find (only) its own nodes.
CONTROLLER_TAG = TAG_CONTROLLER

# Default image: newest x86_64 Amazon Linux 2023 published by Amazon.
DEFAULT_IMAGE_OWNER = "amazon"
DEFAULT_IMAGE_NAME = "al2023-ami-2023.*-x86_64"

CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "InsufficientAddressCapacity",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",  # no spot capacity at the price the run allows
    }
)
THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ServiceUnavailable",
        "InternalError",
        "Unavailable",
    }
)
AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "OptInRequired",
        # Temporary credentials past their end: new ones are needed, the runs are not at fault.
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidToken",
    }
)

# Matches a default or prefixed xmlns declaration of any EC2 API version,
# with or without the trailing slash real AWS uses.
_EC2_XMLNS = re.compile(
    r"""(\s+xmlns(?::[\w.-]+)?\s*=\s*)(["'])https?://ec2\.amazonaws\.com/doc/[^"'/]*/?\2"""
)
_DEFAULT_EC2_XMLNS = re.compile(
    r"""\s+xmlns\s*=\s*(["'])https?://ec2\.amazonaws\.com/doc/[^"'/]*/?\1"""
)
# "Code: message" as produced by libcloud's EC2 error parsing.
_AWS_CODE = re.compile(r"^\s*([A-Z][A-Za-z0-9]*(?:\.[A-Za-z0-9]+)*): ?(.*)")


class EC2CredentialsError(RuntimeError):
    """No EC2 credentials were given or found in the environment."""


class NormalisingEC2Response(EC2Response):
    """EC2 response that accepts any EC2 API namespace.

    libcloud looks elements up under one exact namespace; a server that
    declares another version (or drops the trailing slash) yields empty lists.
    Error documents are looked up without a namespace, as AWS sends them, so
    any declared namespace there would blank the error message.
    """

    def parse_body(self):
        if self.body:
            self.body = _EC2_XMLNS.sub(r"\1\2" + NAMESPACE + r"\2", self.body)
        return super().parse_body()

    def parse_error(self):
        fallback = ("HTTP %s %s" % (self.status, self.error or "")).strip()
        if self.body:
            self.body = _DEFAULT_EC2_XMLNS.sub("", self.body)
        try:
            message = super().parse_error()
        except MalformedResponseError:
            # Not XML (a proxy or load balancer page): keep status and a snippet.
            snippet = " ".join(str(self.body).split())[:200]
            return "%s: %s" % (fallback, snippet) if snippet else fallback
        return message or fallback


class NormalisingEC2Connection(EC2Connection):
    responseCls = NormalisingEC2Response


class GitopsqEC2Driver(EC2NodeDriver):
    """EC2 driver that signs with SigV4 and tolerates namespace variants."""

    connectionCls = NormalisingEC2Connection
    # libcloud's map lacks stopping/stopped (they read as UNKNOWN): a node that ended must say so.
    NODE_STATE_MAP = {
        **EC2NodeDriver.NODE_STATE_MAP,
        "shutting-down": NodeState.STOPPING,
        "stopping": NodeState.STOPPING,
        "stopped": NodeState.STOPPED,
    }

    def __init__(self, *args, **kwargs):
        # SigV2 is rejected by current AWS regions and most compatible servers.
        kwargs.setdefault("signature_version", "4")
        super().__init__(*args, **kwargs)

    def list_nodes(self, ex_node_ids=None, ex_filters=None):
        return all_nodes(self, ex_node_ids, ex_filters)


def all_nodes(driver, ex_node_ids=None, ex_filters=None) -> list[Node]:
    """libcloud's list_nodes, page after page: DescribeInstances answers a page at a time
    (nextToken), and a listing cut at its first page would take the nodes on the others for gone.
    Any EC2-API driver."""
    params = {"Action": "DescribeInstances"}
    if ex_node_ids:
        params.update(driver._pathlist("InstanceId", ex_node_ids))
    if ex_filters:
        params.update(driver._build_filters(ex_filters))
    nodes: list[Node] = []
    while True:
        response = driver.connection.request(driver.path, params=params).object
        for reservation in findall(element=response, xpath="reservationSet/item", namespace=NAMESPACE):
            nodes += driver._to_nodes(reservation, "instancesSet/item")
        token = findtext(element=response, xpath="nextToken", namespace=NAMESPACE)
        if not token:
            break
        params = {**params, "NextToken": token}
    addresses = driver.ex_describe_addresses(nodes)
    for node in nodes:
        node.public_ips.extend(addresses.get(node.id, []))
    return nodes


def _credentials(key: str | None, secret: str | None, environ: Mapping[str, str] | None = None,
                 token: str | None = None) -> tuple[str, str, str | None]:
    """(key, secret, session token or None): each pair with the session token of its own kind
    (temporary credentials are a key, a secret and a token that only work together)."""
    environ = os.environ if environ is None else environ
    sources = [
        (key, secret, token),
        (environ.get("GITOPSQ_PROVIDER_KEY"), environ.get("GITOPSQ_PROVIDER_SECRET"),
         environ.get("GITOPSQ_PROVIDER_SESSION_TOKEN")),
        (environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY"), environ.get("AWS_SESSION_TOKEN")),
    ]
    for found_key, found_secret, found_token in sources:
        if found_key and found_secret:
            return found_key, found_secret, found_token or None
    # Deliberately names only the variables, never their values.
    raise EC2CredentialsError(
        "EC2 credentials not found: give --provider-key-file and --provider-secret-file, or set "
        "GITOPSQ_PROVIDER_KEY and GITOPSQ_PROVIDER_SECRET, or "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


def make_ec2_driver(
    region: str = "us-east-1",
    endpoint: str | None = None,
    key: str | None = None,
    secret: str | None = None,
    *,
    token: str | None = None,
    timeout: float | None = None,
    environ: Mapping[str, str] | None = None,
) -> GitopsqEC2Driver:
    """Build a driver for `region`, optionally against a custom `endpoint`.

    `endpoint` is a URL such as "http://127.0.0.1:5000"; its scheme decides
    TLS and a missing port defaults to 80/443.  `timeout` (seconds) bounds
    each HTTP request. Without key and secret, they are looked up in `environ` (default: the
    process environment), each pair with its session token when there is one
    (GITOPSQ_PROVIDER_SESSION_TOKEN, AWS_SESSION_TOKEN): temporary credentials sign every
    request with it (X-Amz-Security-Token).
    """
    access_key, secret_key, session_token = _credentials(key, secret, environ, token)
    kwargs: dict = {"region": region}
    if session_token:
        kwargs["token"] = session_token
    if endpoint:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("endpoint must look like http(s)://host[:port], got %r" % endpoint)
        secure = url.scheme == "https"
        kwargs.update(host=url.hostname, port=url.port or (443 if secure else 80), secure=secure)
    if timeout is not None:
        kwargs["timeout"] = timeout
    return GitopsqEC2Driver(access_key, secret_key, **kwargs)


def _split_code(text: str) -> tuple[str | None, str]:
    """Split libcloud's "Code: message" text; only the first error counts."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    match = _AWS_CODE.match(first)
    if match:
        return match.group(1), match.group(2).strip()
    return None, text.strip()


def classify_error(exc: BaseException) -> tuple[str, str, str]:
    """Return (kind, code, message) for an exception raised by the driver.

    kind is "capacity", "throttle", "auth" or "error"; code is the AWS error
    code when one was sent, else "HTTP<status>" or the exception type name.
    """
    status = None
    code, message = None, str(exc).strip()
    # Only libcloud's own errors carry "Code: message" text from EC2.
    if isinstance(exc, BaseHTTPError):
        status = exc.code if isinstance(exc.code, int) else None
        code, message = _split_code(str(exc.message or ""))
    elif isinstance(exc, LibcloudError):
        status = getattr(exc, "http_code", None)
        code, message = _split_code(str(exc.value or ""))
    if code is None:
        code = "HTTP%d" % status if status else type(exc).__name__
    message = message or code

    if code in CAPACITY_CODES:
        return "capacity", code, message
    if code in AUTH_CODES or isinstance(exc, InvalidCredsError):
        return "auth", code, message
    if code in THROTTLE_CODES:
        return "throttle", code, message
    if status is not None and (status == 429 or status >= 500):
        return "throttle", code, message
    if status in (401, 403):
        return "auth", code, message
    # TLS failures are configuration problems, not transient ones.
    if isinstance(exc, (ssl.SSLError, requests.exceptions.SSLError)):
        return "error", code, message
    if isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            ConnectionError,
            TimeoutError,
            socket.timeout,
        ),
    ):
        return "throttle", code, message
    return "error", code, message


def get_size(driver: EC2NodeDriver, instance_type: str) -> NodeSize:
    """Return the NodeSize (ram, disk, price) for an instance type."""
    for size in driver.list_sizes():
        if size.id == instance_type:
            return size
    raise ValueError("unknown instance type %r in region %s" % (instance_type, driver.region_name))


def pick_image(
    driver: EC2NodeDriver,
    image_id: str | None = None,
    name_pattern: str = DEFAULT_IMAGE_NAME,
    owner: str = DEFAULT_IMAGE_OWNER,
) -> NodeImage:
    """Choose the image to boot.

    Users override the default with the provider's `image` option (an AMI id,
    passed here as `image_id`) or `image_name` (a glob passed as
    `name_pattern`).  Otherwise the images owned by `owner` whose name
    matches the pattern are listed and the highest version wins: names are
    compared with their numbers as integers (2023.12 > 2023.9, kernel-6.18 >
    kernel-6.1), then creation date, then id.  Names come first because
    emulators stamp every image with their own start time.
    """
    if image_id:
        return driver.get_image(image_id)
    images = driver.list_images(ex_owner=owner, ex_filters={"name": name_pattern})
    # Servers that ignore the name filter must not change the choice.
    images = [i for i in images if i.name and fnmatch.fnmatchcase(i.name, name_pattern)]
    if not images:
        raise LookupError("no image owned by %r matches %r" % (owner, name_pattern))
    return max(
        images,
        key=lambda i: (_version_key(i.name), str(i.extra.get("creation_date") or ""), i.id),
    )


def _version_key(name: str) -> tuple:
    # Splitting on digit runs keeps str/int positions aligned for comparison.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def create_node(
    driver: EC2NodeDriver,
    name: str,
    size: NodeSize | str,
    image: NodeImage | str,
    user_data: str | None = None,
    tags: dict[str, str] | None = None,
) -> Node:
    """Launch one instance with tags and user-data.

    libcloud sends the tags (plus Name) as a TagSpecification on RunInstances,
    so the instance is never visible untagged and no separate CreateTags call
    can fail half-way.
    """
    if isinstance(size, str):
        size = get_size(driver, size)
    if isinstance(image, str):
        image = NodeImage(id=image, name=None, driver=driver)
    return driver.create_node(
        name=name,
        size=size,
        image=image,
        ex_userdata=user_data,
        ex_metadata=dict(tags or {}),
    )


def list_nodes_by_tag(
    driver: EC2NodeDriver, key: str, value: str, include_terminated: bool = False
) -> list[Node]:
    """Nodes carrying tag key=value; terminated ones linger for an hour on
    AWS, so they are dropped unless asked for (by EC2 already: fewer pages)."""
    filters = {"tag:%s" % key: value}
    if not include_terminated:
        filters["instance-state-name"] = ["pending", "running", "shutting-down", "stopping", "stopped"]
    nodes = all_nodes(driver, ex_filters=filters)
    if include_terminated:
        return nodes
    return [n for n in nodes if n.state != NodeState.TERMINATED]


def destroy_node(driver: EC2NodeDriver, node: Node) -> bool:
    """Terminate an instance; True when EC2 accepted the request."""
    return driver.destroy_node(node)


def get_user_data(driver: EC2NodeDriver, node: Node | str) -> str | None:
    """Read an instance's user-data back (decoded), None when it has none."""
    node_id = node if isinstance(node, str) else node.id
    params = {"Action": "DescribeInstanceAttribute", "InstanceId": node_id, "Attribute": "userData"}
    response = driver.connection.request(driver.path, params=params).object
    encoded = findtext(element=response, xpath="userData/value", namespace=NAMESPACE)
    return base64.b64decode(encoded).decode("utf-8") if encoded else None


# The state reasons EC2 gives an instance it took back from a spot run (terminated, stopped or
# hibernated): Server.SpotInstanceTermination, Server.SpotInstanceShutdown...
SPOT_REASON_PREFIX = "Server.SpotInstance"


def state_reason(driver, node_id: str) -> str | None:
    """The code of why an instance is in its state (stateReason/code), None when it has none;
    terminated instances too, as long as EC2 still lists them. Any EC2-API driver (its connection)."""
    params = {"Action": "DescribeInstances", "InstanceId.1": node_id}
    response = driver.connection.request(driver.path, params=params).object
    for item in response.iter(f"{{{NAMESPACE}}}item"):
        if findtext(element=item, xpath="instanceId", namespace=NAMESPACE) == node_id:
            return findtext(element=item, xpath="stateReason/code", namespace=NAMESPACE) or None
    return None
