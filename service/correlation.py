"""Correlation ids: the client's own when it is a sane token, else a fresh UUID."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Mapping

_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
HEADERS = ("X-Request-ID", "X-Correlation-ID")


class CorrelationIds:
    """Fresh ids are version-8 UUIDs (RFC 9562): 74 random bits drawn once per process, then
    a 48-bit sequence. Unique like uuid4, at the cost of an increment and a format.

    Create one per process (after fork), never at import time.
    """

    def __init__(self) -> None:
        bits = secrets.randbits(80)
        time_low, time_mid = bits >> 48, (bits >> 32) & 0xFFFF
        version_and_rand = 0x8000 | ((bits >> 16) & 0x0FFF)
        variant_and_rand = 0x8000 | (bits & 0x3FFF)
        self._prefix = (
            f"{time_low:08x}-{time_mid:04x}-{version_and_rand:04x}-{variant_and_rand:04x}-"
        )
        self._sequence = itertools.count()

    def new(self) -> str:
        return f"{self._prefix}{next(self._sequence) & 0xFFFFFFFFFFFF:012x}"

    def of(self, headers: Mapping[str, str]) -> str:
        """The request's correlation id: the client's own, else a fresh one."""
        return from_headers(headers) or self.new()


def from_headers(headers: Mapping[str, str]) -> str | None:
    """The client's X-Request-ID or X-Correlation-ID, if it is a sane token."""
    for name in HEADERS:
        value = headers.get(name)
        if value is not None and _SANE.fullmatch(value):
            return value
    return None
