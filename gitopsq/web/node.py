"""What a cloud node downloads from the controller, authenticated by its own submission's token.

A node's user-data holds no secret value and no git credential (gitopsq.providers.cloud): before
running anything it fetches its run's inputs here, over the controller's --public-url.

- GET /api/submissions/{id}/inputs/env: `export NAME=value` lines for the run's variables that
  hold secrets, resolved now from the secret store, and its registry login when it has an image
  and `registry_auth`. The values served are recorded for the
  submission's current attempt, so that its logs are masked with them.
- GET /api/submissions/{id}/inputs/tree: the run's working tree (repos, files) as the cloud
  provider packed it at launch (layout in gitopsq.workspace.bundle).

Every route here is node-authenticated (the `node_submission` dependency): `Authorization: Bearer
<token>` with that submission's own token (compared in constant time), only while the
submission is provisioning or running. Everything else, a malformed id included, is 403 with one
fixed body that echoes nothing. These routes take no API token: a node holds only its own.
"""

from __future__ import annotations

import hmac
import json
import shlex

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from gitopsq.providers.base import bundle_path, bundles_dir_for, registry_login, secret_env
from gitopsq.providers.cloud_node import container_image
from gitopsq.secretstore import SecretKeyError, SecretStore
from gitopsq.spec import RunSpec
from gitopsq.web.models import INT64, Problem

NODE_STATUSES = ("provisioning", "running")  # while its node may be starting
_REFUSED = {403: {"model": Problem, "description": "No such submission, not its token, or it is not provisioning or running."}}
_PRIVATE = {"Cache-Control": "no-store"}


def node_submission(request: Request, submission_id: str, authorization: str | None = Header(None)) -> dict:
    """The submission whose token the request carries, or 403."""
    refused = HTTPException(403, "refused")
    if not submission_id.isascii() or not submission_id.isdigit() or not 1 <= int(submission_id) <= INT64:
        raise refused
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise refused
    sub = request.app.state.stores.get().submission(int(submission_id))
    # Header values arrive as latin-1 text: encoding them back gives the bytes that were sent.
    if sub is None or not sub["token"] or not hmac.compare_digest(sub["token"].encode(), token.strip().encode("latin-1")):
        raise refused
    if sub["status"] not in NODE_STATUSES:
        raise refused
    return dict(sub)


def node_router() -> APIRouter:
    router = APIRouter(prefix="/api/submissions/{submission_id}/inputs", tags=["nodes"])

    @router.get("/env", response_class=Response,
                responses={200: {"content": {"text/plain": {}}, "description": "`export NAME=value` lines."},
                           **_REFUSED, 409: {"model": Problem, "description": "A secret the run needs is not set."},
                           500: {"model": Problem, "description": "The controller cannot read its secrets."}})
    def inputs_env(request: Request, sub: dict = Depends(node_submission)):
        """A node's secret-holding variables, as `export NAME=value` lines for bash to source."""
        spec = RunSpec.from_dict(json.loads(sub["spec"]))
        secrets = SecretStore(request.app.state.stores.get())
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

    @router.get("/tree", response_class=Response,
                responses={**_REFUSED, 200: {"content": {"application/gzip": {}}, "description": "The tree, a .tar.gz."},
                           404: {"model": Problem, "description": "The run has no working tree to download."}})
    def inputs_tree(request: Request, sub: dict = Depends(node_submission)):
        """A node's working tree: its repos and files at its submission's commit."""
        path = bundle_path(bundles_dir_for(request.app.state.stores.path), sub["id"])
        if not path.is_file():
            return JSONResponse({"detail": "no working tree for this submission"}, status_code=404)
        return FileResponse(path, media_type="application/gzip", headers=_PRIVATE)

    return router
