#!/usr/bin/env bash
# What the test suite needs beyond Python: jq, for tests/system/test_operations_guide.py,
# which runs docs/operations.md's journal commands. Debian 12's jq 1.6 is the one the guide
# is written for. Nothing to clean up: a package, no service.
set -euo pipefail
command -v jq >/dev/null && exit 0
if ! apt-cache show jq >/dev/null 2>&1; then
    apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null
