"""Listing the ledger's records: ``GET /tracking-numbers?customer_id=…&cursor=…``.

Records are personal data: the admin token is always needed, loopback alone is not enough
(``admin.records_refusal``). The filters are validated with the issuing route's rules, every
bad one listed in one 400 (service/listing_query.py). A JSON answer is one page, newest first,
with the next page's cursor in the body and in a ``Link: <…>; rel="next"`` header (RFC 8288).
With ``Accept: application/x-ndjson`` or ``text/csv`` the answer streams every matching
record, read a page at a time (``ledger.listing.STREAM_PAGE``), so memory stays constant.
Records are read where a lookup reads them (``service.records.shared_ledger``): with a PostgreSQL
store from the shared ledger (``ledger/pg_listing.py``), every host's records, through a
connection of the request's own; else from this host's file (``ledger/listing.py``), through a
read-only connection of the request's own, in a thread.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from aiohttp import web

from allocator.client import AllocatorClient
from allocator.errors import AllocatorError
from ledger import listing, pg_listing
from ledger.errors import LedgerError
from ledger.listing import STREAM_PAGE, Filters, Listed, Position
from process.logs import error_fields
from service import errors
from service.admin import records_refusal
from service.cursor import Cursors
from service.keys import CLIENT, CONFIG, SHARED_READS
from service.listing_query import DEFAULT_LIMIT, FIELDS, RULES, ListingQuery, validate
from service.observe import observed
from service.params import Invalid
from service.records import RecordBody
from service.server.answers import JsonAnswer

log = logging.getLogger("service.listing")

ROUTE = "/tracking-numbers"
NDJSON = "application/x-ndjson"
CSV = "text/csv"
JSON = "application/json"
LEDGER_OFF = "The ledger is off (ledger = false): this service keeps no records to list"


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
    if isinstance(query, Invalid):
        return errors.invalid_parameters(query.problems, correlation_id)
    filters = query.filters()
    try:
        cursors = Cursors(await permutation_key(app[CLIENT]))
    except AllocatorError:
        return errors.unavailable(correlation_id)
    after = None
    if query.cursor is not None:
        after = cursors.open(query.cursor, filters)
        if after is None:
            return errors.invalid_parameters({"cursor": [RULES["cursor"]]}, correlation_id)
    kind = media_type(request.headers.get("Accept", ""))
    try:
        async with pages(app) as read_page:
            if kind == JSON:
                limit = DEFAULT_LIMIT if query.limit is None else int(query.limit)
                # One more than the page: whether there is a next page, without a query more.
                found = await read_page(filters, after, limit + 1)
                return _page(query, found[:limit], len(found) > limit, cursors, correlation_id)
            # The first page before the answer starts: a ledger that cannot be read is a 503.
            first = await read_page(filters, after, STREAM_PAGE)
            return await _stream(
                request,
                kind,
                first,
                lambda position: read_page(filters, position, STREAM_PAGE),
                correlation_id,
            )
    except LedgerError:
        return errors.ledger_unreadable(correlation_id)


PageReader = Callable[[Filters, Position | None, int], Awaitable[list[Listed]]]


@contextlib.asynccontextmanager
async def pages(app: web.Application) -> AsyncIterator[PageReader]:
    """Reads pages of the ledger that a lookup reads: the shared one with a PostgreSQL store,
    else this host's file; LedgerError when it cannot be read."""
    shared = app[SHARED_READS]
    if shared is not None:
        async with pg_listing.reading(shared) as db:
            yield functools.partial(pg_listing.read_page, db)
    else:
        async with listing.reading(app[CONFIG].ledger_path) as db:
            yield functools.partial(listing.read_page, db)


async def permutation_key(client: AllocatorClient) -> bytes:
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
