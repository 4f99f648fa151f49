"""The commands docs/operations.md gives for reading the journal, as the guide spells them.

Shared by tests/system/test_operations_guide.py, which runs them on a journal-like stream, and
.ci/systemd_journal.py, which runs them on a real systemd's journal. Standard library only, so
that the host's ``python3`` runs it in CI:

    python3 tests/system/guide_commands.py    # every command, one a line
"""

from __future__ import annotations

import re
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


if __name__ == "__main__":
    print(*journal_commands(), sep="\n")
