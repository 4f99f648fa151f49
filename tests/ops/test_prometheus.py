"""A real Prometheus scrapes a real run.py, evaluates config/prometheus-alerts.yml, and runs
every query of config/grafana-dashboard.json.

The server binary comes from Debian's prometheus package: .ci/prometheus.sh unpacks it and
names it in TRACKING_TEST_PROMETHEUS. Without that variable these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import CANONICAL_QUERY
from tests.ops.promql import reads
from tests.system.conftest import REPO, Service, free_port

PROMETHEUS_VARIABLE = "TRACKING_TEST_PROMETHEUS"
ALERTS = REPO / "config" / "prometheus-alerts.yml"
DASHBOARD = REPO / "config" / "grafana-dashboard.json"
JOB = "tracking"  # the job name the alerts expect (TrackingTargetDown)
# Series from other exporters that the alerts use on purpose: node_exporter's systemd
# collector (the watchdog alerts). METRICS_EXTERNAL in .ci/ops-lint.sh; `up` is Prometheus's own.
EXTERNAL = {"node_systemd_service_restart_total", "node_systemd_unit_state"}
ISSUED = 30  # numbers the traffic asks for
WAIT = 60.0  # seconds to wait for a scrape or an evaluation; these take a second or two


def prometheus_binary() -> str:
    path = os.environ.get(PROMETHEUS_VARIABLE, "")
    if not path:
        pytest.skip(f"{PROMETHEUS_VARIABLE} is not set (bash .ci/prometheus.sh runs these tests)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{PROMETHEUS_VARIABLE}={path} is not an executable", pytrace=False)
    return path


class PrometheusError(Exception):
    """The server refused a request: its errorType and error."""


class Prometheus:
    """A Prometheus server on loopback, scraping one target every second."""

    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.directory = directory
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = directory / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (directory / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address={self.url.removeprefix('http://')}",
                ],
                stdout=log,
                stderr=log,
                cwd=directory,
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                status = self.process.returncode
                raise RuntimeError(f"prometheus exited with {status}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prometheus did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        """The ``data`` of a ``/api/v1/…`` answer; PrometheusError when the server refuses."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params or [])}"
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            with exc:
                body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", [("query", expr)])["result"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def request(url: str, path: str, params: dict[str, str] | None = None) -> int:
    """The status of a GET (urllib raises on 4xx; that is an answer here, not a failure)."""
    full = f"{url}{path}?{urllib.parse.urlencode(params or {})}"
    try:
        with urllib.request.urlopen(full, timeout=10) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def wait_for(what: str, condition: Any, prometheus: Prometheus) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {WAIT} s\n{prometheus.log()[-3000:]}")
        time.sleep(0.2)


@dataclass
class Stack:
    service: Service
    prometheus: Prometheus
    instance: str  # the target's instance label
    series: dict[str, set[str]]  # every metric name in the TSDB → the label names it has


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    binary = prometheus_binary()
    directory = Path(tempfile.mkdtemp(prefix="tn-", dir="/tmp"))  # short: Unix socket paths
    # With the ledger: its series exist only when it is on (off by default for now).
    service = Service(directory, 2, "--ledger")
    prometheus = None
    try:
        service.start()
        instance = f"127.0.0.1:{service.port}"
        prometheus = Prometheus(binary, directory, instance)
        prometheus.wait_ready()

        # Traffic while Prometheus watches, as in production: a counter that first appears
        # already incremented shows no rate until its second sample.
        wait_for("a first scrape", lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'), prometheus)
        for _ in range(ISSUED):
            assert request(service.url, "/next-tracking-number", CANONICAL_QUERY) == 200
        # An S10 series, so that its series exist (the S10 alerts read them).
        s10 = {**CANONICAL_QUERY, "scheme": "s10", "service_indicator": "RR"}
        assert request(service.url, "/next-tracking-number", s10) == 200
        bad_weight = {**CANONICAL_QUERY, "weight": "0"}
        assert request(service.url, "/next-tracking-number", bad_weight) == 400
        assert request(service.url, "/no-such-page") == 404

        # Scraped once the workers' totals reached the allocator, twice since then (a rate
        # needs two samples)...
        def scraped() -> bool:
            issued = prometheus.query(f'tracking_numbers_issued_total{{job="{JOB}"}}')
            samples = prometheus.query(
                f'count_over_time(tracking_http_requests_total{{job="{JOB}", status="404"}}[1m])'
            )
            return (
                bool(issued and samples)
                and float(issued[0]["value"][1]) >= ISSUED
                and float(samples[0]["value"][1]) >= 2
            )

        wait_for("the traffic in Prometheus", scraped, prometheus)
        # ... and every rule evaluated after that.
        after = time.time()

        def evaluated() -> bool:
            groups = prometheus.api("rules")["groups"]
            return all(
                datetime.fromisoformat(r["lastEvaluation"]).timestamp() > after
                for g in groups
                for r in g["rules"]
            )

        wait_for("an evaluation of every rule", evaluated, prometheus)

        series: dict[str, set[str]] = {}
        for labels in prometheus.api("series", [("match[]", '{__name__=~".+"}')]):
            series.setdefault(labels["__name__"], set()).update(labels)
        yield Stack(service, prometheus, instance, series)
    finally:
        if prometheus is not None:
            prometheus.stop()
        service.kill()
        shutil.rmtree(directory, ignore_errors=True)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries(stack: Stack) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation, with Grafana's variables filled
    in as Grafana would for this job and target."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    panels = list(dashboard["panels"])
    for panel in panels:
        panels.extend(panel.get("panels", []))  # inside collapsed rows
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target.get('refId')}", target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    assert len(found) > 10, "the dashboard's queries were not found"
    return [(where, fill_in(expr, stack)) for where, expr in found]


def dashboard_variables(stack: Stack) -> list[tuple[str, str, str]]:
    """(name, series selector, label) of every ``label_values(selector, label)`` variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        selector, _, label = query.removeprefix("label_values(").removesuffix(")").rpartition(",")
        found.append((variable["name"], fill_in(selector.strip(), stack), label.strip()))
    return found


def fill_in(expr: str, stack: Stack) -> str:
    # $__rate_interval is at least four scrape intervals; Grafana's default for a 15 s scrape
    # is 1m, and a minute of 1 s scrapes holds all the test's samples.
    values = {
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$__range": "5m",
        "$job": JOB,
        "$instance": stack.instance,
        "$route": "/next-tracking-number",
    }
    for variable, value in values.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def missing_series(expr: str, stack: Stack, exempt: set[str] = frozenset()) -> list[str]:
    """What ``expr`` reads that no scraped series has: metric names, and label names that a
    selector matches on or that the expression groups by."""
    found = reads(expr)
    assert found.selectors, f"no metric found in {expr}"
    problems = []
    labels_read = set()
    for name, labels in found.selectors.items():
        if name in exempt:
            continue
        if name not in stack.series:
            problems.append(f"no series {name}")
            continue
        labels_read |= stack.series[name]
        problems += [f"{name} has no label {label}" for label in labels - stack.series[name]]
    if labels_read:
        problems += [f"no label {label} to group by" for label in found.grouping - labels_read]
    return problems


def test_prometheus_scrapes_the_service(stack: Stack) -> None:
    targets = stack.prometheus.api("targets")["activeTargets"]
    assert [(t["labels"]["job"], t["labels"]["instance"]) for t in targets] == [
        (JOB, stack.instance)
    ]
    assert targets[0]["health"] == "up", targets[0]["lastError"]
    assert stack.prometheus.query(f'up{{job="{JOB}"}} == 1') != []


def test_every_series_the_alerts_read_exists(stack: Stack) -> None:
    problems = [
        f"{rule['alert']}: {problem}"
        for rule in alert_rules()
        for problem in missing_series(rule["expr"], stack, EXTERNAL)
    ]
    assert not problems, "\n".join(problems)


def test_every_rule_is_loaded_and_evaluates_without_error(stack: Stack) -> None:
    groups = stack.prometheus.api("rules")["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert sorted(loaded) == sorted(rule["alert"] for rule in alert_rules())
    failing = {
        name: (rule["health"], rule.get("lastError"))
        for name, rule in loaded.items()
        if rule["health"] != "ok" or rule.get("lastError")
    }
    assert not failing, "\n".join(f"{name}: {error}" for name, error in failing.items())


def test_a_healthy_service_raises_no_alert(stack: Stack) -> None:
    active = stack.prometheus.api("alerts")["alerts"]
    assert [(a["labels"]["alertname"], a["state"], a["value"]) for a in active] == []


def test_every_dashboard_query_is_accepted_and_reads_only_scraped_series(stack: Stack) -> None:
    end = time.time()
    problems = []
    for where, expr in dashboard_queries(stack):
        try:
            # What Grafana sends for a time series panel.
            stack.prometheus.api(
                "query_range",
                [("query", expr), ("start", str(end - 60)), ("end", str(end)), ("step", "1")],
            )
        except PrometheusError as exc:
            problems.append(f"{where}: refused: {exc}: {expr}")
        problems += [f"{where}: {problem}: {expr}" for problem in missing_series(expr, stack)]
    assert not problems, "\n".join(problems)


def test_every_dashboard_variable_has_values(stack: Stack) -> None:
    expected = {"job": JOB, "instance": stack.instance, "route": "/next-tracking-number"}
    variables = dashboard_variables(stack)
    assert sorted(name for name, _, _ in variables) == sorted(expected)
    for name, selector, label in variables:
        assert not (problems := missing_series(selector, stack)), f"variable {name}: {problems}"
        # What Grafana asks for label_values(selector, label).
        values = stack.prometheus.api(f"label/{label}/values", [("match[]", selector)])
        assert expected[name] in values, (name, values)


def panel_query(stack: Stack, title: str) -> str:
    [expr] = [expr for where, expr in dashboard_queries(stack) if f"panel {title!r}" in where]
    return expr


def test_the_issue_rate_panel_shows_the_traffic(stack: Stack) -> None:
    [series] = stack.prometheus.query(panel_query(stack, "Numbers issued / s"))
    assert float(series["value"][1]) > 0


def test_the_status_panel_tells_the_answers_apart(stack: Stack) -> None:
    result = stack.prometheus.query(panel_query(stack, "Status codes"))
    assert {"200", "400", "404"} <= {series["metric"].get("status") for series in result}


def test_the_ledger_panels_show_the_writer_and_its_records(stack: Stack) -> None:
    [writer] = stack.prometheus.query(panel_query(stack, "Ledger writer"))
    assert float(writer["value"][1]) == 1
    [records] = [
        expr
        for where, expr in dashboard_queries(stack)
        if where == "panel 'Ledger records written / s' A"
    ]
    [series] = stack.prometheus.query(records)
    assert float(series["value"][1]) > 0
