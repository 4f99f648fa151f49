"""process/logs.py on its own: what the application log writes for the records that are
easy to get wrong, each line checked against ecs-logging (tests/ecs_logging.py)."""

import json
import os
import subprocess
import sys
import time
from datetime import datetime

from tests.ecs_logging import nonconforming
from tests.system.conftest import REPO

# Every kind of record a process of ours can produce, in a process configured as ours are.
SCRIPT = """
import logging, warnings
from process import logs
logs.configure("DEBUG")
log = logging.getLogger("probe")
log.debug("plain %s", "args")
log.info("with fields", extra={"tracking.reserved": 5, "event.duration": 12})
log.info({"tracking.mapping": "a dict as the message"})
log.warning("with a stack", stack_info=True)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
warnings.warn("a dependency is deprecated", DeprecationWarning, stacklevel=1)
"""


def test_every_kind_of_record_is_an_ecs_line() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert nonconforming(lines) == []
    records = [json.loads(line) for line in lines]
    assert [r["log.level"] for r in records] == [
        "debug", "info", "info", "warning", "error", "warning",
    ]  # fmt: skip
    assert records[0]["message"] == "plain args"
    failed = records[4]
    assert failed["error.type"] == "ZeroDivisionError"
    assert failed["error.message"] == "division by zero"
    assert failed["error.stack_trace"].startswith("Traceback (most recent call last):")
    assert records[5]["log.logger"] == "py.warnings"
    assert "a dependency is deprecated" in records[5]["message"]


def test_the_timestamp_is_utc_whatever_the_local_time_zone() -> None:
    # Our machines run in UTC, where local time would pass for UTC. Five hours west, no DST
    # (a POSIX rule: no time zone database needed), and the child checks that it took.
    script = "import time\nassert time.localtime().tm_gmtoff == -5 * 3600\n" + SCRIPT
    before = time.time()
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env={**os.environ, "TZ": "EST+5"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    after = time.time()
    for line in result.stdout.splitlines():
        stamp = json.loads(line)["@timestamp"]
        assert stamp.endswith("Z")
        written = datetime.fromisoformat(stamp).timestamp()
        assert int(before * 1000) / 1000 <= written <= after, stamp
