"""moto's EC2 server on 127.0.0.1 with fault injection, for tests.

moto never fails for capacity, throttling or outages, so a small WSGI
middleware sits in front of its app and answers chosen requests itself.

    with MotoEC2Server() as server:
        driver = make_ec2_driver(endpoint=server.endpoint, key="testing", secret="testing")
        server.inject("RunInstances", "InsufficientInstanceCapacity", status=500)
        ...
        assert server.calls["RunInstances"] == 2

moto keeps its backends in process-wide globals, so servers are isolated by
resetting that state on start; run one server at a time.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import requests
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

TEST_KEY = "testing"
TEST_SECRET = "testing"

_app_lock = threading.Lock()
_moto_app: DomainDispatcherApplication | None = None


def _shared_moto_app() -> DomainDispatcherApplication:
    # Building moto's Flask apps is slow and their state is global anyway.
    global _moto_app
    with _app_lock:
        if _moto_app is None:
            _moto_app = DomainDispatcherApplication(create_backend_app)
        return _moto_app


_ec2_app = None


def _ec2_only_app():
    """moto's EC2 app alone: every request is EC2's, however it is signed. moto's dispatcher
    tells services apart by the SigV4 credential scope, and reads a SigV2 request (signature in
    the query, as Libcloud's other EC2-API drivers send) as S3's. The state is the same."""
    global _ec2_app
    shared = _shared_moto_app()
    with _app_lock:
        if _ec2_app is None:
            _ec2_app = create_backend_app("ec2")
        ec2 = _ec2_app

    def dispatch(environ, start_response):
        app = shared if environ.get("PATH_INFO", "").startswith("/moto-api") else ec2
        return app(environ, start_response)

    return dispatch


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args, **kwargs):  # keep pytest output readable
        pass


@dataclass
class Fault:
    action: str  # EC2 Action name, or "*" for any
    times: int
    status: int = 500
    code: str | None = None  # AWS error code; None means a plain HTTP body
    message: str = ""
    delay: float = 0.0  # stall first; with no code and status 0 the request then reaches moto
    after: int = 0  # let this many matching requests through first
    content_type: str = "text/plain"
    when: dict[str, str] | None = None  # only requests carrying these parameters (e.g. a spot market)


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Response><Errors><Error><Code>%s</Code><Message>%s</Message></Error></Errors>"
        "<RequestID>%s</RequestID></Response>" % (escape(code), escape(message), uuid.uuid4())
    ).encode()


class FaultInjector:
    """WSGI middleware: counts EC2 actions and answers injected faults."""

    def __init__(self, app):
        self.app = app
        self.calls: Counter[str] = Counter()
        self.access_keys: Counter[str] = Counter()  # the key id each signed request was made with
        self.params: dict[str, list[dict[str, str]]] = {}  # the form parameters of each request, by action
        self.session_tokens: Counter[str] = Counter()  # the X-Amz-Security-Token each request carried
        self.requests: list[dict[str, str]] = []  # every request's parameters, in order
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    @staticmethod
    def _params(environ) -> dict[str, str]:
        """The request's parameters: from the query string (SigV2 GETs), else the form body."""
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "Action" in query:
            return {k: v[0] for k, v in query.items()}
        if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            # Put the body back for moto.
            environ["wsgi.input"] = io.BytesIO(body)
            return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        return {}

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, action: str, params: dict[str, str]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.when and any(params.get(k) != v for k, v in fault.when.items()):
                    continue
                if fault.action in ("*", action) and fault.after > 0:
                    fault.after -= 1
                    return None
                if fault.action in ("*", action):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self.app(environ, start_response)
        params = self._params(environ)
        action = params.get("Action") or "?"
        self.requests.append(params)
        signed = re.search(r"Credential=([^/,\s]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        with self._lock:
            self.calls[action] += 1
            self.params.setdefault(action, []).append(params)
            if signed:
                self.access_keys[signed.group(1)] += 1
            if environ.get("HTTP_X_AMZ_SECURITY_TOKEN"):
                self.session_tokens[environ["HTTP_X_AMZ_SECURITY_TOKEN"]] += 1
        fault = self._take(action, params)
        if fault is None:
            return self.app(environ, start_response)
        if fault.delay and self.stopping.wait(fault.delay):
            fault = Fault(action, 1, status=503, message="server stopping")
        if fault.code:
            body = _error_xml(fault.code, fault.message or fault.code)
            content_type = "text/xml"
        elif fault.status:
            body = (fault.message or "Service Unavailable").encode()
            content_type = fault.content_type
        else:
            # Pure delay: the client has likely given up; moto still answers.
            return self.app(environ, start_response)
        start_response(
            "%d %s" % (fault.status, HTTPStatus(fault.status).phrase),
            [("Content-Type", content_type), ("Content-Length", str(len(body)))],
        )
        return [body]


class MotoEC2Server:
    """moto's EC2 server on a free 127.0.0.1 port, behind a FaultInjector (ec2_only: for drivers
    that sign with SigV2)."""

    def __init__(self, host: str = "127.0.0.1", ec2_only: bool = False):
        self.host = host
        self.injector = FaultInjector(_ec2_only_app() if ec2_only else _shared_moto_app())
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return "http://%s:%d" % (self.host, self.port)

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_port

    @property
    def calls(self) -> Counter[str]:
        """Requests seen per EC2 action, including those answered with faults."""
        return self.injector.calls

    @property
    def params(self) -> dict[str, list[dict[str, str]]]:
        """The form parameters of each request seen, by EC2 action."""
        return self.injector.params

    @property
    def access_keys(self) -> Counter[str]:
        """Requests seen per access key id they were signed with."""
        return self.injector.access_keys

    @property
    def session_tokens(self) -> Counter[str]:
        """Requests seen per session token they carried (X-Amz-Security-Token)."""
        return self.injector.session_tokens

    def start(self) -> "MotoEC2Server":
        self._server = make_server(
            self.host, 0, self.injector, threaded=True, request_handler=_QuietHandler
        )
        # A short poll interval makes stop() (and so each test) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.reset()
        return self

    def reset(self) -> None:
        """Wipe moto's (process-wide) state: instances, tags, counters."""
        requests.post(self.endpoint + "/moto-api/reset", timeout=10).raise_for_status()
        self.injector.calls.clear()
        self.injector.access_keys.clear()
        self.injector.params.clear()
        self.injector.session_tokens.clear()
        self.injector.requests.clear()

    def stop(self) -> None:
        if self._server is None:
            return
        self.injector.stopping.set()  # release stalled requests
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> "MotoEC2Server":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def inject(
        self,
        action: str = "RunInstances",
        code: str = "InsufficientInstanceCapacity",
        status: int = 500,
        times: int = 1,
        message: str | None = None,
        after: int = 0,
        when: dict[str, str] | None = None,
    ) -> None:
        """Answer the next `times` `action` requests (after letting `after` through; only those with
        the parameters `when` has) with an AWS XML error."""
        self.injector.add(Fault(action, times, status, code, message or "Injected %s" % code, after=after, when=when))

    def requests(self, action: str) -> list[dict[str, str]]:
        """The parameters of every `action` request seen, in order (faults answered included)."""
        return [p for p in self.injector.requests if p.get("Action") == action]

    def reclaim_spot(self, instance_id: str) -> None:
        """Take a spot instance back as EC2 does: terminated, with the spot state reason."""
        from moto.backends import get_backend
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models.instances import StateReason

        for region_backend in get_backend("ec2")[DEFAULT_ACCOUNT_ID].values():
            instance = next((i for r in region_backend.reservations.values() for i in r.instances if i.id == instance_id), None)
            if instance is not None:
                instance.terminate()
                instance.state_reason = StateReason("Server.SpotInstanceTermination: Spot instance termination",
                                                    "Server.SpotInstanceTermination")
                return
        raise LookupError(instance_id)

    def clear_faults(self) -> None:
        """Forget the faults not answered yet."""
        self.injector.clear()

    def inject_http(
        self,
        action: str = "*",
        status: int = 503,
        times: int = 1,
        body: str = "Service Unavailable",
    ) -> None:
        """Answer with a bare HTTP error (no XML), as a proxy or LB would."""
        self.injector.add(Fault(action, times, status, None, body))

    def answer(self, action: str, xml: str, times: int = 1) -> None:
        """Answer `action` with this (successful) EC2 response: for what moto does not implement."""
        self.injector.add(Fault(action, times, 200, None, xml, content_type="text/xml"))

    def inject_delay(self, action: str = "*", seconds: float = 2.0, times: int = 1) -> None:
        """Stall requests before passing them to moto, to provoke client timeouts."""
        self.injector.add(Fault(action, times, status=0, delay=seconds))
