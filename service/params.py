"""The query of ``GET /next-tracking-number``: parsing and validation.

The rules live in the annotated fields of ``TrackingRequest``, and for a customer name that is
not ASCII, in ``_readable``: which characters are unassigned, format or private-use is
Unicode's table (``unicodedata``), which a pattern could only spell out as hundreds of ranges,
checked one by one (docs/performance.md has the cost). A valid query is checked by one
``msgspec.convert`` call. When that fails, each field is checked again on its own (beside
known-good values for the others) so that every bad field is reported, not just the first.

Equal values are made equal strings, so that the idempotency fingerprint of two equal requests
is the same: country codes upper case, UUIDs lower case, names trimmed, weights without
leading zeros or trailing decimal zeros (``000001.500`` is ``1.5``).
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple
from urllib.parse import unquote_to_bytes

import msgspec
from multidict import MultiMapping
from yarl import URL

from service.countries import COUNTRY_CODES

# msgspec patterns are searched, not matched: every one is anchored with ^ and \Z (not $, which
# would also match before a trailing newline). Character classes are spelled out because \d
# matches every Unicode digit.
# All lower case ("my") is accepted and upper-cased (``normalise``); mixed case is not.
Country = Literal[tuple(COUNTRY_CODES)]  # type: ignore[valid-type]
Weight = Annotated[
    str,
    # A non-zero digit somewhere, 1-6 integer digits, optionally 1-3 decimals.
    msgspec.Meta(pattern=r"^(?=[0-9.]*[1-9])[0-9]{1,6}(?:\.[0-9]{1,3})?\Z"),
]
# A calendar date, as a pattern: the check runs inside msgspec's conversion, with no Python
# call per request. The calendar is RFC 3339's proleptic Gregorian one, whose year 0000 is a
# leap year: February 29th in years divisible by 4 but not by 100, or by 400.
_DATE = (
    r"(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
    r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
    r"|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)-02-29)"
)
Timestamp = Annotated[
    str,
    msgspec.Meta(
        pattern=rf"^{_DATE}[Tt]"
        r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
        r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\Z"
    ),
]
Uuid = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\Z"
    ),
]
CustomerName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f-\x9f]*\Z")
]
Slug = Annotated[str, msgspec.Meta(max_length=255, pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*\Z")]
MAX_COUNT = 1000
Count = Annotated[str, msgspec.Meta(pattern=r"^(?:[1-9][0-9]{0,2}|1000)\Z")]
# Which numbers: absent, ours; "s10", UPU S10 numbers of the series ``service_indicator`` and
# the origin country (service/s10.py).
Scheme = Literal["s10"]
# Two letters; whether the operator issues them is the S10 issuer's to say (s10_indicators).
ServiceIndicator = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}\Z")]


class TrackingRequest(msgspec.Struct, frozen=True):
    origin_country_id: Country
    destination_country_id: Country
    weight: Weight
    created_at: Timestamp
    customer_id: Uuid
    customer_name: CustomerName
    customer_slug: Slug
    # Optional: how many numbers to issue at once. Absent, one, and the answer's shape is the
    # single number's.
    count: Count | None = None
    # Optional: the new number's label in the answer (service/labels.py), in this format.
    label: Literal["pdf", "png", "zpl"] | None = None
    scheme: Scheme | None = None
    service_indicator: ServiceIndicator | None = None

    @property
    def how_many(self) -> int:
        """How many numbers the request asks for."""
        return 1 if self.count is None else int(self.count)


FIELDS = tuple(field.name for field in msgspec.structs.fields(TrackingRequest))
REQUIRED = tuple(field.name for field in msgspec.structs.fields(TrackingRequest) if field.required)

# What a client is told about a field that breaks its rule.
RULES = {
    "origin_country_id": "must be an assigned ISO 3166-1 alpha-2 country code, such as MY",
    "destination_country_id": "must be an assigned ISO 3166-1 alpha-2 country code, such as ID",
    "weight": "must be a weight in kilograms greater than 0 in decimal notation, with at most "
    "6 integer digits and 3 decimal places, such as 1.234",
    "created_at": "must be an RFC 3339 date-time with a UTC offset (Z or ±hh:mm), such as "
    "2018-11-20T19:29:32+08:00",
    "customer_id": "must be a UUID, such as de619854-b59b-425e-9db4-943979e1bd49",
    "customer_name": "must be 1 to 255 characters after trimming, with a visible one, and "
    "without control, format (other than ZWJ and ZWNJ), private-use, unassigned or "
    "non-character code points",
    "customer_slug": "must be kebab case (a-z and 0-9 in words joined by single hyphens), "
    "at most 255 characters, such as redbox-logistics",
    "count": f"must be a whole number from 1 to {MAX_COUNT}, such as 20",
    "label": "must be pdf, png or zpl",
    "scheme": "must be s10 (UPU S10 numbers), or absent for this service's own numbers",
    "service_indicator": "must be a UPU S10 service indicator of two letters, such as RR, and "
    "is given with scheme=s10 only",
}
# The S10 request's rules that span fields, checked once both fields are valid on their own.
S10_INDICATOR_MISSING = "is required with scheme=s10"
S10_INDICATOR_ALONE = "is given with scheme=s10 only"
MISSING = "is required"
REPEATED = "must be given only once"
BAD_ENCODING = "is not valid percent-encoded UTF-8"

# The canonical request. Every field is checked on its own beside these values.
EXAMPLE = {
    "origin_country_id": "MY",
    "destination_country_id": "ID",
    "weight": "1.234",
    "created_at": "2018-11-20T19:29:32+08:00",
    "customer_id": "de619854-b59b-425e-9db4-943979e1bd49",
    "customer_name": "RedBox Logistics",
    "customer_slug": "redbox-logistics",
}

Errors = dict[str, list[str]]


class Invalid(NamedTuple):
    """What ``validate`` returns for a query it refuses: every bad or missing field, with what
    is wrong with it (a 400's ``details``). A valid query is returned as itself, unwrapped."""

    problems: Errors


# What trimming removes from names: Unicode's spaces, but not the whitespace that is also a
# control character (tab, newline, U+0085...), which the name rule must get to see and reject.
_SPACES = (
    " \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# The format characters a name may hold: the zero-width non-joiner and joiner, which Persian,
# Indic scripts and emoji sequences need. Every other one (U+200B, U+FEFF, the bidirectional
# overrides such as U+202E...) is invisible or reorders what a reader sees.
JOINERS = frozenset("\u200c\u200d")
# Letters and symbols that show nothing: the Hangul fillers and the blank Braille pattern.
BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unquote(text: str) -> str:
    """Strict form decoding: raises ValueError on a stray % or bytes that are not UTF-8."""
    if _BAD_PERCENT.search(text):
        raise ValueError("invalid percent-encoding")
    return unquote_to_bytes(text.replace("+", " ")).decode()


def _strictly(raw: str, field: str) -> str:
    """The value of ``field`` in ``raw``, decoded strictly (raises ValueError)."""
    for pair in raw.split("&"):
        name, _, value = pair.partition("=")
        with contextlib.suppress(ValueError):
            if _unquote(name) == field:
                return _unquote(value)
    raise ValueError("not found")  # cannot happen: yarl found it


def split_query(
    raw: str, parsed: MultiMapping[str] | None = None, fields: Sequence[str] = FIELDS
) -> tuple[dict[str, str], Errors]:
    """Decode ``fields`` from a raw query string; unknown parameters are ignored.

    yarl's C parser does the work (``parsed`` is its result when the caller has it already).
    It is lenient where we are strict: it keeps a stray % and turns bytes that are not UTF-8
    into U+FFFD. A decoded value with either in it (rare: an encoded "%" or "\ufffd" looks the
    same) is decoded again, strictly, from the raw query.
    """
    query = URL.build(query_string=raw, encoded=True).query if parsed is None else parsed
    values: dict[str, str] = {}
    errors: Errors = {}
    for name in fields:
        found = query.getall(name, None)
        if found is None:
            continue
        if len(found) > 1:
            errors[name] = [REPEATED]
            continue
        value = found[0]
        if "%" in value or "\ufffd" in value:
            try:
                value = _strictly(raw, name)
            except ValueError:
                errors[name] = [BAD_ENCODING]
                continue
        values[name] = value
    return values, errors


def _readable(name: str) -> bool:
    """Whether a (trimmed) name has a visible character and none that is a control, a format
    character other than the joiners, private-use, a surrogate, unassigned or a non-character
    (Unicode's categories Cc, Cf, Co, Cs and Cn, as this Python's ``unicodedata`` has them)."""
    visible = False
    for char in name:
        category = unicodedata.category(char)
        if category[0] == "C":
            if char not in JOINERS:
                return False
        elif category[0] in "LNPS" and char not in BLANKS:
            visible = True  # not a space (Z) or a mark (M) alone
    return visible


def normalise(values: dict[str, str], errors: Errors) -> None:
    """Make equal values equal strings (the module's docstring says which); a customer name
    that shows nothing goes from ``values`` to ``errors``."""
    for name in ("origin_country_id", "destination_country_id", "service_indicator"):
        code = values.get(name)
        # ASCII only: "\u0131".upper() (dotless i) is "I", and must not make a country.
        if code is not None and code.isascii() and code.islower():
            values[name] = code.upper()
    customer_id = values.get("customer_id")
    if customer_id is not None and customer_id.isascii():  # "\u212a".lower() is "k"
        values["customer_id"] = customer_id.lower()
    name = values.get("customer_name")
    if name is not None:
        name = values["customer_name"] = name.strip(_SPACES)
        # An ASCII name that passes its pattern (no controls) has a visible character.
        if not name.isascii() and not _readable(name):
            errors["customer_name"] = [RULES["customer_name"]]
            del values["customer_name"]


def _canonical_weight(weight: str) -> str:
    """A valid weight without leading zeros or trailing decimal zeros: ``000001.500`` → ``1.5``."""
    whole, _, fraction = weight.partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    return f"{whole}.{fraction}" if fraction else whole


def validate(raw_query: str, parsed: MultiMapping[str] | None = None) -> TrackingRequest | Invalid:
    """The validated request, or ``Invalid``: every bad or missing field."""
    values, errors = split_query(raw_query, parsed)
    normalise(values, errors)
    # values holds only our fields: with fewer than the required ones, one is missing. (With as
    # many or more, the conversion finds any missing one, whatever optional fields there are.)
    if not errors and len(values) >= len(REQUIRED):
        try:
            request = msgspec.convert(values, TrackingRequest)
        except msgspec.ValidationError:
            pass
        else:
            # After the check: the digit limits are on the weight as sent.
            weight = request.weight
            if weight[0] == "0" or weight[-1] == "0":  # the cheap test: "10" passes it too
                request = msgspec.structs.replace(request, weight=_canonical_weight(weight))
            if (request.scheme is None) == (request.service_indicator is None):
                return request
            # An S10 request without its indicator, or an indicator without the scheme: below.
    for name in FIELDS:
        if name in errors:
            continue
        if name not in values:
            if name in REQUIRED:
                errors[name] = [MISSING]
            continue
        try:
            msgspec.convert({**EXAMPLE, name: values[name]}, TrackingRequest)
        except msgspec.ValidationError:
            errors[name] = [RULES[name]]
    _s10_rules(values, errors)
    return Invalid(errors)


def _s10_rules(values: dict[str, str], errors: Errors) -> None:
    """The rules between the S10 fields: ``scheme=s10`` needs an indicator, and an indicator
    (a valid one: a bad one is refused as such already) comes with the scheme only."""
    if "scheme" in values and "service_indicator" not in values:
        errors.setdefault("service_indicator", [S10_INDICATOR_MISSING])
    elif "service_indicator" in values and "scheme" not in values:
        errors.setdefault("service_indicator", [S10_INDICATOR_ALONE])
