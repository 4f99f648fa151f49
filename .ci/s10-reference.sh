#!/usr/bin/env bash
# An S10 implementation that is not ours, for tests/service/test_s10_reference.py:
# ts-tracking-number from the npm registry, at the version its package-lock.json pins, with the
# machine's Node.js. Nothing to clean up: a folder of the clone, no service.
set -euo pipefail
cd "$(dirname "$0")/../tests/service/s10_reference"
npm ci --no-audit --no-fund --loglevel=error
