"""Whether a host is this machine only: what may go without TLS, and what may take unsigned webhooks."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str | None) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1; any other name or address may be reached from elsewhere
    (0.0.0.0 and :: listen on every interface)."""
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address
