"""docs/operations.md, followed literally: every command it gives for reading the journal.

``journalctl -u tracking -o cat`` prints the service's JSON lines and, between them, lines that
are not JSON: systemd's own, and whatever a crashing process prints. Each ``journalctl … | …``
command is taken from the guide itself (so this fails when the guide drifts) and run on real
``run.py`` output with such lines mixed in. It must print what it prints on the JSON lines
alone. The configuration error is one of those JSON lines. .ci/systemd.sh runs the same
commands (tests/system/guide_commands.py) on a real systemd's journal.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode
from urllib.request import urlopen

import pytest

from tests.conftest import CANONICAL_QUERY
from tests.system import guide_commands
from tests.system.conftest import REPO, Service, running_in_ci, sqlite_state

# What journald adds around and between the service's own lines.
SYSTEMD_LINES = [
    "Starting tracking.service - Tracking numbers...",
    "Started tracking.service - Tracking numbers.",
    "run.py: config file '/etc/tracking/old.toml' does not exist",  # an older release's error
    "Traceback (most recent call last):",
    '  File "/opt/tracking/run.py", line 1, in <module>',
    "[1]",  # JSON, but not a log line
    "tracking.service: Watchdog timeout (limit 30s)!",
    "Stopping tracking.service - Tracking numbers...",
    "tracking.service: Deactivated successfully.",
]


def journal_commands() -> list[str]:
    """What follows ``journalctl -u tracking -o cat … |`` in each command of the guide."""
    return [
        guide_commands.split(command)[1].replace("/opt/tracking/.venv/bin/python", sys.executable)
        for command in guide_commands.journal_commands()
    ]


def run_on(command: str, journal: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        input=journal, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def invalid_configuration() -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "run.py", "--config", "/nonexistent/tracking.toml"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_configuration_error_is_one_json_line_and_exit_status_2() -> None:
    result = invalid_configuration()
    assert result.returncode == 2
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    event = json.loads(line)
    assert event["log.level"] == "error"
    assert event["message"] == "invalid configuration"
    assert event["error.type"] == "ConfigError"
    assert "/nonexistent/tracking.toml" in event["error.message"]


@pytest.fixture(scope="module")
def journals() -> Iterator[tuple[str, str, int]]:
    """The service's own lines alone, the same with systemd-style lines mixed in, and the
    highest mark they record."""
    if shutil.which("jq") is None:
        if running_in_ci():
            pytest.fail("CI is set but jq is missing: .ci/tests.sh installs it", pytrace=False)
        pytest.skip("jq is not installed")
    state_dir = Path(tempfile.mkdtemp(prefix="tn-", dir="/tmp"))  # short: a socket lives here
    # A small step: many reservations, so that there is a highest one to find.
    service = Service(state_dir, 1, "--reserve-step", "100")
    try:
        service.start()
        query = urlencode(CANONICAL_QUERY)
        for _ in range(5):
            with urlopen(f"{service.url}/next-tracking-number?{query}&count=100") as answer:
                assert answer.status == 200
        # An S10 series' reservations too (the restore's per-series command reads them).
        s10 = "scheme=s10&service_indicator=RR&count=100"
        with urlopen(f"{service.url}/next-tracking-number?{query}&{s10}") as answer:
            assert answer.status == 200
        assert service.stop() == 0
    finally:
        service.kill()
    _, stored = sqlite_state(state_dir / "tracking.sqlite3")
    own = [line for line in service.log().splitlines() if line.startswith("{")]
    own += invalid_configuration().stdout.splitlines()
    events = [json.loads(line) for line in own]
    marks = [e["tracking.reserved"] for e in events if e["message"] == "reserved"]
    assert len(marks) >= 5
    # A clean stop gives back what was not leased: the stored mark is at most the highest.
    assert max(marks) >= stored
    # Every one of our lines comes after one that is not JSON.
    mixed = SYSTEMD_LINES[:2]
    plain = itertools.cycle(SYSTEMD_LINES[2:-2])
    for line in own:
        mixed += [next(plain), line]
    mixed += SYSTEMD_LINES[-2:]
    yield "\n".join(own) + "\n", "\n".join(mixed) + "\n", max(marks)
    shutil.rmtree(state_dir, ignore_errors=True)


def test_the_guide_reads_the_journal_with_robust_commands() -> None:
    commands = journal_commands()
    assert len(commands) >= 5, commands
    # The restore's "Choosing N" uses the service's own command, not a pipeline.
    assert any("-m allocator.marks" in command for command in commands), commands


@pytest.mark.parametrize("command", journal_commands())
def test_each_journal_command_of_the_guide_ignores_lines_that_are_not_json(
    command: str, journals: tuple[str, str, int]
) -> None:
    own, mixed, highest = journals
    if command == "grep -v '^{'":  # the complement: the lines that are not JSON
        shown = run_on(command, mixed).stdout.splitlines()
        assert shown == [line for line in mixed.splitlines() if not line.startswith("{")]
        return
    alone = run_on(command, own)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout, "prints nothing even on the service's own lines"
    among = run_on(command, mixed)
    assert among.returncode == 0, among.stderr
    assert among.stdout == alone.stdout
    if "allocator.marks" in command:
        assert among.stdout == f"{highest}\n"
    else:
        assert among.stderr == ""


def test_the_restore_raises_the_mark_as_the_service_with_the_units_properties() -> None:
    """Run as root, run.py refuses the state directory of the unit's dynamic user (mode 0700,
    another owner), so the one step that prevents duplicates would exit 1 (issue 23). The
    guide runs it through systemd-run as that user, with the unit's own state directory,
    environment file and working directory: each property it gives is a line of the unit.
    .ci/systemd.sh runs the whole block on a real systemd."""
    block = re.sub(r"\\\n\s*", " ", guide_commands.sh_block("### Restoring (systemd, SQLite)"))
    unit = (REPO / "config" / "tracking.service").read_text().splitlines()
    (raise_mark,) = [line for line in block.splitlines() if "run.py" in line]
    assert raise_mark.startswith("systemd-run --wait --pipe ")
    assert "--raise-reserved-to" in raise_mark
    properties = re.findall(r"-p (\S+)", raise_mark)
    assert "DynamicUser=yes" in properties
    # User= names the dynamic user that systemd derives from the unit's name.
    assert "User=tracking" in properties
    for needed in (
        "StateDirectory=",
        "StateDirectoryMode=",
        "EnvironmentFile=",
        "WorkingDirectory=",
    ):
        assert any(p.startswith(needed) for p in properties), needed
    for found in properties:
        assert found == "User=tracking" or found in unit, found
