"""Everything a client sees when something is wrong: one JSON shape, for every status.

This is the one place where failures become HTTP statuses: validation → 400, unknown path →
404, wrong method → 405, anything from the allocator → 503 with ``Retry-After`` (a used-up S10
series, ``SeriesExhausted``, says so by name), a bug → 500
(the stack trace goes to the log, never to the client). aiohttp's own errors (malformed
requests, oversized headers) are answered in the same shape by ``json_error``, through
``service.observe.aiohttp_error``, which the app hands to its runner (service/server/).
"""

from __future__ import annotations

import msgspec

from service.server.answers import JsonAnswer

RETRY_AFTER_SECONDS = 1
# A used-up series stays so until the operator acts: retrying soon helps nobody.
SERIES_EXHAUSTED_RETRY_AFTER_SECONDS = 3600
INVALID_PARAMETERS = "Invalid request parameters"


class ErrorBody(msgspec.Struct, omit_defaults=True):
    error: str
    details: dict[str, list[str]] | None = None
    correlation_id: str = ""


_encoder = msgspec.json.Encoder()


def json_error(
    status: int,
    message: str,
    correlation_id: str,
    *,
    details: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JsonAnswer:
    body = _encoder.encode(ErrorBody(message, details, correlation_id))
    return JsonAnswer(body, correlation_id, status=status, headers=headers)


def invalid_parameters(details: dict[str, list[str]], correlation_id: str) -> JsonAnswer:
    return json_error(400, INVALID_PARAMETERS, correlation_id, details=details)


def unavailable(correlation_id: str) -> JsonAnswer:
    """Any AllocatorError: no number can be issued right now; retry shortly."""
    return json_error(
        503,
        "No tracking number can be issued right now; retry shortly",
        correlation_id,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def series_exhausted(series: str, correlation_id: str) -> JsonAnswer:
    """SeriesExhausted: every number of an S10 series is issued; none comes from another."""
    return json_error(
        503,
        f"Series exhausted: every number of the S10 series {series} has been issued; "
        "the operator must choose another indicator (docs/operations.md)",
        correlation_id,
        headers={"Retry-After": str(SERIES_EXHAUSTED_RETRY_AFTER_SECONDS)},
    )


def ledger_unreadable(correlation_id: str) -> JsonAnswer:
    """A LedgerError while reading records: the file cannot be read right now."""
    return json_error(
        503,
        "The ledger cannot be read right now; retry shortly",
        correlation_id,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def unauthorized(correlation_id: str) -> JsonAnswer:
    return json_error(
        401,
        "A valid admin bearer token is required",
        correlation_id,
        headers={"WWW-Authenticate": 'Bearer realm="tracking-numbers"'},
    )


def forbidden(correlation_id: str) -> JsonAnswer:
    return json_error(403, "Operator endpoints answer loopback clients only", correlation_id)


def not_found(correlation_id: str) -> JsonAnswer:
    return json_error(404, "Not found", correlation_id)


def method_not_allowed(allowed: str, correlation_id: str) -> JsonAnswer:
    return json_error(405, "Method not allowed", correlation_id, headers={"Allow": allowed})
