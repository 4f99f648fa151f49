"""Issue 20's figure: 1,000 S10 series in use at once, round-robin over indicators and
countries. How often each busy series reserves, how often workers lease, what the workers'
memory costs and how many series hold blocks in each, beside the same service's own numbers.

    python -m tests.benchmark.s10_series          # 5 s a phase
    BENCH_SECONDS=10 python -m tests.benchmark.s10_series
    BENCH_S10_SERIES=1 python -m tests.benchmark.s10_series   # one series

Light on purpose (the machines are shared): one server, two phases of BENCH_SECONDS, wrk with
2 threads and 32 connections. Prints one JSON object; docs/performance.md keeps the figures.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.benchmark.bench import (
    PATH,
    REPO,
    WRK_REPORT,
    ensure_wrk,
    free_port,
    get,
    process_tree,
    rss_mb,
    run_wrk,
    wait_until_serving,
)
from tests.conftest import CANONICAL_QUERY

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = 32
# 40 indicators of the default s10_indicators, times 25 countries: 1,000 series.
INDICATORS = [a + b for a in "RECLVUHM" for b in "ABCDE"]
COUNTRIES = (
    "GB",
    "FR",
    "DE",
    "NL",
    "IT",
    "ES",
    "PT",
    "BE",
    "AT",
    "CH",
    "SE",
    "NO",
    "DK",
    "FI",
    "IE",
    "PL",
    "CZ",
    "HU",
    "GR",
    "RO",
    "BG",
    "HR",
    "SI",
    "SK",
    "LU",
)
# BENCH_S10_SERIES=1: one series only (the issue's first figure: its ratio to our numbers').
SERIES_COUNT = int(os.environ.get("BENCH_S10_SERIES", "1000"))
SERIES = list(itertools.product(INDICATORS, COUNTRIES))[:SERIES_COUNT]
_SAMPLE = re.compile(r'^(tracking_s10_series_reservations_total)\{series="([^"]+)"\} (\S+)$')


def s10_path(indicator: str, country: str) -> str:
    query = {**CANONICAL_QUERY, "origin_country_id": country}
    encoded = "&".join(f"{k}={v.replace('+', '%2B').replace(' ', '%20')}" for k, v in query.items())
    return f"/next-tracking-number?{encoded}&scheme=s10&service_indicator={indicator}"


def round_robin_script(directory: Path) -> Path:
    """A wrk script that asks for each series in turn, and reports as make bench's does."""
    paths = ",\n".join(json.dumps(s10_path(i, c)) for i, c in SERIES)
    script = directory / "round_robin.lua"
    script.write_text(
        f"local paths = {{\n{paths}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n"
        "  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n" + WRK_REPORT
    )
    return script


def series_reservations(url: str) -> dict[str, float]:
    """Each series' reservations so far, from /metrics."""
    time.sleep(1.2)  # every worker has reported since
    found = {}
    for line in get(url + "/metrics").decode().splitlines():
        match = _SAMPLE.match(line)
        if match:
            found[match.group(2)] = float(match.group(3))
    return found


def metric(url: str, name: str) -> float:
    for line in get(url + "/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def hot_series_at_stop(log: Path) -> dict[int, int]:
    """By worker, the S10 series it held blocks of when it stopped (its last line)."""
    held = {}
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if event.get("message") == "s10 blocks dropped":
                held[event["process.pid"]] = event["tracking.s10_hot_series"]
    return held


def main() -> None:
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="tn-s10-", dir="/tmp") as state:
        directory = Path(state)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "run.py", "--config", "/dev/null", "--port", str(port),
            "--workers", "2", "--state-dir", state, "--no-access-log", "--no-ledger",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKING_")}
        with open(directory / "service.log", "wb") as log:
            process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env=env)
        try:
            wait_until_serving(url + PATH, process)
            workers = [pid for pid in process_tree(process.pid) if pid != process.pid]
            plain = directory / "plain.lua"
            plain.write_text(WRK_REPORT)
            ours = run_wrk(wrk, url + PATH, CONNECTIONS, SECONDS, plain)
            rss_ours = {pid: round(rss_mb(pid), 1) for pid in workers}
            script = round_robin_script(directory)
            run_wrk(wrk, url + PATH, CONNECTIONS, 2, script)  # every series made, warm
            before = series_reservations(url)
            leases0 = metric(url, "tracking_allocator_leases_total")
            s10 = run_wrk(wrk, url + PATH, CONNECTIONS, SECONDS, script)
            after = series_reservations(url)
            leases1 = metric(url, "tracking_allocator_leases_total")
            rss_s10 = {pid: round(rss_mb(pid), 1) for pid in workers}
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        held = hot_series_at_stop(directory / "service.log")
    seconds = s10["duration_us"] / 1e6
    per_series = [(after.get(name, 0) - before.get(name, 0)) / seconds for name in after]
    print(
        json.dumps(
            {
                "seconds": SECONDS,
                "series": len(SERIES),
                "ours_rps": round(ours["requests"] / (ours["duration_us"] / 1e6)),
                "s10_rps": round(s10["requests"] / seconds),
                "s10_p99_ms": s10["p99_us"] / 1000,
                "s10_non_2xx": s10["non_2xx"],
                "series_reserving": len([n for n in per_series if n > 0]),
                "reservations_per_series_second_max": round(max(per_series, default=0), 3),
                "reservations_per_series_second_mean": round(
                    sum(per_series) / max(len(per_series), 1), 4
                ),
                "leases_per_second": round((leases1 - leases0) / seconds),
                "s10_series_holding_blocks_per_worker": held,
                "rss_mb_processes_after_ours": rss_ours,
                "rss_mb_processes_after_s10": rss_s10,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
