"""Runs' ports opened on an EC2-API cloud: a security group per submission that gitopsq creates
and owns, removed when no node uses it.

A run that listens (a service's `port`, a task's or dev environment's `ports`) gets the group
`gitopsq-<controller id>-<submission id>`, tagged like its nodes, with one ingress rule per port
from the CIDRs `serve --allow-cidr` gives (TCP; IPv4 and IPv6). Without --allow-cidr the ports
are opened to nobody: no group is made. The node joins it besides its usual groups (the
provider option's, else the VPC's `default`).

A group outlives its node only until the next listing that finds no node of its submission:
`sweep` deletes it then (EC2 refuses while the instance is still shutting down: tried again at
the following listings). The first listing after a start sweeps every group of ours, so one
left by a crash between its creation and its node's goes too.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from gitopsq.providers.base import TAG_CONTROLLER, TAG_RUN, TAG_SUBMISSION, ProviderConfigError

log = logging.getLogger("gitopsq.providers.firewall")

RETRY_DELETE = 20.0  # seconds between tries at a group EC2 would not delete yet


def parse_cidrs(values) -> tuple[str, ...]:
    """--allow-cidr values as networks (203.0.113.0/24, 2001:db8::/32, 0.0.0.0/0); raises ProviderConfigError."""
    cidrs = []
    for value in values:
        try:
            cidrs.append(str(ipaddress.ip_network(value.strip(), strict=True)))
        except ValueError as exc:
            raise ProviderConfigError(f"--allow-cidr {value!r}: not a network ({exc})") from None
    return tuple(dict.fromkeys(cidrs))


class Firewall:
    """The security groups of one controller's runs, over an EC2-API driver's connection."""

    def __init__(self, driver, controller_id: str, cidrs: tuple[str, ...], subnet: str | None = None):
        self.driver = driver
        self.controller_id = controller_id
        self.cidrs = cidrs
        self.subnet = subnet
        self._vpc: str | None = None
        self._groups: dict[int, str] = {}  # submission id -> group id, of the groups known to exist
        self._due = True  # sweep at the first listing: a crash may have left groups
        self._retry_at = 0.0

    @property
    def prefix(self) -> str:
        return f"gitopsq-{self.controller_id}-"

    def group_name(self, submission_id: int) -> str:
        return f"{self.prefix}{int(submission_id)}"

    # --- opening --------------------------------------------------------------------------------

    def open(self, run: str, submission_id: int, ports: tuple[int, ...]) -> dict:
        """The run's group made (or found, for a relaunch) with its rules: the create_node arguments
        that put its node in it."""
        name = self.group_name(submission_id)
        group_id = self._create(name) or self._find(name)
        self._groups[submission_id] = group_id
        self._tag(group_id, {TAG_CONTROLLER: self.controller_id, TAG_RUN: run, TAG_SUBMISSION: str(submission_id),
                             "Name": name})
        for port in ports:
            self._allow(group_id, port)
        if self.subnet:  # a VPC of the user's: groups by id
            return {"ex_security_group_ids": [group_id]}
        return {"ex_security_groups": [name]}

    def _create(self, name: str) -> str | None:
        params = {"Action": "CreateSecurityGroup", "GroupName": name,
                  "GroupDescription": f"gitopsq: the ports of one run (controller {self.controller_id})"}
        if self.subnet:
            params["VpcId"] = self.vpc()
        try:
            response = self.driver.connection.request(self.driver.path, params=params).object
        except Exception as exc:
            if "InvalidGroup.Duplicate" in str(exc):
                return None  # made by an earlier attempt of the submission
            raise
        return _text(response, "groupId")

    def _find(self, name: str) -> str:
        for group in self.driver.ex_get_security_groups(filters={"group-name": name}):
            if group.name == name:
                return group.id
        raise LookupError(f"security group {name} exists but is not listed")

    def _tag(self, group_id: str, tags: dict[str, str]) -> None:
        """Tagged like the run's nodes, for whoever looks at the account (gitopsq finds its groups by name:
        an EC2-API cloud without tags still works)."""
        params = {"Action": "CreateTags", "ResourceId.1": group_id}
        for i, (key, value) in enumerate(tags.items(), 1):
            params.update({f"Tag.{i}.Key": key, f"Tag.{i}.Value": value})
        try:
            self.driver.connection.request(self.driver.path, params=params)
        except Exception as exc:
            log.warning("security group %s: not tagged (%s)", group_id, exc)

    def _allow(self, group_id: str, port: int) -> None:
        params = {"Action": "AuthorizeSecurityGroupIngress", "GroupId": group_id, "IpPermissions.1.IpProtocol": "tcp",
                  "IpPermissions.1.FromPort": port, "IpPermissions.1.ToPort": port}
        v4 = [c for c in self.cidrs if ":" not in c]
        v6 = [c for c in self.cidrs if ":" in c]
        params.update({f"IpPermissions.1.IpRanges.{i}.CidrIp": c for i, c in enumerate(v4, 1)})
        params.update({f"IpPermissions.1.Ipv6Ranges.{i}.CidrIpv6": c for i, c in enumerate(v6, 1)})
        try:
            self.driver.connection.request(self.driver.path, params=params)
        except Exception as exc:
            if "InvalidPermission.Duplicate" not in str(exc):  # an earlier attempt's rule
                raise

    def vpc(self) -> str:
        if self._vpc is None:
            [subnet] = self.driver.ex_list_subnets(subnet_ids=[self.subnet])
            self._vpc = subnet.extra["vpc_id"]
        return self._vpc

    # --- removing -------------------------------------------------------------------------------

    def sweep_if_due(self, nodes) -> None:
        """After a listing of our nodes (not terminated): delete the groups no node uses."""
        using = {int(s) for s in ((n.extra or {}).get("tags", {}).get(TAG_SUBMISSION, "") for n in nodes) if s.isdigit()}
        if not (self._due or set(self._groups) - using) or time.monotonic() < self._retry_at:
            return
        try:
            self._sweep(using)
        except Exception as exc:  # groups are tidied later; the listing itself stands
            log.warning("could not remove security groups nobody uses yet: %s", exc)
            self._retry_at = time.monotonic() + RETRY_DELETE

    def _sweep(self, using: set[int]) -> None:
        ours = {}
        for group in self.driver.ex_get_security_groups():
            tail = group.name[len(self.prefix):] if group.name.startswith(self.prefix) else ""
            if tail.isdigit():
                ours[int(tail)] = group.id
        self._groups = dict(ours)
        left = False
        for submission_id, group_id in ours.items():
            if submission_id in using:
                continue
            try:
                self.driver.ex_delete_security_group_by_id(group_id)
            except Exception as exc:  # DependencyViolation while its instance shuts down
                log.info("security group %s of submission %s: not removed yet (%s)", group_id, submission_id, exc)
                left = True
                continue
            del self._groups[submission_id]
            log.info("removed security group %s of submission %s", group_id, submission_id)
        self._due = False
        self._retry_at = time.monotonic() + RETRY_DELETE if left else 0.0


def _text(element, tag: str) -> str | None:
    for child in element.iter():
        if child.tag.rsplit("}", 1)[-1] == tag:
            return child.text
    return None
