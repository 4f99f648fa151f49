"""``python -m allocator.marks``: the highest mark in log lines, whatever else they hold."""

from __future__ import annotations

import io
import json

from allocator import marks


def run(text: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    status = marks.main(io.StringIO(text), stdout, stderr)
    return status, stdout.getvalue(), stderr.getvalue()


def test_the_highest_mark_of_every_kind_of_line_that_records_one() -> None:
    lines = [
        "Started tracking.service - Tracking numbers.",
        json.dumps({"message": "allocator started", "tracking.next": 700}),
        json.dumps({"message": "reserved", "tracking.reserved": 600}),
        "Traceback (most recent call last):",
        json.dumps({"message": "reserved", "tracking.reserved": 2**56 - 1}),  # exact, past 2**53
        json.dumps({"message": "reservation mark raised", "tracking.reserved": 5}),
        json.dumps({"message": "configuration", "tracking.reserved": 2**56}),  # not a mark
    ]
    status, stdout, stderr = run("\n".join(lines) + "\n")
    assert (status, stdout) == (0, f"{2**56 - 1}\n")
    assert stderr == "7 lines read, 2 of them not JSON, 4 with a mark\n"


def test_odd_lines_are_skipped_not_fatal() -> None:
    lines = [
        "[1]",
        "null",
        json.dumps({"message": ["reserved"]}),
        json.dumps({"message": "reserved", "tracking.reserved": True}),
        json.dumps({"message": "reserved", "tracking.reserved": "9"}),
        json.dumps({"message": "reserved", "tracking.reserved": 3}),
    ]
    assert run("\n".join(lines))[:2] == (0, "3\n")


def test_no_mark_is_an_error_and_no_number() -> None:
    status, stdout, stderr = run("Started tracking.service\n" + json.dumps({"message": "x"}))
    assert (status, stdout) == (1, "")
    assert "no reservation mark found" in stderr
