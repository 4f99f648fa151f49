"""config/logs.py on its own: what the application log writes for the records that are
easy to get wrong, each line checked against ecs-logging (tests/ecs_logging.py)."""

import json
import subprocess
import sys

from tests.ecs_logging import nonconforming
from tests.system.conftest import REPO

# Every kind of record a process of ours can produce, in a process configured as ours are.
SCRIPT = """
import logging, warnings
from config import logs
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
