"""Pure: how a person reaches a running run - a service's URL, its ports, a dev environment's way in.

`ps`, the API and the run page all show this one answer. On the local provider a run listens on
this machine (a container shares its network), so its address is the host people know it by
(`serve --public-host`, else the HTTP host). On a cloud provider a run listens on its node, whose
address is not recorded: the ports are listed without one.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import quote

# ide -> (the command that opens a folder, the URL scheme that opens a local file or folder)
IDES = {"vscode": ("code", "vscode"), "cursor": ("cursor", "cursor"), "windsurf": ("windsurf", "windsurf")}


@dataclass(frozen=True)
class Reach:
    """Where the controller's runs are: the host people reach them by, and the provider."""

    host: str = "localhost"
    provider: str = "local"


def connection(spec: Mapping, status: str, workdir: str | None, reach: Reach) -> dict | None:
    """How to reach a run whose current submission has `status` (None unless it is running).

    spec: RunSpec.to_dict(); workdir: the working directory of its latest attempt.
    """
    if status != "running":
        return None
    local = reach.provider == "local"
    host = reach.host if local else None
    netloc = (f"[{host}]" if host and ":" in host else host)
    url = f"http://{netloc}:{spec['port']}" if spec.get("type") == "service" and spec.get("port") and local else None
    ports = [_port(p["container_port"], p.get("local_port"), netloc) for p in spec.get("ports") or ()]
    dev = spec.get("type") == "dev-environment" and local and workdir
    return {"host": host, "url": url, "ports": ports, "workdir": workdir if dev else None,
            "ide": _ide(spec.get("ide"), workdir) if dev and spec.get("ide") else None}


def _port(port: int, local_port: int | None, netloc: str | None) -> dict:
    forward = None
    if netloc and local_port is not None and local_port != port:
        forward = f"ssh -N -L {local_port}:localhost:{port} {netloc.strip('[]')}"
    return {"port": port, "local_port": local_port, "address": f"{netloc}:{port}" if netloc else None, "forward": forward}


def _ide(name: str, workdir: str) -> dict | None:
    if name not in IDES:
        return None
    command, scheme = IDES[name]
    return {"name": name, "command": f"{command} {shlex.quote(workdir)}", "url": f"{scheme}://file{quote(workdir)}"}


def connection_text(found: dict | None) -> str:
    """One line for a table: the URL, the addresses, and the IDE command or working directory."""
    if not found:
        return ""
    parts = [found["url"]] if found.get("url") else []
    parts += [p["address"] or f":{p['port']}" for p in found.get("ports") or ()]
    if found.get("ide"):
        parts.append(found["ide"]["command"])
    elif found.get("workdir"):
        parts.append(found["workdir"])
    return "  ".join(parts)
