#!/usr/bin/env bash
# Builds the real Dockerfile with podman and runs the image (tests/ops/test_image.py): it
# serves a number, runs as non-root, passes its HEALTHCHECK, stops with exit 0 after a clean
# drain, and a second container on the same volume continues without a duplicate.
#
# No registry serves container images here, so `FROM python:3.11-slim-bookworm` cannot be
# pulled. CI makes a stand-in under that very name (../shared/MACHINE.md): a minbase Debian 12
# with its python3 (3.11), debootstrapped from the machine's own Debian mirror. The Dockerfile
# stays as users build it. The same image is also built on the newest Python Debian has
# (Debian 13's python3.13, `podman build --from`), and the same tests run against it.
#
# Runs on a fresh Debian machine as root: installs podman and debootstrap when missing, caches
# each debootstrapped root under /tmp (keyed by suite, packages and mirror; both are made at
# once, in about two minutes), removes its images, containers, volumes and its
# containers.conf drop-in on exit. About 3 minutes on a fresh machine, 40-75 s with the cache.
#
#   bash .ci/podman.sh              both Pythons
#   TRACKING_CI_PYTHONS=bookworm bash .ci/podman.sh   only the stand-in of FROM
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
step_started=
step() {  # a step's header, and how long the one before took
    if [ -n "$step_started" ]; then printf -- '-- %d s\n' "$((SECONDS - step_started))"; fi
    printf '\n== %s\n' "$*"
    step_started=$SECONDS
}

# suite → the tag its stand-in gets. bookworm's is the name in FROM; the others are used with
# `podman build --from` (the same Dockerfile on another base).
from_name=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' Dockerfile | head -n 1)
declare -A BASE_TAG=(
    [bookworm]="$from_name"
    [trixie]="python:3.13-slim-trixie"
)
read -r -a suites <<<"${TRACKING_CI_PYTHONS:-bookworm trixie}"
PACKAGES=python3,python3-pip,python-is-python3,ca-certificates
CACHE=/tmp/tracking-ci-rootfs
CONF=/etc/containers/containers.conf.d/50-tracking-ci.conf
run_id="tracking-ci-$$"
work=$(mktemp -d)
images=()
made_conf=no

cleanup() {
    local status=$?
    set +e
    # The test removes its containers and volumes; these are what a failed run may leave.
    podman ps -a --filter "label=tracking-ci=$run_id" -q | xargs -r podman rm -f >/dev/null
    podman volume ls --filter "label=tracking-ci=$run_id" -q | xargs -r podman volume rm -f >/dev/null
    for image in "${images[@]}"; do podman rmi -f "$image" >/dev/null 2>&1; done
    for suite in "${suites[@]}"; do podman rmi -f "${BASE_TAG[$suite]}" >/dev/null 2>&1; done
    if [ "$made_conf" = yes ]; then rm -f "$CONF"; fi
    rm -rf "$work"
    printf '\n== podman.sh %s in %d s\n' "$([ $status -eq 0 ] && echo passed || echo FAILED)" \
        "$((SECONDS - started))"
    exit $status
}
trap cleanup EXIT

step "tools"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
    if ! apt-cache show podman debootstrap >/dev/null 2>&1; then apt-get update -qq; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman debootstrap >/dev/null
fi
podman --version
# The runtime refuses podman's default ulimits on this kernel (MACHINE.md).
if [ ! -e "$CONF" ]; then
    mkdir -p "$(dirname "$CONF")"
    printf '[containers]\ndefault_ulimits = []\n' >"$CONF"
    made_conf=yes
fi
mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null |
    head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

# A minbase Debian of `suite` with its python3, as a directory under $CACHE; made once.
stand_in_root() {
    local suite=$1 key root
    key=$(printf '%s %s %s' "$suite" "$PACKAGES" "$mirror" | sha256sum | cut -c1-12)
    root="$CACHE/$suite-$key"
    if [ ! -e "$root/.complete" ]; then
        rm -rf "$root" "$root.tmp"
        mkdir -p "$CACHE"
        debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$root.tmp" "$mirror" \
            >"$CACHE/$suite-$key.log" 2>&1 || {
            tail -n 20 "$CACHE/$suite-$key.log" >&2
            return 1
        }
        # The official image's pip installs into the system Python; Debian's refuses (PEP 668).
        rm -f "$root.tmp"/usr/lib/python3*/EXTERNALLY-MANAGED
        rm -rf "$root.tmp"/var/cache/apt/archives/*.deb "$root.tmp"/var/lib/apt/lists/*
        touch "$root.tmp/.complete"
        mv "$root.tmp" "$root"
    fi
    printf '%s\n' "$root"
}

step "debootstrap what $CACHE lacks: ${suites[*]}"
# All at once: debootstrap mostly waits for downloads and dpkg, so two take little more than one.
pids=()
for suite in "${suites[@]}"; do
    stand_in_root "$suite" >/dev/null &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

for suite in "${suites[@]}"; do
    step "stand-in ${BASE_TAG[$suite]}: Debian $suite"
    root=$(stand_in_root "$suite")
    # Package indexes are reached through the host's trust store: pip in the build needs it.
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    tar --exclude=./.complete -C "$root" -c . | podman import -q - "localhost/$run_id-$suite" >/dev/null
    podman tag "localhost/$run_id-$suite" "${BASE_TAG[$suite]}"
    podman rmi "localhost/$run_id-$suite" >/dev/null  # untag; the base tag keeps the image
done

for suite in "${suites[@]}"; do
    image="localhost/$run_id-$suite"
    step "build the Dockerfile on ${BASE_TAG[$suite]} as $image"
    images+=("$image")
    # chroot isolation: the default fails on this kernel's hybrid cgroups; docker format keeps
    # the HEALTHCHECK. --from replaces FROM for the other Pythons; FROM's own name needs none.
    from=()
    if [ "${BASE_TAG[$suite]}" != "$from_name" ]; then from=(--from "${BASE_TAG[$suite]}"); fi
    podman build -q --isolation=chroot --format docker --pull=never --network=host \
        "${from[@]}" -t "$image" . >"$work/build-$suite.log" 2>&1 || {
        cat "$work/build-$suite.log" >&2
        exit 1
    }
    unshare -m --propagation private sh -c 'umount -l /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup &&
        exec podman run --rm --no-healthcheck --cgroups=disabled --network=host "$1" python --version' \
        sh "$image"
done

step "tests/ops/test_image.py on ${images[*]}"
TRACKING_TEST_IMAGES="${images[*]}" TRACKING_TEST_LABEL="tracking-ci=$run_id" \
    make test PYTEST_ARGS="tests/ops/test_image.py -p no:cacheprovider"
step "podman.sh: cleaning up"
