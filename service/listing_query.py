"""The query of ``GET /tracking-numbers``: its filters, validated with the issuing route's
rules (service/params.py), every bad one listed, and its times read to the nanosecond."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from multidict import MultiMapping

from ledger.listing import Filters
from service.cursor import LENGTH as CURSOR_LENGTH
from service.params import RULES as ISSUING_RULES
from service.params import (
    Country,
    Invalid,
    Slug,
    Timestamp,
    Uuid,
    normalise,
    split_query,
)

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


def validate(raw_query: str, parsed: MultiMapping[str] | None = None) -> ListingQuery | Invalid:
    """The valid query, or ``Invalid``: every bad field with what is wrong with it."""
    values, found = split_query(raw_query, parsed, FIELDS)
    normalise(values, found)
    for name, value in values.items():
        try:
            msgspec.convert({name: value}, ListingQuery)
        except msgspec.ValidationError:
            found[name] = [RULES[name]]
    if found:
        return Invalid(found)
    query = msgspec.convert(values, ListingQuery)
    window = query.filters()
    if None not in (window.issued_from_ns, window.issued_to_ns) and (
        window.issued_to_ns <= window.issued_from_ns  # type: ignore[operator]
    ):
        return Invalid({"issued_to": [LATER]})
    return query
