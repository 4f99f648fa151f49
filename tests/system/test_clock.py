"""Clock changes have no effect on numbers: they are a pure function of (key, counter, route).

Two services start from copies of one store (same key, same mark). One runs on the real clock.
The other runs under libfaketime, whose wall clock the test moves between batches of requests,
20 years back, a century ahead, a day back: an NTP step, a bad RTC, a VM restored from a
snapshot. Both answer the same requests, one at a time on one worker, with the same numbers.
(The monotonic clock is left alone, as the kernel does when the wall clock is set.)
"""

from __future__ import annotations

import asyncio
import datetime
import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system.conftest import REPO, Service, unavailable_here

# Wall-clock offsets, in libfaketime's syntax, and the years they take the clock to.
JUMPS = [("-7300d", -20), ("+36500d", 100), ("-1d", 0), ("+0", 0)]
PER_JUMP = 150
FLAGS = ("--reserve-step", "1000", "--no-access-log")


@pytest.fixture
def libfaketime() -> str:
    # The multi-threaded build: the allocator's SQLite calls run on a thread of their own.
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        unavailable_here("libfaketime is not installed", "bash .ci/faketime.sh")
    return found[0]


async def numbers_and_years(service: Service, count: int) -> tuple[list[str], list[int]]:
    """``count`` requests one after the other: the numbers, and the years they were issued in
    (``created_at`` of the answer is the service's wall clock)."""
    numbers, years = [], []
    async with aiohttp.ClientSession(service.url) as session:
        for _ in range(count):
            async with session.get("/next-tracking-number", params=CANONICAL_QUERY) as response:
                assert response.status == 200, await response.text()
                body = json.loads(await response.read())
            numbers.append(body["tracking_number"])
            years.append(datetime.datetime.fromisoformat(body["created_at"]).year)
    return numbers, years


def test_wall_clock_jumps_change_no_number(short_tmp: Path, libfaketime: str) -> None:
    base, real_dir, shifted_dir = (short_tmp / name for name in ("base", "real", "shifted"))
    # A store with a key and a mark of its own, then two identical copies of it.
    subprocess.run(
        [sys.executable, "run.py", "--config", "/dev/null", "--state-dir", str(base),
         "--init-store", "--raise-reserved-to", "123456789"],
        cwd=REPO, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for copy in (real_dir, shifted_dir):
        copy.mkdir(mode=0o700)  # the service refuses a state directory others may enter
        for file in base.glob("tracking.sqlite3*"):
            shutil.copy2(file, copy / file.name)

    clock = short_tmp / "faketime"
    clock.write_text(JUMPS[0][0] + "\n")
    shifted = Service(shifted_dir, 1, *FLAGS)
    shifted.env = {
        "LD_PRELOAD": libfaketime,
        "FAKETIME_TIMESTAMP_FILE": str(clock),
        "FAKETIME_NO_CACHE": "1",  # read the file at every call: the jumps take effect at once
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    real = Service(real_dir, 1, *FLAGS)
    this_year = datetime.datetime.now(datetime.UTC).year
    shifted_numbers: list[str] = []
    try:
        shifted.start()
        for offset, years in JUMPS:
            clock.write_text(offset + "\n")
            numbers, issued_in = asyncio.run(numbers_and_years(shifted, PER_JUMP))
            # The jump really reached the service's clock...
            assert {year - this_year for year in issued_in} <= {years - 1, years, years + 1}
            shifted_numbers += numbers
        assert shifted.stop() == 0
        real.start()
        real_numbers, _ = asyncio.run(numbers_and_years(real, len(JUMPS) * PER_JUMP))
        assert real.stop() == 0
    finally:
        shifted.kill()
        real.kill()

    # ...and changed no number.
    assert shifted_numbers == real_numbers
    assert len(set(real_numbers)) == len(real_numbers)
