"""Idempotent retries: the ``Idempotency-Key`` request header, after the IETF draft "The
Idempotency-Key HTTP Header Field".

The same key with the same parameters within ``idempotency_ttl`` (24 hours) gets the same
answer: the same numbers, and none consumed. The same key with other parameters is a 422. The
allocator keeps the answers durably in the store (SQLite or PostgreSQL), so a retry after a
worker or an allocator restart still gets the original answer. Two requests racing with one
key both issue numbers, but the store keeps the first answer and both clients get it (the
loser's numbers become a gap). A request without the header never comes here.
"""

from __future__ import annotations

import hashlib
import re

import msgspec
from aiohttp import web

from allocator.protocol import AllocatorError
from service import errors
from service.answers import JsonAnswer
from service.issuing import audit_of, body_for, numbers_for
from service.keys import CLIENT, ISSUER, METRICS
from service.observe import ISSUE_ROUTE, Audit, record
from service.params import TrackingRequest

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# The draft's key is a Structured Fields string: visible ASCII, in double quotes. We take it
# quoted or bare, without the characters a string would have to escape.
_KEY = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,255}")
KEY_RULE = "must be 1 to 255 visible ASCII characters, a UUID for example, optionally quoted"
MISMATCH = "This Idempotency-Key was already used with other parameters"


def key_of(value: str) -> str | None:
    """The key in a header value, or None if it is not a valid key."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value if _KEY.fullmatch(value) else None


def fingerprint(query: TrackingRequest) -> bytes:
    """Identifies the parameters, as validated and normalised (so "my" and "MY" are one)."""
    return hashlib.sha256(msgspec.msgpack.encode(query)).digest()


async def answer(
    request: web.Request, query: TrackingRequest, correlation_id: str, started: int
) -> web.StreamResponse:
    """The answer to a valid request that carries an Idempotency-Key."""
    app = request.app

    def done(status: int, response: JsonAnswer, audit: Audit | None = None) -> JsonAnswer:
        record(app, request, ISSUE_ROUTE, status, started, correlation_id, ISSUE_ROUTE, audit)
        return response

    key = key_of(request.headers[HEADER])
    if key is None:
        return done(400, errors.invalid_parameters({HEADER: [KEY_RULE]}, correlation_id))
    digest = fingerprint(query)
    client = app[CLIENT]
    audit = None
    try:
        kept = await client.recall(key)
        if kept is None:
            numbers = await numbers_for(app[ISSUER], query)
            body = body_for(query, numbers, correlation_id)
            kept = await client.remember(key, digest, body)
            if kept.response == body:  # ours stands, not a racing twin's
                app[METRICS].issued(len(numbers))
                audit = audit_of(query, numbers)
    except AllocatorError:
        return done(503, errors.unavailable(correlation_id))
    if kept.fingerprint != digest:
        return done(422, errors.json_error(422, MISMATCH, correlation_id))
    headers = {REPLAYED: "true"} if audit is None else None
    return done(200, JsonAnswer(kept.response, correlation_id, headers=headers), audit)
