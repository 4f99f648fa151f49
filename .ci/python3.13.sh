#!/usr/bin/env bash
# The README promises Python 3.11 or newer: .ci/run tests on the default python3 (3.11), and
# this runs the same `make test` on Python 3.13, in a virtualenv of its own (.venv-3.13),
# removed afterwards. The interpreter is pyenv's 3.13 (our machines), else python3.13 on the
# PATH, else Debian's or Ubuntu's python3.13 package when apt has one; no 3.13 fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
want=3.13

is_wanted() {
    [ -n "$1" ] && "$1" -c "import sys, ensurepip, venv; sys.exit(sys.version_info[:2] != (3, 13))" 2>/dev/null
}

find_python() {
    local root candidate
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    # The newest 3.13.x that pyenv has, then whatever the PATH and the system offer.
    for candidate in $(ls -d "$root"/versions/$want.* 2>/dev/null | sort -V -r); do
        if is_wanted "$candidate/bin/python$want"; then echo "$candidate/bin/python$want"; return; fi
    done
    for candidate in "$(command -v python$want || true)" /usr/bin/python$want /usr/local/bin/python$want; do
        if is_wanted "$candidate"; then echo "$candidate"; return; fi
    done
}

python=$(find_python)
if [ -z "$python" ] && apt-cache show "python$want-venv" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "python$want" "python$want-venv" >/dev/null
    python=$(find_python)
fi
if [ -z "$python" ]; then
    echo "python3.13.sh: no Python $want with venv found (pyenv versions, PATH, /usr/bin, apt)" >&2
    exit 1
fi
echo "python3.13.sh: make test on $("$python" --version) ($python)"
trap 'rm -rf .venv-$want' EXIT
make test PYTHON="$python" VENV=".venv-$want"
