"""Run an ASGI app under a real uvicorn server on 127.0.0.1 for the length of a `with` block."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import uvicorn


@contextmanager
def running(app, timeout: float = 10.0) -> Iterator[str]:
    """Serve `app` on a free port in a background thread; yields the base URL; stops it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port: no race with other tests
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(server, thread, url, timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
        if thread.is_alive():
            raise RuntimeError(f"uvicorn on {url} did not stop within {timeout}s")


def _wait_until_answering(server: uvicorn.Server, thread: threading.Thread, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn on {url} exited during startup")
        if server.started:
            try:
                httpx.get(url + "/openapi.json", timeout=2)
                return
            except httpx.TransportError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"uvicorn on {url} did not answer within {timeout}s")


# --- tokens and store state for the web tests -------------------------------------------------------

def bearer(state, read_only: bool = False, name: str | None = None) -> dict[str, str]:
    """An `Authorization` header carrying a new API token of the state `state` (a Store or its path)."""
    import secrets

    from gitopsq import tokens
    from gitopsq.store import Store

    store = state if isinstance(state, Store) else Store(state)
    try:
        token = tokens.create(store, name or f"test-{secrets.token_hex(4)}", read_only)
    finally:
        if store is not state:
            store.close()
    return {"Authorization": f"Bearer {token}"}



def add_run(store, name: str, at: float, priority: int = 0, status: str = "queued", *, run_type: str = "task",
            retry=None, reason: str | None = None, exit_code: int | None = None, log: str | None = None,
            ended_at: float | None = None, commit: str = "c0ffee00", **fields) -> int:
    """A run with one submission taken to `status` the way the controller does it; returns its id."""
    from gitopsq.spec import RunSpec

    spec = RunSpec(name=name, type=run_type, commands=("echo hi",), priority=priority, retry=retry).to_dict()
    with store.transaction():
        store.upsert_run(name, f"runs/{name}.yml", None, spec, True, at)
        sub = store.add_submission(name, spec, commit, at)
        if status == "queued":
            if fields:
                store.update_submission(sub, **fields)
            return sub
        if status == "cancelled":
            store.set_status(sub, "cancelled", ended_at or at, reason=reason or "deleted", **fields)
            return sub
        store.set_status(sub, "provisioning", at + 1, last_attempt_at=at + 1)
        store.set_status(sub, "running", at + 2, node_id=f"node-{name}", started_at=at + 2, window_start=at + 2,
                         log_path=log, detail={"node": f"node-{name}", "log": log})
        if status in ("done", "failed"):
            store.set_status(sub, status, ended_at or at + 3, reason=reason, exit_code=exit_code, **fields)
        elif status == "stopping":
            store.set_status(sub, "stopping", at + 3, reason=reason, stop_reason=reason, **fields)
        elif fields:
            store.update_submission(sub, **fields)
    return sub
