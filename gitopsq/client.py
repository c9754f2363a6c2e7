"""The HTTP API of a running controller, as the CLI's `--server` uses it (plan's live state, stop,
rerun). Python's own urllib: the CLI needs no HTTP library for three POSTs.

Every failure is an ApiError whose message names the server and what it answered, never the token.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit

from gitopsq.addresses import is_loopback
from gitopsq.source import redact_url

TIMEOUT = 60.0  # seconds: a state read of a big queue takes a moment, a dead server must not hang CI


class ApiError(Exception):
    """The server could not be reached, refused the token, or refused the request (status: its HTTP status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Api:
    def __init__(self, url: str, token: str | None, timeout: float = TIMEOUT):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(f"--server {redact_url(url)!r} is not an http:// or https:// URL")
        if not token:
            raise ApiError(f"--server {redact_url(url)} needs an API token: --token TOKEN or $GITOPSQ_TOKEN "
                           "(`gitopsq token create NAME --read-only` on the controller's machine)")
        self.url, self.shown, self.token, self.timeout = url.rstrip("/"), redact_url(url.rstrip("/")), token, timeout
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            print(f"warning: {self.shown} is plain http: the token crosses the network in clear text", file=sys.stderr)

    def post(self, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body or {}).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach the controller at {self.shown}: {reason}") from None
        except ValueError:
            raise ApiError(f"{self.shown}{path} did not answer JSON: is --server the controller's HTTP API?") from None

    def run_path(self, name: str, action: str) -> str:
        return f"/api/runs/{quote(name, safe='')}/{action}"

    def _refused(self, exc: urllib.error.HTTPError) -> ApiError:
        detail = _detail(exc)
        if exc.code == 401:
            return ApiError(f"{self.shown} refused the token: 401 Unauthorized ({detail}); check --token or "
                            "$GITOPSQ_TOKEN", 401)
        if exc.code == 403:
            return ApiError(f"{self.shown} refused: 403 Forbidden ({detail})", 403)
        if exc.code in (404, 409):
            return ApiError(detail, exc.code)
        return ApiError(f"{self.shown} answered {exc.code} {exc.reason}: {detail}", exc.code)


def _detail(exc: urllib.error.HTTPError) -> str:
    """The `detail` of a FastAPI error body, else the start of the body, else the status's reason."""
    try:
        raw = exc.read(64 * 1024)
    except OSError:
        raw = b""
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return detail
    if detail is not None:
        return json.dumps(detail)[:300]
    return raw.decode("utf-8", "replace")[:300].strip() or str(exc.reason)
