"""The HTTP face of the daemon: JSON API, webhook, metrics and the dashboard.

The app never reconciles: it reads the store, records what nodes tell it (activity and exit
codes, through the controller's functions) and what people ask by hand (stop, rerun: intents
the controller applies), and wakes the controller loop.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from gitopsq.controller import touch
from gitopsq.intents import IntentRefused, request_rerun, request_stop
from gitopsq.livestate import state_json
from gitopsq.store import listing
from gitopsq.store import submissions as submission_rows  # the route below is named submissions
from gitopsq.tokens import Token
from gitopsq.web import dashboard, queries
from gitopsq.web.auth import (CHALLENGE, COOKIE, Auth, Login, LoginRequired, capped_body,
                              check_every_route_declares_access, public, safe_next)
from gitopsq.web.metrics import CONTENT_TYPE, Metrics
from gitopsq.web.logs import logs_router
from gitopsq.web.models import (Activity, Health, IntentAccepted, LiveStateAnswer, Problem, RunDetail, RunRow,
                                StateQuery, Status, Submission)
from gitopsq.web.nodes import node_router
from gitopsq.web.secrets import redacted_errors, secrets_router
from gitopsq.web.webhook import webhook_router

NOT_FOUND = {404: {"model": Problem, "description": "No run of that name."}}
NEEDS_TOKEN = {401: {"model": Problem, "description": "No token, or not a valid one."}}
NEEDS_WRITE = {**NEEDS_TOKEN, 403: {"model": Problem, "description": "The token is read-only."}}
STATE_MAX_BODY = 8 * 1024 * 1024  # a plan's specs: ~1 KiB each
STATE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": StateQuery.model_json_schema()}}}}


def create_app(db_path: Path, wake: Callable[[str], None], status: Callable[[], dict], webhook_secret: bytes | None,
               metrics: Metrics | None = None, *, clock: Callable[[], float] = time.time, metrics_open: bool = False,
               accept_unsigned_webhooks: bool = False, judge: Callable[[dict], dict] | None = None,
               max_log_size: int | None = None) -> FastAPI:
    """The web app over the state database at `db_path`.

    wake(reason): wakes the controller loop ("webhook", "report", "secrets"); must return at once.
    status(): {"branch", "commit" (last reconciled), "provider", "provider_health" (None or a
    message), "last_step_at" (the last step's end), "last_success_at" (the last successful one's),
    "last_step_error" (None or one line), "step_failures", "repo"}, shown by /healthz and the dashboard.
    webhook_secret: None accepts unsigned webhooks where accept_unsigned_webhooks says so (the
    daemon listens on loopback), else closes the webhook (see gitopsq.web.webhook).
    metrics: the daemon's Metrics (it records reconcile durations and provider errors there).
    metrics_open: /metrics without a token (for a Prometheus that cannot send one).
    judge(spec): what the controller's provider says of a spec, {"needs", "unsatisfiable"}, for
    `gitopsq plan --server` (None: specs are not judged, and the answer says so).
    max_log_size: the cap of a cloud run's log as its node ships it (serve's --max-log-size).
    Every other route needs a token of the state's (gitopsq.tokens), see gitopsq.web.auth.
    """
    pool = queries.StorePool(db_path)
    metrics = metrics or Metrics()
    metrics.collect_from(pool.get, status, clock)
    auth = Auth(pool.get, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()

    # The documentation routes are declared below, behind a token like the rest.
    app = FastAPI(title="gitopsq", summary="A GitOps controller for ML runs.", lifespan=lifespan, openapi_url=None,
                  docs_url=None, redoc_url=None)
    app.state.metrics = metrics
    app.state.stores = pool

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        """FastAPI's 422 without the `input` (and `ctx`) it echoes: that input may be a whole body, or a secret."""
        errors = [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(LoginRequired)
    async def login_form(request: Request, exc: LoginRequired):
        asked = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        next_path = exc.next_path or (safe_next(asked) if request.method == "GET" else "/")
        return HTMLResponse(dashboard.render_login(next_path, exc.error), status_code=401, headers=CHALLENGE)

    read = APIRouter(dependencies=[Depends(auth.reader)], responses=NEEDS_TOKEN)
    write = APIRouter(dependencies=[Depends(auth.writer)], responses=NEEDS_WRITE)
    pages = APIRouter(dependencies=[Depends(auth.viewer)], tags=["dashboard"], default_response_class=HTMLResponse)
    open_routes = APIRouter(dependencies=[Depends(public)], tags=["daemon"])
    forms = APIRouter(dependencies=[Depends(auth.form_writer)], tags=["dashboard"])

    def missing(name: str) -> JSONResponse:
        return JSONResponse({"detail": f"no run named {name!r}"}, status_code=404)

    @read.get("/api/runs", response_model=list[RunRow], tags=["runs"])
    def runs(status: Status | None = None, all: bool = Query(False, description="Include runs whose file is gone.")):
        """Runs with their current submission: active ones in queue order, then finished ones (as `gitopsq ps`)."""
        return listing(pool.get(), all, status, now=clock())

    @read.get("/api/runs/{name}", response_model=RunDetail, responses=NOT_FOUND, tags=["runs"])
    def run(name: str):
        """One run with its current submission."""
        detail = queries.run_detail(pool.get(), name, clock())
        return detail if detail is not None else missing(name)

    @read.get("/api/runs/{name}/history", response_model=list[Submission], responses=NOT_FOUND, tags=["runs"])
    def run_history(name: str):
        """Every submission of a run, oldest first."""
        store = pool.get()
        if not queries.run_exists(store, name):
            return missing(name)
        return submission_rows(store, run=name)

    @write.post("/api/runs/{name}/activity", response_model=Activity, tags=["runs"],
                responses={**NOT_FOUND, 409: {"model": Problem, "description": "The run is not active."}})
    def activity(name: str):
        """A dev environment's heartbeat: resets its inactivity_duration clock (a write token)."""
        store = pool.get()
        if not queries.run_exists(store, name):
            return missing(name)
        now = clock()
        if not touch(store, name, now):
            return JSONResponse({"detail": f"run {name!r} is not active"}, status_code=409)
        return {"name": name, "last_activity_at": now}

    def intend(request_intent, name: str, user: Token, via: str = "api"):
        """Record a stop or rerun asked by `user` and wake the controller (which applies it)."""
        try:
            intent = request_intent(pool.get(), name, user.name, via, clock())
        except IntentRefused as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        wake("intents")
        return JSONResponse(intent.as_dict(), status_code=202)

    @write.post("/api/runs/{name}/stop", response_model=IntentAccepted, status_code=202, tags=["runs"],
                responses={**NOT_FOUND, 409: {"model": Problem, "description": "The run is not active."}})
    def stop(name: str, user: Token = Depends(auth.writer)):
        """Stop the run's active submission (a write token). The run stays stopped until its file changes
        (then it reconciles as usual); the stop is an event naming the token."""
        return intend(request_stop, name, user)

    @write.post("/api/runs/{name}/rerun", response_model=IntentAccepted, status_code=202, tags=["runs"],
                responses={**NOT_FOUND, 409: {"model": Problem, "description": "The run's file is gone from the branch."}})
    def rerun(name: str, user: Token = Depends(auth.writer)):
        """A new submission of the run's current spec (a write token); an active submission is stopped first.
        An event names the token."""
        return intend(request_rerun, name, user)

    @read.post("/api/state", response_model=LiveStateAnswer, tags=["runs"], openapi_extra=STATE_BODY,
               responses={413: {"model": Problem, "description": "The body is larger than 8 MiB."}})
    async def live_state(request: Request):
        """What `gitopsq plan --server` plans against (a read token; nothing changes): the runs asked
        about as recorded, the queue, what holds capacity, secret names, free capacity, and each new
        spec as the controller's provider judges it. POST, because the body names runs and specs."""
        try:
            query = StateQuery.model_validate_json(await capped_body(request, STATE_MAX_BODY))
        except ValidationError as exc:
            return JSONResponse({"detail": redacted_errors(exc)}, status_code=422)
        info = status()

        def read_state():
            return state_json(pool.get(), query.runs, query.specs, judge, clock(),
                              unjudged=None if judge else "this controller does not judge specs",
                              branch=info.get("branch"), commit=info.get("commit"))
        return await run_in_threadpool(read_state)

    @read.get("/api/submissions", response_model=list[Submission], tags=["submissions"])
    def submissions(status: Status | None = Query(None, description="Default: the active submissions.")):
        """Submissions in queue order: priority (highest first), then first queued."""
        return submission_rows(pool.get(), status)

    @open_routes.get("/healthz", response_model=Health,
                     responses={503: {"model": Health, "description": "Degraded: the last step failed or the provider does not answer."}})
    def healthz():
        """ok (200) while steps succeed and the provider answers, else degraded (503) with the reason.

        503, because a monitor that reads only the status code must see that a controller whose
        steps all fail does nothing; the body says why."""
        info = status()
        state, reason = health(info)
        # Invalid files are the config repo's problem, not the controller's: shown, not degraded (a
        # YAML typo must not make a load balancer or a liveness probe restart the controller).
        body = {**info, "status": state, "reason": reason, "invalid_files": queries.invalid_file_count(pool.get())}
        return body if state == "ok" else JSONResponse(Health(**body).model_dump(), status_code=503)

    metrics_routes = open_routes if metrics_open else read

    @metrics_routes.get("/metrics", response_class=Response, tags=["daemon"],
                        responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}, "description": "Prometheus text format."}})
    def prometheus():
        """Prometheus metrics (without a token only where `serve --metrics-open` says so)."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @read.get("/openapi.json", include_in_schema=False)
    def openapi():
        return JSONResponse(app.openapi())

    @pages.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="gitopsq API")

    @pages.get("/")
    def index(user: Token = Depends(auth.viewer)):
        """The dashboard: the queue, the last reconciled commit, provider health, validation errors."""
        return dashboard.render_index(pool.get(), status(), clock(), user.name)

    @pages.get("/runs/{name}", responses={404: {"content": {"text/html": {}}, "description": "No run of that name."}})
    def run_page(request: Request, name: str, user: Token = Depends(auth.viewer)):
        """A run's history and the tail of its latest log; with a write token's session, stop and rerun buttons."""
        page = dashboard.render_run(pool.get(), name, clock(), user.name, csrf=auth.page_csrf(request, user))
        if page is None:
            return HTMLResponse(dashboard.render_missing(name, user.name), status_code=404)
        return page

    def form_intent(request: Request, request_intent, name: str, user: Token):
        """A run page's button: record the intent and go back to the page, which shows it; a refusal is the
        page again with the reason."""
        try:
            request_intent(pool.get(), name, user.name, "dashboard", clock())
        except IntentRefused as exc:
            page = dashboard.render_run(pool.get(), name, clock(), user.name, csrf=auth.page_csrf(request, user),
                                        notice=str(exc))
            return HTMLResponse(page or dashboard.render_missing(name, user.name), status_code=exc.status)
        wake("intents")
        return RedirectResponse(f"/runs/{quote(name, safe='')}", status_code=303)

    form_doc = {"responses": {303: {"description": "Recorded: back to the run page."},
                              403: {"model": Problem, "description": "A read-only token, or no valid CSRF token."},
                              409: {"content": {"text/html": {}}, "description": "The run page, with why not."}},
                "response_class": RedirectResponse, "status_code": 303,
                "openapi_extra": {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                    "schema": {"type": "object", "properties": {"csrf": {"type": "string"}}, "required": ["csrf"]}}}}}}

    @forms.post("/runs/{name}/stop", **form_doc)
    def stop_button(request: Request, name: str, user: Token = Depends(auth.form_writer)):
        """The run page's stop button (form: csrf)."""
        return form_intent(request, request_stop, name, user)

    @forms.post("/runs/{name}/rerun", **form_doc)
    def rerun_button(request: Request, name: str, user: Token = Depends(auth.form_writer)):
        """The run page's rerun button (form: csrf)."""
        return form_intent(request, request_rerun, name, user)

    @app.post("/login", tags=["dashboard"], response_class=RedirectResponse, status_code=303,
              responses={401: {"content": {"text/html": {}}, "description": "Not a valid token: the login form again."},
                         413: {"model": Problem, "description": "The body is larger than 4 KiB."}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
                  "schema": {"type": "object", "properties": {"token": {"type": "string"}, "next": {"type": "string"}},
                             "required": ["token"]}}}}})
    def login(request: Request, form: Login = Depends(auth.login)):
        """The dashboard's login form: a valid token sets an HttpOnly, SameSite=Strict cookie holding it."""
        response = RedirectResponse(form.next, status_code=303)
        response.set_cookie(COOKIE, form.token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path="/")
        return response

    @pages.post("/logout", response_class=RedirectResponse, status_code=303)
    def logout():
        """Forget the dashboard's login cookie."""
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    for router in (read, write, pages, open_routes, forms):
        app.include_router(router)
    app.include_router(node_router(auth, pool.get, wake, clock, db_path, max_log_size))
    app.include_router(webhook_router(webhook_secret, wake, metrics.webhook, accept_unsigned_webhooks))
    app.include_router(secrets_router(pool.get, wake, clock, auth.reader, auth.writer))
    app.include_router(logs_router(pool.get, auth.reader))
    check_every_route_declares_access(app)
    return app


def health(info: dict) -> tuple[str, str | None]:
    """("ok", None), or ("degraded", why): the last step failed, or the provider does not answer."""
    if info.get("last_step_error"):
        return "degraded", f"last step failed: {info['last_step_error']}"
    if info.get("provider_health"):
        return "degraded", info["provider_health"]
    return "ok", None
