"""What a shipping label costs, and what drawing them costs the issuing route:
``python -m tests.benchmark.labels``. Prints figures; asserts nothing (the machine is shared).

1. One label, drawn in-process as a worker's label thread draws it (layout and writing, a new
   number each time): p50 and p99 for PDF, ZPL, PNG and SVG at 203 dpi, and PNG at 300 dpi;
   for 20 customers in turn (their name lines drawn once, then kept: ``labels.text.line``),
   and with a new customer name on every label (the worst case).
2. 1,000 labels in one PDF, through the writer a page at a time, as ``POST /labels`` does.
3. The real run.py with one worker and the ledger: the issuing route's p99 with nothing else,
   then while other clients fetch PNG labels as fast as the worker draws them, in the same run.

    LABEL_BENCH_SECONDS=10 python -m tests.benchmark.labels
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from labels import text
from labels.formats import PdfWriter, pdf, png, svg, zpl
from labels.label import Content, page
from tests.benchmark.bench import REPO, free_port, wait_until_serving
from tests.conftest import CANONICAL_QUERY

DRAWS = int(os.environ.get("LABEL_BENCH_DRAWS", "300"))
SECONDS = float(os.environ.get("LABEL_BENCH_SECONDS", "8"))
ISSUERS = 4  # concurrent clients of the issuing route
LABELLERS = 2  # concurrent clients fetching labels: the label thread never idles
TOKEN = "label-bench"


def content(index: int, customers: int = 20) -> Content:
    customer = index % customers
    return Content(
        f"MYID{index:011d}A",
        "MY",
        "ID",
        "1.234",
        f"RedBox Logistics {customer}",
        f"redbox-logistics-{customer}",
        "2026-12-07",
    )


def quantiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99, in milliseconds."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def one_label(write: Callable[..., bytes], dpi: int, customers: int) -> tuple[float, float]:
    text.line.cache_clear()
    write(page(content(0, customers), dpi=dpi))  # fonts, as a worker's first label
    samples = []
    for index in range(1, DRAWS + 1):
        started = time.perf_counter()
        write(page(content(index, customers), dpi=dpi))
        samples.append(time.perf_counter() - started)
    return quantiles(samples)


def thousand_in_one_pdf() -> tuple[float, int]:
    started = time.perf_counter()
    writer = PdfWriter()
    size = len(writer.start())
    for index in range(1000):
        size += len(writer.page(page(content(index))))
    size += len(writer.end())
    return time.perf_counter() - started, size


async def issue_for(
    session: aiohttp.ClientSession, url: str, until: float, latencies: list[float]
) -> None:
    while time.monotonic() < until:
        started = time.perf_counter()
        async with session.get(url + "/next-tracking-number", params=CANONICAL_QUERY) as answer:
            await answer.read()
            assert answer.status == 200, answer.status
        latencies.append(time.perf_counter() - started)


async def labels_for(
    session: aiohttp.ClientSession, url: str, numbers: list[str], until: float
) -> int:
    drawn = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    while time.monotonic() < until:
        number = numbers[drawn % len(numbers)]
        async with session.get(
            f"{url}/tracking-numbers/{number}/label", params={"format": "png"}, headers=headers
        ) as answer:
            await answer.read()
            assert answer.status == 200, answer.status
        drawn += 1
    return drawn


async def issuing_under_labels(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            url + "/next-tracking-number", params={**CANONICAL_QUERY, "count": "100"}
        ) as answer:
            numbers = (await answer.json())["tracking_numbers"]
        # Warm up both routes (blocks, fonts), then measure alone, with labels, alone again.
        await labels_for(session, url, numbers, time.monotonic() + 1)
        figures: dict[str, float] = {}
        for phase in ("alone", "with labels", "alone again"):
            latencies: list[float] = []
            until = time.monotonic() + SECONDS
            issuers = [issue_for(session, url, until, latencies) for _ in range(ISSUERS)]
            if phase == "with labels":
                labellers = [labels_for(session, url, numbers, until) for _ in range(LABELLERS)]
                results = await asyncio.gather(*issuers, *labellers)
                figures["labels a second"] = sum(results[ISSUERS:]) / SECONDS
            else:
                await asyncio.gather(*issuers)
            figures[f"issuing p99 ms, {phase}"] = quantiles(latencies)[1]
            figures[f"issuing requests, {phase}"] = len(latencies)
        return figures


def main() -> None:
    print(f"One label, {DRAWS} draws each, a new number each time:")
    for name, write, dpi in (
        ("PDF 203 dpi", pdf, 203),
        ("ZPL 203 dpi", zpl, 203),
        ("PNG 203 dpi", png, 203),
        ("SVG 203 dpi", svg, 203),
        ("PNG 300 dpi", png, 300),
    ):
        p50, p99 = one_label(write, dpi, 20)
        new_p50, new_p99 = one_label(write, dpi, DRAWS + 1)
        print(
            f"  {name}: 20 customers p50 {p50:.2f} ms, p99 {p99:.2f} ms;"
            f" a new customer each time p50 {new_p50:.2f} ms, p99 {new_p99:.2f} ms"
        )
    seconds, size = thousand_in_one_pdf()
    print(f"1,000 labels in one PDF: {seconds:.2f} s, {size / 1e6:.1f} MB")
    state_dir = Path(tempfile.mkdtemp(prefix="tn-labels-", dir="/tmp"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "run.py", "--config", "/dev/null", "--port", str(port),
        "--workers", "1", "--state-dir", str(state_dir), "--no-access-log", "--ledger",
        "--admin-token", TOKEN,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKING_")}
    with open(state_dir / "service.log", "wb") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env=env)
    try:
        wait_until_serving(url + "/health", process)
        figures = asyncio.run(issuing_under_labels(url))
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"run.py, 1 worker, ledger on, {ISSUERS} issuing clients, {SECONDS:.0f} s a phase:")
    for name, value in figures.items():
        print(f"  {name}: {value:.2f}")
    ratio = figures["issuing p99 ms, with labels"] / figures["issuing p99 ms, alone"]
    print(f"  p99 with labels / alone: {ratio:.2f}")


if __name__ == "__main__":
    main()
