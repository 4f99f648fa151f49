"""A laid-out label written as PNG, SVG, ZPL or PDF (several labels: one PDF page or one ZPL
label each, written as they come, in constant memory)."""

from __future__ import annotations

import array
import base64
import binascii
import io
import zlib
from collections.abc import Iterable, Iterator

from labels.label import Page, raster

MEDIA_TYPES = {
    "pdf": "application/pdf",
    "png": "image/png",
    "svg": "image/svg+xml",
    "zpl": "application/zpl",  # no registered type; x-zpl and this are both seen
}
_INVERT = bytes(255 - value for value in range(256))


def _png(label: Page, *, bars: bool = True) -> bytes:
    image = raster(label) if bars else label.text
    out = io.BytesIO()
    # One-bit pixels compress well at once; a higher level costs time and saves little.
    image.save(out, "PNG", compress_level=1, dpi=(label.dpi, label.dpi))
    return out.getvalue()


def png(label: Page) -> bytes:
    return _png(label)


def svg(label: Page) -> bytes:
    """The text as an embedded one-bit PNG (the fonts that fitted it travel with it), and each
    bar a rectangle of whole dots in a view box of dots."""
    image = base64.b64encode(_png(label, bars=False)).decode()
    top, height = label.bar_top, label.bar_height
    path = "".join(f"M{bar.x} {top}h{bar.width}v{height}h-{bar.width}z" for bar in label.bars)
    width_in, height_in = label.width / label.dpi, label.height / label.dpi
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
        f' width="{width_in:.4f}in" height="{height_in:.4f}in"'
        f' viewBox="0 0 {label.width} {label.height}">\n'
        f"<title>{label.number}</title>\n"
        f'<image x="0" y="0" width="{label.width}" height="{label.height}"'
        f' image-rendering="pixelated" xlink:href="data:image/png;base64,{image}"/>\n'
        f'<path fill="#000" shape-rendering="crispEdges" d="{path}"/>\n'
        "</svg>\n"
    ).encode()


def zpl(label: Page) -> bytes:
    """A ZPL II label: the text as one compressed graphic field, and the number as the
    printer's own Code 128 (``^BC``, automatic subsets) on the same dots as our bars."""
    row_bytes = (label.width + 7) // 8
    bits = label.text.tobytes().translate(_INVERT)  # ZPL prints the 1 bits
    data = base64.b64encode(zlib.compress(bits, 1)).decode()
    crc = binascii.crc_hqx(data.encode(), 0)
    first_bar = label.bars[0].x
    return (
        "^XA\n"
        f"^PW{label.width}\n"
        f"^LL{label.height}\n"
        "^LH0,0\n"
        f"^FO0,0^GFA,{len(bits)},{len(bits)},{row_bytes},:Z64:{data}:{crc:04X}^FS\n"
        f"^FO{first_bar},{label.bar_top}^BY{label.module},3,{label.bar_height}"
        f"^BCN,{label.bar_height},N,N,N,A^FD{label.number}^FS\n"
        "^XZ\n"
    ).encode()


def zpl_stream(labels: Iterable[Page]) -> Iterator[bytes]:
    """Several labels, one after the other, each a complete ``^XA`` ... ``^XZ``."""
    for label in labels:
        yield zpl(label)


class PdfWriter:
    """A PDF written a page at a time: only the objects' offsets (8 bytes each) are kept until
    the cross-reference table, which PDF wants at the end (20 bytes an object).

    Each page is the text as a one-bit image mask and each bar a filled rectangle, in a
    coordinate system of the label's dots (so bars stay on whole dots when printed at its
    resolution).
    """

    def __init__(self) -> None:
        # Object 0 is free, 1 the catalog, 2 the pages; then three objects a page, the first
        # of them the page itself.
        self._offsets = array.array("Q", [0, 0, 0])
        self._position = 0
        self._pages = 0

    def _object(self, number: int, body: bytes) -> bytes:
        self._offsets[number] = self._position
        chunk = b"%d 0 obj\n" % number + body + b"\nendobj\n"
        self._position += len(chunk)
        return chunk

    def _new(self) -> int:
        self._offsets.append(0)
        return len(self._offsets) - 1

    def start(self) -> bytes:
        head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"
        self._position = len(head)
        return head + self._object(1, b"<< /Type /Catalog /Pages 2 0 R >>")

    def page(self, label: Page) -> bytes:
        page, contents, mask = self._new(), self._new(), self._new()
        self._pages += 1
        scale = 72 / label.dpi
        width, height = label.width * scale, label.height * scale
        bottom = label.height - label.bar_top - label.bar_height
        bars = b"".join(
            b"%d %d %d %d re\n" % (bar.x, bottom, bar.width, label.bar_height) for bar in label.bars
        )
        stream = (
            b"%.6f 0 0 %.6f 0 0 cm\n0 g\n" % (scale, scale)
            + b"q %d 0 0 %d 0 0 cm /T Do Q\n" % (label.width, label.height)
            + bars
            + b"f\n"
        )
        compressed = zlib.compress(stream)
        bits = zlib.compress(label.text.tobytes(), 1)
        return b"".join(
            (
                self._object(
                    page,
                    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.4f %.4f]"
                    b" /Resources << /XObject << /T %d 0 R >> >> /Contents %d 0 R >>"
                    % (width, height, mask, contents),
                ),
                self._object(
                    contents,
                    b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(compressed)
                    + compressed
                    + b"\nendstream",
                ),
                self._object(
                    mask,
                    b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ImageMask true"
                    b" /BitsPerComponent 1 /Filter /FlateDecode /Length %d >>\nstream\n"
                    % (label.width, label.height, len(bits))
                    + bits
                    + b"\nendstream",
                ),
            )
        )

    def end(self) -> bytes:
        kids = b" ".join(b"%d 0 R" % (3 + 3 * index) for index in range(self._pages))
        pages = self._object(2, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, self._pages))
        xref = self._position
        entries = b"".join(b"%010d 00000 n \n" % offset for offset in self._offsets[1:])
        return (
            pages
            + b"xref\n0 %d\n0000000000 65535 f \n" % len(self._offsets)
            + entries
            + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(self._offsets), xref)
        )


def pdf(label: Page) -> bytes:
    writer = PdfWriter()
    return writer.start() + writer.page(label) + writer.end()


WRITERS = {"pdf": pdf, "png": png, "svg": svg, "zpl": zpl}
