"""The HTTP face of the daemon: JSON API, webhook, metrics and the dashboard.

The app never reconciles: it reads the store, records the two things nodes tell it (activity
and exit codes, through the controller's functions) and wakes the controller loop.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Path as PathParam, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from gitopsq.controller import record_report, touch
from gitopsq.store import listing
from gitopsq.store import submissions as submission_rows  # the route below is named submissions
from gitopsq.web import dashboard, queries
from gitopsq.web.metrics import CONTENT_TYPE, Metrics
from gitopsq.web.models import (INT64, Activity, Health, Problem, Report, ReportAccepted, RunDetail, RunRow, Status,
                                Submission)
from gitopsq.web.logs import logs_router
from gitopsq.web.secrets import secrets_router
from gitopsq.web.webhook import webhook_router

NOT_FOUND = {404: {"model": Problem, "description": "No run of that name."}}


def create_app(db_path: Path, wake: Callable[[str], None], status: Callable[[], dict], webhook_secret: bytes | None,
               metrics: Metrics | None = None, *, clock: Callable[[], float] = time.time) -> FastAPI:
    """The web app over the state database at `db_path`.

    wake(reason): wakes the controller loop ("webhook", "report", "secrets"); must return at once.
    status(): {"branch", "commit" (last reconciled), "provider", "provider_health" (None or a
    message), "last_step_at" (the last step's end), "last_success_at" (the last successful one's),
    "last_step_error" (None or one line), "step_failures", "repo"}, shown by /healthz and the dashboard.
    webhook_secret: None accepts every webhook (see gitopsq.web.webhook).
    metrics: the daemon's Metrics (it records reconcile durations and provider errors there).
    """
    pool = queries.StorePool(db_path)
    metrics = metrics or Metrics()
    metrics.collect_from(pool.get, status, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.close()

    app = FastAPI(title="gitopsq", summary="A GitOps controller for ML runs.", lifespan=lifespan)
    app.state.metrics = metrics
    app.state.stores = pool

    def missing(name: str) -> JSONResponse:
        return JSONResponse({"detail": f"no run named {name!r}"}, status_code=404)

    @app.get("/api/runs", response_model=list[RunRow], tags=["runs"])
    def runs(status: Status | None = None, all: bool = Query(False, description="Include runs whose file is gone.")):
        """Runs with their current submission: active ones in queue order, then finished ones (as `gitopsq ps`)."""
        return listing(pool.get(), all, status, now=clock())

    @app.get("/api/runs/{name}", response_model=RunDetail, responses=NOT_FOUND, tags=["runs"])
    def run(name: str):
        """One run with its current submission."""
        detail = queries.run_detail(pool.get(), name, clock())
        return detail if detail is not None else missing(name)

    @app.get("/api/runs/{name}/history", response_model=list[Submission], responses=NOT_FOUND, tags=["runs"])
    def run_history(name: str):
        """Every submission of a run, oldest first."""
        store = pool.get()
        if not queries.run_exists(store, name):
            return missing(name)
        return submission_rows(store, run=name)

    @app.post("/api/runs/{name}/activity", response_model=Activity, tags=["runs"],
              responses={**NOT_FOUND, 409: {"model": Problem, "description": "The run is not active."}})
    def activity(name: str):
        """A dev environment's heartbeat: resets its inactivity_duration clock."""
        store = pool.get()
        if not queries.run_exists(store, name):
            return missing(name)
        now = clock()
        if not touch(store, name, now):
            return JSONResponse({"detail": f"run {name!r} is not active"}, status_code=409)
        return {"name": name, "last_activity_at": now}

    @app.get("/api/submissions", response_model=list[Submission], tags=["submissions"])
    def submissions(status: Status | None = Query(None, description="Default: the active submissions.")):
        """Submissions in queue order: priority (highest first), then first queued."""
        return submission_rows(pool.get(), status)

    @app.post("/api/submissions/{submission_id}/report", response_model=ReportAccepted, tags=["submissions"],
              responses={400: {"model": Problem, "description": "The body is not JSON."},
                         403: {"model": Problem, "description": "Unknown submission, wrong token, or not running."}})
    def report(body: Report, submission_id: int = PathParam(ge=1, le=INT64)):
        """A cloud node reports its exit code; accepted only with that submission's token."""
        store = pool.get()
        refused = JSONResponse({"detail": "report refused"}, status_code=403)
        try:
            body.token.encode("utf-8")
        except UnicodeEncodeError:
            return refused
        if not record_report(store, submission_id, body.token, body.exit_code, clock()):
            return refused
        wake("report")
        sub = store.submission(submission_id)
        return {"submission_id": submission_id, "exit_code": sub["exit_code"], "reported_at": sub["reported_at"]}

    app.include_router(webhook_router(webhook_secret, wake, metrics.webhook))
    app.include_router(secrets_router(pool.get, wake, clock))
    app.include_router(logs_router(pool.get))

    @app.get("/healthz", response_model=Health, tags=["daemon"],
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

    @app.get("/metrics", response_class=Response, tags=["daemon"],
             responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {}}, "description": "Prometheus text format."}})
    def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse, tags=["dashboard"])
    def index():
        """The dashboard: the queue, the last reconciled commit, provider health, validation errors."""
        return dashboard.render_index(pool.get(), status(), clock())

    @app.get("/runs/{name}", response_class=HTMLResponse, tags=["dashboard"],
             responses={404: {"content": {"text/html": {}}, "description": "No run of that name."}})
    def run_page(name: str):
        """A run's history and the tail of its latest log."""
        page = dashboard.render_run(pool.get(), name, clock())
        if page is None:
            return HTMLResponse(dashboard.render_missing(name), status_code=404)
        return page

    return app


def health(info: dict) -> tuple[str, str | None]:
    """("ok", None), or ("degraded", why): the last step failed, or the provider does not answer."""
    if info.get("last_step_error"):
        return "degraded", f"last step failed: {info['last_step_error']}"
    if info.get("provider_health"):
        return "degraded", info["provider_health"]
    return "ok", None
