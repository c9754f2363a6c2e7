"""The routes a node calls, under /api/submissions/{submission_id}/: each takes the token of the
submission's current attempt (`Auth.node`, declared once for the router), never an API token,
and its body is capped (4 KiB) before it is read.

- POST report: the exit code of the node's run.
- GET inputs/cluster: for a node of a cluster run, its nodes' addresses once they all exist.
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

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from gitopsq.controller import record_report
from gitopsq.providers.base import bundle_path, bundles_dir_for, registry_login, secret_env
from gitopsq.providers.cloud_node import container_image
from gitopsq.secretstore import SecretKeyError, SecretStore
from gitopsq.spec import RunSpec
from gitopsq.store import Store
from gitopsq.web.auth import NODE_MAX_BODY, Auth, NodeCall
from gitopsq.web.models import Problem, Report, ReportAccepted
from gitopsq.web.secrets import redacted_errors

NODE_STATUSES = ("provisioning", "running")  # while its node may be starting or running
_PRIVATE = {"Cache-Control": "no-store"}
_NOT_NOW = {"model": Problem, "description": "Unknown submission, not the token of its current attempt, or not "
                                            "provisioning or running."}
_REPORT_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": Report.model_json_schema()}}}}


def node_router(auth: Auth, stores: Callable[[], Store], wake: Callable[[str], None],
                clock: Callable[[], float], db_path) -> APIRouter:
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

    return router
