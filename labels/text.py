"""Text on a label, in any script: a font for each character, shaped, and cut to fit.

Pillow draws with FreeType, and shapes with HarfBuzz through libraqm when it has it (the wheels
do), so Arabic joins and Devanagari stacks. A run of characters goes to the first font of
``FONTS`` that has them all (Noto covers nearly every script; DejaVu is the fallback of a
machine without Noto). A line is drawn into an image of its own box, so no glyph, however tall
its stack of marks, can reach outside it: not into the barcode's quiet zone.
"""

from __future__ import annotations

import functools
import glob
import os
import unicodedata
from typing import NamedTuple

from fontTools.ttLib import TTCollection, TTFont
from PIL import Image, ImageDraw, ImageFont

ELLIPSIS = "\u2026"
_NOTO = "/usr/share/fonts/truetype/noto"
_LATIN = f"{_NOTO}/NotoSans-Regular.ttf"
_DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
_CJK = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
# Characters that belong to the run before them, whatever font has them.
_JOINING = frozenset("\u200c\u200d")


@functools.cache
def fonts() -> tuple[str, ...]:
    """Font files on this machine, in the order they are tried: Noto's Latin, Greek and
    Cyrillic, Noto's other scripts, DejaVu, Noto's CJK (the largest, last)."""
    scripts = sorted(
        path
        for path in glob.glob(f"{_NOTO}/NotoSans*-Regular.ttf")
        if path != _LATIN and "Mono" not in path
    )
    return tuple(path for path in (_LATIN, *scripts, _DEJAVU, _CJK) if os.path.exists(path))


@functools.cache
def _characters(path: str) -> frozenset[int]:
    """The code points a font file has glyphs for (its first font, in a collection)."""
    if path.endswith(".ttc"):
        font = TTCollection(path, lazy=True).fonts[0]
    else:
        font = TTFont(path, lazy=True)
    with font:
        return frozenset(font.getBestCmap())


@functools.cache
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size)  # type: ignore[return-value]
    return ImageFont.truetype(path, size)


def _font_for(char: str) -> str | None:
    """The first font that has ``char``; None when none has (Pillow's own font then shows a
    box, and the name still fits)."""
    code = ord(char)
    for path in fonts():
        if code in _characters(path):
            return path
    return fonts()[0] if fonts() else None


class Run(NamedTuple):
    font: str | None
    text: str


def _attached(char: str) -> bool:
    """Whether ``char`` goes with the character before it: a mark, a joiner, a variation
    selector or a space, which every font draws alike."""
    return char in _JOINING or unicodedata.category(char)[0] in "MZ" or char.isspace()


def runs(text: str) -> list[Run]:
    """``text`` split where the font that draws it changes."""
    found: list[Run] = []
    for char in text:
        if found and (_attached(char) or _font_for(char) == found[-1].font):
            found[-1] = Run(found[-1].font, found[-1].text + char)
        else:
            found.append(Run(_font_for(char), char))
    return found


@functools.lru_cache(maxsize=1024)
def width(text: str, size: int) -> float:
    """How wide ``text`` is drawn at ``size`` pixels, in pixels."""
    return sum(_font(run.font, size).getlength(run.text) for run in runs(text))


def _cuts(text: str) -> list[int]:
    """Where ``text`` may be cut: not before a mark, a joiner or a variation selector, nor after
    a joiner, so no character is left without what it joins."""
    return [
        index
        for index in range(1, len(text))
        if not _attached(text[index]) or text[index].isspace()
        if text[index - 1] not in _JOINING
    ]


def fitted(text: str, size: int, room: float) -> str:
    """``text`` if it fits ``room`` pixels at ``size``, else its longest prefix that fits with
    an ellipsis after it."""
    if width(text, size) <= room:
        return text
    cuts = _cuts(text)
    low, high = 0, len(cuts)  # cuts[:low] fit; found by bisection
    while low < high:
        middle = (low + high + 1) // 2
        if width(text[: cuts[middle - 1]].rstrip() + ELLIPSIS, size) <= room:
            low = middle
        else:
            high = middle - 1
    return (text[: cuts[low - 1]].rstrip() if low else "") + ELLIPSIS


# Lines repeat from label to label (a route's countries, a customer's name, "Customer"), and
# drawing one is most of a label's time: about 3 MB of the latest lines are kept.
@functools.lru_cache(maxsize=512)
def line(text: str, size: int, box: tuple[int, int], *, centred: bool = False) -> Image.Image:
    """``text`` drawn black on white in a one-bit image of ``box`` (width, height) pixels, cut
    to fit with an ellipsis. Whatever the glyphs, nothing is drawn outside the box. The image
    is shared: paste it, never draw on it."""
    image = Image.new("1", box, 1)
    text = fitted(text, size, box[0])
    draw = ImageDraw.Draw(image)
    x = (box[0] - width(text, size)) / 2 if centred else 0.0
    for run in runs(text):
        font = _font(run.font, size)
        # Anchored at the baseline, a fifth of the box from its bottom, whatever the font.
        draw.text((x, box[1] * 0.8), run.text, font=font, fill=0, anchor="ls")
        x += font.getlength(run.text)
    return image
