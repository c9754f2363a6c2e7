"""The routes a node calls, under /api/submissions/{submission_id}/: each takes the token of the
submission's current attempt (`Auth.node`, declared once for the router; `Auth.node_log` for
the log's chunks), never an API token, and its body is capped (4 KiB; a log chunk 64 KiB)
before it is read.

- POST report: the exit code of the node's run.
- GET inputs/cluster: for a node of a cluster run, its nodes' addresses once they all exist.
- POST log?offset=N[&final=1][&rank=R]: a chunk of the node's log (at most 64 KiB, raw bytes),
  starting at byte N of it (each node of a cluster run has a log of its own, by rank); stored where `logs`, the API and the run page read local logs, capped and
  masked as they are (gitopsq.providers.cloud_logs). Answered with the offset the controller
  has: 409 when N is beyond it (resend from there).
- POST interruption: the notice the node read from its metadata endpoint that the provider takes
  it back (a spot interruption), EC2's instance-action JSON (gitopsq.interruptions).
- GET inputs/env and inputs/tree: what a cloud node downloads before it runs anything, since its
  user-data holds no secret value and no git credential (gitopsq.providers.cloud_node). `env`
  is `export NAME=value` lines for the run's variables that hold secrets, resolved now from the
  secret store (and its registry login when it has an image and `registry_auth`); the values
  served are recorded for the attempt, so its logs are masked with them. `tree` is the run's
  working tree as the cloud provider packed it at launch (gitopsq.workspace.bundle). Both only
  while the submission is provisioning or running.
"""

from __future__ import annotations

from typing import Callable

import json
import shlex

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from gitopsq.controller import record_report
from gitopsq.interruptions import record_notice
from gitopsq.providers.base import bundle_path, bundles_dir_for, cloud_logs_dir_for, registry_login, secret_env
from gitopsq.providers.cloud_logs import NodeLog, log_path
from gitopsq.providers.cloud_node import container_image
from gitopsq.secretstore import SecretKeyError, SecretStore
from gitopsq.spec import RunSpec
from gitopsq.store import Store
from gitopsq.web.auth import NODE_LOG_MAX_BODY, NODE_MAX_BODY, Auth, NodeCall
from gitopsq.web.models import INT64, LogReceived, NoticeAccepted, Problem, Report, ReportAccepted
from gitopsq.web.secrets import redacted_errors

NODE_STATUSES = ("provisioning", "running")  # while its node may be starting or running
LOG_STATUSES = (*NODE_STATUSES, "stopping")  # its last chunks may still come while it is stopped
DEFAULT_MAX_LOG_SIZE = 16 * 1024 * 1024  # serve's --max-log-size default
_PRIVATE = {"Cache-Control": "no-store"}
_NOT_NOW = {"model": Problem, "description": "Unknown submission, not the token of its current attempt, or not "
                                            "provisioning or running."}
_REPORT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": Report.model_json_schema()}}}}


def node_router(auth: Auth, stores: Callable[[], Store], wake: Callable[[str], None],
                clock: Callable[[], float], db_path, max_log_size: int | None = None) -> APIRouter:
    router = APIRouter(prefix="/api/submissions/{submission_id}", tags=["submissions"], dependencies=[Depends(auth.node)])
    # The log's chunks are larger than anything else a node sends: a router of their own, with their own cap.
    logs = APIRouter(prefix="/api/submissions/{submission_id}", tags=["submissions"], dependencies=[Depends(auth.node_log)])
    limit = max_log_size or DEFAULT_MAX_LOG_SIZE

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
        now = clock()
        if not record_report(store, call.submission_id, call.token, body.exit_code, now, body.rank):
            return JSONResponse({"detail": "report refused: not running, or reported already"}, status_code=403)
        wake("report")
        return {"submission_id": call.submission_id, "exit_code": body.exit_code, "reported_at": now}

    def active(call: NodeCall):
        sub = stores().submission(call.submission_id)
        return sub if sub is not None and sub["status"] in NODE_STATUSES else None

    @router.get("/inputs/env", response_class=Response,
                responses={200: {"content": {"text/plain": {}}, "description": "`export NAME=value` lines."},
                           401: {"model": Problem, "description": "No token."}, 403: _NOT_NOW,
                           409: {"model": Problem, "description": "A secret the run needs is not set."},
                           500: {"model": Problem, "description": "The controller cannot read its secrets."}})
    def inputs_env(call: NodeCall = Depends(auth.node)):
        """A node's secret-holding variables (and registry login), as `export` lines for bash to source."""
        sub = active(call)
        if sub is None:
            return JSONResponse({"detail": "refused"}, status_code=403)
        spec = RunSpec.from_dict(json.loads(sub["spec"]))
        secrets = SecretStore(stores())
        try:
            values, missing = secrets.resolve(spec.secrets)
            if missing:
                return JSONResponse({"detail": f"secret-missing: {', '.join(missing)}"}, status_code=409)
            env = secret_env(spec, values)
            login = registry_login(spec, values) if container_image(spec) else None
            if login:  # for `docker login` before the pull; the script unsets them after
                env.update(GITOPSQ_REGISTRY_USERNAME=login[0], GITOPSQ_REGISTRY_PASSWORD=login[1])
            # Before a byte goes out: the run may print them from its first command on.
            secrets.record_attempt(sub["id"], sub["attempts"], [*secrets.mask_values(sub["id"]), *values.values()])
        except SecretKeyError:
            return JSONResponse({"detail": "the controller cannot read its secrets"}, status_code=500)
        body = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())
        return PlainTextResponse(body, headers=_PRIVATE)

    @router.get("/inputs/cluster", response_class=Response,
                responses={200: {"content": {"text/plain": {}}, "description": "`export NAME=value` lines."},
                           401: {"model": Problem, "description": "No token."}, 403: _NOT_NOW,
                           409: {"model": Problem, "description": "Not every node of the cluster run exists yet."}})
    def inputs_cluster(call: NodeCall = Depends(auth.node)):
        """A node of a cluster run: the addresses of its run's nodes (DSTACK_MASTER_NODE_IP, rank 0's,
        and DSTACK_NODES_IPS, by rank), once every node exists; a node asks until then."""
        sub = active(call)
        if sub is None:
            return JSONResponse({"detail": "refused"}, status_code=403)
        rows = stores().submission_nodes(sub["id"])
        if len(rows) < json.loads(sub["spec"]).get("nodes", 1) or not all(row["ip"] for row in rows):
            return JSONResponse({"detail": "not every node of the cluster run exists yet"}, status_code=409)
        ips = [row["ip"] for row in rows]
        body = f"export DSTACK_MASTER_NODE_IP={shlex.quote(ips[0])}\nexport DSTACK_NODES_IPS={shlex.quote(chr(10).join(ips))}\n"
        return PlainTextResponse(body, headers=_PRIVATE)

    @router.get("/inputs/tree", response_class=Response,
                responses={200: {"content": {"application/gzip": {}}, "description": "The tree, a .tar.gz."},
                           401: {"model": Problem, "description": "No token."}, 403: _NOT_NOW,
                           404: {"model": Problem, "description": "The run has no working tree to download."}})
    def inputs_tree(call: NodeCall = Depends(auth.node)):
        """A node's working tree: its repos and files at its submission's commit."""
        sub = active(call)
        if sub is None:
            return JSONResponse({"detail": "refused"}, status_code=403)
        path = bundle_path(bundles_dir_for(db_path), sub["id"])
        if not path.is_file():
            return JSONResponse({"detail": "no working tree for this submission"}, status_code=404)
        return FileResponse(path, media_type="application/gzip", headers=_PRIVATE)

    @logs.post("/log", response_model=LogReceived,
               openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {
                   "schema": {"type": "string", "format": "binary"}}}}},
               responses={401: {"model": Problem, "description": "No token."}, 403: _NOT_NOW,
                          409: {"model": LogReceived, "description": "The chunk starts beyond what the controller has: "
                                                                     "resend from `offset`."},
                          413: {"model": Problem, "description": f"The chunk is larger than {NODE_LOG_MAX_BODY} bytes."}})
    def log_chunk(offset: int = Query(ge=0, le=INT64, description="Where in the node's log the chunk starts."),
                  final: bool = Query(False, description="The chunk ends the node's log."),
                  rank: int = Query(0, ge=0, le=INT64, description="The node's rank in a cluster run (nodes: N)."),
                  call: NodeCall = Depends(auth.node_log)):
        """A chunk of the node's log (raw bytes), appended only where the controller's copy ends."""
        sub = stores().submission(call.submission_id)
        if sub is None or sub["status"] not in LOG_STATUSES or rank >= json.loads(sub["spec"]).get("nodes", 1):
            return JSONResponse({"detail": "refused"}, status_code=403)
        received = NodeLog(log_path(cloud_logs_dir_for(db_path), sub["id"], sub["attempts"], rank), limit).append(
            offset, call.body, final)
        answer = {"offset": received.offset, "complete": received.complete}
        return answer if received.accepted else JSONResponse(answer, status_code=409)

    @router.post("/interruption", response_model=NoticeAccepted,
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"type": "object", "properties": {"action": {"type": "string"}, "time": {"type": "string"}}}}}}},
                 responses={401: {"model": Problem, "description": "No token."}, 403: _NOT_NOW,
                            422: {"model": Problem, "description": "Not a JSON object."}})
    def interruption(call: NodeCall = Depends(auth.node)):
        """The node was told by its provider that it takes the node back (EC2's spot instance-action):
        when the node then ends, its end is an interruption, not a failure."""
        try:
            notice = json.loads(call.body)
        except (ValueError, RecursionError):
            notice = None
        if not isinstance(notice, dict):
            return JSONResponse({"detail": "the notice must be a JSON object"}, status_code=422)
        if not record_notice(stores(), call.submission_id, call.token, notice, clock()):
            return JSONResponse({"detail": "refused"}, status_code=403)
        return {"submission_id": call.submission_id, "recorded": True}

    both = APIRouter()
    for part in (router, logs):
        both.include_router(part)
    return both
