"""Shipping labels over HTTP, drawn from the ledger's records (labels/ draws them).

- ``GET /tracking-numbers/{number}/label``: one label as PDF, PNG, SVG or ZPL.
- ``GET /labels`` (the listing's filters) and ``POST /labels`` (a list of numbers): up to 1,000
  labels in one PDF (a page each) or one ZPL stream, written as they are drawn.
- ``label=`` on the issuing route: the new number's label in the answer (``labelled_body``).

A label carries the customer's name: the admin token is needed, as for records. With the ledger
off there is no record to draw from: a 404 that says so. Drawing runs in the worker's one label
thread (``LABEL_DRAWER``), so the event loop goes on serving while a label is drawn, and a flood
of labels takes at most one thread's share of the worker.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal, TypeVar

import msgspec
from aiohttp import web

from allocator.errors import AllocatorError
from labels.formats import MEDIA_TYPES, WRITERS, PdfWriter, zpl
from labels.label import Content, Page, page
from ledger.errors import LedgerError
from ledger.records import Record
from service import errors, s10
from service.admin import records_refusal
from service.keys import CLIENT, CONFIG, LABEL_DRAWER
from service.listing import pages, permutation_key
from service.listing_query import validate as validate_filters
from service.numbers import parse, permutation, serial_limit
from service.observe import observed
from service.params import Invalid, TrackingRequest, split_query
from service.records import read_record
from service.verify import malformed, problems
from service.verify_s10 import s10_record

LABEL_ROUTE = "/tracking-numbers/{number}/label"
LABELS_ROUTE = "/labels"
LEDGER_OFF = "Labels are drawn from the ledger's records, and the ledger is off (ledger = false)"
NO_RECORD = "No record of this number: it was not issued here, or its record is gone"
NO_RECORDS = "No record of these numbers: they were not issued here, or their records are gone"
MAX_LABELS = 1000
T = TypeVar("T")


class LabelQuery(msgspec.Struct, frozen=True):
    format: Literal["pdf", "png", "svg", "zpl"] = "pdf"
    size: Literal["4x6", "a6"] = "4x6"
    dpi: Literal["203", "300"] = "203"


class ManyQuery(LabelQuery, frozen=True):
    format: Literal["pdf", "zpl"] = "pdf"  # type: ignore[assignment]


RULES = {
    "format": "must be pdf, png, svg or zpl",
    "size": "must be 4x6 (inches) or a6",
    "dpi": "must be 203 or 300, the printer's dots per inch",
}
MANY_RULES = {**RULES, "format": "must be pdf or zpl: one document holds every label"}
LABEL_FIELDS = tuple(RULES)

Number = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Numbers(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body of ``POST /labels``."""

    numbers: Annotated[list[Number], msgspec.Meta(min_length=1, max_length=MAX_LABELS)]


NUMBERS_RULE = f'must be a JSON object {{"numbers": [...]}} of 1 to {MAX_LABELS} numbers'


def validate(raw_query: str, kind: type[LabelQuery] = LabelQuery) -> LabelQuery | Invalid:
    """The label's parameters, or every bad one (each given once, as on the issuing route)."""
    rules = MANY_RULES if kind is ManyQuery else RULES
    values, found = split_query(raw_query, None, LABEL_FIELDS)
    for name, value in values.items():
        try:
            msgspec.convert({name: value}, kind)
        except msgspec.ValidationError:
            found[name] = [rules[name]]
    return Invalid(found) if found else msgspec.convert(values, kind)


def issued_on(issued_at_ns: int) -> str:
    """The date of issue a label shows: UTC's."""
    return datetime.datetime.fromtimestamp(issued_at_ns // 10**9, datetime.UTC).date().isoformat()


def content_of(record: Record) -> Content:
    return Content(
        record.number,
        record.origin,
        record.destination,
        record.weight,
        record.customer_name,
        record.customer_slug,
        issued_on(record.issued_at_ns),
    )


async def drawn(app: web.Application, work: Callable[[], T]) -> T:
    """``work`` done in the worker's label thread."""
    return await asyncio.get_running_loop().run_in_executor(app[LABEL_DRAWER], work)


async def label_drawer(app: web.Application) -> AsyncIterator[None]:
    """The worker's one thread that draws labels, for the app's ``cleanup_ctx``."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="labels") as pool:
        app[LABEL_DRAWER] = pool
        yield


async def record_of(app: web.Application, number: str) -> Record | None:
    """The ledger's record of ``number`` when this service issued it; raises AllocatorError or
    LedgerError when the allocator or the ledger cannot be asked."""
    if malformed(number):
        return None
    client = app[CLIENT]
    key = await permutation_key(client)
    if len(number) == s10.NUMBER_LENGTH:
        return await s10_record(app, key, number)
    assert client.scheme is not None  # it comes with the key
    if problems(number, serial_limit(client.scheme)):
        return None
    counter = permutation(key, client.scheme).invert(parse(number).serial)
    found = await read_record(app, key, counter)
    return found if found is not None and found.number == number else None


def _typed(number: str) -> str:
    return number.upper() if number.isascii() else number


def _refusal(request: web.Request, correlation_id: str) -> web.StreamResponse | None:
    """The admin token's refusal, or the ledger's being off; None when a label may be drawn."""
    if (refused := records_refusal(request, correlation_id)) is not None:
        return refused
    if not request.app[CONFIG].ledger:
        return errors.json_error(404, LEDGER_OFF, correlation_id)
    return None


@observed()
async def one_label(request: web.Request, correlation_id: str) -> web.StreamResponse:
    if (refused := _refusal(request, correlation_id)) is not None:
        return refused
    query = validate(request.rel_url.raw_query_string)
    if isinstance(query, Invalid):
        return errors.invalid_parameters(query.problems, correlation_id)
    app = request.app
    number = _typed(request.match_info["number"])
    try:
        record = await record_of(app, number)
    except AllocatorError:
        return errors.unavailable(correlation_id)
    except LedgerError:
        return errors.ledger_unreadable(correlation_id)
    if record is None:
        return errors.json_error(404, NO_RECORD, correlation_id)
    content = content_of(record)
    write = WRITERS[query.format]
    body = await drawn(app, lambda: write(page(content, query.size, int(query.dpi))))
    return web.Response(
        body=body,
        headers={
            "Content-Type": MEDIA_TYPES[query.format],
            "Content-Disposition": f'inline; filename="{number}.{query.format}"',
            "X-Request-ID": correlation_id,
        },
    )


@observed()
async def listed_labels(request: web.Request, correlation_id: str) -> web.StreamResponse:
    """The labels of the newest records that match the listing's filters (``limit``, at most
    1,000, is how many; 1,000 by default)."""
    if (refused := _refusal(request, correlation_id)) is not None:
        return refused
    url = request.rel_url
    query = validate(url.raw_query_string, ManyQuery)
    filters = validate_filters(url.raw_query_string, url.query)
    found = {}
    for bad in (query, filters):
        if isinstance(bad, Invalid):
            found.update(bad.problems)
    if found:
        return errors.invalid_parameters(found, correlation_id)
    assert not isinstance(query, Invalid)
    assert not isinstance(filters, Invalid)
    limit = MAX_LABELS if filters.limit is None else int(filters.limit)
    try:
        async with pages(request.app) as read_page:
            records = [listed.record for listed in await read_page(filters.filters(), None, limit)]
    except LedgerError:
        return errors.ledger_unreadable(correlation_id)
    return await _stream(request, query, records, correlation_id)


@observed()
async def posted_labels(request: web.Request, correlation_id: str) -> web.StreamResponse:
    """The labels of the numbers in the body, in its order; a 404 names those without a record."""
    if (refused := _refusal(request, correlation_id)) is not None:
        return refused
    query = validate(request.rel_url.raw_query_string, ManyQuery)
    problems_found = {} if not isinstance(query, Invalid) else dict(query.problems)
    try:
        numbers = msgspec.json.decode(await request.read(), type=Numbers).numbers
    except msgspec.DecodeError:
        problems_found["numbers"] = [NUMBERS_RULE]
    if problems_found:
        return errors.invalid_parameters(problems_found, correlation_id)
    assert not isinstance(query, Invalid)
    app = request.app
    records, missing = [], []
    try:
        for number in numbers:
            record = await record_of(app, _typed(number))
            if record is None:
                missing.append(number)
            else:
                records.append(record)
    except AllocatorError:
        return errors.unavailable(correlation_id)
    except LedgerError:
        return errors.ledger_unreadable(correlation_id)
    if missing:
        return errors.json_error(404, NO_RECORDS, correlation_id, details={"numbers": missing})
    return await _stream(request, query, records, correlation_id)


async def _stream(
    request: web.Request, query: LabelQuery, records: list[Record], correlation_id: str
) -> web.StreamResponse:
    """One document of every record's label, each written as soon as it is drawn."""
    app = request.app
    response = web.StreamResponse(
        headers={
            "Content-Type": MEDIA_TYPES[query.format],
            "Content-Disposition": f'inline; filename="labels.{query.format}"',
            "X-Request-ID": correlation_id,
        }
    )
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    size, dpi = query.size, int(query.dpi)
    try:
        if query.format == "pdf":
            writer = PdfWriter()
            await response.write(writer.start())
            draw: Callable[[Page], bytes] = writer.page
        else:
            draw = zpl
        for record in records:
            content = content_of(record)
            await response.write(await drawn(app, lambda c=content: draw(page(c, size, dpi))))
        if query.format == "pdf":
            await response.write(writer.end())
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client left: nothing more to send
    return response


class EncodedLabel(msgspec.Struct):
    """A label in the issuing route's answer."""

    media_type: str
    data: str  # base64


async def labelled_body(
    app: web.Application, query: TrackingRequest, body: bytes, numbers: list[str], issued_at_ns: int
) -> bytes:
    """The issuing route's answer ``body`` with the number's ``label``, when it issued one
    number. A batch's labels are ``POST /labels``'s: up to 1,000 labels inside a JSON answer
    would hold the route, and the worker's label thread, for seconds."""
    assert query.label is not None
    if len(numbers) > 1:
        return body
    content = Content(
        numbers[0],
        query.origin_country_id,
        query.destination_country_id,
        query.weight,
        query.customer_name,
        query.customer_slug,
        issued_on(issued_at_ns),
    )
    write = WRITERS[query.label]
    document = await drawn(app, lambda: write(page(content)))
    answer = msgspec.json.decode(body)
    answer["label"] = EncodedLabel(MEDIA_TYPES[query.label], base64.b64encode(document).decode())
    return msgspec.json.encode(answer)
