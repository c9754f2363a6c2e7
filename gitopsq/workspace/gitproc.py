"""Running git for a run's working tree: a scrubbed environment, a deadline, messages without secrets.

git here never sees the controller's own configuration, credential helpers, askpass programs,
ssh agent or keys: HOME is a temporary folder, the system and global config files are off, and
the environment is built from nothing but PATH and the network settings (proxies, CA bundles).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

GIT = "git"
FETCH_TIMEOUT = 600.0  # seconds for one fetch: a server that accepts and never answers fails the attempt

# Passed through from the controller's environment: how to reach the network, never who we are.
_PASSTHROUGH = ("PATH", "TZ", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
                "all_proxy", "ALL_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO")

# On every git command line: no credential helper (a mirror's config could name one), no hooks.
CONFIG = ("-c", "credential.helper=", "-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0",
          "-c", "maintenance.auto=false", "-c", "tar.umask=022")


class WorkspaceError(Exception):
    """A run's working tree cannot be made. The message is one line that names the entry
    (`repos[1] https://host/x.git: ...`) and what went wrong, never a credential."""


def scrubbed_env(home: Path, **extra: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSTHROUGH if name in os.environ}
    env.setdefault("PATH", os.defpath)
    env.update(
        HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), LC_ALL="C", LANGUAGE="",
        GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_TERMINAL_PROMPT="0",
        GIT_ALLOW_PROTOCOL="http:https:ssh:git:file",  # never ext:: (a command) or other helpers
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def run(args: list[str], env: dict[str, str], *, timeout: float | None = None, what: str = "git") -> Result:
    """Run one git command in a process group of its own, killed with its helpers at the deadline."""
    proc = subprocess.Popen([GIT, *CONFIG, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkspaceError(f"{what}: no answer within {timeout:g}s") from None
    finally:  # also on KeyboardInterrupt: never leave a git (or git-remote-https, ssh) behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


# git's generic words after a transport failed; the transport's own line (ssh: connect to host
# ...: Connection refused) is the reason
_GENERIC = ("fatal: could not read from remote repository", "please make sure you have the correct access rights",
            "and the repository exists", "warning:")


def one_line(stderr: str, secrets: tuple[str, ...] = ()) -> str:
    """git's own reason from its stderr: the last fatal/error line, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.lower().startswith(_GENERIC)] or lines
    chosen = [line for line in lines if line.startswith(("fatal:", "error:"))] or lines or ["no message"]
    text = re.sub(r"^(fatal|error): ", "", chosen[-1])
    return redact(text, secrets)[:300]
