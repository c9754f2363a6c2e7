"""Who may call which route. Every route declares its access with one of the dependencies below
(per router, or per route), and `check_every_route_declares_access` refuses to build an app with
a route that declares none, so a new route cannot be open by omission:

- `Auth.reader`: an API token (`Authorization: Bearer TOKEN`), read-only or write; for GET and
  HEAD the dashboard's login cookie is accepted too.
- `Auth.writer`: a write token (403 for a read-only one), from the header only: a cookie alone
  never changes anything, so no other site can make a logged-in browser write.
- `Auth.viewer`: a dashboard page: as `reader`, but a 401 shows the login form.
- `Auth.form_writer`: a dashboard form that changes something (the run page's stop and rerun
  buttons): the login cookie of a *write* token, plus the form's CSRF token, which only a page
  rendered for that cookie carries (`csrf_token`). The cookie is SameSite=Strict already; the
  CSRF token keeps a form posted from elsewhere out even where a browser sends it anyway, and a
  read-only token's session can never write.
- `Auth.node`: the token of the submission's current attempt (gitopsq.nodetoken), for the routes
  under /api/submissions/{submission_id}/ that a node calls; the body is capped before it is read
  (4 KiB; `Auth.node_log`, for a chunk of the node's log, 64 KiB).
- `signed` (gitopsq.web.webhook): the webhook's HMAC.
- `public`: nothing: /healthz, and /metrics with `serve --metrics-open`.

Every 401 carries `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Callable
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from gitopsq import tokens
from gitopsq.nodetoken import is_current_attempt
from gitopsq.providers.cloud_logs import CHUNK_BYTES
from gitopsq.store import Store
from gitopsq.web.models import INT64

COOKIE = "gitopsq_token"
NODE_MAX_BODY = 4 * 1024  # a node's report is a token and an exit code: ~100 bytes
NODE_LOG_MAX_BODY = CHUNK_BYTES  # one chunk of a node's log: 64 KiB
LOGIN_MAX_BODY = 4 * 1024
FORM_MAX_BODY = 4 * 1024
CHALLENGE = {"WWW-Authenticate": "Bearer"}
_bearer = HTTPBearer(auto_error=False, description="An API token: `gitopsq token create NAME`, or the admin token "
                                                   "`serve` writes beside its state database.")


def access(kind: str):
    """Marks a dependency as the one that decides who may call the routes that declare it."""
    def mark(function):
        function.gitopsq_access = kind
        return function
    return mark


@access("public")
def public() -> None:
    """No credential: /healthz (and /metrics where --metrics-open says so)."""


class LoginRequired(Exception):
    """A dashboard page without a valid token: answered 401 with the login form (see app.py)."""

    def __init__(self, error: str | None = None, next_path: str | None = None):
        self.error = error
        self.next_path = next_path  # where to go once logged in (default: the page asked for)


@dataclass(frozen=True)
class NodeCall:
    """A request from a node, its attempt's token checked: the submission and the raw (capped) body."""

    submission_id: int
    token: str
    body: bytes


@dataclass(frozen=True)
class Login:
    """A login form's valid token: its record, the token itself (for the cookie), where to go next."""

    user: tokens.Token
    token: str
    next: str


class Auth:
    def __init__(self, stores: Callable[[], Store], clock: Callable[[], float]):
        self.stores = stores
        self.clock = clock

    def token(self, presented: str) -> tokens.Token | None:
        return tokens.verify(self.stores(), presented, self.clock())

    def _from_request(self, request: Request, header: HTTPAuthorizationCredentials | None, cookie_ok: bool):
        """(token record or None, whether a credential was presented)."""
        presented = header.credentials if header else None
        if presented is None and cookie_ok:
            presented = request.cookies.get(COOKIE)
        if not presented:
            return None, False
        return self.token(presented), True

    @access("read")
    def reader(self, request: Request, header: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> tokens.Token:
        found, presented = self._from_request(request, header, cookie_ok=request.method in ("GET", "HEAD"))
        if found is None:
            raise unauthorized("the token is not valid (unknown or revoked)" if presented else "a token is required")
        return found

    @access("write")
    def writer(self, request: Request, header: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> tokens.Token:
        found, presented = self._from_request(request, header, cookie_ok=False)
        if found is None:
            raise unauthorized("the token is not valid (unknown or revoked)" if presented else "a write token is required")
        if found.read_only:
            raise HTTPException(403, f"token {found.name!r} is read-only")
        return found

    @access("read")
    def viewer(self, request: Request, header: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> tokens.Token:
        found, presented = self._from_request(request, header, cookie_ok=True)
        if found is None:
            raise LoginRequired("That token is not valid (unknown or revoked)." if presented else None)
        return found

    @access("login")
    async def login(self, request: Request) -> Login:
        """The login form's token, checked (the form posts `token` and `next`)."""
        try:
            form = parse_qs((await capped_body(request, LOGIN_MAX_BODY)).decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            form = {}
        presented = (form.get("token") or [""])[0].strip()
        next_path = safe_next((form.get("next") or ["/"])[0])
        found = await run_in_threadpool(self.token, presented) if presented else None
        if found is None:
            raise LoginRequired("That token is not valid (unknown or revoked)." if presented else "Enter a token.", next_path)
        return Login(found, presented, next_path)

    @access("write")
    async def form_writer(self, request: Request) -> tokens.Token:
        """A dashboard form's session: the cookie of a write token and the form's `csrf` field."""
        try:
            form = parse_qs((await capped_body(request, FORM_MAX_BODY)).decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            form = {}
        presented = request.cookies.get(COOKIE)
        found = await run_in_threadpool(self.token, presented) if presented else None
        if found is None:
            raise LoginRequired("That token is not valid (unknown or revoked)." if presented else None, "/")
        if found.read_only:
            raise HTTPException(403, f"token {found.name!r} is read-only: log in with a write token to stop or rerun runs")
        if not hmac.compare_digest((form.get("csrf") or [""])[0].encode(), csrf_token(presented).encode()):
            raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page and try again")
        return found

    def page_csrf(self, request: Request, user: tokens.Token) -> str | None:
        """The CSRF token for a page's forms: only for a cookie session of a write token (else no forms)."""
        presented = request.cookies.get(COOKIE)
        if user.read_only or not presented or request.headers.get("authorization"):
            return None
        return csrf_token(presented)

    @access("node")
    async def node(self, request: Request, header: HTTPAuthorizationCredentials | None = Depends(_bearer),
                   submission_id: int = PathParam(ge=1, le=INT64)) -> NodeCall:
        """The node's attempt token: `Authorization: Bearer`, else the `token` of a JSON body (the report's)."""
        return await self._node_call(request, header, submission_id, NODE_MAX_BODY)

    @access("node")
    async def node_log(self, request: Request, header: HTTPAuthorizationCredentials | None = Depends(_bearer),
                       submission_id: int = PathParam(ge=1, le=INT64)) -> NodeCall:
        """As `node`, for a chunk of the node's log: a larger cap, the token in the header only."""
        return await self._node_call(request, header, submission_id, NODE_LOG_MAX_BODY, json_token=False)

    async def _node_call(self, request: Request, header: HTTPAuthorizationCredentials | None, submission_id: int,
                         limit: int, json_token: bool = True) -> NodeCall:
        body = await capped_body(request, limit)
        presented = header.credentials if header else (_json_token(body) if json_token else None)
        if not presented:
            raise unauthorized("the token of the submission's current attempt is required")
        submission = await run_in_threadpool(lambda: self.stores().submission(submission_id))  # the pool is per thread
        if not is_current_attempt(submission, presented):
            raise HTTPException(403, "refused: unknown submission, or not the token of its current attempt")
        return NodeCall(submission_id, presented, body)


def csrf_token(session: str) -> str:
    """The CSRF token of a dashboard session: an HMAC keyed by the session's token. Only who holds the
    token (the HttpOnly cookie) or a page rendered for it knows it; no server-side state."""
    return hmac.new(session.encode("utf-8", errors="surrogatepass"), b"gitopsq dashboard form", hashlib.sha256).hexdigest()


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers=CHALLENGE)


async def capped_body(request: Request, limit: int, shown: str | None = None) -> bytes:
    """The request body, refused (413) past `limit` bytes, announced or sent, before any of it is
    parsed; `shown` is how the refusal names the limit (default: in bytes)."""
    too_large = HTTPException(413, f"the body is larger than {shown or f'{limit} bytes'}")
    length = request.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _json_token(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    token = value.get("token") if isinstance(value, dict) else None
    return token if isinstance(token, str) else None


def safe_next(target: str) -> str:
    """Where to go after logging in: a path on this site only (never `//host` or `https://host`)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or not target.isprintable():
        return "/"  # browsers drop tabs and newlines and read a backslash as a slash: "/\t/host" is "//host"
    return target


def routes(app: FastAPI) -> list:
    """The app's API routes as served, each with its routers' dependencies: FastAPI >= 0.130 keeps an
    included router as one lazy entry of `app.routes` (iter_route_contexts flattens them), older
    versions copy its routes into `app.routes`."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return [route for route in app.routes if isinstance(route, APIRoute)]
    return [context for context in iter_route_contexts(app.routes) if isinstance(context.original_route, APIRoute)]


def access_of(route) -> str | None:
    """The access a route declares (public, read, write, login, node, webhook), or None."""
    kinds = {getattr(dep.call, "gitopsq_access", None) for dep in route.dependant.dependencies} - {None}
    if len(kinds) > 1:
        raise RuntimeError(f"{route.path} declares more than one access: {sorted(kinds)}")
    return next(iter(kinds), None)


def check_every_route_declares_access(app: FastAPI) -> None:
    for route in routes(app):
        if access_of(route) is None:
            raise RuntimeError(f"{', '.join(sorted(route.methods))} {route.path} declares no access (gitopsq.web.auth)")
