"""Real decoders and rasterisers for the label tests: zxing-cpp (a PyPI wheel), and Debian's
``pdftoppm`` (poppler-utils) and ``rsvg-convert`` (librsvg2-bin), which .ci/labels.sh installs."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import tempfile

import zxingcpp
from PIL import Image

PRINTER_DPI = 203


def decoded(image: Image.Image) -> list[str]:
    """The text of every Code 128 symbol zxing-cpp finds in ``image``."""
    found = zxingcpp.read_barcodes(image.convert("L"), formats=zxingcpp.BarcodeFormat.Code128)
    return [barcode.text for barcode in found]


def element_widths(image: Image.Image) -> list[int]:
    """The widths in pixels of the bars and spaces of the one Code 128 symbol zxing-cpp finds,
    first bar to last, across the middle of its bars."""
    grey = image.convert("L")
    (found,) = zxingcpp.read_barcodes(grey, formats=zxingcpp.BarcodeFormat.Code128)
    corners = found.position
    row = (corners.top_left.y + corners.bottom_left.y) // 2
    pixels = [grey.getpixel((x, row)) < 128 for x in range(grey.width)]
    first, last = pixels.index(True, corners.top_left.x - 2), corners.top_right.x + 2
    while not pixels[last]:
        last -= 1
    return [len(list(run)) for _, run in itertools.groupby(pixels[first : last + 1])]


def png_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def pdf_pages(data: bytes, dpi: int = PRINTER_DPI) -> list[Image.Image]:
    """Every page of a PDF, rasterised by pdftoppm at ``dpi``, in order."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "labels.pdf")
        with open(path, "wb") as file:
            file.write(data)
        subprocess.run(
            # Grey PGM: the same pixels as -png, without the time PNG's compression takes.
            ["pdftoppm", "-r", str(dpi), "-gray", path, os.path.join(folder, "page")],
            check=True,
        )
        names = sorted(
            (name for name in os.listdir(folder) if name.endswith(".pgm")),
            key=lambda name: int(name.rsplit("-", 1)[1].split(".")[0]),
        )
        pages = []
        for name in names:
            with Image.open(os.path.join(folder, name)) as page:
                pages.append(page.copy())
        return pages


def svg_image(data: bytes, dpi: int = PRINTER_DPI) -> Image.Image:
    """An SVG rasterised by rsvg-convert at ``dpi``, on white."""
    done = subprocess.run(
        ["rsvg-convert", "--dpi-x", str(dpi), "--dpi-y", str(dpi), "--background-color", "white"],
        input=data,
        capture_output=True,
        check=True,
    )
    return png_image(done.stdout)
