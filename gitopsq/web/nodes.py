"""The routes a node calls, under /api/submissions/{submission_id}/: each takes the token of the
submission's current attempt (`Auth.node`, declared once for the router), never an API token,
and its body is capped (4 KiB) before it is read.
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from gitopsq.controller import record_report
from gitopsq.store import Store
from gitopsq.web.auth import NODE_MAX_BODY, Auth, NodeCall
from gitopsq.web.models import Problem, Report, ReportAccepted
from gitopsq.web.secrets import redacted_errors

_REPORT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": Report.model_json_schema()}}}}


def node_router(auth: Auth, stores: Callable[[], Store], wake: Callable[[str], None],
                clock: Callable[[], float]) -> APIRouter:
    router = APIRouter(prefix="/api/submissions/{submission_id}", tags=["submissions"], dependencies=[Depends(auth.node)])

    @router.post("/report", response_model=ReportAccepted, openapi_extra=_REPORT_BODY,
                 responses={401: {"model": Problem, "description": "No token."},
                            403: {"model": Problem, "description": "Unknown submission, not the token of its current "
                                                                  "attempt, not running, or reported already."},
                            413: {"model": Problem, "description": f"The body is larger than {NODE_MAX_BODY} bytes."}})
    def report(call: NodeCall = Depends(auth.node)):
        """A cloud node reports its exit code, with the token of its attempt (in the body, or as
        `Authorization: Bearer`): a report from an earlier attempt of the submission is refused."""
        try:
            body = Report.model_validate_json(call.body)
        except ValidationError as exc:
            return JSONResponse({"detail": redacted_errors(exc)}, status_code=422)
        store = stores()
        if not record_report(store, call.submission_id, call.token, body.exit_code, clock()):
            return JSONResponse({"detail": "report refused: not running, or reported already"}, status_code=403)
        wake("report")
        sub = store.submission(call.submission_id)
        return {"submission_id": call.submission_id, "exit_code": sub["exit_code"], "reported_at": sub["reported_at"]}

    return router
