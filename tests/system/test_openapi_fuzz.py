"""schemathesis against the real run.py: the OpenAPI document tells the truth.

Every operation of ``/openapi.json`` gets generated requests that fit the document (positive)
and, where there are parameters to break, requests that do not (negative). Each response must
be no 5xx and conform to the document: status code, content type, headers and body schema;
requests that fit must be accepted, requests that do not must be rejected. The number of
examples is bounded so that this takes seconds, not minutes, in CI.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from config.indicators import DEFAULT_S10_INDICATORS, allowed_indicators
from service.openapi import build
from tests.system.conftest import Service

# Examples per operation and mode. The hot path has the parameters worth exploring.
EXAMPLES = {"/next-tracking-number": 100}
DEFAULT_EXAMPLES = 25
# Only operations with parameters of a constrained type can be sent data that breaks them
# (X-Request-ID is any string: nothing breaks it).
NEGATIVE = ("/next-tracking-number", "/tracking-numbers")
# Routes that need the admin token (records): it is sent, so that they answer more than 401.
WITH_TOKEN = ("/tracking-numbers",)
PATHS = list(build()["paths"])


@pytest.fixture(scope="module")
def running() -> Iterator[Service]:
    """One real run.py for the whole module, with the ledger (records to list); every operation
    is fuzzed against it."""
    state_dir = Path(tempfile.mkdtemp(prefix="tn-", dir="/tmp"))
    service = Service(state_dir, 2, "--no-access-log", "--ledger")
    try:
        service.start()
        yield service
        assert service.stop() == 0
    finally:
        service.kill()
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def schema(running: Service) -> schemathesis.schemas.BaseSchema:
    # The document as the service serves it. (from_url would leave out the document's own
    # path, /openapi.json, which is an operation like the others.)
    with urllib.request.urlopen(running.url + "/openapi.json", timeout=10) as response:
        document = json.load(response)
    return schemathesis.openapi.from_dict(document)


def fuzz(running: Service, schema: schemathesis.schemas.BaseSchema, path: str, mode: str) -> None:
    (operation,) = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path == path and result.ok().method.upper() == "GET"
    ]

    @settings(
        max_examples=EXAMPLES.get(path, DEFAULT_EXAMPLES),
        deadline=None,
        database=None,
        # Small, enumerable schemas (an operation without parameters) are fine to repeat.
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    def call_and_check(case: schemathesis.Case) -> None:
        if case.headers and "Idempotency-Key" in case.headers and mode == "positive":
            # A key stands for one request: generated keys repeat across different requests
            # and rightly get the 422 of a reused key. A fresh key for each case.
            case.headers["Idempotency-Key"] = uuid.uuid4().hex
        explicit = None
        if path in WITH_TOKEN and (mode == "positive" or "Authorization" in (case.headers or {})):
            # Given as explicit credentials: schemathesis then also checks that a request
            # without them, or with a wrong token, is refused. A broken case without the
            # header is left so (it must get a 401).
            explicit = {"Authorization": f"Bearer {token(running)}"}
            if mode == "positive" and case.query:
                # What the document cannot say: a cursor fits only the query it came from (a
                # made-up one is a 400), and issued_to must be later than issued_from.
                case.query.pop("cursor", None)
                if "issued_from" in case.query:
                    case.query.pop("issued_to", None)
        if path == "/next-tracking-number" and mode == "positive" and case.query:
            s10_pair(case.query)
        case.call_and_validate(base_url=running.url, headers=explicit, timeout=10)

    call_and_check()


# The indicators the fuzzed service issues (its s10_indicators are the default).
ISSUED_INDICATORS = allowed_indicators(DEFAULT_S10_INDICATORS)


def s10_pair(query: dict[str, object]) -> None:
    """What the document cannot say of an S10 request: scheme and service_indicator come
    together, and the indicator is one the operator lists (another is a 400 that says so)."""
    if "scheme" not in query and "service_indicator" not in query:
        return
    indicator = str(query.get("service_indicator", "")).upper()
    query["scheme"] = "s10"
    query["service_indicator"] = indicator if indicator in ISSUED_INDICATORS else "RR"


def token(service: Service) -> str:
    """The admin token the service made at start."""
    (line,) = [x for x in service.log_lines() if "tracking.admin_token_file" in x]
    return Path(line["tracking.admin_token_file"]).read_text().strip()


@pytest.mark.parametrize("path", PATHS)
def test_requests_that_fit_the_document_get_documented_answers(
    running: Service, schema: schemathesis.schemas.BaseSchema, path: str
) -> None:
    fuzz(running, schema, path, "positive")


@pytest.mark.parametrize("path", NEGATIVE)
def test_requests_that_break_the_document_are_rejected_with_documented_answers(
    running: Service, schema: schemathesis.schemas.BaseSchema, path: str
) -> None:
    fuzz(running, schema, path, "negative")


def test_every_documented_path_is_fuzzed() -> None:
    assert set(NEGATIVE) <= set(PATHS)
    assert {
        "/next-tracking-number",
        "/health",
        "/metrics",
        "/allocator/status",
        "/tracking-numbers",
    } <= set(PATHS)
