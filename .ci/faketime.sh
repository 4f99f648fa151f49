#!/usr/bin/env bash
# libfaketime for tests/system/test_clock.py, which moves the wall clock under a running
# service. Debian's `faketime` package; installed only when it is missing. Needs root (CI is).
set -euo pipefail
if compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null; then
    exit 0
fi
if ! apt-cache show faketime >/dev/null 2>&1; then
    apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends faketime >/dev/null
compgen -G "/usr/lib/*/faketime/libfaketimeMT.so.1" >/dev/null
echo "faketime.sh: libfaketime installed"
