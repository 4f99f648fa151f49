#!/usr/bin/env bash
# A real Prometheus against a real run.py (tests/ops/test_prometheus.py): it scrapes the
# service every second and loads config/prometheus-alerts.yml; after some traffic (numbers, a
# 400, a 404) its HTTP API must show the target up, every rule evaluated without error and no
# alert active, and every query of config/grafana-dashboard.json accepted and reading only
# series and labels that exist.
#
# The server is Debian's prometheus package, downloaded and unpacked rather than installed
# (installing it would start a Prometheus service), like promtool in .ci/ops-lint.sh. Runs on a
# fresh Debian machine as root; leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

printf '== prometheus: the server from Debian'"'"'s package\n'
mkdir -p "$work/deb"
# apt drops privileges to _apt for downloads; let it write there.
if id _apt >/dev/null 2>&1; then chown _apt "$work/deb"; fi
(cd "$work/deb" && apt-get download -qq prometheus 2>/dev/null) ||
    { apt-get update -qq && (cd "$work/deb" && apt-get download -qq prometheus); }
dpkg-deb --fsys-tarfile "$work"/deb/prometheus_*.deb | tar -x -C "$work" ./usr/bin/prometheus
"$work/usr/bin/prometheus" --version 2>&1 | head -n 1
printf '   unpacked in %d s\n' "$((SECONDS - started))"

printf '\n== tests/ops/test_prometheus.py\n'
TRACKING_TEST_PROMETHEUS="$work/usr/bin/prometheus" \
    make test PYTEST_ARGS="tests/ops/test_prometheus.py -p no:cacheprovider"

printf '\n== prometheus.sh passed in %d s\n' "$((SECONDS - started))"
