"""`gitopsq serve`: the controller step in a loop, woken by triggers and its own timers.

One loop makes every decision; the HTTP server, the webhook and the ref watcher only wake it.
SIGTERM/SIGINT: the current step finishes, nodes keep running, exit 0; the next start adopts them.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass

from gitopsq.controller import Controller

log = logging.getLogger("gitopsq.daemon")


@dataclass
class DaemonOptions:
    http: str | None = "127.0.0.1:8765"  # host:port, or None for no HTTP server
    interval: float = 60.0  # fetch period for a URL, and the safety-net full check
    webhook_secret: bytes | None = None
    log_format: str = "text"


class Loop:
    def __init__(self, controller: Controller, interval: float):
        self.controller = controller
        self.interval = interval
        self.event = threading.Event()
        self.stopping = False
        self.fetch_due = True  # first step fetches
        self.reasons: set[str] = set()
        self.last_step_at: float | None = None
        self.last_fetch_at = 0.0
        self._lock = threading.Lock()
        self.on_step = None  # callable(seconds) for metrics

    def wake(self, reason: str) -> None:
        with self._lock:
            self.reasons.add(reason)
            if reason in ("webhook", "report-fetch"):
                self.fetch_due = True
        self.event.set()

    def stop(self) -> None:
        self.stopping = True
        self.event.set()

    def run(self) -> None:
        repo = self.controller.repo
        while not self.stopping:
            with self._lock:
                reasons, self.reasons = self.reasons, set()
                fetch = self.fetch_due or (repo is not None and repo.is_remote and time.time() - self.last_fetch_at >= self.interval)
                self.fetch_due = False
            self.event.clear()
            started = time.perf_counter()
            try:
                result = self.controller.step(fetch=fetch and repo is not None and repo.is_remote)
            except Exception:  # a bad step must not kill the daemon; the next one retries
                log.exception("controller step failed")
                result = None
            if fetch:
                self.last_fetch_at = time.time()
            self.last_step_at = time.time()
            if self.on_step:
                self.on_step(time.perf_counter() - started)
            if result and result.actions:
                log.info("reconciled %s: %s", (result.commit or "")[:12],
                         ", ".join(f"{a.kind} {a.run}" for a in result.actions), extra={"reasons": sorted(reasons)})
            next_wake = result.next_wake if result else None
            timeout = self.interval if next_wake is None else max(0.0, min(self.interval, next_wake - time.time()))
            self.event.wait(timeout)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        if hasattr(record, "reasons"):
            out["reasons"] = record.reasons
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _start_http(loop: Loop, controller: Controller, opts: DaemonOptions):
    import uvicorn

    from gitopsq.web import create_app
    from gitopsq.web.metrics import Metrics

    metrics = Metrics()
    loop.on_step = metrics.observe_reconcile
    controller.on_provider_error = metrics.provider_error

    def status() -> dict:
        return {"branch": controller.branch, "commit": controller.last_commit, "provider": controller.provider.name,
                "provider_health": controller.provider_health, "last_step_at": loop.last_step_at,
                "repo": controller.repo.display_location if controller.repo else None}

    host, _, port = opts.http.rpartition(":")
    app = create_app(controller.store.path, loop.wake, status, opts.webhook_secret, metrics)
    server = uvicorn.Server(uvicorn.Config(app, host=host or "127.0.0.1", port=int(port), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    if not server.started:
        raise RuntimeError(f"the HTTP server could not listen on {opts.http}")
    log.info("HTTP API and dashboard on http://%s", opts.http)
    return server, thread


def run_daemon(controller: Controller, opts: DaemonOptions) -> None:
    setup_logging(opts.log_format)
    loop = Loop(controller, opts.interval)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop())
    signal.signal(signal.SIGINT, lambda *_: loop.stop())
    watcher = None
    if controller.repo is not None and not controller.repo.is_remote:
        from gitopsq.watch import RefWatcher

        watcher = RefWatcher(controller.repo.git_dir, loop.wake)
        watcher.start()
    server = thread = None
    if opts.http:
        server, thread = _start_http(loop, controller, opts)
    log.info("watching %s (branch %s) with the %s provider", controller.repo.display_location if controller.repo else "-",
             controller.branch, controller.provider.name)
    try:
        loop.run()
    finally:
        if watcher:
            watcher.stop()
        if server:
            server.should_exit = True
            thread.join(timeout=5)
        log.info("stopped; running nodes keep running and are adopted at the next start")
