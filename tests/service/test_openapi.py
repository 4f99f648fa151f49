import re
from collections.abc import Callable
from urllib.parse import urlencode

import jsonschema
from aiohttp.test_utils import TestClient
from hypothesis import assume, example, given, settings
from openapi_spec_validator import validate as validate_document

from allocator.actor import Allocator
from config.settings import Config
from service.openapi import build
from service.params import FIELDS, TrackingRequest, validate
from tests import design_rules
from tests.conftest import CANONICAL_QUERY
from tests.service.conftest import ClientFactory


async def fetch_document(client: TestClient) -> dict:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    return await response.json()


def response_schema(document: dict, path: str, status: str) -> dict:
    """The documented body schema, with the document's components in reach of its $refs."""
    content = document["paths"][path]["get"]["responses"][status]["content"]
    schema = content["application/json"]["schema"]
    return {**schema, "components": document["components"]}


async def test_the_document_is_valid_openapi_3_1(client: TestClient) -> None:
    document = await fetch_document(client)
    assert document["openapi"].startswith("3.1")
    validate_document(document)


async def test_every_documented_path_is_served(
    make_config: Callable[..., Config], allocator: Allocator, make_client: ClientFactory
) -> None:
    client = await make_client(make_config("--admin-token", "s3cret"))  # records need it
    document = await fetch_document(client)
    assert set(document["paths"]) == {
        "/next-tracking-number",
        "/health",
        "/metrics",
        "/allocator/status",
        "/tracking-numbers",
        "/tracking-numbers/{number}",
        "/tracking-numbers/{number}/label",
        "/labels",
        "/openapi.json",
    }
    issued = await client.get("/next-tracking-number", params=CANONICAL_QUERY)
    number = (await issued.json())["tracking_number"]  # a label needs an issued number
    for path in document["paths"]:
        path = path.replace("{number}", number)
        response = await client.get(
            path, params=CANONICAL_QUERY, headers={"Authorization": "Bearer s3cret"}
        )
        assert response.status == 200, path


async def test_every_parameter_is_documented_and_only_count_and_s10_s_are_optional(
    client: TestClient,
) -> None:
    document = await fetch_document(client)
    parameters = document["paths"]["/next-tracking-number"]["get"]["parameters"]
    query = {p["name"]: p for p in parameters if p["in"] == "query"}
    assert set(query) == set(FIELDS)
    optional = [name for name, p in query.items() if not p["required"]]
    assert optional == ["count", "label", "scheme", "service_indicator"]


async def test_documented_examples_are_accepted_and_patterns_are_ecma(client: TestClient) -> None:
    document = await fetch_document(client)
    parameters = document["paths"]["/next-tracking-number"]["get"]["parameters"]
    for parameter in parameters:
        if parameter["in"] == "query":
            jsonschema.validate(parameter["example"], parameter["schema"])
            assert "\\Z" not in parameter["schema"].get("pattern", "")


async def test_real_responses_match_their_documented_schemas(client: TestClient) -> None:
    document = await fetch_document(client)
    path = "/next-tracking-number"
    ok = await client.get(path, params=CANONICAL_QUERY)
    jsonschema.validate(await ok.json(), response_schema(document, path, "200"))
    bad = await client.get(path, params={"weight": "0"})
    assert bad.status == 400
    jsonschema.validate(await bad.json(), response_schema(document, path, "400"))
    health = await client.get("/health")
    jsonschema.validate(await health.json(), response_schema(document, "/health", "200"))


async def test_a_wrong_body_would_fail_the_documented_schema(client: TestClient) -> None:
    document = await fetch_document(client)
    schema = response_schema(document, "/next-tracking-number", "200")
    try:
        jsonschema.validate({"tracking_number": 5}, schema)
    except jsonschema.ValidationError:
        return
    raise AssertionError("the documented schema accepts a malformed body")


NAME_PATTERN = re.compile(
    next(
        parameter["schema"]["pattern"]
        for parameter in build()["paths"]["/next-tracking-number"]["get"]["parameters"]
        if parameter["name"] == "customer_name"
    )
)


@settings(max_examples=300, deadline=None, database=None)
@given(design_rules.names)
@example("\u200b")
@example("Red\u202eBox")
@example("\U0001f468\u200d\U0001f469")
@example(" \u0301\u3164 ")
@example("\U000f0000")
def test_the_documented_name_pattern_is_the_services_rule(name: str) -> None:
    # The document's pattern is built apart from the check (unicodedata, in Python): they
    # must agree on every name a client may send (the length is documented apart).
    assume(len(name) <= 255)
    result = validate(urlencode({**CANONICAL_QUERY, "customer_name": name}))
    assert isinstance(result, TrackingRequest) == bool(NAME_PATTERN.fullmatch(name)), name
