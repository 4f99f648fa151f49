"""Test-only fault injection, for tests/system/test_faults.py; production never sets it.

TRACKING_FAULT=POINT:FILE makes the allocator SIGKILL itself at POINT of a SQLite reservation
("reserve-before-commit" or "reserve-after-commit", that is before granting from it), once
each time the test creates FILE. Unset, it costs one string comparison per reservation.
"""

from __future__ import annotations

import os
import signal

_POINT, _, _TRIGGER = os.environ.get("TRACKING_FAULT", "").partition(":")


def fault(point: str) -> None:
    if point != _POINT:
        return
    try:
        os.unlink(_TRIGGER)  # armed once: only one process gets to remove it
    except FileNotFoundError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
