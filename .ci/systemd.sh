#!/usr/bin/env bash
# The unit on a real systemd: a Debian 12 booted under systemd-nspawn (../shared/MACHINE.md),
# the service installed in it as docs/operations.md says, and from the host a keep-alive load
# (.ci/systemd_load.py, 32 connections) while systemd restarts the service 3 times and reloads
# it twice. Fails unless: 0 failed requests, 0 duplicate numbers; after
# `systemctl kill -s KILL --kill-whom=main` systemd brings it back and it serves; `systemctl
# stop` ends with Result=success; the service ran as a dynamic user, never root; every
# journal command of docs/operations.md works on this real journal (.ci/systemd_journal.py);
# and the guide's backup (taken before the load) restored with the guide's own procedure, its
# shell block run as written (tests/system/guide_commands.py): the mark raised as the service's
# dynamic user, no file left that is not that user's, and then no number issued twice.
# Prints the figures (docs/reliability.md quotes them).
#
# Needs root. Installs debootstrap and systemd-container when missing; the root file system is
# cached under /tmp, keyed by its package list (about a minute to build, seconds to copy), and
# each run works on a copy that it removes on exit, with the container
# (TRACKING_SYSTEMD_KEEP=1 keeps both, to look around).
set -euo pipefail
cd "$(dirname "$0")/.."

# jq, sqlite3, curl: docs/operations.md's journal commands, backup and restore use them.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,procps,jq,sqlite3,curl
CACHE=/tmp/tracking-systemd-rootfs-$(echo "$PACKAGES" | sha256sum | cut -c1-12)
CONNECTIONS=32
RESTARTS=3
RELOADS=2
AFTER_EACH=3000 # answered requests to wait for between two restarts or reloads

say() { printf '\n== systemd.sh: %s\n' "$*"; }
fail() {
    printf 'systemd.sh: FAILED: %s\n' "$*" >&2
    exit 1
}

if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
    say "installing debootstrap and systemd-container"
    flock /tmp/apt.lock apt-get update -qq
    DEBIAN_FRONTEND=noninteractive flock /tmp/apt.lock apt-get install -y -qq \
        --no-install-recommends debootstrap systemd-container >/dev/null
fi

if [ ! -e "$CACHE/.complete" ]; then
    say "building the Debian 12 root file system in $CACHE"
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    rm -rf "$CACHE.partial"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$CACHE.partial" "$mirror" \
        >/dev/null
    touch "$CACHE.partial/.complete"
    rm -rf "$CACHE"
    mv "$CACHE.partial" "$CACHE"
fi

RUN=$(mktemp -d /tmp/tracking-systemd.XXXXXX)
ROOT=$RUN/root
NSPAWN=
LOAD=
cleanup() {
    [ -n "$LOAD" ] && kill "$LOAD" 2>/dev/null
    if [ -n "${TRACKING_SYSTEMD_KEEP:-}" ]; then # to look around after a failure
        echo "systemd.sh: kept: nsenter -t $(pgrep -P "$NSPAWN" | head -n 1) -a bash; then kill $NSPAWN; rm -rf $RUN"
        return
    fi
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        kill -TERM "$NSPAWN" # a clean shutdown of the container
        for _ in $(seq 300); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NSPAWN" 2>/dev/null || true
    fi
    rm -rf "$RUN"
}
trap cleanup EXIT

say "booting a copy of it"
cp -a "$CACHE" "$ROOT"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
systemd-nspawn -D "$ROOT" --boot --register=no --keep-unit -q >"$RUN/console.log" 2>&1 &
NSPAWN=$!

# The container's systemd is the nspawn process's child; commands run in all its namespaces
# with a clean environment (not the host's PIP_* and the like).
container_pid() { pgrep -P "$NSPAWN" | head -n 1; }
inside() { nsenter -t "$(container_pid)" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
for _ in $(seq 600); do
    state=$( (inside systemctl is-system-running 2>/dev/null) || true)
    case "$state" in running | degraded) break ;; esac
    kill -0 "$NSPAWN" 2>/dev/null || fail "the container did not boot: $(cat "$RUN/console.log")"
    sleep 0.1
done
case "$state" in running | degraded) ;; *) fail "the container did not boot ($state)" ;; esac

# A free port on the host, which the container shares.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

say "installing the service as docs/operations.md says (port $PORT)"
V=ci
RELEASE=/opt/tracking-releases/$V
mkdir -p "$ROOT$RELEASE"
# The release: what `git archive` of a tag holds (here the working tree's files, so that a
# local run tests uncommitted work too).
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | tar -x -C "$ROOT$RELEASE"
inside python3 -m venv "$RELEASE/.venv"
inside "$RELEASE/.venv/bin/pip" install --quiet --no-cache-dir "$RELEASE"
inside "$RELEASE/.venv/bin/python" -m compileall -q "$RELEASE"
inside ln -sfn "$RELEASE" /opt/tracking
inside install -d -m 0755 /etc/tracking
inside install -m 0600 /dev/null /etc/tracking/tracking.env
cat >"$ROOT/etc/tracking/tracking.env" <<EOF
TRACKING_CONFIG=/etc/tracking/tracking.toml
EOF
inside install -m 0644 /opt/tracking/config/tracking.toml /etc/tracking/tracking.toml
# No access log: journald in this container stops storing the service's lines once its 32 MiB
# journal file is full (about 37,000 lines, a minute of this load), and the checks below read
# the supervisor's lines.
printf 'workers = 2\naccess_log = false\n' >>"$ROOT/etc/tracking/tracking.toml"
inside install -m 0644 /opt/tracking/config/tracking.socket /opt/tracking/config/tracking.service \
    /etc/systemd/system/
mkdir -p "$ROOT/etc/systemd/system/tracking.socket.d"
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$PORT" \
    >"$ROOT/etc/systemd/system/tracking.socket.d/address.conf"
inside systemctl daemon-reload
inside systemctl enable --quiet --now tracking.socket tracking.service
inside systemctl is-active --quiet tracking.service || fail "tracking.service is not active"

guide_block() { python3 tests/system/guide_commands.py "$1"; }
say "an online backup, as docs/operations.md takes it (restored at the end)"
inside bash -euo pipefail -c "$(guide_block '### Taking a backup')"
backup=$(inside sh -c 'ls /var/backups/tracking/*.sqlite3')
echo "backup: $backup"

unit() { inside systemctl show -p "$1" --value tracking.service; }
answered() { cat "$RUN/progress" 2>/dev/null || echo 0; }
wait_for_answers() { # until $1 more requests were answered
    local target=$(($(answered) + $1))
    for _ in $(seq 1200); do
        [ "$(answered)" -ge "$target" ] && return 0
        kill -0 "$LOAD" 2>/dev/null || fail "the load stopped"
        sleep 0.05
    done
    fail "the load got no $1 answers in a minute"
}
# Lines with message $1 since the epoch time $2 (the journal holds every access line: reading
# only the last seconds of it keeps this fast).
journal_count() {
    inside journalctl -u tracking -o cat --since "@$2" | grep -c "\"message\": \"$1\"" || true
}

start_load() { # $1: the phase's name
    rm -f "$RUN/progress"
    python3 .ci/systemd_load.py --port "$PORT" --connections "$CONNECTIONS" \
        --out "$RUN/$1.json" --numbers "$RUN/$1.numbers" --progress "$RUN/progress" &
    LOAD=$!
}
check_figures() { # the JSON files of the phases: no failure, no number twice, even across them
    python3 - "$@" <<'EOF'
import json, sys
numbers = []
for path in sys.argv[1:]:
    figures = json.load(open(path))
    assert figures["failed"] == 0, f"{path}: {figures['failed']} failed requests"
    assert figures["answered"] > 0, path
    numbers += open(path.removesuffix(".json") + ".numbers").read().split()
assert len(set(numbers)) == len(numbers), f"{len(numbers) - len(set(numbers))} duplicates"
print(f"{len(numbers)} numbers, none twice")
EOF
}
stop_load() { # $1: the phase's name; prints its figures and checks them
    kill -TERM "$LOAD"
    wait "$LOAD"
    LOAD=
    echo "$1: $(cat "$RUN/$1.json")"
    check_figures "$RUN/$1.json"
}

say "keep-alive load, $CONNECTIONS connections: first with nothing happening, for comparison"
start_load steady
wait_for_answers $((AFTER_EACH * 3))
stop_load steady

say "the same load through $RESTARTS restarts"
start_load restarts
wait_for_answers "$AFTER_EACH"
for i in $(seq "$RESTARTS"); do
    began=$(date +%s.%N)
    inside systemctl restart tracking.service
    awk -v i="$i" -v a="$began" -v b="$(date +%s.%N)" \
        'BEGIN { printf "restart %s: systemctl restart took %.2f s\n", i, b - a }'
    # Where the time went, from the supervisor's log lines.
    inside journalctl -u tracking -o cat --since "@${began%.*}" | python3 -c '
import datetime, json, sys
began = datetime.datetime.fromtimestamp(float(sys.argv[1]), datetime.timezone.utc)
at = {}
for line in sys.stdin:
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    logged = datetime.datetime.fromisoformat(entry.get("@timestamp", "1970-01-01T00:00:00Z"))
    if entry.get("log.logger") == "supervisor" and logged >= began:
        at.setdefault(entry["message"], logged)
steps = ["stopping: draining workers", "stopping: allocator", "stopped", "configuration",
         "service ready"]
if steps[0] in at:
    print("  " + ", ".join(f"{step} +{(at[step] - at[steps[0]]).total_seconds():.3f} s"
                           for step in steps if step in at))
' "$began"
    wait_for_answers "$AFTER_EACH"
done
stop_load restarts

say "the same load through $RELOADS reloads"
start_load reloads
wait_for_answers "$AFTER_EACH"
children() { inside ps --ppid "$(unit MainPID)" -o pid= | sort; }
for i in $(seq "$RELOADS"); do
    # The first reload adds a worker, the second takes it away again.
    workers=$((2 + i % 2))
    sed -i "s/^workers = .*/workers = $workers/" "$ROOT/etc/tracking/tracking.toml"
    children >"$RUN/before"
    began=$(date +%s.%N)
    # Returns once the supervisor says READY=1 again, after its RELOADING=1: workers replaced.
    inside systemctl reload tracking.service
    awk -v i="$i" -v a="$began" -v b="$(date +%s.%N)" \
        'BEGIN { printf "reload %s: systemctl reload took %.2f s\n", i, b - a }'
    # Every worker is new, and the old ones are gone once drained; the allocator stays.
    for _ in $(seq 300); do
        children >"$RUN/after"
        [ "$(comm -12 "$RUN/before" "$RUN/after" | wc -l)" -eq 1 ] &&
            [ "$(comm -13 "$RUN/before" "$RUN/after" | wc -l)" -eq "$workers" ] && break
        sleep 0.1
    done
    [ "$(comm -13 "$RUN/before" "$RUN/after" | wc -l)" -eq "$workers" ] ||
        fail "reload $i: not $workers new workers"
    [ "$(comm -12 "$RUN/before" "$RUN/after" | wc -l)" -eq 1 ] || fail "reload $i: old workers left"
    echo "reload $i: $workers workers, all new"
    wait_for_answers "$AFTER_EACH"
done
stop_load reloads
check_figures "$RUN"/{steady,restarts,reloads}.json

say "the service ran as a dynamic user"
main=$(unit MainPID)
uid=$(inside awk '/^Uid:/ {print $2}' "/proc/$main/status")
owner=$(inside stat -c %u /var/lib/private/tracking)
echo "main pid $main: uid $uid; the state directory's owner: uid $owner"
[ "$uid" -ne 0 ] || fail "the service runs as root"
# systemd's range for dynamic users (DynamicUser=yes).
[ "$uid" -ge 61184 ] && [ "$uid" -le 65519 ] || fail "uid $uid is not a dynamic user's"
[ "$owner" -eq "$uid" ] || fail "the state directory is not the dynamic user's"
for pid in $(inside pgrep -u 0 -f /opt/tracking/run.py || true); do
    fail "process $pid of the service runs as root"
done

say "systemctl kill -s KILL --kill-whom=main: systemd brings it back"
restarts_before=$(unit NRestarts)
inside systemctl kill -s KILL --kill-whom=main tracking.service
for _ in $(seq 1200); do
    if [ "$(unit NRestarts)" -gt "$restarts_before" ] && [ "$(unit ActiveState)" = active ] &&
        [ "$(unit SubState)" = running ]; then
        break
    fi
    sleep 0.05
done
[ "$(unit NRestarts)" -gt "$restarts_before" ] || fail "systemd did not restart the service"
[ "$(unit MainPID)" != "$main" ] || fail "the main process is the same"
python3 .ci/systemd_load.py --port "$PORT" --connections 4 --requests 400 \
    --out "$RUN/after-kill.json" --numbers "$RUN/after-kill.numbers"
echo "after the kill: $(cat "$RUN/after-kill.json")"
check_figures "$RUN"/{steady,restarts,reloads,after-kill}.json

say "systemctl stop"
# The mark the service holds, for the restore's "Choosing N" below.
status_reserved=$(python3 -c '
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/allocator/status", timeout=30) as r:
    print(json.load(r)["reserved"])
' "$PORT")
began=$(date +%s)
inside systemctl stop tracking.service
result=$(unit Result)
echo "Result=$result"
[ "$result" = success ] || fail "stop ended with Result=$result"
# journald may still be writing the access lines of the load: give it time to catch up.
for _ in $(seq 60); do
    [ "$(journal_count stopped "$began")" -ge 1 ] && break
    sleep 0.5
done
if [ "$(journal_count stopped "$began")" -ne 1 ]; then
    inside journalctl -u tracking -o cat --since "@$began" | grep -v '"access"' | tail -n 30
    fail "no clean stop in the journal"
fi
[ "$(journal_count "child did not stop in time; killing" 0)" -eq 0 ] || fail "a child was killed"

say "every journal command of docs/operations.md, on this real journal"
stored=$(inside python3 -c '
import sqlite3, sys
store = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(store.execute("SELECT reserved FROM counter WHERE id = 1").fetchone()[0])
' /var/lib/private/tracking/tracking.sqlite3)
python3 .ci/systemd_journal.py --stored "$stored" --status-reserved "$status_reserved" -- \
    nsenter -t "$(container_pid)" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin ||
    fail "a journal command of docs/operations.md (above)"

say "restoring the backup as docs/operations.md says, its block as written"
# N as the guide chooses it: above every mark the service held, with a margin.
N=$(((stored > status_reserved ? stored : status_reserved) + 1000000000))
restore=$(guide_block '### Restoring (systemd, SQLite)')
# Only the backup's name, N and the port differ from the guide's words; each must be there.
for word in tracking-20261120T020000Z.sqlite3 1009800000 127.0.0.1:8000; do
    [[ $restore == *"$word"* ]] || fail "the guide's restore no longer says $word"
done
restore=${restore//tracking-20261120T020000Z.sqlite3/$(basename "$backup")}
restore=${restore//1009800000/$N}
restore=${restore//127.0.0.1:8000/127.0.0.1:$PORT}
# This script started the service more often than StartLimitBurst allows in 5 minutes; an
# operator's restore does not.
inside systemctl reset-failed tracking.service
inside bash -euo pipefail -c "$restore" >"$RUN/restore.log" 2>&1 || {
    cat "$RUN/restore.log"
    fail "the guide's restore procedure (above)"
}
cat "$RUN/restore.log"
grep -q '"message": "reservation mark raised"' "$RUN/restore.log" || fail "no mark raised"
uid=$(inside awk '/^Uid:/ {print $2}' "/proc/$(unit MainPID)/status")
others=$(inside find /var/lib/private/tracking ! -uid "$uid")
[ -z "$others" ] || fail "files not of the service's user $uid: $others"
start_load restored
wait_for_answers "$AFTER_EACH"
stop_load restored
check_figures "$RUN"/{steady,restarts,reloads,after-kill,restored}.json
next_after=$(python3 -c '
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/allocator/status", timeout=30) as r:
    print(json.load(r)["next"])
' "$PORT")
echo "restored: the backup's mark raised to $N; the service went on from $next_after"
[ "$next_after" -ge "$N" ] || fail "next $next_after is below N $N"
say "passed"
