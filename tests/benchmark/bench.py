"""``make bench``: our service against the aiohttp ceiling, side by side in one run.

Every scenario starts a fresh server on loopback, warms it up, and loads it with wrk. The CPU
time and memory of each server process come from /proc, leases and reservations from our
/metrics. The results go to docs/performance.json and to the table between the markers in
docs/performance.md. Only ratios measured in the same run mean anything: the machines are
shared and noisy.

    python -m tests.benchmark.bench            # everything, 10 s a scenario
    BENCH_SECONDS=3 python -m tests.benchmark.bench
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.conftest import CANONICAL_QUERY

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
# Every scenario runs this many times, all of them in turn, and keeps its median run: one
# noisy run (the machines are shared) cannot make a ratio.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARMUP = 2
THREADS = 2
QUERY = "&".join(
    f"{k}={v.replace('+', '%2B').replace(' ', '%20')}" for k, v in CANONICAL_QUERY.items()
)
PATH = "/next-tracking-number?" + QUERY
# The same request for a UPU S10 number of one series (issue 20: the same ratio as ours).
S10_PATH = PATH + "&scheme=s10&service_indicator=RR"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

WRK_REPORT = """
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d,'
    .. ' "p50_us": %d, "p99_us": %d, "p999_us": %d}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass
class Scenario:
    name: str
    server: str  # "ceiling" or "service"
    workers: int = 2
    connections: int = 64
    loop: str = "uvloop"
    access_log: bool = True
    ledger: bool = False  # the default (docs/performance.md says why)
    sweep: str = "main"
    s10: bool = False  # UPU S10 numbers of one series instead of ours

    @property
    def path(self) -> str:
        return S10_PATH if self.s10 else PATH


@dataclass
class Result:
    scenario: Scenario
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    non_2xx: int
    socket_errors: int
    cpu_seconds: dict[str, float]
    rss_mb: dict[str, float]
    numbers: int = 0
    leases: int = 0
    reservations: int = 0
    ratio: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk from the system packages", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    return shutil.which("wrk") or "wrk"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def wait_until_serving(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


class Server:
    """One server under test, with names for its processes."""

    def __init__(self, scenario: Scenario, body_size: int, state_dir: Path) -> None:
        self.scenario = scenario
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state_dir / "service.log"
        if scenario.server == "ceiling":
            command = [
                sys.executable, "-m", "tests.benchmark.ceiling", "--port", str(self.port),
                "--workers", str(scenario.workers), "--body-size", str(body_size),
                "--loop", scenario.loop,
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "run.py", "--config", "/dev/null", "--port", str(self.port),
                "--workers", str(scenario.workers), "--state-dir", str(state_dir),
                "--event-loop", scenario.loop,
                "--access-log" if scenario.access_log else "--no-access-log",
                "--ledger" if scenario.ledger else "--no-ledger",
            ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKING_")}
        # The access log is written to a file, as journald or a log shipper would take it.
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=log, env=env)
        wait_until_serving(self.url + PATH, self.process)

    def names(self) -> dict[int, str]:
        """Each process of the server: supervisor, allocator, worker-N (or ceiling-N)."""
        pids = process_tree(self.process.pid)
        if self.scenario.server == "ceiling":
            return {
                pid: "ceiling" if pid == self.process.pid else f"worker-{i}"
                for i, pid in enumerate(pids)
            }
        names = {self.process.pid: "supervisor"}
        for line in self.log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "child started" and entry["tracking.child_pid"] in pids:
                names[entry["tracking.child_pid"]] = entry["tracking.child"]
        return names

    def counters(self) -> tuple[float, float, float]:
        """Numbers issued, leases and reservations so far (ours only)."""
        if self.scenario.server == "ceiling":
            return 0, 0, 0
        time.sleep(1.2)  # every worker has reported since
        text = get(self.url + "/metrics").decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                values[name] = float(value)
        return (
            values["tracking_numbers_issued_total"],
            values["tracking_allocator_leases_total"],
            values["tracking_allocator_reservations_total"],
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            for pid in process_tree(self.process.pid):
                os.kill(pid, signal.SIGKILL)
            self.process.wait()


def run_wrk(wrk: str, url: str, connections: int, seconds: int, script: Path) -> dict:
    output = subprocess.run(
        [wrk, f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def measure(wrk: str, scenario: Scenario, body_size: int, script: Path) -> Result:
    with tempfile.TemporaryDirectory(prefix="tn-bench-", dir="/tmp") as state:
        server = Server(scenario, body_size, Path(state))
        try:
            run_wrk(wrk, server.url + scenario.path, scenario.connections, WARMUP, script)
            names = server.names()
            issued0, leases0, reservations0 = server.counters()
            cpu0 = {pid: cpu_seconds(pid) for pid in names}
            report = run_wrk(wrk, server.url + scenario.path, scenario.connections, SECONDS, script)
            cpu1 = {pid: cpu_seconds(pid) for pid in names}
            rss = {names[pid]: round(rss_mb(pid), 1) for pid in names}
            issued1, leases1, reservations1 = server.counters()
        finally:
            server.stop()
    seconds = report["duration_us"] / 1e6
    return Result(
        scenario=scenario,
        rps=report["requests"] / seconds,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        p999_ms=report["p999_us"] / 1000,
        non_2xx=report["non_2xx"],
        socket_errors=report["socket_errors"],
        cpu_seconds={names[pid]: round(cpu1[pid] - cpu0[pid], 3) for pid in names},
        rss_mb=rss,
        numbers=int(issued1 - issued0),
        leases=int(leases1 - leases0),
        reservations=int(reservations1 - reservations0),
        extra={"seconds": seconds},
    )


def number_costs() -> dict[str, float]:
    """Microseconds per number of the permutation and of the check character.

    The permutation is timed as the worker runs it: the serials of consecutive counters a
    chunk at a time (``Permutation.chunk``), from random starts. The counters are random, as
    the permuted serials the formatter sees are: one counter over and over would keep every
    table look-up in the caches.
    """
    from allocator.counter import NEW_STORE_SCHEME
    from service.numbers import NumberFormatter, check_character

    formatter = NumberFormatter(bytes(range(32)), NEW_STORE_SCHEME)
    permute, chunk = formatter.permute, formatter.permute.chunk
    n = 200_000
    rng = random.Random(0)
    starts = itertools.cycle([rng.randrange(2**56 - chunk) for _ in range(n // chunk)])

    def serials() -> list[int]:
        start = next(starts)
        return permute.serials(start, start + chunk)

    def whole() -> list[str]:
        return [formatter.format_serial("MY", "ID", serial) for serial in serials()]

    return {
        "permutation_us": timeit.timeit(serials, number=n // chunk) / n * 1e6,
        "check_character_plain_us": timeit.timeit(
            lambda: check_character("MYID0123456789A"), number=n
        )
        / n
        * 1e6,
        "format_whole_number_us": timeit.timeit(whole, number=n // chunk) / n * 1e6,
    }


SCENARIOS = [
    Scenario("ceiling", "ceiling"),
    Scenario("service", "service"),
    Scenario("service, access log off", "service", access_log=False),
    Scenario("service, ledger on", "service", ledger=True),
    Scenario("service, S10 numbers (one series)", "service", s10=True),
    *(
        Scenario(f"{server}, {w} worker{'s' * (w > 1)}", server, workers=w, sweep="workers")
        for w in (1, 4)
        for server in ("ceiling", "service")
    ),
    *(
        Scenario(f"{server}, asyncio loop", server, loop="asyncio", sweep="loop")
        for server in ("ceiling", "service")
    ),
    *(
        Scenario(f"{server}, {c} connections", server, connections=c, sweep="connections")
        for c in (16, 256)
        for server in ("ceiling", "service")
    ),
]


def median_run(results: list[Result]) -> Result:
    """The run with the median requests per second (of an odd number, the middle one)."""
    ranked = sorted(results, key=lambda r: r.rps)
    median = ranked[len(ranked) // 2]
    median.extra["runs"] = len(results)
    median.extra["rps_of_every_run"] = [round(r.rps) for r in results]
    return median


def with_ratios(results: list[Result]) -> None:
    """Each service result over the ceiling measured with the same workers, loop, connections."""
    for result in results:
        s = result.scenario
        if s.server != "service":
            continue
        for other in results:
            o = other.scenario
            if o.server == "ceiling" and (o.workers, o.loop, o.connections) == (
                s.workers,
                s.loop,
                s.connections,
            ):
                result.ratio = result.rps / other.rps


def table(results: list[Result], costs: dict[str, float]) -> str:
    rows = [
        "| scenario | workers | conns | loop | req/s | ratio | p50 ms | p99 ms | p99.9 ms "
        "| worker CPU µs per request | allocator CPU | reservations/s | leases per 1M | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.scenario
        total_cpu = sum(r.cpu_seconds.values()) or 1
        allocator = r.cpu_seconds.get("allocator")
        # The ratio's other side: what one request costs the workers, wrk's share left out.
        workers_cpu = sum(cpu for name, cpu in r.cpu_seconds.items() if name.startswith("worker"))
        rows.append(
            f"| {s.name} | {s.workers} | {s.connections} | {s.loop} | {r.rps:,.0f} | "
            + (f"{r.ratio:.2f}" if r.ratio else "1.00" if s.server == "ceiling" else "")
            + f" | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.p999_ms:.2f} | "
            + f"{workers_cpu / (r.rps * r.extra['seconds']) * 1e6:.0f} | "
            + (f"{allocator / total_cpu:.2%}" if allocator is not None else "")
            + " | "
            + (f"{r.reservations / r.extra['seconds']:.2f}" if s.server == "service" else "")
            + " | "
            + (f"{r.leases / r.numbers * 1e6:,.0f}" if r.numbers else "")
            + f" | {sum(r.rss_mb.values()):.0f} |"
        )
    main = next(r for r in results if r.scenario.name == "service")
    rows += [
        "",
        "RSS of each process in the main scenario (MB): "
        + ", ".join(f"{name} {mb}" for name, mb in sorted(main.rss_mb.items())),
        "",
        f"Cost per number, a chunk of serials at a time as the worker computes them: "
        f"permutation {costs['permutation_us']:.2f} µs, check character "
        f"(plain loop, used to verify) {costs['check_character_plain_us']:.2f} µs, a whole "
        f"number with the table-driven check character {costs['format_whole_number_us']:.2f} µs.",
    ]
    return "\n".join(rows)


def write_docs(results: list[Result], costs: dict[str, float]) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    data = {
        "measured_at": stamp,
        "seconds_per_scenario": SECONDS,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "number_costs_us": costs,
        "results": [asdict(r) for r in results],
    }
    (DOCS / "performance.json").write_text(json.dumps(data, indent=2) + "\n")
    markdown = DOCS / "performance.md"
    text = markdown.read_text() if markdown.exists() else f"# Performance\n\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    body = (
        f"Measured {stamp} by `make bench` ({SECONDS:g} s a run, wrk with {THREADS} "
        f"threads on the same {os.cpu_count()}-core machine, canonical request). Each row is "
        f"the median of {ROUNDS} runs; the runs of all scenarios were taken in turn.\n\n"
        + table(results, costs)
    )
    markdown.write_text(f"{head}{START}\n{body}\n{END}{tail}")


def main() -> None:
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="tn-bench-", dir="/tmp") as state:
        probe = Server(Scenario("probe", "service"), 0, Path(state))
        try:
            body_size = len(get(probe.url + PATH))
        finally:
            probe.stop()
    runs: dict[str, list[Result]] = {scenario.name: [] for scenario in SCENARIOS}
    plan = SCENARIOS * ROUNDS
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_REPORT)
        script.flush()
        for scenario in plan:
            result = measure(wrk, scenario, body_size, Path(script.name))
            print(
                f"{scenario.name}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms", flush=True
            )
            runs[scenario.name].append(result)
    results = [median_run(runs[scenario.name]) for scenario in SCENARIOS]
    with_ratios(results)
    costs = number_costs()
    write_docs(results, costs)
    print(table(results, costs))


if __name__ == "__main__":
    main()
