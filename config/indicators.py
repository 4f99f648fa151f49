"""UPU S10 service indicators: what each one is for, and which ones ``s10_indicators`` issues.

The setting lists entries of three shapes: an indicator (``RR``), every indicator of a first
letter (``R*``), or a range within one first letter (``QA-QM``). The defaults are those UPU
S10 gives international use; domestic and bilateral ones are issued only when listed; a list
that names a reserved indicator, or anything S10 does not define, is refused at start.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from typing import Literal

IndicatorKind = Literal["international", "domestic", "reserved", "unknown"]

DEFAULT_S10_INDICATORS = ("R*", "E*", "C*", "L*", "V*", "U*", "H*", "M*", "QA-QM")
S10_ORDERS = ("permuted", "sequential")

_ENTRY = re.compile(r"([A-Z])([A-Z])(?:-\1([A-Z]))?|([A-Z])\*")


def _letters(first: str, last_second: str, start_second: str = "A") -> frozenset[str]:
    seconds = string.ascii_uppercase
    return frozenset(first + s for s in seconds[seconds.index(start_second) :] if s <= last_second)


def _whole(letters: str) -> frozenset[str]:
    return frozenset().union(*(_letters(first, "Z") for first in letters))


INTERNATIONAL = _whole("RECLVUHM") | _letters("Q", "M")
DOMESTIC = _letters("A", "Z", "V") | _whole("BDNPZ") | {"GA", "GD"}
RESERVED = _whole("JKSTW")


def classify(indicator: str) -> IndicatorKind:
    """What UPU S10 gives ``indicator`` (two upper-case letters) to; ``unknown`` for anything
    S10 does not define, malformed text included."""
    if indicator in INTERNATIONAL:
        return "international"
    if indicator in DOMESTIC:
        return "domestic"
    if indicator in RESERVED:
        return "reserved"
    return "unknown"


def expand(entry: str) -> list[str]:
    """The indicators one entry of ``s10_indicators`` names, in order (ValueError if malformed)."""
    match = _ENTRY.fullmatch(entry.strip().upper())
    if match is None:
        raise ValueError(
            f"{entry!r} is not an indicator (two letters, like RR), a first letter with a star "
            "(R*) or a range within one first letter (QA-QM)"
        )
    first, second, last, whole = match.groups()
    if whole:
        return sorted(_letters(whole, "Z"))
    if last and last < second:
        raise ValueError(f"the range {entry!r} ends before it starts")
    return sorted(_letters(first, last or second, second))


def allowed_indicators(entries: Iterable[str]) -> frozenset[str]:
    """Every indicator the entries allow; ValueError naming the first entry that lists a
    reserved indicator or one that UPU S10 does not define."""
    allowed: set[str] = set()
    for entry in entries:
        for indicator in expand(entry):
            kind = classify(indicator)
            if kind == "reserved":
                raise ValueError(
                    f"{entry!r} lists {indicator}: indicators beginning with J, K, S, T or W are "
                    "reserved by UPU S10 and are never issued"
                )
            if kind == "unknown":
                raise ValueError(
                    f"{entry!r} lists {indicator}, which is not a UPU S10 service indicator "
                    "(international: R*, E*, C*, L*, V*, U*, H*, M*, QA-QM; domestic or "
                    "bilateral: AV-AZ, B*, D*, GA, GD, N*, P*, Z*)"
                )
            allowed.add(indicator)
    return frozenset(allowed)
