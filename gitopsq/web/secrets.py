"""The secrets API: set, list and remove secrets. A value goes in and never comes back out, not
even inside an error: bodies are capped before they are read, and a 422 never echoes its input.

Listing needs a token; setting and removing need a write token (gitopsq.web.auth).
"""

from __future__ import annotations

from typing import Callable

from fastapi import APIRouter, Depends, Path as PathParam, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from gitopsq.inputs import SECRET_NAME
from gitopsq.secretstore import MAX_NAME, SecretError, SecretKeyError, SecretStore, secret_listing
from gitopsq.store import Store
from gitopsq.web import auth
from gitopsq.web.models import Problem, SecretRow, SecretSet, SecretValue

MAX_BODY = 64 * 1024
NAME = PathParam(pattern=f"^{SECRET_NAME}$", max_length=MAX_NAME, description="The secret's name.")
_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": SecretValue.model_json_schema()}}}}


async def capped_body(request: Request) -> bytes:
    """The request body, refused (413) past MAX_BODY bytes before any of it is parsed."""
    return await auth.capped_body(request, MAX_BODY, f"{MAX_BODY // 1024} KiB")


def redacted_errors(exc: ValidationError) -> list[dict]:
    """pydantic's errors without the input (or context) they carry: that input may be the value."""
    return [{"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_input=False, include_context=False, include_url=False)]


def secrets_router(stores: Callable[[], Store], wake: Callable[[str], None], clock: Callable[[], float],
                   reader: Callable, writer: Callable) -> APIRouter:
    router = APIRouter(prefix="/api/secrets", tags=["secrets"])

    @router.get("", response_model=list[SecretRow], dependencies=[Depends(reader)])
    def list_secrets():
        """Secrets that are set or referenced by a run, by name, with the runs that reference them; never values."""
        return secret_listing(stores())

    @router.put("/{name}", response_model=SecretSet, openapi_extra=_BODY_DOC, dependencies=[Depends(writer)],
                responses={413: {"model": Problem, "description": "The body is larger than 64 KiB."},
                           500: {"model": Problem, "description": "The secrets key is missing or is not the one in use."}})
    def put_secret(name: str = NAME, raw: bytes = Depends(capped_body)):
        """Create or replace a secret (`{"value": "..."}`) and wake the controller: runs waiting
        for it are tried at once. The answer never holds the value."""
        try:
            value = SecretValue.model_validate_json(raw).value
        except ValidationError as exc:
            return JSONResponse({"detail": redacted_errors(exc)}, status_code=422)
        secrets = SecretStore(stores())
        try:
            created = secrets.set(name, value, clock())
        except SecretError as exc:  # the same shape as a validation error; the message never holds the value
            return JSONResponse({"detail": [{"loc": ["body", "value"], "msg": str(exc), "type": "value_error"}]},
                                status_code=422)
        except SecretKeyError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=500)
        wake("secrets")
        row = next(row for row in secrets.list() if row["name"] == name)
        return {**row, "created": created}

    @router.delete("/{name}", status_code=204, response_class=Response, dependencies=[Depends(writer)],
                   responses={404: {"model": Problem, "description": "No secret of that name."}})
    def delete_secret(name: str = NAME):
        """Remove a secret. Runs that reference it wait with secret-missing at their next launch."""
        if not SecretStore(stores()).remove(name):
            return JSONResponse({"detail": f"no secret named {name!r}"}, status_code=404)
        return Response(status_code=204)

    return router
