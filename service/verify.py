"""Checking a number someone typed or scanned: ``GET /tracking-numbers/{number}``.

A number that is not 16 (or 13) letters and digits is malformed: a 400. Thirteen are a UPU S10
number, which ``service.verify_s10`` judges. Anything else gets a verdict:
valid or not, and why not (a country code that is not assigned, a serial beyond the range of
the store's scheme, a wrong check character), with its origin and destination. Operators (the
same access as /allocator/status) also learn whether this service issued it: the serial is
turned back into its counter with the permutation's inverse, and the ledger's record of that
counter must hold this very number (the same serial with other country codes was never
issued). With the ledger off, a counter below the allocator's ``next`` counts as issued. With a
PostgreSQL store the record is read from the shared ledger, so any host answers for every
host's numbers (``ledger.postgres.read_record``). The record itself, personal data, is shown
only to clients presenting the admin token (``admin.reads_records``).
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from allocator.counter import COUNTER_LIMIT
from allocator.errors import AllocatorError
from ledger.errors import LedgerError
from service import errors, s10
from service.admin import is_operator
from service.countries import COUNTRIES
from service.keys import CLIENT
from service.lookalikes import one_fix
from service.numbers import ALPHABET, NUMBER_LENGTH, parse, permutation, serial_limit
from service.observe import observed
from service.records import RecordBody, vouch
from service.server.answers import JsonAnswer
from service.verify_s10 import verify_s10

MALFORMED = "Malformed tracking number"
_CHARACTERS = frozenset(ALPHABET)


class Verdict(msgspec.Struct, omit_defaults=True):
    tracking_number: str
    valid: bool
    origin_country: str
    destination_country: str
    correlation_id: str
    # Why it is not valid (empty when it is).
    problems: list[str] = msgspec.field(default_factory=list)
    # The one likely typo fix, when the number is not valid and there is exactly one.
    suggestion: str | None = None
    # Operators only: whether this service issued the number.
    issued: bool | None = None
    # Operators only, when the number's counter was handed out but no record holds the number.
    note: str | None = None
    # Clients with the admin token only: the number's record in the ledger.
    record: RecordBody | None = None


def malformed(number: str) -> list[str]:
    """Why ``number`` (upper case expected) is not even shaped like a number; empty if it is."""
    if len(number) not in (NUMBER_LENGTH, s10.NUMBER_LENGTH):
        return [
            f"must be {NUMBER_LENGTH} characters long ({s10.NUMBER_LENGTH} for a UPU S10 "
            f"number), not {len(number)}"
        ]
    if not set(number) <= _CHARACTERS:
        return ["must hold only the letters A-Z and the digits 0-9"]
    return []


def problems(number: str, serials: int = COUNTER_LIMIT) -> list[str]:
    """Why a well-shaped ``number`` cannot be one we issue; empty when it is valid. Serials are
    below ``serials`` (``serial_limit`` of the store's scheme)."""
    parts = parse(number)
    found = []
    if parts.origin not in COUNTRIES:
        found.append("characters 1 and 2 are not an assigned ISO 3166-1 alpha-2 country code")
    if parts.destination not in COUNTRIES:
        found.append("characters 3 and 4 are not an assigned ISO 3166-1 alpha-2 country code")
    if parts.serial >= serials:
        found.append("characters 5 to 15 are beyond the range of any number ever issued")
    if parts.check != parts.expected_check:
        found.append("the check character (the last) does not match the other 15")
    return found


def suggestion(number: str, serials: int = COUNTER_LIMIT) -> str | None:
    """The valid number one lookalike swap away, if there is exactly one."""
    return one_fix(number, lambda candidate: not problems(candidate, serials))


@observed()
async def verify(request: web.Request, correlation_id: str) -> web.StreamResponse:
    typed = request.match_info["number"]
    number = typed.upper() if typed.isascii() else typed
    if found := malformed(number):
        return errors.json_error(400, MALFORMED, correlation_id, details={"number": found})
    if len(number) == s10.NUMBER_LENGTH:
        return await verify_s10(request, number, correlation_id)
    app = request.app
    client = app[CLIENT]
    serials = serial_limit(client.scheme)
    found = problems(number, serials)
    parts = parse(number)
    verdict = Verdict(number, not found, parts.origin, parts.destination, correlation_id, found)
    if found:
        verdict.suggestion = suggestion(number, serials)
    if is_operator(request):
        try:
            status = await client.status()
            # A status answer comes after the key and its scheme; the inverse is the store's.
            assert client.key is not None
            assert client.scheme is not None
            counter = permutation(client.key, client.scheme).invert(parts.serial)
            # FF1's inverse of a serial never issued may be beyond the counters: not leased.
            leased = verdict.valid and counter < status.allocator.next
            vouched = await vouch(request, client.key, counter, "", number, leased, verdict.valid)
            verdict.issued, verdict.note, verdict.record = vouched
        except (AllocatorError, LedgerError):
            return errors.unavailable(correlation_id)
    return JsonAnswer(msgspec.json.encode(verdict), correlation_id)
