"""The highest reservation mark in the service's logs, for choosing N in a restore.

    journalctl -u tracking -o cat --since DATE | python -m allocator.marks

Reads log lines on stdin and prints the highest mark any of them records, as an exact
integer: the allocator's ``reserved`` events, ``--raise-reserved-to``'s lines, and the mark an
allocator started from. Lines that are not our JSON (systemd's own, a crash dump) are skipped
and counted, never the end of the input, as they were for a ``jq`` pipeline; and jq 1.6 rounds
integers above 2**53. Exits 1, printing nothing on stdout, when no line records a mark.
See docs/operations.md, "Choosing N".
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterable
from typing import TextIO

# Each message that records a mark, and the field that holds it.
MARK_FIELDS = {
    "reserved": "tracking.reserved",
    "reservation mark raised": "tracking.reserved",
    "reservation mark already high enough": "tracking.reserved",
    "allocator started": "tracking.next",
}


def highest_mark(lines: Iterable[str]) -> tuple[int | None, dict[str, int]]:
    """The highest mark in ``lines`` (None if there is none), and what was read."""
    seen = {"lines": 0, "not_json": 0, "marks": 0}
    highest = None
    for line in lines:
        seen["lines"] += 1
        try:
            event = json.loads(line)
        except ValueError:
            seen["not_json"] += 1
            continue
        if not isinstance(event, dict):
            seen["not_json"] += 1
            continue
        message = event.get("message")
        field = MARK_FIELDS.get(message) if isinstance(message, str) else None
        mark = event.get(field) if field else None
        # bool is an int too; a mark never is one.
        if isinstance(mark, int) and not isinstance(mark, bool):
            seen["marks"] += 1
            highest = mark if highest is None else max(highest, mark)
    return highest, seen


def main(
    stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr
) -> int:
    highest, seen = highest_mark(stdin)
    summary = (
        f"{seen['lines']} lines read, {seen['not_json']} of them not JSON, "
        f"{seen['marks']} with a mark"
    )
    if highest is None:
        print(f"no reservation mark found ({summary}): check the unit and --since", file=stderr)
        return 1
    print(highest, file=stdout)
    print(summary, file=stderr)
    return 0


if __name__ == "__main__":
    # A journal may hold bytes that are not UTF-8: such a line is just one that is not JSON.
    sys.exit(main(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")))
