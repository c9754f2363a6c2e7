"""`gitopsq serve`: the controller step in a loop, woken by triggers and its own timers.

One loop makes every decision; the HTTP server, the webhook and the ref watcher only wake it.
The loop runs in a thread of its own, so the main thread is always free to take a signal.
SIGTERM, SIGINT and SIGHUP stop the daemon: the current step finishes (a fetch is cancelled),
nodes keep running, exit 0; the next start adopts them. SIGUSR1 wakes the loop (`gitopsq
secret set` sends it, so a run waiting for that secret is tried at once). A step still busy STOP_GRACE seconds
after the signal is abandoned: exit 1, like a crash, which the next start recovers (every
change is a transaction).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from gitopsq.addresses import is_loopback
from gitopsq.controller import Controller, StepFailed

log = logging.getLogger("gitopsq.daemon")

# SIGHUP stops too: there is no configuration to reload (the options are flags, the run files
# are read at every step), and it is what a closed terminal sends.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WAKE_SIGNAL = signal.SIGUSR1  # sent by gitopsq.wakeup
STOP_GRACE = 3.0  # seconds a step may still run after a stop signal
HTTP_STOP_TIMEOUT = 1.0  # seconds the HTTP server gets to close its connections
# Seconds from the start of one fetch to the start of a fetch that webhooks asked for. Webhooks
# coalesce into one pending fetch, so a burst of any size and rate costs at most two: the one
# running, and one more after it, no sooner than this.
WEBHOOK_FETCH_SPACING = 10.0


@dataclass
class DaemonOptions:
    http: str | None = "127.0.0.1:8765"  # host:port, or None for no HTTP server
    interval: float = 60.0  # fetch period for a URL, and the safety-net full check
    webhook_secret: bytes | None = None
    log_format: str = "text"
    metrics_open: bool = False  # /metrics without a token
    tls_cert: str | None = None  # PEM files handed to uvicorn; both or neither
    tls_key: str | None = None
    warnings: tuple[str, ...] = ()  # said once at start, after the logging is set up
    max_log_size: int | None = None  # bytes kept of a cloud run's log its node ships (--max-log-size)


class Loop:
    def __init__(self, controller: Controller, interval: float):
        self.controller = controller
        self.interval = interval
        self.event = threading.Event()
        self.stopping = False
        self.stop_requested_at: float | None = None  # time.monotonic() of the first stop signal
        self.crashed = False
        self.fetch_due = False  # a webhook asked for a fetch that has not started yet
        self.reasons: set[str] = set()
        self.last_step_at: float | None = None  # when the last step ended, whatever its outcome
        self.last_success_at: float | None = None
        self.last_error: str | None = None  # one line; None while the last step succeeded
        self.failures = 0  # failed steps since the start
        self._failing = 0  # failed steps in a row
        self.last_fetch_at = float("-inf")  # time.monotonic() when the last fetch started: the first step fetches
        self._lock = threading.RLock()  # wake() also runs in signal handlers, which may interrupt one another
        self.on_step = None  # callable(seconds) for metrics

    def wake(self, reason: str) -> None:
        with self._lock:
            self.reasons.add(reason)
            if reason in ("webhook", "report-fetch"):
                self.fetch_due = True
        self.event.set()

    def stop(self) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.monotonic()
        self.stopping = True
        if self.controller.repo is not None:
            self.controller.repo.cancel_fetch()  # a fetch from a server that never answers must not hold the stop
        self.event.set()

    def run(self) -> None:
        remote = self.controller.repo is not None and self.controller.repo.is_remote
        while not self.stopping:
            self.event.clear()  # before taking the reasons: a wake from here on is seen by the next turn
            with self._lock:
                reasons, self.reasons = self.reasons, set()
                fetch, fetch_in = self._fetch_now(remote, time.monotonic())
            if fetch_in is not None and reasons and reasons <= {"webhook"}:
                self.event.wait(fetch_in)  # only webhooks woke the loop, and their fetch must wait
                continue
            started = time.perf_counter()
            if fetch:
                self.last_fetch_at = time.monotonic()
            result = self._step(fetch=fetch)
            if self.on_step:
                self.on_step(time.perf_counter() - started)
            if result and result.actions:
                log.info("reconciled %s: %s", (result.commit or "")[:12],
                         ", ".join(f"{a.kind} {a.run}" for a in result.actions), extra={"reasons": sorted(reasons)})
            next_wake = result.next_wake if result else None
            timeout = self.interval if next_wake is None else max(0.0, min(self.interval, next_wake - time.time()))
            with self._lock:
                _, fetch_in = self._fetch_now(remote, time.monotonic(), decide=False)
            self.event.wait(timeout if fetch_in is None else min(timeout, fetch_in))

    def _fetch_now(self, remote: bool, now: float, decide: bool = True) -> tuple[bool, float | None]:
        """(fetch in this step, seconds until a webhook's pending fetch may start (None: none pending)).

        A remote repo is fetched every `interval` (the first step too), and when a webhook asked,
        WEBHOOK_FETCH_SPACING after the last fetch started at the soonest. decide=False only looks."""
        if not remote:
            self.fetch_due = False
            return False, None
        periodic = now - self.last_fetch_at >= self.interval
        wait = self.last_fetch_at + WEBHOOK_FETCH_SPACING - now
        if periodic or (self.fetch_due and wait <= 0):
            if decide:
                self.fetch_due = False
            return True, None
        return False, wait if self.fetch_due else None

    def _step(self, fetch: bool):
        try:
            result = self.controller.step(fetch=fetch)
        except StepFailed as exc:  # some sub-steps failed, the others ran: their result still counts
            self._failed(exc)
            return exc.result
        except Exception as exc:  # a bad step must not kill the daemon; the next one retries
            self._failed(exc)
            return None
        self.last_step_at = self.last_success_at = time.time()
        if self._failing:
            log.info("controller step succeeded after %d failed step(s)", self._failing)
        self.last_error, self._failing = None, 0
        return result

    def _failed(self, exc: Exception) -> None:
        self.last_step_at = time.time()
        error = one_line(exc)
        if self.stopping:
            log.info("step ended by the stop: %s", error)
            return
        self.failures += 1
        self._failing += 1
        if error != self.last_error:
            log.exception("controller step failed: %s", error)
        else:  # the same failure again: no new traceback every interval
            log.error("controller step failed (%d in a row): %s", self._failing, error)
        self.last_error = error


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line for /healthz and the dashboard: its type and first line."""
    lines = str(exc).strip().splitlines()
    if isinstance(exc, StepFailed):  # already "sub-step: Type: message; ..."
        text = lines[0] if lines else "the step failed"
    else:
        text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


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

    isolation = getattr(controller.provider, "isolation", None)

    def status() -> dict:
        return {"branch": controller.branch, "commit": controller.last_commit, "provider": controller.provider.name,
                "runs_isolated": isolation.isolated if isolation else None,
                "runs_isolation": isolation.how if isolation else None,
                "provider_health": controller.provider_health, "last_step_at": loop.last_step_at,
                "last_success_at": loop.last_success_at, "last_step_error": loop.last_error,
                "step_failures": loop.failures, "repo": controller.repo.display_location if controller.repo else None}

    host, _, port = opts.http.rpartition(":")
    host = host or "127.0.0.1"
    local = is_loopback(host)
    _announce_access(controller.store, host, local, opts)
    from gitopsq.providercheck import judgment

    app = create_app(controller.store.path, loop.wake, status, opts.webhook_secret, metrics, metrics_open=opts.metrics_open,
                     accept_unsigned_webhooks=local, judge=lambda spec: judgment(controller.provider, spec),
                     max_log_size=opts.max_log_size)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=int(port), log_level="warning", access_log=False,
                                           timeout_graceful_shutdown=HTTP_STOP_TIMEOUT, ssl_certfile=opts.tls_cert,
                                           ssl_keyfile=opts.tls_key))
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    if not server.started:
        raise RuntimeError(f"the HTTP server could not listen on {opts.http}")
    log.info("HTTP API and dashboard on %s://%s", "https" if opts.tls_cert else "http", opts.http)
    return server, thread


def _announce_access(store, host: str, local: bool, opts: DaemonOptions) -> None:
    """Create the admin token when the state has none, and say (at start) what is open to whom."""
    from gitopsq.tokens import ensure_admin_token

    created = ensure_admin_token(store)
    if created:  # where it is, never the token itself
        log.info("created the API token 'admin' (write access) in %s: send it as 'Authorization: Bearer TOKEN', "
                 "or paste it into the dashboard's login form", created)
    if not local and not opts.tls_cert:
        log.warning("serving on %s without TLS: tokens, logs and secret names cross the network in clear text; "
                    "give --tls-cert and --tls-key, or put a TLS proxy in front and listen on 127.0.0.1", host)
    if not local and opts.webhook_secret is None:
        log.warning("the webhook is closed: serving on %s, it needs --webhook-secret-file", host)
    if opts.metrics_open:
        log.info("/metrics answers without a token (--metrics-open)")


def _stop_on_signals(loop: Loop) -> None:
    def handle(signum, frame) -> None:
        if not loop.stopping:
            log.info("%s received: finishing the current step, then stopping", signal.Signals(signum).name)
        loop.stop()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)


def ignore_wake_signal() -> None:
    """Until the loop runs (and in `serve --once`): a wake signal does nothing, where its default
    would kill the process. A handler, not SIG_IGN, which launched runs would inherit."""
    signal.signal(WAKE_SIGNAL, lambda signum, frame: None)


def _wake_on_signal(loop: Loop) -> None:
    def handle(signum, frame) -> None:
        log.debug("%s received: waking the loop (secrets changed)", signal.Signals(signum).name)
        loop.wake("secrets")

    signal.signal(WAKE_SIGNAL, handle)


def _run_loop(loop: Loop) -> None:
    try:
        loop.run()
    except BaseException:
        log.exception("the controller loop ended on an unexpected error")
        loop.crashed = True


def _wait(worker: threading.Thread, loop: Loop) -> None:
    """Wait for the loop to end; after a stop signal, STOP_GRACE seconds at most."""
    while worker.is_alive():
        worker.join(0.1)  # short: the signal handlers run in this thread, between these waits
        stopping_for = time.monotonic() - loop.stop_requested_at if loop.stop_requested_at is not None else 0.0
        if stopping_for >= STOP_GRACE and worker.is_alive():
            log.error("the current step is still running %.0fs after the stop signal; exiting without finishing it "
                      "(like a crash: the next start recovers)", STOP_GRACE)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(1)  # the kernel releases the controller lock; nodes keep running


def run_daemon(controller: Controller, opts: DaemonOptions) -> None:
    setup_logging(opts.log_format)
    for warning in opts.warnings:
        log.warning("%s", warning)
    loop = Loop(controller, opts.interval)
    _stop_on_signals(loop)
    _wake_on_signal(loop)
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
    worker = threading.Thread(target=_run_loop, args=(loop,), name="controller", daemon=True)
    worker.start()
    try:
        _wait(worker, loop)
    finally:
        if watcher:
            watcher.stop()
        if server:
            server.should_exit = True
            thread.join(timeout=HTTP_STOP_TIMEOUT)
        log.info("stopped; running nodes keep running and are adopted at the next start")
    if loop.crashed:
        raise SystemExit(1)
