"""Listing the ledger's records: ``GET /tracking-numbers?customer_id=…&cursor=…``.

Records are personal data: the admin token is always needed, loopback alone is not enough
(``admin.records_refusal``). The filters are validated with the issuing route's rules, every
bad one listed in one 400. A JSON answer is one page, newest first, with the next page's cursor
in the body and in a ``Link: <…>; rel="next"`` header (RFC 8288). With
``Accept: application/x-ndjson`` or ``text/csv`` the answer streams every matching record,
read from the file a page at a time (``ledger.listing.STREAM_PAGE``), so memory stays
constant. Reads go through a read-only connection of the worker's own, in a thread.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec
from aiohttp import web
from multidict import MultiMapping

from allocator.client import AllocatorClient
from allocator.errors import AllocatorError
from config.logs import error_fields
from ledger.errors import LedgerError
from ledger.listing import STREAM_PAGE, Filters, Listed, Position, read_page, reading
from service import errors
from service.admin import records_refusal
from service.cursor import LENGTH as CURSOR_LENGTH
from service.cursor import Cursors
from service.keys import CLIENT, CONFIG
from service.observe import observed
from service.params import RULES as ISSUING_RULES
from service.params import Country, Errors, Slug, Timestamp, Uuid, normalise, split_query
from service.server.answers import JsonAnswer
from service.verify import RecordBody

log = logging.getLogger("service.listing")

ROUTE = "/tracking-numbers"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
JSON = "application/json"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
Limit = Annotated[str, msgspec.Meta(pattern=r"^(?:[1-9][0-9]{0,2}|1000)\Z")]
# The correlation ids the service keeps (service/correlation.py): the client's, or a UUID.
CorrelationId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,128}\Z")]
Cursor = Annotated[str, msgspec.Meta(pattern=rf"^[A-Za-z0-9_-]{{{CURSOR_LENGTH}}}\Z")]


class ListingQuery(msgspec.Struct, frozen=True):
    customer_id: Uuid | None = None
    customer_slug: Slug | None = None
    origin_country_id: Country | None = None
    destination_country_id: Country | None = None
    issued_from: Timestamp | None = None
    issued_to: Timestamp | None = None
    correlation_id: CorrelationId | None = None
    limit: Limit | None = None
    cursor: Cursor | None = None

    def filters(self) -> Filters:
        return Filters(
            customer_id=self.customer_id,
            customer_slug=self.customer_slug,
            origin=self.origin_country_id,
            destination=self.destination_country_id,
            issued_from_ns=None if self.issued_from is None else timestamp_ns(self.issued_from),
            issued_to_ns=None if self.issued_to is None else timestamp_ns(self.issued_to),
            correlation_id=self.correlation_id,
        )


FIELDS = tuple(field.name for field in msgspec.structs.fields(ListingQuery))
RULES = {
    **{name: ISSUING_RULES[name] for name in FIELDS if name in ISSUING_RULES},
    "issued_from": "must be an RFC 3339 date-time with a UTC offset (Z or ±hh:mm), such as "
    "2026-12-01T00:00:00Z; records issued at or after it",
    "issued_to": "must be an RFC 3339 date-time with a UTC offset (Z or ±hh:mm), such as "
    "2026-12-02T00:00:00+08:00; records issued before it",
    "correlation_id": "must be 1 to 128 characters of A-Z, a-z, 0-9 and ._:-",
    "limit": f"must be a whole number from 1 to {MAX_LIMIT}, such as {DEFAULT_LIMIT}",
    "cursor": "must be the next_cursor of an earlier page of this very query, unchanged",
}
LATER = "must be later than issued_from"
LEDGER_OFF = "The ledger is off (ledger = false): this service keeps no records to list"

_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))\Z"
)
# What SQLite's INTEGER holds: a time beyond it (years before 1678 or after 2261) is a bound
# no record passes, and is clamped to the range.
_INT64 = (-(2**63), 2**63 - 1)


def _days(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the proleptic Gregorian calendar, year 0 included
    (Howard Hinnant's ``days_from_civil``; ``datetime`` has no year 0)."""
    year -= month <= 2
    era = year // 400
    of_era = year - era * 400
    of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    of_era_days = of_era * 365 + of_era // 4 - of_era // 100 + of_year
    return era * 146097 + of_era_days - 719468


def timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch of a valid RFC 3339 ``Timestamp``, clamped to SQLite's
    integers (a leap second is the second after :59)."""
    match = _TIME.match(text.upper())
    assert match is not None, "a Timestamp matches"
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    seconds = (
        _days(int(year), int(month), int(day)) * 86400
        + int(hour) * 3600
        + int(minute) * 60
        + int(second)
    )
    if sign is not None:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    ns = seconds * 10**9 + int(((fraction or "") + "000000000")[:9])
    return min(max(ns, _INT64[0]), _INT64[1])


def validate(raw_query: str, parsed: MultiMapping[str] | None = None) -> ListingQuery | Errors:
    """The valid query, or every bad field with what is wrong with it."""
    values, found = split_query(raw_query, parsed, FIELDS)
    normalise(values, found)
    for name, value in values.items():
        try:
            msgspec.convert({name: value}, ListingQuery)
        except msgspec.ValidationError:
            found[name] = [RULES[name]]
    if found:
        return found
    query = msgspec.convert(values, ListingQuery)
    window = query.filters()
    if None not in (window.issued_from_ns, window.issued_to_ns) and (
        window.issued_to_ns <= window.issued_from_ns  # type: ignore[operator]
    ):
        return {"issued_to": [LATER]}
    return query


def media_type(accept: str) -> str:
    """The answer's media type: the one of ours the Accept header prefers (JSON unless NDJSON
    or CSV is preferred to it)."""
    best, best_q = JSON, 0.0
    for entry in accept.split(","):
        kind, *parameters = (part.strip() for part in entry.split(";"))
        q = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        kind = kind.lower()
        if kind in ("*/*", "application/*", JSON) and q > best_q:
            best, best_q = JSON, q
        elif kind in (NDJSON, CSV) and q > best_q:
            best, best_q = kind, q
    return best


class Page(msgspec.Struct):
    """A JSON page of records, newest first; ``next_cursor`` is null on the last page."""

    items: list[RecordBody]
    next_cursor: str | None


_encoder = msgspec.json.Encoder()


@observed()
async def list_records(request: web.Request, correlation_id: str) -> web.StreamResponse:
    if (refused := records_refusal(request, correlation_id)) is not None:
        return refused
    app = request.app
    if not app[CONFIG].ledger:
        return errors.json_error(404, LEDGER_OFF, correlation_id)
    url = request.rel_url
    query = validate(url.raw_query_string, url.query)
    if isinstance(query, dict):
        return errors.invalid_parameters(query, correlation_id)
    filters = query.filters()
    try:
        cursors = Cursors(await _permutation_key(app[CLIENT]))
    except AllocatorError:
        return errors.unavailable(correlation_id)
    after = None
    if query.cursor is not None:
        after = cursors.open(query.cursor, filters)
        if after is None:
            return errors.invalid_parameters({"cursor": [RULES["cursor"]]}, correlation_id)
    kind = media_type(request.headers.get("Accept", ""))
    try:
        async with reading(app[CONFIG].ledger_path) as db:
            if kind == JSON:
                limit = DEFAULT_LIMIT if query.limit is None else int(query.limit)
                # One more than the page: whether there is a next page, without a query more.
                found = await read_page(db, filters, after, limit + 1)
                return _page(query, found[:limit], len(found) > limit, cursors, correlation_id)
            # The first page before the answer starts: a file that cannot be read is a 503.
            first = await read_page(db, filters, after, STREAM_PAGE)
            return await _stream(
                request,
                kind,
                first,
                lambda position: read_page(db, filters, position, STREAM_PAGE),
                correlation_id,
            )
    except LedgerError:
        return errors.ledger_unreadable(correlation_id)


async def _permutation_key(client: AllocatorClient) -> bytes:
    """The store's key, which cursors are signed with. It comes with the allocator's welcome,
    before any answer (``connect`` may return while another task's welcome is on its way)."""
    if client.key is None:
        await client.status()
    assert client.key is not None
    return client.key


def _page(
    query: ListingQuery, found: list[Listed], more: bool, cursors: Cursors, correlation_id: str
) -> web.StreamResponse:
    items = [RecordBody.of(listed.record) for listed in found]
    if not more:
        return JsonAnswer(_encoder.encode(Page(items, None)), correlation_id)
    cursor = cursors.make(found[-1].position, query.filters())
    given = {name: getattr(query, name) for name in FIELDS if name != "cursor"}
    link = urllib.parse.urlencode(
        {name: value for name, value in given.items() if value is not None} | {"cursor": cursor}
    )
    return JsonAnswer(
        _encoder.encode(Page(items, cursor)),
        correlation_id,
        headers={"Link": f'<{ROUTE}?{link}>; rel="next"'},
    )


COLUMNS = tuple(field.name for field in msgspec.structs.fields(RecordBody))


def _ndjson(found: list[Listed]) -> bytes:
    return b"".join(_encoder.encode(RecordBody.of(listed.record)) + b"\n" for listed in found)


def _csv_rows(rows: list[list[object]]) -> bytes:
    """RFC 4180 lines (CRLF; a field with a comma, quote or line break quoted), UTF-8."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


def _csv(found: list[Listed]) -> bytes:
    return _csv_rows(
        [
            ["" if value is None else value for value in row.values()]
            for row in msgspec.to_builtins([RecordBody.of(listed.record) for listed in found])
        ]
    )


async def _stream(
    request: web.Request,
    kind: str,
    found: list[Listed],
    after: Callable[[Position], Awaitable[list[Listed]]],
    correlation_id: str,
) -> web.StreamResponse:
    """Every record from ``found`` on, ``after`` reading the next page, written as it is read."""
    content_type = f"{CSV}; charset=utf-8" if kind == CSV else NDJSON
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "X-Request-ID": correlation_id}
    )
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    render = _csv if kind == CSV else _ndjson
    try:
        if kind == CSV:
            await response.write(_csv_rows([list(COLUMNS)]))
        while found:
            await response.write(render(found))
            if len(found) < STREAM_PAGE:
                break
            found = await after(found[-1].position)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left: nothing more to send
    except LedgerError as exc:
        # The status is sent: the client must see the stream cut short, not ended.
        log.error(
            "listing stream cut short",
            extra={**error_fields(exc), "http.request.id": correlation_id},
        )
        if request.transport is not None:
            request.transport.abort()
    return response
