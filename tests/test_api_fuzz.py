"""schemathesis over the OpenAPI document the server serves, with a write token: no input makes it answer 5xx."""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gitopsq.store import Store
from gitopsq.web import create_app
from tests.webserver import add_run, bearer, running

NOW = time.time()


@pytest.fixture
def served_schema(tmp_path):
    db = tmp_path / "state.db"
    store = Store(db)
    log = tmp_path / "a.log"
    log.write_text("line\n" * 10)
    add_run(store, "alpha", NOW - 100, priority=5, status="running", log=str(log))
    add_run(store, "beta", NOW - 50, priority=9)
    add_run(store, "gamma", NOW - 500, status="failed", reason="exit-code", exit_code=1)
    status = {"branch": "main", "commit": "0" * 40, "provider": "local", "provider_health": None,
              "last_step_at": NOW, "repo": "/tmp/repo"}
    app = create_app(db, lambda reason: None, lambda: dict(status), b"secret")
    header = bearer(store)
    with running(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json", headers=header), header
    store.close()


def test_no_server_errors(served_schema):
    # One hypothesis run per operation (schemathesis' own pytest plugin does not load under this pytest).
    schema, header = served_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10

    calls = []
    for operation in operations:
        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(timeout=10, headers=header)
            calls.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            if operation.path not in OWN_CREDENTIAL:  # the token reached past authentication
                assert response.status_code != 401, f"{case.method} {case.formatted_path}: {response.text[:300]}"

        check()
    assert len(calls) >= 10 * len(operations) // 2, "hypothesis must really have called the API"


# Routes that take a credential of their own (a node's attempt token, the webhook's signature, the
# login form's token, the dashboard's cookie with its CSRF token), not the API token sent with every call.
OWN_CREDENTIAL = {"/api/submissions/{submission_id}/report", "/api/webhook", "/login", "/runs/{name}/stop",
                  "/runs/{name}/rerun"}
