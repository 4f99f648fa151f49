"""Idempotent retries: the ``Idempotency-Key`` request header, after the IETF draft "The
Idempotency-Key HTTP Header Field".

The same key with the same parameters within ``idempotency_ttl`` (24 hours) gets the same
answer: the same numbers, and none consumed. The same key with other parameters is a 422. The
allocator keeps the answers durably in the store (SQLite or PostgreSQL), so a retry after a
worker or an allocator restart still gets the original answer. Two requests racing with one
key both issue numbers, but the store keeps the first answer and both clients get it (the
loser's numbers become a gap). A request without the header never comes here.

The store keeps at most ``idempotency_max_bytes``; past it, a request with a new key is a 503
with ``Retry-After`` (replays and requests without a key go on as before). An answer that was
kept but never delivered (the worker gave up waiting for the store) is counted and audited by
the first retry that gets it, so the access log still carries every number a client received.
"""

from __future__ import annotations

import hashlib
import re
import time

import msgspec
from aiohttp import web

from allocator.errors import AllocatorError, IdempotencyFull, SeriesExhausted
from ledger.errors import LedgerError
from service import errors
from service.issued import body_for, recorded
from service.keys import CLIENT, ISSUER, S10_ISSUER
from service.params import TrackingRequest
from service.server.answers import JsonAnswer

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# The draft's key is a Structured Fields string: visible ASCII, in double quotes. We take it
# quoted or bare, without the characters a string would have to escape.
_KEY = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,255}")
KEY_RULE = "must be 1 to 255 visible ASCII characters, a UUID for example, optionally quoted"
MISMATCH = "This Idempotency-Key was already used with other parameters"
FULL = "Too many Idempotency-Keys are kept right now; retry later, or without an Idempotency-Key"
# The allocator measures what the store keeps again (after dropping expired keys) this often.
FULL_RETRY_AFTER_SECONDS = 60
_decode_answer = msgspec.json.Decoder(dict[str, object])


def key_of(value: str) -> str | None:
    """The key in a header value, or None if it is not a valid key."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value if _KEY.fullmatch(value) else None


def fingerprint(query: TrackingRequest) -> bytes:
    """Identifies the parameters, as validated and normalised (so "my" and "MY" are one).

    ``label`` is left out: it changes no number, and a replayed answer carries no label. A
    request for our own numbers is fingerprinted without the S10 fields, as before they
    existed: a retry across the upgrade still gets its answer."""
    fields = msgspec.structs.asdict(query)
    del fields["label"]
    if query.scheme is None:
        del fields["scheme"], fields["service_indicator"]
    return hashlib.sha256(msgspec.msgpack.encode(fields)).digest()


async def answer(
    request: web.Request, query: TrackingRequest, correlation_id: str
) -> tuple[JsonAnswer, list[str] | None]:
    """The answer to a valid request that carries an Idempotency-Key, and the numbers it
    delivers for the first time (to be counted and audited), if any."""
    app = request.app
    key = key_of(request.headers[HEADER])
    if key is None:
        return errors.invalid_parameters({HEADER: [KEY_RULE]}, correlation_id), None
    digest = fingerprint(query)
    client = app[CLIENT]
    ours = False  # the answer that stands is the one this request built
    delivered = None  # numbers this answer delivers for the first time: counted and audited
    try:
        kept = await client.recall(key, digest)
        if kept is None:
            if query.service_indicator is None:
                issued = await app[ISSUER].issue_many(
                    query.origin_country_id, query.destination_country_id, query.how_many
                )
            else:
                issued = await app[S10_ISSUER].issue_many(
                    query.service_indicator, query.origin_country_id, query.how_many
                )
            issued_at_ns = time.time_ns()
            # Recorded before they are kept: a retry may deliver them.
            key_digest = hashlib.sha256(key.encode()).digest()
            await recorded(app, query, issued, correlation_id, issued_at_ns, key_digest)
            numbers = [number for _, number in issued]
            body = body_for(query, numbers, correlation_id, issued_at_ns)
            try:
                kept = await client.remember(key, digest, body)
            except AllocatorError:
                # The store may keep it after all (a late commit): a retry would then get
                # numbers that nobody counted or audited, unless the allocator hears of it.
                client.abandon(key, body)
                raise
            ours = kept.response == body  # not a racing twin's
            if ours:
                delivered = numbers
        elif kept.unaudited:  # its first delivery was abandoned: this is the delivery
            delivered = numbers_in(kept.response)
    except IdempotencyFull:
        headers = {"Retry-After": str(FULL_RETRY_AFTER_SECONDS)}
        return errors.json_error(503, FULL, correlation_id, headers=headers), None
    except SeriesExhausted as exc:
        return errors.series_exhausted(exc.series, correlation_id), None
    except (AllocatorError, LedgerError):
        return errors.unavailable(correlation_id), None
    if kept.fingerprint != digest:
        return errors.json_error(422, MISMATCH, correlation_id), None
    headers = None if ours else {REPLAYED: "true"}
    return JsonAnswer(kept.response, correlation_id, headers=headers), delivered


def numbers_in(response: bytes) -> list[str]:
    """The numbers of a kept answer (every number of a batch, else the one)."""
    answer = _decode_answer.decode(response)
    numbers = answer.get("tracking_numbers", [answer["tracking_number"]])
    assert isinstance(numbers, list)
    return [str(number) for number in numbers]
