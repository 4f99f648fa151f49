"""Labels drawn directly (labels/), read back by real decoders: zxing-cpp on the PNG, the PDF
through pdftoppm and the SVG through rsvg-convert at the printer's 203 dpi, zbarimg as a
second decoder. Any string can be drawn: S10 numbers too, whose issuing is built elsewhere."""

from __future__ import annotations

import concurrent.futures
import itertools
import random
import re
import subprocess
import tracemalloc

import pytest
from PIL import Image
from zplgrf import GRF

from labels import text
from labels.barcode import QUIET_MODULES, modules
from labels.formats import PdfWriter, pdf, png, svg, zpl
from labels.label import SIZES, Content, Page, page, raster
from tests.labels.decoding import decoded, pdf_pages, png_image, svg_image

# UPU S10 (issue 20): two letters, an 8-digit serial, its check digit, a country.
S10_WEIGHTS = (8, 6, 4, 2, 3, 5, 9, 7)
S10_EXAMPLES = ["RR473124829GB", "EE471108151FR", "EB000717618HK", "RR287043775IN"]


def s10(indicator: str, serial: int, country: str) -> str:
    digits = f"{serial:08d}"
    check = 11 - sum(int(d) * w for d, w in zip(digits, S10_WEIGHTS, strict=True)) % 11
    return f"{indicator}{digits}{ {10: 0, 11: 5}.get(check, check) }{country}"


def s10_numbers(count: int) -> list[str]:
    pick = random.Random(22)
    indicators = ["RR", "EE", "CP", "LX", "VV", "UA", "HA", "MA", "QA"]
    countries = ["GB", "FR", "HK", "IN", "MY", "ID", "US", "DE"]
    return S10_EXAMPLES + [
        s10(pick.choice(indicators), pick.randrange(10**8), pick.choice(countries))
        for _ in range(count - len(S10_EXAMPLES))
    ]


def content(number: str, name: str = "RedBox Logistics") -> Content:
    return Content(number, "MY", "ID", "1.234", name, "redbox-logistics", "2026-12-07")


def test_the_s10_helper_agrees_with_upus_examples() -> None:
    assert [s10(n[:2], int(n[2:10]), n[11:]) for n in S10_EXAMPLES] == S10_EXAMPLES


def test_s10_numbers_read_back_from_every_format() -> None:
    numbers = s10_numbers(60)
    writer = PdfWriter()
    document = writer.start()
    labels = [page(content(number)) for number in numbers]
    for label in labels:
        document += writer.page(label)
    # Decoded two at a time: rsvg-convert and zxing-cpp let go of the GIL.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        from_png = list(pool.map(lambda label: decoded(png_image(png(label))), labels))
        from_svg = list(pool.map(lambda label: decoded(svg_image(svg(label))), labels))
    assert from_png == from_svg == [[number] for number in numbers]
    pages = pdf_pages(document + writer.end())
    assert [decoded(image) for image in pages] == [[number] for number in numbers]


@pytest.mark.parametrize(
    "number",
    # Code set C's corners: a leading "99" (python-barcode's bug), odd and even digit runs,
    # all digits, punctuation and lower case.
    ["99", "991234", "9912345", "0000000000000000", "A1", "abc-123/XYZ", "1A2B3C4D5E6F7G8H"],
)
def test_any_printable_ascii_reads_back_exactly(number: str) -> None:
    label = page(content(number))
    assert decoded(png_image(png(label))) == [number]
    assert [decoded(image) for image in pdf_pages(pdf(label))] == [[number]]


def test_zbarimg_reads_the_same_number() -> None:
    """A second, independent decoder."""
    number = "MYID0123456789AB"
    done = subprocess.run(
        ["zbarimg", "-q", "--raw", "-"], input=png(page(content(number))), capture_output=True
    )
    assert done.stdout.decode().split() == [number]


def bar_runs(image: Image.Image, label: Page) -> list[int]:
    """The widths in dots of the bars and spaces across the middle of the barcode."""
    row = label.bar_top + label.bar_height // 2
    left, right = label.symbol
    pixels = [image.getpixel((x, row)) for x in range(left, right)]
    return [len(list(run)) for _, run in itertools.groupby(pixels)]


@pytest.mark.parametrize(("dpi", "module"), [(203, 3), (300, 4)])
@pytest.mark.parametrize("size", list(SIZES))
def test_bars_are_whole_dots_within_upus_figures(size: str, dpi: int, module: int) -> None:
    number = "MYID0123456789AB"
    label = page(content(number), size, dpi)
    image = png_image(png(label))
    assert image.size == (round(SIZES[size][0] * dpi), round(SIZES[size][1] * dpi))
    assert decoded(image) == [number]
    runs = bar_runs(image, label)
    # The quiet zones first and last, white and at least 10 modules; every bar and space a
    # whole number of modules of ``module`` dots.
    assert runs[0] >= QUIET_MODULES * module
    assert runs[-1] >= QUIET_MODULES * module
    assert [run // module for run in runs[1:-1]] == modules(number)
    assert all(run % module == 0 for run in runs[1:-1])
    millimetres = 25.4 / dpi
    assert 0.25 <= module * millimetres <= 0.51
    assert label.bar_height * millimetres >= 12.5


def test_a_300_dpi_label_scaled_down_to_203_dpi_dots_still_reads() -> None:
    number = "RR473124829GB"
    image = png_image(png(page(content(number), dpi=300)))
    scaled = image.convert("L").resize((812, 1218), Image.Resampling.BOX)
    assert decoded(scaled) == [number]


def test_a_203_dpi_label_is_read_at_203_dpi_with_a_module_of_3_dots() -> None:
    """Through the PDF too: pdftoppm at 203 dpi gives back the same dots as the PNG."""
    number = "MYID0123456789AB"
    label = page(content(number))
    (rasterised,) = pdf_pages(pdf(label))
    assert rasterised.size == (812, 1218)
    grey = rasterised.convert("1", dither=Image.Dither.NONE)
    assert [run // 3 for run in bar_runs(grey, label)[1:-1]] == modules(number)


NAMES = {
    "latin": "Ångström & Søn Logistik GmbH",
    "greek": "Ελληνικά Ταχυδρομεία",
    "cyrillic": "Почта России Логистика",
    "arabic": "شركة البريد السريع للشحن",
    "hebrew": "דואר ישראל משלוחים",
    "devanagari": "भारतीय डाक सेवा",
    "thai": "ไปรษณีย์ไทย จำกัด",
    "cjk": "東京物流株式会社 上海快递",
    "hangul": "우체국 택배 서비스",
    "ethiopic": "የኢትዮጵያ ፖስታ አገልግሎት",
    "emoji": "👨\u200d👩\u200d👧 family parcels 📦",
    "marks": "Z\u0310\u0311\u0312\u0313\u0314\u0315\u031a\u0316\u0317\u0318\u0319a" * 3,
    "wide": "W",
}


@pytest.mark.parametrize("script", list(NAMES))
@pytest.mark.parametrize("dpi", [203, 300])
def test_a_name_of_255_characters_fits_or_is_cut_never_reaching_the_barcode(
    script: str, dpi: int
) -> None:
    name = (NAMES[script] * 255)[:255]
    number = "MYID0123456789AB"
    label = page(content(number, name), dpi=dpi)
    short = page(content(number, "A"), dpi=dpi)
    image, reference = raster(label), raster(short)
    # Everything from the rule under the name down is the same as with a one-letter name: the
    # barcode, its quiet zones and the number under it.
    below = (0, label.bar_top - dpi // 10, label.width, label.height)
    assert image.crop(below).tobytes() == reference.crop(below).tobytes()
    # Nothing drawn in the margins, where a name running long would go first.
    margin = round(0.15 * dpi) - 1
    for box in ((0, 0, margin, label.height), (label.width - margin, 0, label.width, label.height)):
        assert image.crop(box).convert("L").getextrema() == (255, 255)
    shown = text.fitted(name, round(12 * dpi / 72), label.width - 2 * (margin + 1))
    assert shown == name or (shown.endswith(text.ELLIPSIS) and name.startswith(shown[:-1]))
    assert decoded(image) == [number]


def test_a_name_is_never_cut_between_a_character_and_its_marks() -> None:
    name = "e\u0301" * 200  # é as e and a combining acute
    shown = text.fitted(name, 40, 300)
    assert shown.endswith(text.ELLIPSIS)
    assert shown[:-1].endswith("e\u0301")


def graphic_field(document: str) -> Image.Image:
    """A ZPL label's ``^GFA`` field as an image, decoded by zplgrf (Z64: zlib and base64, and
    its CRC checked), which reads the same data in a ``~DG`` download command."""
    match = re.search(r"\^GFA,(\d+),\d+,(\d+),(:Z64:[A-Za-z0-9+/=]+:[0-9A-F]{4})\^FS", document)
    assert match is not None
    total, row_bytes, data = match.groups()
    return GRF.from_zpl_line(f"~DGR:LABEL.GRF,{total},{row_bytes},{data}").to_image()


@pytest.mark.parametrize("dpi", [203, 300])
@pytest.mark.parametrize("size", list(SIZES))
def test_zpl_has_the_labels_size_the_number_and_the_text(size: str, dpi: int) -> None:
    """No ZPL emulator can be had from the package registries: zpl-core 0.1.0's ``render`` is a
    layout preview ("not a ZPL emulator", its docstring says) that draws ``^BC`` with
    python-barcode and skips ``^GF``, and the others call Labelary's web API. So the structure
    is checked, and the graphic field decoded back into the label's text by zplgrf."""
    for number in ["MYID0123456789AB", "RR473124829GB"]:
        label = page(content(number), size, dpi)
        document = zpl(label).decode()
        assert document.startswith("^XA")
        assert document.rstrip().endswith("^XZ")
        assert document.count("^XA") == document.count("^XZ") == 1
        assert f"^PW{label.width}" in document
        assert f"^LL{label.height}" in document
        assert re.findall(r"\^BC[^\^]*\^FD([^\^]*)\^FS", document) == [number]
        # The printer draws on our bars' dots: first bar, module, height.
        assert (
            f"^FO{label.bars[0].x},{label.bar_top}^BY{label.module},3,{label.bar_height}"
            in document
        )
        assert graphic_field(document).tobytes() == label.text.tobytes()


def test_a_pdf_of_1000_labels_is_written_in_constant_memory() -> None:
    """The writer keeps only offsets: its peak at 1,000 pages is that of 100 but for the
    cross-reference table PDF wants at the end (8 bytes an object kept, 20 written), while
    each page is kilobytes."""
    label = page(content("MYID0123456789AB"))

    def peak(pages: int) -> tuple[int, int]:
        writer = PdfWriter()
        tracemalloc.start()
        written = len(writer.start())
        for _ in range(pages):
            written += len(writer.page(label))
        written += len(writer.end())
        _, most = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return most, written

    small, _ = peak(100)
    large, written = peak(1000)
    assert written > 900 * 5_000
    assert (large - small) / 900 < 150


def test_without_any_font_installed_a_label_still_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Docker image has no Noto or DejaVu: names are drawn in Pillow's own font."""
    monkeypatch.setattr(text, "fonts", lambda: ())
    text.line.cache_clear()
    try:
        label = page(content("MYID0123456789AB", "東京物流 " * 60))
        assert decoded(png_image(png(label))) == ["MYID0123456789AB"]
    finally:
        text.line.cache_clear()
