"""A label's content laid out on a page of printer dots: everything but the bars as one one-bit
image (so any script is drawn the same in every format), and the bars as whole dots."""

from __future__ import annotations

import functools
from typing import NamedTuple

import pycountry
from PIL import Image, ImageDraw

from labels import text
from labels.barcode import QUIET_MODULES, Bar, bars, module_dots, modules, total_modules

# Page sizes in inches: a carrier's 4x6 label, and A6 (105 x 148 mm).
SIZES = {"4x6": (4.0, 6.0), "a6": (105 / 25.4, 148 / 25.4)}
DPIS = (203, 300)
MARGIN_IN = 0.15
# UPU asks for at least 9 mm, 12.5 recommended; carriers print about an inch.
BAR_HEIGHT_IN = 1.0


class Content(NamedTuple):
    """What a label shows. ``number`` may be any printable ASCII text (S10 numbers too)."""

    number: str
    origin: str  # ISO 3166-1 alpha-2
    destination: str
    weight: str  # kg
    customer_name: str
    customer_slug: str
    issued_on: str  # the date of issue, YYYY-MM-DD (UTC)


class Page(NamedTuple):
    """A label ready to be written in any format: sizes in dots at ``dpi``."""

    number: str
    dpi: int
    width: int
    height: int
    text: Image.Image  # one-bit, 0 is black: everything but the bars
    bars: list[Bar]  # x from the page's left edge
    bar_top: int
    bar_height: int
    module: int  # dots a module
    symbol: tuple[int, int]  # the symbol's left and right edges, quiet zones included


@functools.cache
def country_name(code: str) -> str:
    """The short English name of a country (``Korea, Republic of`` is ``South Korea``)."""
    country = pycountry.countries.get(alpha_2=code)
    if country is None:
        return ""
    return getattr(country, "common_name", None) or country.name


def _points(size: float, dpi: int) -> int:
    """A font size in points, in dots."""
    return round(size * dpi / 72)


def page(content: Content, size: str = "4x6", dpi: int = 203) -> Page:
    """``content`` laid out on a label of ``size`` at ``dpi``; ValueError when the number is
    too long for a barcode of UPU's module widths on it."""
    width_in, height_in = SIZES[size]
    width, height = round(width_in * dpi), round(height_in * dpi)
    margin = round(MARGIN_IN * dpi)
    room = width - 2 * margin
    widths = modules(content.number)
    module = module_dots(widths, dpi, room)
    image = Image.new("1", (width, height), 1)
    y = margin

    def write(words: str, points: float, *, centred: bool = False) -> None:
        nonlocal y
        size_px = _points(points, dpi)
        box = (room, round(size_px * 1.45))
        image.paste(text.line(words, size_px, box, centred=centred), (margin, y))
        y += box[1]

    def rule() -> None:
        nonlocal y
        y += dpi // 20
        ImageDraw.Draw(image).rectangle((margin, y, width - margin - 1, y + dpi // 100), fill=0)
        y += dpi // 20

    write(f"FROM  {content.origin}  {country_name(content.origin)}", 12)
    write(f"TO  {content.destination}  {country_name(content.destination)}", 20)
    write(f"Weight {content.weight} kg      Issued {content.issued_on}", 11)
    rule()
    write("Customer", 8)
    # A long name gets a smaller size before it loses its end to an ellipsis.
    name_px = _points(16, dpi)
    if text.width(content.customer_name, name_px) > room:
        write(content.customer_name, 12)
        y += round(_points(16, dpi) * 1.45) - round(_points(12, dpi) * 1.45)
    else:
        write(content.customer_name, 16)
    write(content.customer_slug, 10)
    rule()
    y += dpi // 10
    symbol_width = total_modules(widths) * module
    left = margin + (room - symbol_width) // 2
    bar_top, bar_height = y, round(BAR_HEIGHT_IN * dpi)
    y += bar_height + dpi // 20
    write(content.number, 14, centred=True)
    return Page(
        content.number,
        dpi,
        width,
        height,
        image,
        [bar._replace(x=bar.x + left) for bar in bars(widths, module)],
        bar_top,
        bar_height,
        module,
        (left, left + symbol_width),
    )


def raster(label: Page) -> Image.Image:
    """The whole label as a one-bit image: the text, and the bars on their dots."""
    image = label.text.copy()
    draw = ImageDraw.Draw(image)
    bottom = label.bar_top + label.bar_height - 1
    for bar in label.bars:
        draw.rectangle((bar.x, label.bar_top, bar.x + bar.width - 1, bottom), fill=0)
    return image


__all__ = ["DPIS", "QUIET_MODULES", "SIZES", "Content", "Page", "page", "raster"]
