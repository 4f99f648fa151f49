"""The commands docs/operations.md gives, as the guide spells them: for reading the journal,
and the shell blocks of its procedures (the backup, the restore).

Shared by tests/system/test_operations_guide.py, which runs the journal commands on a
journal-like stream, .ci/systemd_journal.py, which runs them on a real systemd's journal, and
.ci/systemd.sh, which runs the backup and the restore on a real systemd. Standard library only,
so that the host's ``python3`` runs it in CI:

    python3 tests/system/guide_commands.py                    # every journal command, one a line
    python3 tests/system/guide_commands.py "### Taking a backup"   # that section's shell block
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def journal_commands(guide: Path = GUIDE) -> list[str]:
    """Each ``journalctl -u tracking -o cat … | …`` command of the guide, on one line."""
    text = re.sub(r"\\\n\s*", " ", guide.read_text())  # join continued lines
    commands = []
    for match in re.finditer(r"journalctl -u tracking -o cat[^|`\n]*\|[^`\n]+", text):
        commands.append(re.sub(r"\s+#\s.*$", "", match.group(0)).strip())  # a trailing comment
    return commands


def split(command: str) -> tuple[str, str]:
    """``(the journalctl part, what reads its output)``: the first ``|`` is journalctl's."""
    journalctl, _, reader = command.partition("|")
    return journalctl.strip(), reader.strip()


def sh_block(heading: str, guide: Path = GUIDE) -> str:
    """The first ``sh`` block of the section ``heading`` (a whole line, ``### …``)."""
    text = guide.read_text()
    start = text.index(f"\n{heading}\n")
    block = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M).search(text, start)
    if block is None:
        raise ValueError(f"no sh block after {heading!r}")
    return block.group(1)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(sh_block(sys.argv[1]), end="")
    else:
        print(*journal_commands(), sep="\n")
