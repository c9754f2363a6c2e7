"""POST /api/webhook: a push notification that wakes the controller, verified when a secret is set.

Accepted signatures, each compared in constant time:
- GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`
- GitLab: `X-Gitlab-Token: <the secret>`
- generic: `X-Signature: sha256=<hex HMAC-SHA256 of the raw body>`
The first of these headers present decides. Without a configured secret the route is open only
where the daemon listens on loopback (`accept_unsigned`; a wake only makes the controller fetch,
which it does periodically anyway); elsewhere it answers 403 to everyone. Bodies over 1 MiB are
refused with 413 whatever the Content-Length header says. The check is the `signed` dependency,
the route's declared access (gitopsq.web.auth).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable

from fastapi import APIRouter, Depends, HTTPException, Request

from gitopsq.web.auth import access
from gitopsq.web.models import Problem, WebhookAccepted

MAX_BODY = 1024 * 1024
SIGNATURE_HEADERS = ("x-hub-signature-256", "x-gitlab-token", "x-signature")


class BodyTooLarge(Exception):
    pass


def hmac_signature(secret: bytes, body: bytes) -> str:
    """The `sha256=<hex>` value GitHub and the generic header carry."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes | None, headers: dict[str, str], body: bytes) -> bool:
    """True when the request may wake the controller. `headers` keys are lower-case."""
    if secret is None:
        return True
    for name in SIGNATURE_HEADERS:
        value = headers.get(name)
        if value is None:
            continue
        given = value.strip().encode("utf-8", errors="replace")
        if name == "x-gitlab-token":
            return hmac.compare_digest(given, secret)
        return hmac.compare_digest(given, hmac_signature(secret, body).encode())
    return False


async def read_capped(request: Request, limit: int = MAX_BODY) -> bytes:
    """The raw body, refusing more than `limit` bytes whether announced or sent."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def webhook_router(secret: bytes | None, wake: Callable[[str], None], record: Callable[[str], None],
                   accept_unsigned: bool = False) -> APIRouter:
    """record(outcome): counts each request by outcome (accepted, unauthorized, too-large, closed)."""
    router = APIRouter()

    @access("webhook")
    async def signed(request: Request) -> None:
        if secret is None and not accept_unsigned:
            record("closed")
            raise HTTPException(403, "webhooks are closed: serving off loopback, they need --webhook-secret-file")
        try:
            body = await read_capped(request)
        except BodyTooLarge:
            record("too-large")
            raise HTTPException(413, f"body over {MAX_BODY} bytes") from None
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not verify(secret, headers, body):
            record("unauthorized")
            raise HTTPException(401, "missing or wrong signature")

    @router.post(
        "/api/webhook", status_code=202, response_model=WebhookAccepted, tags=["triggers"], dependencies=[Depends(signed)],
        responses={401: {"model": Problem, "description": "Missing or wrong signature."},
                   403: {"model": Problem, "description": "No secret is set and the daemon listens off loopback."},
                   413: {"model": Problem, "description": "Body over 1 MiB."}},
        openapi_extra={"requestBody": {"required": False, "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}}}},
    )
    async def webhook():
        """Wake the controller to fetch the config repo (a CI push notification)."""
        record("accepted")
        wake("webhook")
        return {"accepted": True}

    return router
