"""GET /api/runs/{name}/logs: a submission's output, masked, and (follow=1) streamed until it ends.

The same reader as `gitopsq logs -f` (gitopsq.logfollow). The body is plain text in chunks as
the run writes them; with follow it ends when the submission does, so `curl -N` and the run
page's live tail stop by themselves.
"""

from __future__ import annotations

from typing import Callable

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from gitopsq.logfollow import IDLE, POLL, read_submission
from gitopsq.plan import ACTIVE
from gitopsq.store import Store, attempt_logs
from gitopsq.web.models import INT64, Problem

MAX_TAIL = 100_000


def logs_router(get_store: Callable[[], Store], reader: Callable, poll: float = POLL) -> APIRouter:
    """reader: the read access (gitopsq.web.auth): a token, or the dashboard's cookie for the run page's tail."""
    router = APIRouter(dependencies=[Depends(reader)],
                       responses={401: {"model": Problem, "description": "No token, or not a valid one."}})

    @router.get("/api/runs/{name}/logs", response_class=StreamingResponse, tags=["runs"],
                responses={200: {"content": {"text/plain": {}}, "description": "The output, secrets shown as ***."},
                           404: {"model": Problem, "description": "No such run or submission, or (without follow) no log yet."},
                           409: {"model": Problem, "description": "The secrets key is missing: the log may hold values that cannot be masked."}})
    def run_logs(request: Request, name: str,
                 follow: bool = Query(False, description="Stream new output until the submission ends."),
                 tail: int | None = Query(None, ge=0, le=MAX_TAIL, description="Start with the last N lines of the latest attempt."),
                 submission: int | None = Query(None, ge=1, le=INT64, description="Submission number (default: the latest).")):
        """A submission's output (every attempt, oldest first), each secret value shown as ***."""
        from gitopsq.secretstore import SecretKeyError, SecretStore

        store = get_store()
        rows = store.history(name)
        if not rows:
            return JSONResponse({"detail": f"no run named {name!r}"}, status_code=404)
        sub = rows[-1] if submission is None else next((r for r in rows if r["number"] == submission), None)
        if sub is None:
            return JSONResponse({"detail": f"run {name!r} has no submission {submission}"}, status_code=404)
        if not attempt_logs(store, sub["id"]) and not (follow and sub["status"] in ACTIVE):
            return JSONResponse({"detail": f"{name} submission {sub['number']} has no log: it never started ({sub['status']})"},
                                status_code=404)
        secrets = lambda: SecretStore(get_store()).mask_values(sub["id"])
        try:
            secrets()
        except SecretKeyError as exc:
            return JSONResponse({"detail": f"{exc}; the log may hold secrets that cannot be masked, so it is not shown"},
                                status_code=409)
        chunks = read_submission(get_store, sub["id"], secrets, follow=follow, tail=tail, sleep=None)
        # Not buffered by a proxy in front (nginx), nor kept by a browser: it is live.
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no",
                   "X-Gitopsq-Submission": str(sub["number"])}
        return StreamingResponse(_body(request, chunks, poll), media_type="text/plain; charset=utf-8", headers=headers)

    return router


async def _body(request: Request, chunks, poll: float):
    """The reader's text as bytes. Each look at the log runs in a worker thread (it reads files and
    SQLite); between looks the wait is here, where a client that went away is noticed."""
    try:
        while (text := await run_in_threadpool(next, chunks, None)) is not None:
            if text is IDLE:
                if await request.is_disconnected():
                    return
                await anyio.sleep(poll)
            elif text:
                yield text.encode("utf-8")
    finally:
        try:
            chunks.close()
        except ValueError:  # still running in its thread (the client went away mid-look): it ends with that look
            pass
