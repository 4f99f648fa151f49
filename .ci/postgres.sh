#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for the tests: initdb into a fresh directory under /tmp as the
# `postgres` user, listen on a Unix socket in that directory only (no TCP port), create the
# database `tracking`.
#
#   source .ci/postgres.sh        exports the variables below into this shell, and stops the
#                                 server when the shell exits (unless an EXIT trap is already set)
#   bash .ci/postgres.sh          starts it and prints the same variables as `export` lines
#   bash .ci/postgres.sh stop DIR stops the server whose data directory is DIR and removes it
#
# Exported for the tests:
#   TRACKING_TEST_POSTGRES_URL   the database URL (postgresql://postgres@/tracking?host=SOCKET_DIR)
#   TRACKING_TEST_POSTGRES_DATA  the data directory, so a test can `pg_ctl restart` the server
#   TRACKING_TEST_POSTGRES_BIN   the directory of initdb, pg_ctl, postgres
#
# Left running, it is harmless: no TCP port, a socket only its owner and root can reach, and
# about 30 MB of memory.

TRACKING_PG_VERSION=15
TRACKING_PG_BIN=/usr/lib/postgresql/$TRACKING_PG_VERSION/bin

# Runs a command as the `postgres` user when we are root (initdb refuses to run as root), else
# as ourselves: a developer without root can source this too.
_tracking_pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_tracking_pg_install() {
    [ -x "$TRACKING_PG_BIN/initdb" ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "postgres.sh: $TRACKING_PG_BIN/initdb is missing; install postgresql-$TRACKING_PG_VERSION" >&2
        return 1
    fi
    # Debian's package would create and start a cluster of its own on port 5432: we want none.
    # A drop-in (createcluster.conf includes createcluster.d), so no packaged file is touched.
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/tracking-ci.conf
    # `apt-get update` only when the package lists do not know the package yet.
    if ! apt-cache show "postgresql-$TRACKING_PG_VERSION" >/dev/null 2>&1; then
        apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "postgresql-$TRACKING_PG_VERSION" >/dev/null
}

_tracking_pg_start() {
    _tracking_pg_install || return 1
    local root data owner
    # Short: the socket path (ROOT/.s.PGSQL.5432) must fit in 107 bytes.
    root=$(mktemp -d /tmp/tn-pg.XXXXXX) || return 1
    data=$root/data
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$root"
    fi
    chmod 0700 "$root"
    owner=$(stat -c %U "$root")
    _tracking_pg_as_owner "$TRACKING_PG_BIN/initdb" -D "$data" -U postgres -E UTF8 \
        --auth-local=trust --no-instructions >"$root/initdb.log" 2>&1 || {
        cat "$root/initdb.log" >&2
        return 1
    }
    # `trust` only for the `postgres` role, which the tests use to create databases and roles;
    # every other role must give its password, so that the password paths are real.
    cat >"$data/pg_hba.conf" <<EOF
local all postgres trust
local all all scram-sha-256
EOF
    cat >>"$data/postgresql.conf" <<EOF

# Set by .ci/postgres.sh. Kept here, not on the command line, so that \`pg_ctl restart\` (which a
# test runs) restarts with the same settings.
listen_addresses = ''
unix_socket_directories = '$root'
unix_socket_permissions = 0700
# Durability as in production: the tests check what survives.
fsync = on
synchronous_commit = on
EOF
    _tracking_pg_as_owner "$TRACKING_PG_BIN/pg_ctl" -D "$data" -l "$root/server.log" -w -t 60 \
        start >/dev/null || {
        cat "$root/server.log" >&2
        return 1
    }
    "$TRACKING_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$root" -U postgres -d postgres \
        -c "CREATE DATABASE tracking" || return 1
    export TRACKING_TEST_POSTGRES_URL="postgresql://postgres@/tracking?host=$root"
    export TRACKING_TEST_POSTGRES_DATA=$data
    export TRACKING_TEST_POSTGRES_BIN=$TRACKING_PG_BIN
    echo "postgres.sh: PostgreSQL $TRACKING_PG_VERSION for $owner on $root" >&2
}

# Stops the server of a data directory (default: the one this shell started) and removes it.
tracking_postgres_stop() {
    local data=${1:-${TRACKING_TEST_POSTGRES_DATA:-}}
    [ -n "$data" ] && [ -d "$data" ] || return 0
    _tracking_pg_as_owner "$TRACKING_PG_BIN/pg_ctl" -D "$data" -m fast -w -t 60 stop \
        >/dev/null 2>&1 || true
    rm -rf "$(dirname "$data")"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # Sourced (from .ci/run): leave the variables in the caller's shell.
    _tracking_pg_start || return 1
    if [ -z "$(trap -p EXIT)" ]; then
        trap tracking_postgres_stop EXIT
    fi
else
    set -euo pipefail
    if [ "${1:-}" = stop ]; then
        tracking_postgres_stop "${2:?usage: postgres.sh stop DATA_DIR}"
        exit 0
    fi
    _tracking_pg_start
    printf 'export %s=%q\n' \
        TRACKING_TEST_POSTGRES_URL "$TRACKING_TEST_POSTGRES_URL" \
        TRACKING_TEST_POSTGRES_DATA "$TRACKING_TEST_POSTGRES_DATA" \
        TRACKING_TEST_POSTGRES_BIN "$TRACKING_TEST_POSTGRES_BIN"
fi
