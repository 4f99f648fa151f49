"""Typo fixes for numbers people type or read aloud: characters they mistake for one another.

A fix is suggested only when exactly one swap of lookalike characters makes the number valid:
any character swapped for any other would almost always offer one valid fix per position,
which helps nobody. Our numbers and UPU S10 numbers share it (``service.verify``,
``service.verify_s10``).
"""

from __future__ import annotations

from collections.abc import Callable

LOOKALIKES = ("0O", "0Q", "0D", "1I", "1L", "2Z", "5S", "6G", "8B", "UV")
_SWAPS = {
    char: "".join(pair.replace(char, "") for pair in LOOKALIKES if char in pair)
    for pair in LOOKALIKES
    for char in pair
}


def one_fix(number: str, valid: Callable[[str], bool]) -> str | None:
    """The one number that a single lookalike swap in ``number`` makes ``valid``, if exactly
    one swap does."""
    swapped = {
        number[:position] + swap + number[position + 1 :]
        for position, char in enumerate(number)
        for swap in _SWAPS.get(char, "")
    }
    fixes = [candidate for candidate in swapped if valid(candidate)]
    return fixes[0] if len(fixes) == 1 else None
