#!/usr/bin/env python3
"""Every journal command of docs/operations.md, run inside .ci/systemd.sh's container on the
real journal, once the load phases are over and the service is stopped: the journal then holds
systemd's own lines (Starting, Started, Reloading, Stopping, …) between the service's JSON.

    python3 .ci/systemd_journal.py --stored N --status-reserved N -- nsenter -t PID -a env -i …

The words after ``--`` run a command inside the container. For each command of the guide:

- as the guide spells it, it exits 0, and prints something unless it only selects (``select(``);
  ``-f`` is left out (it would follow the journal forever);
- what reads journalctl's output prints the same on the real journal as on its JSON lines alone
  (``grep -v '^{'`` prints exactly the other lines), so no line that is not JSON ends or
  changes the output;
- ``python -m allocator.marks`` prints the highest ``tracking.reserved``/``tracking.next`` any
  line holds (read here with ``json``, not with allocator.marks), and that is at least the
  mark the store holds after the stop (``--stored``) and ``reserved`` of /allocator/status
  before it (``--status-reserved``). It is not equal to the stored mark: a clean stop gives the
  unleased tail back (allocator/actor.py, ``stop``).

Prints what each command returned; exits 1 if any check fails. Standard library only: the
host's ``python3`` runs it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.system.guide_commands import journal_commands, split

FOLLOW = {"-f", "--follow"}
MARK_FIELDS = ("tracking.reserved", "tracking.next")
# systemd's own lines that a real journal of the load phases holds (systemd 252, Debian 12).
SYSTEMD_LINES = ("Starting tracking.service", "Started tracking.service", "Stopping tracking")


def json_object(line: str) -> dict[str, object] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def highest_logged_mark(lines: list[str]) -> int:
    """The oracle for allocator.marks: every integer mark field of every JSON line."""
    highest = 0
    for line in lines:
        event = json_object(line) or {}
        for field in MARK_FIELDS:
            mark = event.get(field)
            if isinstance(mark, int) and not isinstance(mark, bool):
                highest = max(highest, mark)
    return highest


def show(title: str, result: subprocess.CompletedProcess[str]) -> None:
    lines = result.stdout.splitlines()
    print(f"\n$ {title}\n  exit {result.returncode}, {len(lines)} lines")
    shown = lines if len(lines) <= 6 else [*lines[:4], "…", *lines[-2:]]
    for line in shown:
        print(f"  | {line[:160]}")
    for line in result.stderr.splitlines()[-3:]:
        print(f"  stderr: {line[:160]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", type=int, required=True)
    parser.add_argument("--status-reserved", type=int, required=True)
    parser.add_argument("inside", nargs="+", help="runs its arguments in the container")
    args = parser.parse_args()

    def inside(command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*args.inside, "bash", "-o", "pipefail", "-c", command], input=stdin,
            capture_output=True, text=True, errors="replace", timeout=120, check=False,
        )  # fmt: skip

    began = time.monotonic()
    failures = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            failures.append(what)
            print(f"  FAILED: {what}")

    commands = journal_commands()
    check(len(commands) >= 5, f"only {len(commands)} journal commands found in the guide")
    whole = inside("journalctl -u tracking -o cat").stdout.splitlines()
    for prefix in SYSTEMD_LINES:
        check(any(line.startswith(prefix) for line in whole), f"no {prefix!r} line in the journal")
    for command in commands:
        journalctl, reader = split(command)
        journalctl = shlex.join(word for word in shlex.split(journalctl) if word not in FOLLOW)
        result = inside(f"{journalctl} | {reader}")
        show(f"{journalctl} | {reader}", result)
        check(result.returncode == 0, f"{command}: exit {result.returncode}")
        check(bool(result.stdout) or "select(" in reader, f"{command}: printed nothing")

        journal = inside(journalctl).stdout
        lines = journal.splitlines()
        mixed = inside(reader, journal)
        if reader == "grep -v '^{'":  # the complement: the lines that are not JSON
            shown = mixed.stdout.splitlines()
            check(shown == [line for line in lines if not line.startswith("{")], "not the rest")
            continue
        own = "".join(f"{line}\n" for line in lines if json_object(line) is not None)
        alone = inside(reader, own)
        check(alone.returncode == mixed.returncode == 0, f"{reader}: exit status on the journal")
        check(mixed.stdout == alone.stdout, f"{reader}: other output among lines not JSON")
        if "allocator.marks" in reader:
            highest = highest_logged_mark(lines)
            printed = int(result.stdout) if result.stdout.strip().isdigit() else -1
            print(
                f"  highest mark logged {highest}, printed {printed}, stored after the stop "
                f"{args.stored}, /allocator/status reserved before it {args.status_reserved}"
            )
            check(printed == highest, f"allocator.marks printed {printed}, not {highest}")
            check(printed >= args.stored, "allocator.marks is below the stored mark")
            check(printed >= args.status_reserved, "allocator.marks is below the status's mark")
    print(
        f"\n{len(commands)} journal commands of the guide, {len(failures)} failed checks, "
        f"{time.monotonic() - began:.1f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
