"""Any Libcloud compute provider as a gitopsq provider; EC2 is the one tested end to end, and any
other driver goes through the same adapter (tested with Libcloud's Nimbus driver).

`make_cloud_provider("ec2", {"region": "us-east-1"}, controller_id, max_nodes, public_url)` builds
a `LibcloudProvider` over a Libcloud driver plus a `CloudAdapter`, so a cloud is an adapter and a
driver, not a second code path in the controller. What the adapter adds:

- the size: the cheapest `NodeSize` whose vCPUs, memory and GPUs satisfy `resources`
  (`choose_size`, in gitopsq.providers.sizes), honouring `max_price`, `regions`, `backends`,
  `spot_policy` (`spot` asks the driver for a spot instance; `auto` too, then on-demand when spot
  has no capacity: `fallback`);
- the work, as user-data (`user_data`, in gitopsq.providers.cloud_node): a bash script that
  downloads the run's secrets and working tree from `--public-url` with the submission's token,
  runs the commands (inside `image` with docker when one is set), ships their log there, reports
  the exit code, and powers the node off; the tree is packed for it at launch (`CloudAdapter.pack`),
  its log is stored where nodes ship them (gitopsq.providers.cloud_logs);
- the run's ports, opened to `--allow-cidr` in a security group of its own (gitopsq.providers.firewall);
- why a node that vanished ended: a spot interruption, from the instance's state reason (`interruption`);
- capacity: `--max-nodes` when given, else the cloud answers create-node with capacity errors;
- errors, mapped to the provider error kinds by `ec2.classify_error`.

A driver lacking what gitopsq uses when it is there (tags, spot, idempotent creates, power-off,
security groups) is said by name at start (`CloudAdapter.cannot`); one that cannot pass
user-data or list sizes, or is given no image, is refused at start.

Credentials come from the mapping `serve` read at start (credentials files, else the environment:
GITOPSQ_PROVIDER_KEY / GITOPSQ_PROVIDER_SECRET / GITOPSQ_PROVIDER_SESSION_TOKEN, and for EC2 also
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN; see gitopsq.credentials), or from
the environment when none is given; never from options, and they are never logged.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from libcloud.compute.base import NodeImage, NodeSize
from libcloud.compute.drivers.ec2 import BaseEC2NodeDriver
from libcloud.compute.types import NodeState

from gitopsq.addresses import is_loopback
from gitopsq.providers import ec2
from gitopsq.providers.base import (
    CAPACITY,
    ERROR,
    TAG_ATTEMPT,
    TAG_CONTROLLER,
    TAG_RANK,
    TAG_RUN,
    TAG_SUBMISSION,
    UNSATISFIABLE,
    Launch,
    LibcloudProvider,
    ProviderConfigError,
    ProviderError,
    bundle_path,
)
from gitopsq.providers.cloud_logs import NodeLog, log_path
from gitopsq.providers.cloud_node import container_image, user_data
from gitopsq.providers.firewall import Firewall, parse_cidrs
from gitopsq.providers.sizes import DEFAULT_DISK, SizeInfo, choose_size, size_info
from gitopsq.spec import RunSpec
from gitopsq.workspace import WorkspaceError, archive

log = logging.getLogger("gitopsq.providers.cloud")

__all__ = [
    "CloudAdapter",
    "SizeInfo",
    "choose_size",
    "make_cloud_provider",
    "size_info",
    "user_data",
]

log = logging.getLogger("gitopsq.providers.cloud")

DEFAULT_MAX_LOG_SIZE = 16 * 1024 * 1024  # serve's --max-log-size default

# Node states in which the node still works on its run; every other state means it ended.
_WORKING = {NodeState.PENDING, NodeState.RUNNING, NodeState.STARTING, NodeState.REBOOTING,
            NodeState.UNKNOWN, NodeState.RECONFIGURING, NodeState.MIGRATING, NodeState.UPDATING,
            NodeState.NORMAL}

# dstack's backend names for Libcloud provider names, for the `backends` field.
BACKEND_ALIASES = {"ec2": {"ec2", "aws"}, "gce": {"gce", "gcp"}, "azure_arm": {"azure", "azure_arm"}}

EC2_OPTIONS = {
    "region": "the region to run in (default us-east-1)",
    "endpoint": "URL of an EC2-compatible API server",
    "image": "AMI id to boot (default: newest Amazon Linux 2023 for arch)",
    "image_name": "glob of image names to pick the newest of",
    "image_owner": "owner of image_name images (default amazon)",
    "arch": "x86_64 (default) or arm64: the sizes the image can boot",
    "key_name": "EC2 key pair for SSH",
    "security_groups": "comma-separated security group names",
    "subnet": "subnet id",
    "iam_profile": "instance profile name or ARN",
    "timeout": "seconds per API request (default 30)",
}
_CREDENTIAL_KEYS = {"key", "secret", "access_key", "secret_key", "password", "token"}
# A node's name where its driver cannot tag it (CloudAdapter._node_name).
_NAMED = re.compile(r"gq-(?P<controller>[0-9a-f]{12})-(?P<submission>[0-9]+)-(?P<attempt>[0-9]+)(r(?P<rank>[0-9]+))?"
                    r"-(?P<run>[a-z][a-z0-9-]*)")
# What gitopsq uses of a driver's create_node when it is there, and what it does without.
OPTIONAL_ARGS = {
    "ex_metadata": "tags: its nodes are found by their names instead",
    "ex_spot": "spot instances: spot_policy spot is refused, auto runs on-demand",
    "ex_clienttoken": "idempotent creates: a create in flight when the controller dies can leave a second node, "
                      "removed at the next step",
    "ex_terminate_on_shutdown": "ending a node by powering it off: gitopsq destroys it once its report is in",
}


# --- the adapter ---------------------------------------------------------------------------------


class CloudAdapter:
    """A Libcloud cloud as a gitopsq provider: a node per run, work as user-data, exit codes reported."""

    reports_exit_codes = True  # nodes report through the callback; a silent end is an interruption

    def __init__(self, driver, name: str, controller_id: str, public_url: str, *, region: str | None = None,
                 max_nodes: int | None = None, arch: str | None = "x86_64", image: str | None = None,
                 image_name: str | None = None, image_owner: str | None = None, create_extra: dict | None = None,
                 location: str | None = None, bundles: Path | None = None, logs: Path | None = None,
                 max_log_size: int | None = None, allow_cidrs: tuple[str, ...] = ()):
        self.driver = driver
        self.allow_cidrs = tuple(allow_cidrs)
        # Runs' ports: security groups on an EC2-API cloud; nothing to open without --allow-cidr.
        self.firewall = None
        if self.allow_cidrs and isinstance(driver, BaseEC2NodeDriver):
            subnet = (create_extra or {}).get("ex_subnet")
            self.firewall = Firewall(driver, controller_id, self.allow_cidrs, subnet.id if subnet else None)
        self.bundles = Path(bundles) if bundles else None  # where runs' trees wait for their nodes (bundle_path)
        self.logs = Path(logs) if logs else None  # where nodes' logs are stored as they ship them (cloud_logs)
        self.max_log_size = max_log_size or DEFAULT_MAX_LOG_SIZE
        self.name = name
        self.controller_id = controller_id
        self.public_url = public_url
        self.region = region
        self.max_nodes = max_nodes
        self.arch = arch
        self.image_id, self.image_name, self.image_owner = image, image_name, image_owner
        self.create_extra = dict(create_extra or {})
        self.location = location
        self._sizes: list[NodeSize] | None = None
        self._image: NodeImage | None = None
        self._packed: tuple[int, int] | None = None  # the launch whose tree was packed last
        self._group: str | None | bool = False  # the cluster placement group: False until asked for
        # Only arguments create_node names: a driver taking **kwargs may drop what it does not know.
        self._accepts = set(inspect.signature(driver.create_node).parameters)
        self.cannot = self._cannot()

    def _cannot(self) -> tuple[str, ...]:
        """What gitopsq would use that this driver lacks, by name (serve says it at start)."""
        missing = [f"{arg} ({what})" for arg, what in OPTIONAL_ARGS.items() if not self._takes(arg)]
        if self.allow_cidrs and self.firewall is None:
            missing.append("security groups (runs' ports cannot be opened to --allow-cidr: runs with port or ports are refused)")
        return tuple(missing)

    @property
    def is_ec2(self) -> bool:
        return isinstance(self.driver, ec2.GitopsqEC2Driver)

    def _takes(self, arg: str) -> bool:
        return arg in self._accepts

    # --- what runs need -------------------------------------------------------------------------

    def demand(self, spec: RunSpec) -> dict[str, int]:
        return {"nodes": spec.nodes}

    def capacity(self, owned_running: int) -> dict[str, int]:
        return {"nodes": self.max_nodes - owned_running} if self.max_nodes else {}

    def sizes(self) -> list[NodeSize]:
        if self._sizes is None:
            self._sizes = list(self.driver.list_sizes())
        return self._sizes

    def choose(self, spec: RunSpec) -> tuple[NodeSize | None, str | None]:
        return choose_size(self.sizes(), spec.resources, max_price=spec.max_price, arch=self.arch,
                           provider=self.name, region=self.region)

    def unsatisfiable(self, spec: RunSpec) -> str | None:
        """Why no node of this provider can ever run the spec, or None (also when it cannot tell yet)."""
        if spec.backends and not (set(spec.backends) & BACKEND_ALIASES.get(self.name, {self.name})):
            return f"backends: this controller provisions on {self.name} only, not {', '.join(spec.backends)}"
        if spec.regions and self.region and self.region not in spec.regions:
            return f"regions: this controller provisions in {self.region} only, not {', '.join(spec.regions)}"
        if spec.nvcc:
            return f"nvcc: not supported on {self.name} yet; set image to a CUDA devel image (e.g. nvidia/cuda:12.4.1-devel-ubuntu22.04)"
        if spec.resources.shm_size is not None and container_image(spec) is None:
            return (f"resources.shm_size: a run on a {self.name} node itself shares the node's /dev/shm; "
                    "set image (or python) to run in a container with its own")
        if container_image(spec):
            homes = [(f"repos[{i}].path", r.path) for i, r in enumerate(spec.repos)]
            homes += [(f"files[{i}]", f.dst) for i, f in enumerate(spec.files)]
            for field, path in homes:
                if path.startswith("~"):
                    return (f"{field}: {path!r}: the home of the image's user is not known to the {self.name} provider; "
                            f"use an absolute path")
        if self.max_nodes and spec.nodes > self.max_nodes:
            return f"nodes: needs {spec.nodes} nodes at once; this controller runs at most {self.max_nodes} (--max-nodes)"
        if spec.listens_on and self.allow_cidrs and self.firewall is None:
            field = "port" if spec.port is not None else "ports"
            return f"{field}: the {self.name} driver has no security groups to open them to --allow-cidr"
        if spec.spot_policy == "spot" and not self._takes("ex_spot"):
            return f"spot_policy: the {self.name} driver cannot request spot instances; use on-demand or auto"
        try:
            self.sizes()
        except Exception:  # the API is unreachable now: launch will say so, as a classified error
            return None
        return self.choose(spec)[1]

    # --- creating nodes -------------------------------------------------------------------------

    def image(self) -> NodeImage:
        if self._image is None:
            if self.is_ec2:
                kwargs = {"image_id": self.image_id}
                if self.image_name:
                    kwargs["name_pattern"] = self.image_name
                elif not self.image_id:
                    kwargs["name_pattern"] = ec2.DEFAULT_IMAGE_NAME.replace("x86_64", self.arch or "x86_64")
                if self.image_owner:
                    kwargs["owner"] = self.image_owner
                self._image = ec2.pick_image(self.driver, **kwargs)
            elif self.image_id:
                self._image = self._named_image()
            else:
                raise ProviderError(ERROR, "no-image", f"provider {self.name} needs --provider-opt image=IMAGE_ID")
        return self._image

    def _named_image(self) -> NodeImage:
        """The --provider-opt image, or an error that names it (some drivers fail on an unknown id
        with a bare IndexError from an empty listing)."""
        try:
            image = self.driver.get_image(self.image_id)
        except (IndexError, KeyError, LookupError):
            image = None
        if image is None:
            raise ProviderError(ERROR, "no-image", f"provider {self.name}: no image {self.image_id!r} "
                                                   "(--provider-opt image)")
        return image

    def create_args(self, launch: Launch, tags: dict[str, str]) -> dict:
        spec = launch.spec
        size, why = self.choose(spec)
        if size is None:
            raise ProviderError(UNSATISFIABLE, "no-size", why)
        image = self.image()
        gang = spec.nodes > 1
        args = dict(self.create_extra, name=self._node_name(launch), size=size, image=image)
        if launch.tree is not None and self._packed != (launch.submission_id, launch.attempt):
            self.pack(launch)  # once for all the nodes of a cluster run: they download the same tree
            self._packed = (launch.submission_id, launch.attempt)
        if self.logs is not None:
            self._log(launch.submission_id, launch.attempt, launch.rank).create()
        if self.firewall is not None and spec.listens_on:
            self._join(args, self.firewall.open(launch.run, launch.submission_id, spec.listens_on))
        script = user_data(launch, self.public_url, gpus_per_node=size_info(size).gpu_count)
        if self._takes("ex_userdata"):
            args["ex_userdata"] = script
        elif self._takes("ex_user_data"):
            args["ex_user_data"] = script
        else:
            raise ProviderError(UNSATISFIABLE, "no-user-data", f"the {self.name} driver cannot pass user-data to a node")
        if self._takes("ex_metadata"):
            args["ex_metadata"] = dict(tags)
        if self._takes("ex_clienttoken"):
            # Idempotent create: after a crash the same attempt returns the instance already made.
            args["ex_clienttoken"] = f"gq-{self.controller_id}-{launch.submission_id}-{launch.attempt}" + (
                f"-r{launch.rank}" if gang else "")
        if self._takes("ex_terminate_on_shutdown"):
            args["ex_terminate_on_shutdown"] = True  # the script's power-off ends the node's costs too
        if spec.spot_policy == "spot" or (spec.spot_policy == "auto" and self._takes("ex_spot")):
            args["ex_spot"] = True  # auto: spot first, on-demand when spot has no capacity (fallback)
            if spec.max_price is not None and self._takes("ex_spot_max_price"):
                args["ex_spot_max_price"] = spec.max_price
        if self.location and self._takes("location"):
            args["location"] = next((loc for loc in self.driver.list_locations() if self.location in (loc.id, loc.name)), None)
        group = self.placement_group(size) if gang else None
        if group:
            args["ex_placement_group"] = group
        if self.is_ec2:
            disk = spec.resources.disk or DEFAULT_DISK
            root = (image.extra or {}).get("root_device_name") or "/dev/xvda"
            args["ex_blockdevicemappings"] = [{"DeviceName": root, "Ebs": {
                "VolumeSize": int(math.ceil(disk.min or DEFAULT_DISK.min)), "VolumeType": "gp3", "DeleteOnTermination": "true"}}]
        return args

    def placement_group(self, size: NodeSize) -> str | None:
        """The cluster placement group of this controller's cluster runs (EC2 packs their instances
        close together on a low-latency network), made on first use; None for an instance type that
        cannot be in one (burstable t*, mac), or when it cannot be made (then runs go without)."""
        if not self.is_ec2 or str(size.id).split(".")[0].startswith(("t2", "t3", "t4", "mac")):
            return None
        if self._group is False:
            name = f"gq-{self.controller_id}-cluster"
            try:
                if name not in {group.name for group in self.driver.ex_list_placement_groups()}:
                    self.driver.ex_create_placement_group(name)
                self._group = name
            except Exception as exc:
                log.warning("ec2: cluster runs go without a placement group: cannot make %s: %s", name, exc)
                self._group = None
        return self._group or None
    def _node_name(self, launch: Launch) -> str:
        """gq-<run>-<submission id>[-<rank>]; where the driver cannot tag, the name carries the tags
        instead (gq-<controller id>-<submission id>-<attempt>[r<rank>]-<run>), so gitopsq still finds
        its own nodes."""
        rank = launch.spec.nodes > 1
        if self._takes("ex_metadata"):
            return f"gq-{launch.run}-{launch.submission_id}" + (f"-{launch.rank}" if rank else "")
        return f"gq-{self.controller_id}-{launch.submission_id}-{launch.attempt}" + (
            f"r{launch.rank}" if rank else "") + f"-{launch.run}"

    @staticmethod
    def _join(args: dict, groups: dict) -> None:
        """The node in the run's own security group too, besides its usual ones (the option's, else
        the VPC's default)."""
        if "ex_security_groups" in groups:
            args["ex_security_groups"] = list(args.get("ex_security_groups") or ["default"]) + groups["ex_security_groups"]
        else:
            args["ex_security_group_ids"] = list(args.get("ex_security_group_ids") or []) + groups["ex_security_group_ids"]

    def fallback(self, launch: Launch, args: dict, exc: ProviderError) -> dict | None:
        """spot_policy auto: the on-demand request after spot had no capacity, else None."""
        if launch.spec.spot_policy != "auto" or not args.get("ex_spot") or exc.kind != CAPACITY:
            return None
        log.info("%s #%s: no spot capacity (%s): asking for an on-demand node", launch.run, launch.number, exc.code)
        on_demand = {k: v for k, v in args.items() if k not in ("ex_spot", "ex_spot_max_price")}
        if "ex_clienttoken" in on_demand:  # a token names one request: the on-demand one is another
            on_demand["ex_clienttoken"] += "-on-demand"
        return on_demand

    def interruption(self, driver, node_id: str) -> str | None:
        """'spot interruption (<state reason>)' when EC2 took the instance back, else None."""
        if not isinstance(driver, BaseEC2NodeDriver):
            return None
        reason = ec2.state_reason(driver, node_id)
        return f"spot interruption ({reason})" if reason and reason.startswith(ec2.SPOT_REASON_PREFIX) else None

    def pack(self, launch: Launch) -> Path:
        """The launch's tree as one private file its node downloads (GET .../inputs/tree); replaced
        whole, so a node never reads half of one. The controller removes it when the submission ends."""
        if self.bundles is None:
            raise ProviderError(ERROR, "no-bundles", f"this {self.name} provider has no folder for runs' trees "
                                                     "(repos, files); it must be built with one")
        self.bundles.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.bundles, 0o700)
        out = bundle_path(self.bundles, launch.submission_id)
        fd, part = tempfile.mkstemp(prefix=f"{launch.submission_id}.", suffix=".part", dir=self.bundles)  # 0600
        os.close(fd)
        try:
            archive(launch.tree, Path(part))
            os.replace(part, out)
        except WorkspaceError as exc:
            raise ProviderError(ERROR, "tree", str(exc)) from None
        finally:
            if os.path.exists(part):
                os.unlink(part)
        return out

    def classify(self, exc: Exception) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        kind, code, message = ec2.classify_error(exc)
        return ProviderError(kind, code, message)

    # --- watching nodes -------------------------------------------------------------------------

    def list_owned(self, driver, controller_id: str) -> list:
        """Our nodes that are not terminated (and, after a listing, the security groups none uses removed)."""
        owned = self._list_owned(driver, controller_id)
        if self.firewall is not None:
            self.firewall.sweep_if_due(owned)
        return owned

    def _list_owned(self, driver, controller_id: str) -> list:
        if self.is_ec2:
            return ec2.list_nodes_by_tag(driver, TAG_CONTROLLER, controller_id)
        owned = []
        for node in ec2.all_nodes(driver) if isinstance(driver, BaseEC2NodeDriver) else driver.list_nodes():
            extra = node.extra if node.extra is not None else {}
            if "tags" not in extra and isinstance(extra.get("metadata"), dict):
                extra["tags"] = dict(extra["metadata"])  # drivers that keep ex_metadata under metadata
            elif not (extra.get("tags") or {}).get(TAG_CONTROLLER) and (named := _NAMED.fullmatch(node.name or "")):
                extra["tags"] = {TAG_CONTROLLER: named["controller"], TAG_SUBMISSION: named["submission"],
                                 TAG_ATTEMPT: named["attempt"], TAG_RUN: named["run"],
                                 **({TAG_RANK: named["rank"]} if named["rank"] else {})}  # a driver without tags
            node.extra = extra
            if (extra.get("tags") or {}).get(TAG_CONTROLLER) == controller_id and node.state != NodeState.TERMINATED:
                owned.append(node)
        return owned

    def exit_code(self, node):
        """Running while the node works; ended without a report is lost (the exit code comes by report).
        The log is where the node's chunks are stored (cloud_logs)."""
        tags = (node.extra or {}).get("tags") or {}
        sub, attempt, rank = tags.get(TAG_SUBMISSION, ""), tags.get(TAG_ATTEMPT, ""), tags.get(TAG_RANK, "0")
        known = self.logs and sub.isdigit() and attempt.isdigit() and rank.isdigit()
        log = str(self._log(int(sub), int(attempt), int(rank)).path) if known else None
        if node.state in _WORKING:
            return True, None, False, log
        return False, None, True, log

    # --- logs -----------------------------------------------------------------------------------

    def _log(self, submission_id: int, attempt: int, rank: int = 0) -> NodeLog:
        return NodeLog(log_path(self.logs, submission_id, attempt, rank), self.max_log_size)

    def attempt_ended(self, submission_id: int, attempt: int, why: str, nodes: int = 1) -> None:
        """The attempt's logs (one per node) say what never arrived, if a node did not send all of its own."""
        for rank in range(nodes if self.logs is not None else 0):
            if log_path(self.logs, submission_id, attempt, rank).exists():
                self._log(submission_id, attempt, rank).note_incomplete(why)


# --- construction --------------------------------------------------------------------------------


def _endpoint_kwargs(endpoint: str, takes_path: bool = False) -> dict:
    """A driver's host, port and secure (and path, for a driver that takes one) from a URL."""
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ProviderConfigError(f"--provider-opt endpoint must look like http(s)://host[:port][/path], got {endpoint!r}")
    secure = url.scheme == "https"
    kwargs = {"host": url.hostname, "port": url.port or (443 if secure else 80), "secure": secure}
    if takes_path and url.path not in ("", "/"):
        kwargs["path"] = url.path
    return kwargs


def _check_public_url(public_url: str | None, insecure: bool = False) -> str:
    if not public_url:
        raise ProviderConfigError("--public-url is required for a cloud provider: nodes report their exit code to it")
    url = urlsplit(public_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ProviderConfigError(f"--public-url must look like http(s)://host[:port], got {public_url!r}")
    if url.scheme == "http" and not insecure and not is_loopback(url.hostname):
        # nodes send their attempt's token to it: in clear text, anyone on the path could report for them
        raise ProviderConfigError(f"--public-url must be https:// (nodes send their tokens to it), got {public_url!r}; "
                                  "http:// is accepted on a loopback address, or with --insecure-public-url")
    return public_url


def make_cloud_provider(name: str, options: dict, controller_id: str, max_nodes: int | None = None,
                        public_url: str | None = None, bundles: Path | None = None, *,
                        insecure_public_url: bool = False, credentials: Mapping[str, str] | None = None,
                        logs: Path | None = None, max_log_size: int | None = None,
                        allow_cidrs: tuple[str, ...] = ()) -> LibcloudProvider:
    """A provider over the Libcloud compute driver `name`; raises ProviderConfigError on bad options.

    bundles: the folder where runs' trees wait for their nodes to download them (bundles_dir_for
    the state database, which the web app serves from); without it runs with repos or files fail.
    logs: the folder where nodes' logs are stored as they ship them (cloud_logs_dir_for the state
    database, where the web app writes them); without it runs have no log on the controller.
    max_log_size: the cap of each of those logs (serve's --max-log-size).
    allow_cidrs: the networks runs' ports are opened to (serve's --allow-cidr; none: nobody).
    credentials: by variable name (GITOPSQ_PROVIDER_KEY...); None reads them from the environment."""
    options = dict(options)
    stores = {"bundles": bundles, "logs": logs, "max_log_size": max_log_size, "allow_cidrs": parse_cidrs(allow_cidrs)}
    credentials = os.environ if credentials is None else credentials
    public_url = _check_public_url(public_url, insecure_public_url)
    secrets = sorted(_CREDENTIAL_KEYS & set(options))
    if secrets:
        raise ProviderConfigError(f"--provider-opt {', '.join(secrets)}: credentials come from the environment "
                                  "(GITOPSQ_PROVIDER_KEY / GITOPSQ_PROVIDER_SECRET) or from files "
                                  "(--provider-key-file / --provider-secret-file), never from options")
    if name == "ec2":
        return _make_ec2(options, controller_id, max_nodes, public_url, stores, credentials)
    return _make_generic(name, options, controller_id, max_nodes, public_url, stores, credentials)


def _make_ec2(options: dict, controller_id: str, max_nodes: int | None, public_url: str,
              stores: dict, credentials: Mapping[str, str]) -> LibcloudProvider:
    unknown = sorted(set(options) - set(EC2_OPTIONS))
    if unknown:
        known = "; ".join(f"{k} ({v})" for k, v in EC2_OPTIONS.items())
        raise ProviderConfigError(f"--provider-opt {', '.join(unknown)}: not an ec2 option; ec2 takes {known}")
    region = options.get("region", "us-east-1")
    arch = options.get("arch", "x86_64")
    if arch not in ("x86_64", "arm64"):
        raise ProviderConfigError(f"--provider-opt arch must be x86_64 or arm64, got {arch!r}")
    try:
        timeout = float(options.get("timeout", 30))
        driver = ec2.make_ec2_driver(region, options.get("endpoint"), timeout=timeout, environ=credentials)
    except ec2.EC2CredentialsError as exc:
        raise ProviderConfigError(str(exc)) from None
    except ValueError as exc:  # a bad endpoint, timeout or region; none of these is a secret
        raise ProviderConfigError(f"ec2: {exc}") from None
    create_extra = {}
    if options.get("key_name"):
        create_extra["ex_keyname"] = options["key_name"]
    if options.get("security_groups"):
        create_extra["ex_security_groups"] = [g.strip() for g in options["security_groups"].split(",") if g.strip()]
    if options.get("subnet"):
        from libcloud.compute.drivers.ec2 import EC2NetworkSubnet

        create_extra["ex_subnet"] = EC2NetworkSubnet(options["subnet"], options["subnet"], "available")
    if options.get("iam_profile"):
        create_extra["ex_iamprofile"] = options["iam_profile"]
    adapter = CloudAdapter(driver, "ec2", controller_id, public_url, region=region, max_nodes=max_nodes, arch=arch,
                           image=options.get("image"), image_name=options.get("image_name"),
                           image_owner=options.get("image_owner"), create_extra=create_extra, **stores)
    return LibcloudProvider(driver, adapter, controller_id)


def _make_generic(name: str, options: dict, controller_id: str, max_nodes: int | None, public_url: str,
                  stores: dict, credentials: Mapping[str, str]) -> LibcloudProvider:
    from libcloud.compute.providers import get_driver

    try:
        cls = get_driver(name)
    except AttributeError:
        raise ProviderConfigError(f"--provider {name}: not a Libcloud compute provider") from None
    key = credentials.get("GITOPSQ_PROVIDER_KEY")
    if not key:
        raise ProviderConfigError(f"provider {name}: set GITOPSQ_PROVIDER_KEY (and GITOPSQ_PROVIDER_SECRET if it needs one), "
                                  "or give --provider-key-file (and --provider-secret-file)")
    secret = credentials.get("GITOPSQ_PROVIDER_SECRET")
    create_keys = {"image", "location", "arch"}
    kwargs = {k: _option_value(v) for k, v in options.items() if k not in create_keys and k != "endpoint"}
    if options.get("endpoint"):
        kwargs.update(_endpoint_kwargs(options["endpoint"], "path" in inspect.signature(cls.__init__).parameters))
    token = credentials.get("GITOPSQ_PROVIDER_SESSION_TOKEN")
    if token:
        if "token" not in inspect.signature(cls.__init__).parameters:
            raise ProviderConfigError(f"provider {name}: its Libcloud driver takes no session token; "
                                      "unset GITOPSQ_PROVIDER_SESSION_TOKEN (or --provider-session-token-file)")
        kwargs["token"] = token
    _check_generic(name, cls, options)
    try:
        driver = cls(key, secret, **kwargs) if secret else cls(key, **kwargs)
    except TypeError as exc:
        raise ProviderConfigError(f"provider {name}: {exc}") from None
    if isinstance(driver, BaseEC2NodeDriver):
        # An EC2-API cloud may declare another API version's namespace than the driver's: read any.
        driver.connection.responseCls = ec2.NormalisingEC2Response
    adapter = CloudAdapter(driver, name, controller_id, public_url, region=options.get("region"), max_nodes=max_nodes,
                           arch=options.get("arch"), image=options.get("image"), location=options.get("location"),
                           **stores)
    return LibcloudProvider(driver, adapter, controller_id)


def _check_generic(name: str, cls, options: dict) -> None:
    """What any driver must do for gitopsq to run anything on it: say which is missing, at start."""
    from libcloud.compute.base import NodeDriver

    accepts = set(inspect.signature(cls.create_node).parameters)
    if not accepts & {"ex_userdata", "ex_user_data"}:
        raise ProviderConfigError(f"provider {name}: its Libcloud driver cannot pass user-data (ex_userdata) to a node, "
                                  "and a node gets its run that way")
    if cls.list_sizes is NodeDriver.list_sizes:
        raise ProviderConfigError(f"provider {name}: its Libcloud driver cannot list sizes (list_sizes) to choose one from")
    if not options.get("image"):
        raise ProviderConfigError(f"provider {name}: give --provider-opt image=IMAGE_ID (the image its nodes boot)")


def _option_value(text: str):
    """--provider-opt values for a driver's keyword arguments: true/false as booleans, whole numbers as ints."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return int(text) if text.isdigit() else text


