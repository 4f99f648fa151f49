"""The OpenAPI 3.1 document, generated from the same msgspec types that validate and encode.

Built once at import; the handler serves the pre-encoded bytes.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import msgspec
from aiohttp import web

from allocator.protocol import AllocatorStatus
from service import idempotency
from service.countries import COUNTRY_CODES
from service.errors import ErrorBody
from service.issued import IssuedNumber, IssuedNumbers
from service.labels import (
    LABEL_ROUTE,
    LABELS_ROUTE,
    MAX_LABELS,
    NO_RECORD,
    NO_RECORDS,
    EncodedLabel,
    LabelQuery,
    ManyQuery,
    Numbers,
)
from service.labels import LEDGER_OFF as LABELS_LEDGER_OFF
from service.labels import RULES as LABEL_RULES
from service.listing import CSV, LEDGER_OFF, NDJSON, Page
from service.listing_query import DEFAULT_LIMIT, ListingQuery
from service.listing_query import FIELDS as LISTING_FIELDS
from service.listing_query import RULES as LISTING_RULES
from service.observe import observed
from service.params import (
    BLANKS,
    EXAMPLE,
    FIELDS,
    JOINERS,
    REQUIRED,
    RULES,
    TrackingRequest,
)
from service.server.answers import JSON, JsonAnswer
from service.verify import Verdict
from service.verify_s10 import S10Verdict
from service.views import Health

VERSION = "0.1.0"
REF = "#/components/schemas/{name}"


def _ecma(schema: Any) -> Any:
    """Python's end-of-string anchor \\Z reads as ECMA-262's $ in JSON Schema."""
    if isinstance(schema, dict):
        return {key: _ecma(value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_ecma(value) for value in schema]
    if isinstance(schema, str):
        return schema.replace("\\Z", "$")
    return schema


def _class(ranges: list[tuple[int, int]]) -> str:
    """A character class of code point ranges, in escapes that Python and ECMA-262 read alike
    (a character beyond U+FFFF as itself: ECMA-262 with the u flag, as JSON Schema tools use)."""

    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "[" + "".join(char(a) if a == b else f"{char(a)}-{char(b)}" for a, b in ranges) + "]"


def _name_pattern() -> str:
    """The customer name rule (service/params.py) as a pattern, for this document only: the
    service checks names that are not ASCII with ``unicodedata``, as a pattern this long is
    slower (docs/performance.md). Characters that show nothing (spaces, marks, the joiners,
    blanks), then one that shows, then any allowed. Built at import, before a worker serves."""
    # One letter per code point: its category's (C is refused), with the joiners and blanks
    # moved to Z (allowed, shows nothing). Runs of letters are then ranges, found by re.
    kinds = list("".join(c[0] for c in map(unicodedata.category, map(chr, range(0x110000)))))
    for char in JOINERS | BLANKS:
        kinds[ord(char)] = "Z"
    text = "".join(kinds)

    def ranges(letters: str) -> str:
        found = re.finditer(f"[{letters}]+", text)
        return _class([(run.start(), run.end() - 1) for run in found])

    return f"^{ranges('ZM')}*{ranges('LNPS')}{ranges('LNPSZM')}*$"


def _parameters(request_schema: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = []
    for name in FIELDS:
        schema = dict(request_schema["properties"][name])
        if "anyOf" in schema:  # an optional field: in a query it is absent, never null
            schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
        if name.endswith("_country_id"):
            # Lower case is accepted too, and upper-cased.
            schema["enum"] = COUNTRY_CODES + [code.lower() for code in COUNTRY_CODES]
        if name == "created_at":
            # The pattern alone admits 2018-02-30; the service checks the calendar too, as
            # JSON Schema's date-time (RFC 3339) does. Found by schemathesis.
            schema["format"] = "date-time"
        description = RULES[name][0].upper() + RULES[name][1:] + "."
        if name == "customer_name":
            schema["pattern"] = _name_pattern()
            description += (
                " Leading and trailing spaces are trimmed first. Visible: a letter, digit, "
                "punctuation or symbol, not a Hangul filler or the blank Braille pattern. "
                "The format characters allowed are U+200C and U+200D (ZWNJ, ZWJ). Unicode "
                f"{unicodedata.unidata_version}. Never logged."
            )
        if name == "weight":
            description += (
                " Leading zeros and trailing decimal zeros are dropped: 000001.500 is 1.5, in "
                "the answer and for an Idempotency-Key."
            )
        if name == "customer_id":
            description += " Read as lower case."
        if name == "label":
            description = (
                "Adds `label` to the answer: the new number's shipping label in this format, "
                "base64, with its media type. "
                + description
                + ". Only when one number is issued: a batch's labels (`count` above 1) are "
                "POST /labels's. Not with an Idempotency-Key: fetch a retried number's label "
                "from /tracking-numbers/{number}/label."
            )
        if name == "scheme":
            description += (
                " With s10, the number is a UPU S10 identifier of 13 characters (two letters of "
                "service_indicator, an 8-digit serial, the UPU check digit, and "
                "origin_country_id as the issuing country), from the series of that indicator "
                "and country; the answer has the same shape."
            )
        if name == "service_indicator":
            schema["pattern"] = "^(?:[A-Z]{2}|[a-z]{2})$"
            description += (
                " Lower case is read as upper case. The operator's s10_indicators say which "
                "are issued: another one is a 400 that says why."
            )
        if name == "count":
            description = (
                "How many numbers to issue at once. " + description + " With it, the answer "
                "also carries `tracking_numbers`, the list; without it, the answer has exactly "
                "the single number's shape."
            )
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in REQUIRED,
                "description": description,
                "schema": schema,
                "example": EXAMPLE.get(name, PARAMETER_EXAMPLES.get(name, "20")),
            }
        )
    return parameters


# Examples of the optional parameters (the required ones' are params.EXAMPLE's).
PARAMETER_EXAMPLES = {"count": "20", "label": "pdf", "scheme": "s10", "service_indicator": "RR"}

LISTING_EXAMPLES = {
    "customer_id": EXAMPLE["customer_id"],
    "customer_slug": EXAMPLE["customer_slug"],
    "origin_country_id": "MY",
    "destination_country_id": "ID",
    "issued_from": "2026-12-01T00:00:00Z",
    "issued_to": "2026-12-02T00:00:00+08:00",
    "correlation_id": "8e03978e-40d5-43e8-bc93-6894a57f9324",
    "limit": str(DEFAULT_LIMIT),
}


def _listing_parameters(query_schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The listing's filters: every one optional, with the issuing route's rules."""
    parameters = []
    for name in LISTING_FIELDS:
        schema = next(s for s in query_schema["properties"][name]["anyOf"] if s != {"type": "null"})
        if name.endswith("_country_id"):
            schema["enum"] = COUNTRY_CODES + [code.lower() for code in COUNTRY_CODES]
        if name.startswith("issued_"):
            schema["format"] = "date-time"  # the calendar too, as for created_at
        description = LISTING_RULES[name][0].upper() + LISTING_RULES[name][1:] + "."
        if name == "limit":
            description = f"Records in a JSON page ({DEFAULT_LIMIT} when absent). " + description
        if name == "cursor":
            description = (
                "Where the page starts: the `next_cursor` of the previous page. "
                + description
                + " It is signed, and good for the same filters only (any limit)."
            )
        parameter = {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }
        if name in LISTING_EXAMPLES:
            parameter["example"] = LISTING_EXAMPLES[name]
        parameters.append(parameter)
    return parameters


def _json(ref: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref}}, **extra}


def build() -> dict[str, Any]:
    schemas, components = msgspec.json.schema_components(
        [
            TrackingRequest,
            IssuedNumber,
            IssuedNumbers,
            ErrorBody,
            Health,
            AllocatorStatus,
            Verdict,
            S10Verdict,
            ListingQuery,
            Page,
            EncodedLabel,
            LabelQuery,
            ManyQuery,
            Numbers,
        ],
        ref_template=REF,
    )
    (
        _,
        one,
        several,
        error,
        health,
        status,
        verdict,
        s10_verdict,
        _,
        page,
        encoded,
        _,
        _,
        numbers,
    ) = schemas
    request_schema = components.pop("TrackingRequest")
    query_schema = components.pop("ListingQuery")
    label_schema = components.pop("LabelQuery")
    many_schema = components.pop("ManyQuery")
    for answer in ("IssuedNumber", "IssuedNumbers"):
        components[answer]["properties"]["label"] = encoded  # only when asked for
    request_id = {
        "X-Request-ID": {"description": "The correlation id", "schema": {"type": "string"}}
    }
    retry = {
        **request_id,
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}},
    }
    correlation = {
        "name": "X-Request-ID",
        "in": "header",
        "required": False,
        "description": "Correlation id to use when it is 1-128 characters of [A-Za-z0-9._:-] "
        "(X-Correlation-ID is read too); otherwise a new UUID is made. Echoed in the body, "
        "the X-Request-ID response header and the logs.",
        "schema": {"type": "string"},
    }
    not_allowed = {"405": _json(error, "Only GET and HEAD are allowed")}
    get_only = {
        "405": _json(
            error,
            "Only GET is allowed: HEAD would issue numbers that nobody receives, so it is "
            "refused too (Allow: GET), and consumes none",
        )
    }
    idempotency_key = {
        "name": idempotency.HEADER,
        "in": "header",
        "required": False,
        "description": 'Makes retries safe (IETF draft "The Idempotency-Key HTTP Header '
        'Field"): the same key with the same parameters within 24 hours gets the same '
        "answer, the same numbers, and consumes none; with other parameters, a 422. "
        + idempotency.KEY_RULE[0].upper()
        + idempotency.KEY_RULE[1:]
        + ".",
        "schema": {
            "type": "string",
            "pattern": '^(?:"[!#-\\[\\]-~]{1,255}"|[!#-\\[\\]-~]{1,255})$',
        },
        "example": '"8e03978e-40d5-43e8-bc93-6894a57f9324"',
    }
    operator_only = {
        "401": _json(error, "A token is configured and this one is missing or wrong"),
        "403": _json(error, "Not a loopback client, and no admin token is configured"),
        **not_allowed,
        "503": _json(error, "The allocator cannot be reached", headers=retry),
    }
    operator = {
        "description": "Answers loopback clients, and anyone presenting the admin token "
        "(Authorization: Bearer …) when one is configured.",
        "security": [{}, {"adminToken": []}],
    }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tracking numbers",
            "version": VERSION,
            "description": "Unique parcel tracking numbers: never issued twice.",
        },
        "paths": {
            "/next-tracking-number": {
                "get": {
                    "operationId": "nextTrackingNumber",
                    "summary": "Issue a new, unique tracking number",
                    "description": "Every parameter is required and given once; unknown "
                    "parameters are ignored. The number is 16 characters: origin, destination, "
                    "11 base-36 characters, and an ISO/IEC 7064 MOD 37,36 check character.",
                    "parameters": [
                        correlation,
                        idempotency_key,
                        *_parameters(request_schema),
                    ],
                    "responses": {
                        "200": _json(
                            {"anyOf": [one, several]},
                            "Numbers issued once (a list too when `count` was given); or, for "
                            "a retry with the same Idempotency-Key and parameters, the first "
                            "answer again",
                            headers={
                                **request_id,
                                idempotency.REPLAYED: {
                                    "description": "`true` when this is the kept answer to an "
                                    "earlier request with the same Idempotency-Key",
                                    "schema": {"type": "string", "enum": ["true"]},
                                },
                            },
                        ),
                        "400": _json(
                            error,
                            "Invalid or missing parameters, every one listed in details",
                            headers=request_id,
                        ),
                        **get_only,
                        "422": _json(
                            error,
                            "The Idempotency-Key was already used with other parameters",
                            headers=request_id,
                        ),
                        "503": _json(
                            error,
                            "No number can be issued right now; retry. Also a request with a "
                            "new Idempotency-Key while the store keeps as many answers as it "
                            "may (Retry-After: 60); and with scheme=s10, a series whose every "
                            "number is issued: the error names it (Retry-After: 3600)",
                            headers=retry,
                        ),
                    },
                }
            },
            "/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Whether this worker can issue numbers",
                    "parameters": [correlation],
                    "responses": {
                        "200": _json(health, "The worker can issue numbers", headers=request_id),
                        **not_allowed,
                        "503": _json(health, "The worker cannot issue numbers", headers=retry),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of every worker and the allocator",
                    **operator,
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format 0.0.4",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **operator_only,
                    },
                }
            },
            "/allocator/status": {
                "get": {
                    "operationId": "allocatorStatus",
                    "summary": "The allocator's state, for operators",
                    **operator,
                    "responses": {
                        "200": _json(status, "The allocator's state", headers=request_id),
                        **operator_only,
                    },
                }
            },
            "/tracking-numbers": {
                "get": {
                    "operationId": "listRecords",
                    "summary": "List the ledger's records, newest first",
                    "description": "One record per issued number, newest first (in the order "
                    "they were committed; a request's numbers from the highest counter down), "
                    "with every filter given. With a PostgreSQL store, every host's records in "
                    "the shared ledger, in the order they reached it; a record still waiting "
                    "in its host's spool is listed once it is forwarded. Records hold "
                    "personal data: the admin token is always needed, from loopback too. "
                    "As JSON (the default) an answer is one "
                    "page, and `next_cursor` (also in the Link header) leads to the next; a "
                    "walk through the pages sees no record twice and misses none that existed "
                    "when it began, however many are issued meanwhile. With `Accept: "
                    f"{NDJSON}` (one record a line) or `{CSV}` (a header line, then RFC 4180 "
                    "lines in UTF-8) the answer streams every matching record: no limit, the "
                    "cursor is where it starts. Unknown parameters are ignored.",
                    "security": [{"adminToken": []}],
                    "parameters": [correlation, *_listing_parameters(query_schema)],
                    "responses": {
                        "200": {
                            "description": f"A page of records (JSON); or every matching "
                            f"record, one JSON record (a verdict's `record`) a line ({NDJSON}), "
                            f"or a header line of the record's field names, then one line a "
                            f"record ({CSV})",
                            "headers": {
                                **request_id,
                                "Link": {
                                    "description": "RFC 8288: `</tracking-numbers?…&cursor=…>; "
                                    'rel="next"`, the next page (same filters and limit), when '
                                    "there is one (JSON only)",
                                    "schema": {"type": "string"},
                                },
                            },
                            "content": {
                                JSON: {"schema": page},
                                NDJSON: {"schema": {"type": "string"}},
                                CSV: {"schema": {"type": "string"}},
                            },
                        },
                        "400": _json(
                            error,
                            "Invalid parameters, every one listed in details; a cursor that "
                            "was altered, or made for other filters or by another deployment",
                            headers=request_id,
                        ),
                        "401": _json(
                            error, "The admin token is missing or wrong", headers=request_id
                        ),
                        "403": _json(
                            error, "No admin token is configured: nobody may read records"
                        ),
                        "404": _json(error, LEDGER_OFF),
                        **not_allowed,
                        "503": _json(
                            error,
                            "The ledger (this host's file, or the shared ledger in "
                            "PostgreSQL) or the allocator cannot be read right now",
                            headers=retry,
                        ),
                    },
                }
            },
            "/tracking-numbers/{number}": {
                "get": {
                    "operationId": "verifyTrackingNumber",
                    "summary": "Check a tracking number someone typed or scanned",
                    "description": "Whether the number is valid (assigned country codes, a "
                    "serial in range, the right check character) and if not, why not; its "
                    "origin and destination. A 13-character number is read as a UPU S10 "
                    "number (`scheme` is `s10`): two letters, eight digits, the UPU check "
                    "digit and two letters; its service indicator (what UPU gives it to: "
                    "international, domestic, reserved or unknown; and whether this operator "
                    "issues it, its `s10_indicators`) and its country. When it is not valid "
                    "and exactly one swap of lookalike characters (0/O, 1/I, 5/S, ...) makes "
                    "it valid, that fix is suggested. Operator clients (loopback, or the admin "
                    "token) also learn whether this service issued it (an S10 number: whether "
                    "its series' counter was handed out past it).",
                    "parameters": [
                        correlation,
                        {
                            "name": "number",
                            "in": "path",
                            "required": True,
                            "description": "The tracking number, 16 characters (13 for a UPU "
                            "S10 number); lower case is read as upper case.",
                            "schema": {
                                "type": "string",
                                "pattern": "^[A-Za-z0-9]{13}([A-Za-z0-9]{3})?$",
                            },
                            "example": "MYIDI45OOV7PPDV7",
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {"oneOf": [verdict, s10_verdict]},
                            "The verdict: on one of our numbers, or on a UPU S10 number",
                            headers=request_id,
                        ),
                        "400": _json(
                            error,
                            "Not 16 (or 13) letters and digits: details say what is wrong",
                            headers=request_id,
                        ),
                        **not_allowed,
                        "503": _json(
                            error,
                            "An operator asked, and the allocator cannot be reached",
                            headers=retry,
                        ),
                    },
                }
            },
            **_label_paths(
                correlation, label_schema, many_schema, numbers, error, request_id, retry
            ),
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document",
                            "content": {JSON: {"schema": {"type": "object"}}},
                        },
                        **not_allowed,
                    },
                }
            },
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
    return _ecma(document)


def _label_parameters(schema: dict[str, Any], rules: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": rules[name][0].upper() + rules[name][1:] + ".",
            "schema": dict(schema["properties"][name]),
        }
        for name in LABEL_RULES
    ]


def _label_paths(
    correlation: dict[str, Any],
    label_schema: dict[str, Any],
    many_schema: dict[str, Any],
    numbers: dict[str, Any],
    error: dict[str, Any],
    request_id: dict[str, Any],
    retry: dict[str, Any],
) -> dict[str, Any]:
    """The shipping labels' routes (service/labels.py)."""
    documents = {
        "application/pdf": {"schema": {"type": "string", "format": "binary"}},
        "application/zpl": {"schema": {"type": "string"}},
    }
    one = {
        **documents,
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/svg+xml": {"schema": {"type": "string"}},
    }
    refusals = {
        "401": _json(error, "The admin token is missing or wrong", headers=request_id),
        "403": _json(error, "No admin token is configured: nobody may read records"),
        "503": _json(error, "The ledger or the allocator cannot be read right now", headers=retry),
    }
    many = {
        "summary": f"Up to {MAX_LABELS} labels in one PDF (a page each) or one ZPL stream",
        "description": "Drawn as they are written (the answer streams, in constant memory). "
        "Needs the admin token: a label carries the customer's name.",
        "security": [{"adminToken": []}],
    }
    return {
        LABEL_ROUTE: {
            "get": {
                "operationId": "trackingNumberLabel",
                "summary": "The shipping label of an issued number",
                "description": "A 4x6 inch (or A6) label drawn from the number's record: the "
                "number as Code 128 (UPU's module width and height, quiet zones, bars on whole "
                "printer dots at `dpi`) with the number under it, origin and destination, "
                "weight, the customer's name and slug, and the date of issue (UTC). Needs the "
                "admin token: a label carries the customer's name.",
                "security": [{"adminToken": []}],
                "parameters": [
                    correlation,
                    {
                        "name": "number",
                        "in": "path",
                        "required": True,
                        "description": "The tracking number; lower case is read as upper case.",
                        "schema": {"type": "string"},
                        "example": "MYIDI45OOV7PPDV7",
                    },
                    *_label_parameters(label_schema, LABEL_RULES),
                ],
                "responses": {
                    "200": {"description": "The label", "content": one, "headers": request_id},
                    "400": _json(error, "Bad parameters, every one listed in details"),
                    "404": _json(error, f"{NO_RECORD}; or: {LABELS_LEDGER_OFF}"),
                    **refusals,
                },
            }
        },
        LABELS_ROUTE: {
            "get": {
                "operationId": "listedLabels",
                **many,
                "description": many["description"]
                + " The labels of the newest records that match the listing's filters "
                f"(GET /tracking-numbers), `limit` of them ({MAX_LABELS} when absent).",
                "parameters": [
                    correlation,
                    *_label_parameters(many_schema, LABEL_RULES | {"format": "pdf or zpl"}),
                    *_listing_parameters(
                        msgspec.json.schema_components([ListingQuery], ref_template=REF)[1][
                            "ListingQuery"
                        ]
                    ),
                ],
                "responses": {
                    "200": {"description": "The labels", "content": documents},
                    "400": _json(error, "Bad parameters, every one listed in details"),
                    "404": _json(error, LABELS_LEDGER_OFF),
                    **refusals,
                },
            },
            "post": {
                "operationId": "labelsOfNumbers",
                **many,
                "description": many["description"] + " The labels of the numbers in the body, "
                "in its order.",
                "parameters": [
                    correlation,
                    *_label_parameters(many_schema, LABEL_RULES | {"format": "pdf or zpl"}),
                ],
                "requestBody": {"required": True, "content": {JSON: {"schema": numbers}}},
                "responses": {
                    "200": {"description": "The labels", "content": documents},
                    "400": _json(error, "Bad parameters or body, every one listed in details"),
                    "404": _json(
                        error,
                        f"{NO_RECORDS} (details name them); or: {LABELS_LEDGER_OFF}",
                    ),
                    **refusals,
                },
            },
        },
    }


DOCUMENT = msgspec.json.encode(build())


@observed()
async def openapi(request: web.Request, correlation_id: str) -> web.StreamResponse:
    return JsonAnswer(DOCUMENT, correlation_id)
