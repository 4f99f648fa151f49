"""Checking a UPU S10 number (13 characters) at ``GET /tracking-numbers/{number}``.

The verdict says whether it is one this operator could issue: two letters, nine digits and two
letters, a service indicator among ``s10_indicators`` (and what UPU gives it to: international,
domestic, reserved or unknown), an assigned ISO 3166-1 country code and the right check digit;
and, as for our own numbers, the one lookalike fix when exactly one makes it valid. Operators
also learn whether it was issued: its serial is turned back into its series' counter with the
series' own order, and the ledger's record of that counter in that series must hold this very
number (with the ledger off, the counter must be below the series' ``next``).
"""

from __future__ import annotations

import functools
from typing import Annotated, Literal, NamedTuple

import msgspec
from aiohttp import web

from allocator.errors import AllocatorError
from allocator.protocol import AllocatorStatus
from allocator.series import s10_series
from config.indicators import IndicatorKind, allowed_indicators, classify
from ledger.errors import LedgerError
from ledger.records import Record
from service import errors
from service.admin import is_operator
from service.countries import COUNTRIES
from service.keys import CLIENT, CONFIG
from service.lookalikes import one_fix
from service.records import RecordBody, read_record, vouch
from service.s10 import SeriesPermutation, check_digit, refusal
from service.server.answers import JsonAnswer

# Where each part of ``SS NNNNNNNN C CC`` is, what it must be made of, and the problem if not.
_SHAPE = (
    (slice(0, 2), str.isalpha, "characters 1 and 2 (the service indicator) must be letters"),
    (slice(2, 10), str.isdigit, "characters 3 to 10 (the serial) must be digits"),
    (slice(10, 11), str.isdigit, "character 11 (the check digit) must be a digit"),
    (slice(11, 13), str.isalpha, "characters 12 and 13 (the country) must be letters"),
)


def _about(text: str) -> msgspec.Meta:
    """What the OpenAPI document says of a field."""
    return msgspec.Meta(description=text)


class S10Verdict(msgspec.Struct, omit_defaults=True):
    """The verdict on a 13-character UPU S10 number."""

    tracking_number: str
    scheme: Annotated[Literal["s10"], _about("Always s10: the verdict on a UPU S10 number")]
    valid: Annotated[bool, _about("Whether it is a number this operator could issue")]
    service_indicator: Annotated[str, _about("Characters 1 and 2, as given")]
    service_indicator_use: Annotated[
        IndicatorKind,
        _about(
            "What UPU S10 gives the indicator to: international, domestic (or bilateral) "
            "use, reserved, or unknown (anything S10 does not define)"
        ),
    ]
    service_indicator_allowed: Annotated[
        bool, _about("Whether this operator issues the indicator: its s10_indicators list it")
    ]
    country: Annotated[str, _about("Characters 12 and 13, as given: the issuer's country")]
    correlation_id: str
    problems: Annotated[list[str], _about("Why it is not valid (empty when it is)")] = (
        msgspec.field(default_factory=list)
    )
    suggestion: Annotated[
        str | None, _about("The one likely typo fix, when it is not valid and there is one")
    ] = None
    issued: Annotated[
        bool | None,
        _about(
            "Operators only: whether this service issued it: its record in the ledger holds "
            "this very number (with the ledger off: its series' counter was handed out past it)"
        ),
    ] = None
    note: Annotated[
        str | None,
        _about("Operators only, when its counter was handed out but no record holds it"),
    ] = None
    record: Annotated[
        RecordBody | None, _about("Clients with the admin token only: its record in the ledger")
    ] = None


class SeriesMark(NamedTuple):
    """What the allocator says of one series: its stored order and size, and its ``next``."""

    order: str
    size: int
    next: int


@functools.cache
def _allowed(listed: tuple[str, ...]) -> frozenset[str]:
    # The configuration was checked at start: this cannot raise.
    return allowed_indicators(listed)


def problems(number: str, listed: tuple[str, ...]) -> list[str]:
    """Why a 13-character ``number`` (letters and digits, upper case) cannot be one this
    operator issues, given its ``s10_indicators``; empty when it is valid."""
    found = [problem for part, made_of, problem in _SHAPE if not made_of(number[part])]
    indicator, serial, check, country = number[:2], number[2:10], number[10], number[11:]
    if indicator.isalpha() and indicator not in _allowed(listed):
        found.append("characters 1 and 2: " + refusal(indicator, listed))
    if country.isalpha() and country not in COUNTRIES:
        found.append("characters 12 and 13 are not an assigned ISO 3166-1 alpha-2 country code")
    if serial.isdigit() and check.isdigit() and check != check_digit(serial):
        found.append("the check digit (character 11) does not match the serial")
    return found


def suggestion(number: str, listed: tuple[str, ...]) -> str | None:
    """The valid number one lookalike swap away (a letter O for a zero, ...), if exactly one."""
    return one_fix(number, lambda candidate: not problems(candidate, listed))


def series_mark(status: AllocatorStatus, indicator: str, country: str) -> SeriesMark | None:
    """The series' mark as the allocator reports it; None when it reports no such series.

    The allocator's named counters report each series in ``status.series`` (``s10:RR:GB``);
    an allocator without them has issued no S10 number, and reports none.
    """
    name = f"s10:{indicator}:{country}"
    for series in getattr(status, "series", ()):
        if series.name == name:
            return SeriesMark(series.order, series.size, series.next)
    return None


def series_counter(key: bytes, number: str, mark: SeriesMark | None) -> int | None:
    """The counter of its series whose serial a valid ``number`` has, in the series' own order;
    None when the store holds no such series or the serial is beyond its size."""
    serial = int(number[2:10])
    if mark is None or serial >= mark.size:
        return None
    return SeriesPermutation(key, number[:2], number[11:], mark.order, mark.size).invert(serial)


async def s10_record(app: web.Application, key: bytes, number: str) -> Record | None:
    """The ledger's record of a 13-character ``number`` when this service issued it (a
    label's, ``service.labels``); raises AllocatorError or LedgerError when the allocator or
    the ledger cannot be asked."""
    if problems(number, app[CONFIG].s10_indicators):
        return None
    status = await app[CLIENT].status()
    indicator, country = number[:2], number[11:]
    counter = series_counter(key, number, series_mark(status.allocator, indicator, country))
    if counter is None:
        return None
    found = await read_record(app, key, counter, s10_series(indicator, country))
    return found if found is not None and found.number == number else None


async def verify_s10(request: web.Request, number: str, correlation_id: str) -> web.Response:
    """The verdict on ``number``, 13 upper-case letters and digits."""
    app = request.app
    listed = app[CONFIG].s10_indicators
    found = problems(number, listed)
    indicator, country = number[:2], number[11:]
    verdict = S10Verdict(
        number,
        "s10",
        not found,
        indicator,
        classify(indicator),
        indicator in _allowed(listed),
        country,
        correlation_id,
        found,
    )
    if found:
        verdict.suggestion = suggestion(number, listed)
    if is_operator(request):
        client = app[CLIENT]
        try:
            status = await client.status()
            # A status answer comes after the key: the series' orders are keyed by the store's.
            assert client.key is not None
            mark = series_mark(status.allocator, indicator, country)
            counter = series_counter(client.key, number, mark) if verdict.valid else None
            if counter is None:  # not a series of this store: never issued
                verdict.issued = False
            else:
                assert mark is not None
                series = s10_series(indicator, country)
                vouched = await vouch(
                    request, client.key, counter, series, number, counter < mark.next, True
                )
                verdict.issued, verdict.note, verdict.record = vouched
        except (AllocatorError, LedgerError):
            return errors.unavailable(correlation_id)
    return JsonAnswer(msgspec.json.encode(verdict), correlation_id)
