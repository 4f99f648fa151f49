#!/usr/bin/env bash
# What the label tests need beyond Python (tests/labels/, tests/service/test_labels.py):
# Debian's pdftoppm (poppler-utils) and rsvg-convert (librsvg2-bin) rasterise the PDF and SVG
# labels for the decoder, zbarimg (zbar-tools) is a second decoder, and Noto's fonts draw a
# customer's name in any script (a production host needs them too: docs/operations.md).
# Installed only when missing. Needs root (CI is).
set -euo pipefail
packages=(poppler-utils librsvg2-bin zbar-tools fonts-noto-core fonts-noto-cjk fonts-dejavu-core)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
    apt-get update -qq
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "labels.sh: installed ${missing[*]}"
