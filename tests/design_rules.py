"""DESIGN.md's request rules, written again independently of service/params.py, for testing.

Nothing here reuses the service's regexes or tables: countries come from pycountry, UUIDs from
the standard library's ``uuid``, character classes from ``unicodedata``, and the rest is
spelled out by hand from DESIGN.md's table (and the choices docs/architecture.md records where
DESIGN.md leaves room). Each rule returns True (allowed), False (rejected), or None where the
contract does not say (such values are only checked for "never raises").

The hypothesis strategies build values the rules allow, values they reject, and near misses.
"""

from __future__ import annotations

import calendar
import string
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from urllib.parse import quote, quote_plus

import pycountry
from hypothesis import strategies as st

ASSIGNED = frozenset(country.alpha_2 for country in pycountry.countries)
DIGITS = frozenset("0123456789")
SLUG_CHARACTERS = frozenset(string.ascii_lowercase + string.digits)
# Trimmed from names: Unicode's space separators, line and paragraph separators. Not the
# whitespace that is also a control character (docs/architecture.md, "Customer names").
TRIMMED_CATEGORIES = frozenset({"Zs", "Zl", "Zp"})

Verdict = bool | None


def country(value: str) -> Verdict:
    """An assigned ISO 3166-1 alpha-2 code; all lower case is accepted too."""
    if value in ASSIGNED:
        return True
    return value.isascii() and value.islower() and value.upper() in ASSIGNED


def weight(value: str) -> Verdict:
    """Kilograms in decimal notation: > 0, at most 6 integer digits and 3 decimals."""
    whole, dot, fraction = value.partition(".")
    if dot and (not whole or not fraction) and set(whole + fraction) <= DIGITS:
        return None  # "1." and ".5": DESIGN.md does not say
    if not (1 <= len(whole) <= 6 and set(whole) <= DIGITS):
        return False
    if dot and not (1 <= len(fraction) <= 3 and set(fraction) <= DIGITS):
        return False
    return Decimal(value) > 0


def _two_digits(text: str, low: int, high: int) -> bool:
    return len(text) == 2 and set(text) <= DIGITS and low <= int(text) <= high


def created_at(value: str) -> Verdict:
    """RFC 3339 section 5.6 date-time, with its offset, checked against the calendar."""
    if len(value) < 20:
        return False
    date, separator, rest = value[:10], value[10], value[11:]
    if separator == " ":
        return None  # RFC 3339 lets applications agree on a space; DESIGN.md does not say
    if separator not in "Tt" or date[4] != "-" or date[7] != "-":
        return False
    year, month, day = date[:4], date[5:7], date[8:10]
    if not (len(year) == 4 and set(year) <= DIGITS and _two_digits(month, 1, 12)):
        return False
    # RFC 3339 appendix C: the Gregorian leap year rule, for every year 0000-9999.
    leap = int(year) % 4 == 0 and (int(year) % 100 != 0 or int(year) % 400 == 0)
    days = 29 if int(month) == 2 and leap else calendar.mdays[int(month)]
    if not _two_digits(day, 1, days):
        return False
    if len(rest) < 9 or rest[2] != ":" or rest[5] != ":":
        return False
    if not (
        _two_digits(rest[:2], 0, 23)
        and _two_digits(rest[3:5], 0, 59)
        # 60: a leap second, which RFC 3339's grammar allows.
        and _two_digits(rest[6:8], 0, 60)
    ):
        return False
    rest = rest[8:]
    if rest.startswith("."):  # a fraction: one digit or more
        count = 1
        while count < len(rest) and rest[count] in DIGITS:
            count += 1
        if count == 1:
            return False
        rest = rest[count:]
    if rest in ("Z", "z"):
        return True
    return (
        len(rest) == 6
        and rest[0] in "+-"
        and rest[3] == ":"
        and _two_digits(rest[1:3], 0, 23)
        and _two_digits(rest[4:6], 0, 59)
    )


def customer_id(value: str) -> Verdict:
    """A UUID in its 8-4-4-4-12 hex form, either case."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    # uuid.UUID also takes braces, urn:uuid:, no hyphens, even underscores between digits:
    # only the canonical form (in either case) is a UUID here.
    return str(parsed) == value.lower() and value.isascii()


def trim(value: str) -> str:
    start, end = 0, len(value)
    while start < end and unicodedata.category(value[start]) in TRIMMED_CATEGORIES:
        start += 1
    while end > start and unicodedata.category(value[end - 1]) in TRIMMED_CATEGORIES:
        end -= 1
    return value[start:end]


# The only format characters (Cf) a name may hold: some scripts need them to write words.
JOINERS = frozenset({"ZERO WIDTH JOINER", "ZERO WIDTH NON-JOINER"})


def _shows_nothing(char: str) -> bool:
    """Spaces, marks, format characters, and the letters and symbols named as blanks."""
    if unicodedata.category(char)[0] in "ZMC":
        return True
    name = unicodedata.name(char, "")
    return (name.startswith(("HANGUL", "HALFWIDTH HANGUL")) and name.endswith(" FILLER")) or (
        name == "BRAILLE PATTERN BLANK"
    )


def customer_name(value: str) -> Verdict:
    """1-255 characters after trimming, any script; no control characters, no format
    characters but ZWJ and ZWNJ, no private-use, unassigned or non-character code points (all
    of Unicode's "other" categories: Cc, Cf, Co, Cn, Cs); not invisible only."""
    trimmed = trim(value)
    return (
        1 <= len(trimmed) <= 255
        and all(
            unicodedata.category(char)[0] != "C" or unicodedata.name(char, "") in JOINERS
            for char in trimmed
        )
        and not all(_shows_nothing(char) for char in trimmed)
    )


def customer_slug(value: str) -> Verdict:
    """Kebab case: words of a-z and 0-9 joined by single hyphens, at most 255 characters."""
    return 1 <= len(value) <= 255 and all(
        word and set(word) <= SLUG_CHARACTERS for word in value.split("-")
    )


def count(value: str) -> Verdict:
    """How many numbers at once (README, optional): a whole number from 1 to 1000."""
    if value[1:2] and value[0] == "0" and set(value) <= DIGITS:
        return None  # leading zeros ("007"): the README does not say
    return value.isascii() and value.isdigit() and 1 <= int(value) <= 1000


def label(value: str) -> Verdict:
    """The new number's label in the answer (README, optional): pdf, png or zpl."""
    return value in ("pdf", "png", "zpl")


def scheme(value: str) -> Verdict:
    """Which numbers (issue 20, optional): s10 for UPU S10 numbers."""
    return value == "s10"


def service_indicator(value: str) -> Verdict:
    """The S10 service indicator (issue 20): two letters, upper or lower case (as countries);
    whether the operator issues it is not the validator's to say."""
    return (
        len(value) == 2
        and value.isascii()
        and value.isalpha()
        and (value.isupper() or value.islower())
    )


def s10_problems(values: Mapping[str, str]) -> dict[str, str]:
    """The rules between the S10 fields (issue 20): an indicator with the scheme only, the
    scheme never without one. Field -> which rule (``params``' message names)."""
    if "scheme" in values and "service_indicator" not in values:
        return {"service_indicator": "S10_INDICATOR_MISSING"}
    if (
        "service_indicator" in values
        and "scheme" not in values
        and service_indicator(values["service_indicator"])
    ):
        return {"service_indicator": "S10_INDICATOR_ALONE"}
    return {}


RULES: dict[str, Callable[[str], Verdict]] = {
    "origin_country_id": country,
    "destination_country_id": country,
    "weight": weight,
    "created_at": created_at,
    "customer_id": customer_id,
    "customer_name": customer_name,
    "customer_slug": customer_slug,
    "count": count,
    "label": label,
    "scheme": scheme,
    "service_indicator": service_indicator,
}
# Fields a request may leave out; every other field of RULES is required.
OPTIONAL = frozenset({"count", "label", "scheme", "service_indicator"})
REQUIRED = tuple(name for name in RULES if name not in OPTIONAL)


def normalised(field: str, value: str) -> str:
    """What a valid request carries after validation: countries upper case, names trimmed,
    UUIDs lower case, weights as the shortest decimal of their value (``000001.500`` is
    ``1.5``), so that equal requests are equal."""
    if field.endswith("_country_id") or field == "service_indicator":
        return value.upper()
    if field == "customer_name":
        return trim(value)
    if field == "customer_id":
        return str(uuid.UUID(value))
    if field == "weight":
        return format(Decimal(value).normalize(), "f")
    return value


# --- strategies ---------------------------------------------------------------------------------

NOT_ASSIGNED = sorted(
    a + b for a in string.ascii_uppercase for b in string.ascii_uppercase if a + b not in ASSIGNED
)


def _mixed_case(code: str) -> str:
    return code[0].lower() + code[1]


countries = st.one_of(
    st.sampled_from(sorted(ASSIGNED)),
    st.sampled_from(sorted(ASSIGNED)).map(str.lower),
    st.sampled_from(sorted(ASSIGNED)).map(_mixed_case),
    st.sampled_from(NOT_ASSIGNED),
    st.sampled_from(
        ["", "M", "MYS", "my ", " MY", "M\u0130", "\u0131d", "\uff2d\uff39", "M1", "12"]
    ),
    st.text(max_size=4),
)

_digits = st.text(alphabet="0123456789", min_size=1, max_size=8)
weights = st.one_of(
    st.builds(lambda w, f: w + ("." + f if f else ""), _digits, _digits | st.just("")),
    st.builds(lambda w, f: w + "." + f, _digits, _digits),
    st.sampled_from(
        [
            "0",
            "0.0",
            "0.000",
            "-1",
            "+1",
            "1e3",
            "1E3",
            "NaN",
            "nan",
            "inf",
            "Infinity",
            " 1",
            "1 ",
            "1,5",
            "1.",
            ".5",
            "0x10",
            "1_000",
            "\u0661\u0662",
            "\uff11",
            "1.2.3",
            "999999.999",
            "1000000",
            "0.0001",
            "000001.5",
        ]
    ),
    st.text(max_size=10),
)


# Years around the leap-year rule's edges come up far more often than at random.
_years = st.integers(0, 9999) | st.sampled_from([0, 1, 4, 100, 400, 1900, 2000, 2100, 2400, 9999])


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    year = draw(_years)
    month = draw(st.integers(0, 13))
    day = draw(st.integers(0, 32))
    hour, minute, second = (draw(st.integers(0, n)) for n in (25, 61, 61))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", max_size=12).map(".".__add__)))
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "z", "", "+0800", "GMT", "+8:00"]),
            st.builds(
                lambda s, h, m: f"{s}{h:02d}:{m:02d}",
                st.sampled_from("+-"),
                st.integers(0, 25),
                st.integers(0, 61),
            ),
        )
    )
    separator = draw(st.sampled_from("TTTt "))
    return (
        f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}"
        f"{fraction}{offset}"
    )


@st.composite
def valid_timestamps(draw: st.DrawFn) -> str:
    """Only date-times the rules allow."""
    year = draw(_years)
    month = draw(st.integers(1, 12))
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    day = draw(st.integers(1, 29 if month == 2 and leap else calendar.mdays[month]))
    hour, minute, second = (draw(st.integers(0, n)) for n in (23, 59, 60))
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=12)))
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "z"]),
            st.builds(
                lambda s, h, m: f"{s}{h:02d}:{m:02d}",
                st.sampled_from("+-"),
                st.integers(0, 23),
                st.integers(0, 59),
            ),
        )
    )
    separator = draw(st.sampled_from("Tt"))
    fraction = "." + fraction if fraction else ""
    return (
        f"{year:04d}-{month:02d}-{day:02d}{separator}{hour:02d}:{minute:02d}:{second:02d}"
        f"{fraction}{offset}"
    )


created_ats = st.one_of(timestamps(), valid_timestamps(), st.text(max_size=30))

uuids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: "{" + str(u) + "}"),
    st.uuids().map(lambda u: u.urn),
    st.uuids().map(lambda u: str(u)[:-1]),
    st.uuids().map(lambda u: str(u) + "0"),
    st.uuids().map(lambda u: str(u)[:-1] + "g"),
    st.uuids().map(lambda u: str(u)[:-1] + "_"),
    st.uuids().map(lambda u: str(u)[:-1] + "\u0661"),
    st.text(max_size=40),
)

# Any character but a surrogate (which UTF-8 cannot carry): every script, spaces, controls.
_any_character = st.characters(exclude_categories=("Cs",))
_not_control = st.characters(exclude_categories=("Cs", "Cc"))
_spaces = st.text(st.sampled_from(" \u00a0\u2003\u3000\u2028"), max_size=3)
_padded = st.builds(
    lambda a, b, c: a + b + c, _spaces, st.text(_not_control, min_size=1, max_size=260), _spaces
)
# What a name must not be made of, or hold: invisible and format characters, the joiners,
# marks, blank letters, private-use, unassigned and non-character code points.
_tricky = st.sampled_from(
    "\u200b\ufeff\u200c\u200d\u202e\u2066\u00ad\u0301\u3164\u115f\u2800\u3000"
    "\ue000\U000f0000\u0378\ufdd0\uffff\U0001fffe\U000e0041"
)
names = st.one_of(
    _padded,
    st.text(_any_character, max_size=20),
    st.text(_not_control, min_size=250, max_size=260),
    st.sampled_from(["", " ", "\u3000", "a\tb", "\tName", "Name\n", "a\u0085b", "a\x7fb"]),
    st.text(_tricky, min_size=1, max_size=4),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=4), _tricky, st.text(max_size=4)),
)

_word = st.text(alphabet=sorted(SLUG_CHARACTERS), min_size=1, max_size=12)
slugs = st.one_of(
    st.lists(_word, min_size=1, max_size=8).map("-".join),
    st.lists(_word, min_size=20, max_size=30).map("-".join),  # often past 255 characters
    st.sampled_from(["", "-", "a-", "-a", "a--b", "A", "redbox_logistics", "caf\u00e9", "a b"]),
    st.text(max_size=20),
)

counts = st.one_of(
    st.integers(1, 1000).map(str),
    st.integers(-5, 2000).map(str),
    st.sampled_from(["", "0", "1001", "1.0", "1e3", "+1", " 1", "\u0661", "\uff11", "10_0"]),
    st.text(max_size=5),
)

VALUES: dict[str, st.SearchStrategy[str]] = {
    "origin_country_id": countries,
    "destination_country_id": countries,
    "weight": weights,
    "created_at": created_ats,
    "customer_id": uuids,
    "customer_name": names,
    "customer_slug": slugs,
    "count": counts,
    "label": st.one_of(
        st.sampled_from(["pdf", "png", "zpl", "PDF", "svg", "", " pdf"]), st.text(max_size=4)
    ),
    "scheme": st.sampled_from(["s10", "S10", "s1", "", "upu", "s10 "]) | st.text(max_size=4),
    "service_indicator": st.sampled_from(["RR", "rr", "Rr", "R", "RRR", "R1", "", "\u0131i"])
    | st.text(max_size=3),
}

# Values the rules allow, built from the rules' own terms.
VALID_VALUES: dict[str, st.SearchStrategy[str]] = {
    "origin_country_id": st.sampled_from(sorted(ASSIGNED))
    | st.sampled_from(sorted(ASSIGNED)).map(str.lower),
    "destination_country_id": st.sampled_from(sorted(ASSIGNED)),
    "weight": st.builds(
        lambda w, f: w + ("." + f if f else ""),
        st.text("0123456789", min_size=1, max_size=6),
        st.text("0123456789", max_size=3),
    ).filter(lambda value: Decimal(value) > 0),
    "created_at": valid_timestamps(),
    "customer_id": st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()),
    "customer_name": st.builds(
        lambda a, b, c: a + b + c,
        _spaces,
        st.text(_not_control, min_size=1, max_size=255).filter(
            lambda text: trim(text) == text and customer_name(text) is True
        ),
        _spaces,
    ),
    "customer_slug": st.lists(_word, min_size=1, max_size=10)
    .map("-".join)
    .filter(lambda slug: len(slug) <= 255),
    "count": st.integers(1, 1000).map(str),
    "label": st.sampled_from(["pdf", "png", "zpl"]),
    "scheme": st.just("s10"),
    "service_indicator": st.text(string.ascii_uppercase, min_size=2, max_size=2)
    | st.text(string.ascii_lowercase, min_size=2, max_size=2),
}


def encode(value: str, plus: bool) -> str:
    """Percent-encoding of a query value: every reserved byte escaped, space as + or %20."""
    return quote_plus(value, safe="") if plus else quote(value, safe="")
