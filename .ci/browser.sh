#!/usr/bin/env bash
# What tests/console/ needs: Debian's chromium and its matching chromium-driver (Selenium is
# given the driver's path, so it never downloads one), and axe-core from the npm registry,
# unpacked into .cache/axe-core/ for the tests only: the service never serves it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if ! apt-cache show chromium-driver >/dev/null 2>&1; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null
fi
AXE_VERSION=4.14.1
if ! grep -qs "axe v$AXE_VERSION" .cache/axe-core/axe.min.js; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    (cd "$scratch" && npm pack --silent "axe-core@$AXE_VERSION" >/dev/null)
    tar -xzf "$scratch/axe-core-$AXE_VERSION.tgz" -C "$scratch" package/axe.min.js
    mkdir -p .cache/axe-core
    mv "$scratch/package/axe.min.js" .cache/axe-core/axe.min.js
fi
echo "browser.sh: $(chromium --version 2>/dev/null), axe-core $AXE_VERSION"
