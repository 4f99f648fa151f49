"""Code 128 as bars on a printer's dots.

reportlab's ``Code128`` chooses the code sets and the check symbol (docs/architecture.md says
why that library); we only lay its modules on whole dots, so no bar is rounded away.
"""

from __future__ import annotations

from typing import NamedTuple

from reportlab.graphics.barcode.code128 import Code128

# Code 128 asks for a quiet zone of at least 10 modules on each side of the symbol.
QUIET_MODULES = 10
# UPU S10's module width (0.25-0.51 mm, 0.33 recommended), in whole dots: 3 dots at 203 dpi
# are 0.375 mm, 4 at 300 dpi 0.339 mm. 2 dots at 203 dpi (0.2502 mm) is the floor, for text
# too long to fit otherwise.
MODULE_DOTS = {203: 3, 300: 4}
MIN_MODULE_MM = 0.25


class Bar(NamedTuple):
    """One bar: its left edge and width, in dots from the symbol's left quiet zone's edge."""

    x: int
    width: int


def modules(text: str) -> list[int]:
    """The widths in modules of the symbol's elements, bar first, bars and spaces in turn."""
    if not text.isascii() or not text.isprintable():
        raise ValueError("Code 128 here carries printable ASCII only")
    symbol = Code128(text)
    symbol.validate()
    symbol.encode()
    # Upper case letters are bars, lower case spaces; A is one module wide, B two...
    return [ord(element.upper()) - ord("A") + 1 for element in symbol.decompose()]


def total_modules(widths: list[int]) -> int:
    """The symbol's width in modules, quiet zones included."""
    return sum(widths) + 2 * QUIET_MODULES


def bars(widths: list[int], module: int) -> list[Bar]:
    """The bars of a symbol of ``widths`` with ``module`` dots a module, after the left quiet
    zone."""
    found = []
    x = QUIET_MODULES * module
    for index, width in enumerate(widths):
        if index % 2 == 0:
            found.append(Bar(x, width * module))
        x += width * module
    return found


def module_dots(widths: list[int], dpi: int, room: int) -> int:
    """The widest module of UPU's range that fits the symbol in ``room`` dots; ValueError when
    not even the narrowest does."""
    module = MODULE_DOTS[dpi]
    floor = max(1, -(-MIN_MODULE_MM * dpi // 25.4))  # whole dots, rounded up
    while module > floor and total_modules(widths) * module > room:
        module -= 1
    if total_modules(widths) * module > room:
        raise ValueError("the text is too long for a barcode on this label")
    return int(module)
