"""Metrics: what a worker counts, and the Prometheus exposition of everyone's counts.

Each worker counts in plain Python (a dict increment and a bisect per request) and sends the
counts since its last report to the allocator every second. The allocator sums the reports, so
whichever worker is scraped renders the same totals: its own, everyone else's, and the
allocator's state. The supervisor's count of wedged children it replaced is read from the
memory it shares with every child (process/lifecycle.py). Rendering uses prometheus_client's
exposition code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from allocator.client import AllocatorClient
from allocator.protocol import (
    REQUEST_BUCKETS,
    RESERVATION_BUCKETS,
    Histogram,
    SeriesStatus,
    Status,
    WorkerCounters,
)
from ledger.protocol import BATCH_BUCKETS, COMMIT_BUCKETS, LedgerStats
from process import lifecycle

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REPORT_INTERVAL = 1.0  # seconds between a worker's reports
# Labels are a fixed set, never a client's choice: under the pure-Python parser any token is a
# method, and every new label would grow the counters (and the status frame) for good.
METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD = "other"


class WorkerMetrics:
    """One worker's counts since its last report."""

    def __init__(self) -> None:
        self._counts = WorkerCounters()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        counts = self._counts
        key = (route, method if method in METHODS else OTHER_METHOD, status)
        counts.requests[key] = counts.requests.get(key, 0) + 1
        histogram = counts.durations.get(route)
        if histogram is None:
            histogram = counts.durations[route] = Histogram.empty(REQUEST_BUCKETS)
        histogram.observe(seconds, REQUEST_BUCKETS)

    def issued(self, count: int = 1) -> None:
        self._counts.issued += count

    def lease_failed(self) -> None:
        self._counts.lease_failures += 1

    def report_to(self, client: AllocatorClient) -> None:
        """Send the counts so far to the allocator, and count again from zero. While the
        allocator is away, counts pile up and go out with the next report that can be sent."""
        counts, self._counts = self._counts, WorkerCounters()
        if not client.report(counts):
            self._counts.add(counts)


def _buckets(histogram: Histogram, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, as Prometheus wants them."""
    cumulative, total = [], 0
    for bound, count in zip((*map(str, bounds), "+Inf"), histogram.counts, strict=True):
        total += count
        cumulative.append((bound, total))
    return cumulative


Getter = Callable[[Status], float]

# Every unlabelled counter and gauge: its name, its help, and where a Status holds its value.
COUNTERS: tuple[tuple[str, str, Getter], ...] = (
    ("tracking_numbers_issued", "Tracking numbers issued", lambda s: s.workers.issued),
    (
        "tracking_worker_lease_failures",
        "Requests that found no number in hand and got no block from the allocator",
        lambda s: s.workers.lease_failures,
    ),
    ("tracking_allocator_leases", "Blocks leased to workers", lambda s: s.allocator.leases_total),
    (
        "tracking_allocator_leased_numbers",
        "Counter values leased to workers",
        lambda s: s.allocator.leased_numbers_total,
    ),
    (
        "tracking_allocator_lease_refusals",
        "Lease requests refused (the store could not be written)",
        lambda s: s.allocator.lease_refusals_total,
    ),
    (
        "tracking_allocator_reservations",
        "Reservations made durable in the store",
        lambda s: s.allocator.reservations_total,
    ),
    (
        "tracking_allocator_reservation_errors",
        "Reservations the store failed to make durable",
        lambda s: s.allocator.reservation_errors_total,
    ),
    (
        "tracking_idempotency_refusals",
        "Requests with a new Idempotency-Key refused because the store kept its maximum",
        lambda s: s.allocator.idempotency_refusals_total,
    ),
)
GAUGES: tuple[tuple[str, str, Getter], ...] = (
    ("tracking_allocator_next", "First counter value not yet leased", lambda s: s.allocator.next),
    (
        "tracking_allocator_reserved",
        "Durable reservation mark: no value below it is leased again",
        lambda s: s.allocator.reserved,
    ),
    (
        "tracking_allocator_numbers_left",
        "Counter values left before the number space is exhausted",
        lambda s: s.allocator.numbers_left,
    ),
    (
        "tracking_allocator_connected_workers",
        "Workers connected to the allocator",
        lambda s: s.allocator.connected_workers,
    ),
    (
        "tracking_allocator_store_up",
        "1 if the last store operation succeeded, else 0",
        lambda s: 1 if s.allocator.store_up else 0,
    ),
    (
        "tracking_idempotency_bytes",
        "Bytes on disk of the Idempotency-Keys and answers the store keeps, indexes included"
        " (measured each minute)",
        lambda s: s.allocator.idempotency_bytes,
    ),
    (
        "tracking_idempotency_max_bytes",
        "idempotency_max_bytes: past it, requests with a new key get a 503",
        lambda s: s.allocator.idempotency_max_bytes,
    ),
    (
        "tracking_allocator_start_time_seconds",
        "When the allocator started, in seconds since the epoch",
        lambda s: s.allocator.started_at,
    ),
)


LedgerGetter = Callable[[LedgerStats], float]
LEDGER_COUNTERS: tuple[tuple[str, str, LedgerGetter], ...] = (
    (
        "tracking_ledger_records_written",
        "Records committed to the ledger",
        lambda s: s.records_written_total,
    ),
    ("tracking_ledger_commits", "Group commits of the ledger", lambda s: s.commits_total),
    (
        "tracking_ledger_commit_failures",
        "Group commits that failed (their requests got a 503)",
        lambda s: s.commit_failures_total,
    ),
    (
        "tracking_ledger_uniqueness_violations",
        "Records refused because their counter had a record already: a number issued twice",
        lambda s: s.uniqueness_violations_total,
    ),
    (
        "tracking_ledger_records_expired",
        "Records deleted because they were older than ledger_retention_days",
        lambda s: s.records_expired_total,
    ),
)

# The spool of the shared ledger (a PostgreSQL store; 0 with a SQLite store).
LEDGER_GAUGES: tuple[tuple[str, str, LedgerGetter], ...] = (
    (
        "tracking_ledger_spool_records",
        "Records committed on this host and not yet in the shared PostgreSQL ledger",
        lambda s: s.spool_records,
    ),
    (
        "tracking_ledger_spool_age_seconds",
        "Age of the oldest record not yet in the shared PostgreSQL ledger (0: none)",
        lambda s: s.spool_oldest_seconds,
    ),
)


# Each S10 series' gauges and counters, labelled with its name (allocator.protocol.SeriesStatus):
# its name, its help, and where a series' status holds its value.
SeriesGetter = Callable[[SeriesStatus], float]
SERIES_GAUGES: tuple[tuple[str, str, SeriesGetter], ...] = (
    (
        "tracking_s10_series_used_ratio",
        "Share of an S10 series' numbers leased so far (1: exhausted)",
        lambda s: s.used_ratio,
    ),
    (
        "tracking_s10_series_numbers_left",
        "Numbers of an S10 series not leased yet",
        lambda s: s.numbers_left,
    ),
    ("tracking_s10_series_size", "Numbers an S10 series holds (10^8)", lambda s: s.size),
)
SERIES_COUNTERS: tuple[tuple[str, str, SeriesGetter], ...] = (
    (
        "tracking_s10_series_leased_numbers",
        "Numbers of an S10 series leased to workers since the allocator started",
        lambda s: s.leased_numbers_total,
    ),
    (
        "tracking_s10_series_reservations",
        "Reservations of an S10 series made durable since the allocator started",
        lambda s: s.reservations_total,
    ),
)


def _series(status: Status) -> Iterator[Metric]:
    """Every S10 series in use, by its ``series`` label; its forecast only while it is used."""
    series = status.allocator.series
    for name, documentation, getter in SERIES_GAUGES:
        gauge = GaugeMetricFamily(name, documentation, labels=("series",))
        for one in series:
            gauge.add_metric((one.name,), getter(one))
        yield gauge
    for name, documentation, getter in SERIES_COUNTERS:
        counter = CounterMetricFamily(name, documentation, labels=("series",))
        for one in series:
            counter.add_metric((one.name,), getter(one))
        yield counter
    forecast = GaugeMetricFamily(
        "tracking_s10_series_seconds_to_exhaustion",
        "Seconds until an S10 series is used up at its lease rate of the last minute (absent "
        "while it leases nothing)",
        labels=("series",),
    )
    for one in series:
        if one.seconds_to_exhaustion is not None:
            forecast.add_metric((one.name,), one.seconds_to_exhaustion)
    yield forecast


class _StatusCollector(Collector):
    def __init__(self, status: Status, ledger: LedgerStats | None, ledger_on: bool) -> None:
        self.status = status
        self.ledger = ledger
        self.ledger_on = ledger_on

    def collect(self) -> Iterator[Metric]:
        status = self.status
        for name, documentation, counter in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=counter(status))
        for name, documentation, gauge in GAUGES:
            yield GaugeMetricFamily(name, documentation, value=gauge(status))
        requests = CounterMetricFamily(
            "tracking_http_requests",
            "HTTP requests answered, by route, method and status",
            labels=("route", "method", "status"),
        )
        for (route, method, code), count in sorted(status.workers.requests.items()):
            requests.add_metric((route, method, str(code)), count)
        yield requests
        durations = HistogramMetricFamily(
            "tracking_http_request_duration_seconds",
            "Time spent answering HTTP requests, by route",
            labels=("route",),
        )
        for route, histogram in sorted(status.workers.durations.items()):
            durations.add_metric((route,), _buckets(histogram, REQUEST_BUCKETS), histogram.total)
        yield durations
        yield from _series(status)
        reservations = status.allocator.reservation_seconds
        reservation = HistogramMetricFamily(
            "tracking_allocator_reservation_duration_seconds",
            "Time to make a reservation durable",
        )
        reservation.add_metric((), _buckets(reservations, RESERVATION_BUCKETS), reservations.total)
        yield reservation
        # The supervisor's own count, from the memory it shares with its children: not part
        # of the allocator's status, so an allocator restart does not reset it.
        wedged = CounterMetricFamily(
            "tracking_supervisor_wedged_restarts",
            "Children killed and restarted because their event loop stopped beating",
            labels=("child",),
        )
        for kind, count in lifecycle.wedged_restarts().items():
            wedged.add_metric((kind,), count)
        yield wedged
        if self.ledger_on:
            yield from self._ledger()

    def _ledger(self) -> Iterator[Metric]:
        ledger = self.ledger
        yield GaugeMetricFamily(
            "tracking_ledger_writer_up",
            "1 if the ledger's writer answered this scrape, else 0",
            value=0 if ledger is None else 1,
        )
        if ledger is None:
            return  # absent rather than zero: a rate over a reset to zero would lie
        for name, documentation, counter in LEDGER_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=counter(ledger))
        for name, documentation, gauge in LEDGER_GAUGES:
            yield GaugeMetricFamily(name, documentation, value=gauge(ledger))
        for name, documentation, histogram, bounds in (
            (
                "tracking_ledger_commit_duration_seconds",
                "Time to make one group of records durable",
                ledger.commit_seconds,
                COMMIT_BUCKETS,
            ),
            (
                "tracking_ledger_batch_records",
                "Records per group commit",
                ledger.batch_records,
                BATCH_BUCKETS,
            ),
        ):
            family = HistogramMetricFamily(name, documentation)
            family.add_metric((), _buckets(histogram, bounds), histogram.total)
            yield family


def render(status: Status, ledger: LedgerStats | None = None, ledger_on: bool = False) -> bytes:
    """The Prometheus text exposition of a Status, and of the ledger's writer when it is on
    (``ledger`` None: it could not be asked)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status, ledger, ledger_on))
    return generate_latest(registry)
