#!/usr/bin/env bash
# A throwaway PostgreSQL server for the portability tests, bound to 127.0.0.1 only.
#
#   scripts/postgres.sh [start] [DIR]   start (or find running) the cluster kept in DIR and
#                                       print DR_KIT_PG_URL=postgresql+psycopg://...
#   scripts/postgres.sh stop [DIR]      stop it (the data stays in DIR; rm -rf DIR to drop it)
#   scripts/postgres.sh status [DIR]    exit 0 when running
#
# DIR defaults to /tmp/dr-kit-pg, the port to 54329 ($DR_KIT_PG_PORT).  Installs Debian's
# `postgresql` package when no server binaries are found and we run as root.  Run as root,
# the server runs as the `postgres` user (initdb refuses root).  Local connections are
# trusted, so the printed URL carries no password.  Not for anything but tests: fsync is off.
#
# Typical use:  eval "$(scripts/postgres.sh)" && export DR_KIT_PG_URL && pytest -m postgres
set -euo pipefail

cmd=start
case "${1:-}" in
    start|stop|status) cmd=$1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
esac
DIR=${1:-/tmp/dr-kit-pg}
PORT=${DR_KIT_PG_PORT:-54329}
DB_USER=drkit
DB_NAME=drkit
DATA=$DIR/data
URL="postgresql+psycopg://$DB_USER@127.0.0.1:$PORT/$DB_NAME"

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bindir() {
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    fi
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    done
    d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    return 1
}

BIN=$(find_bindir || true)
if [ -z "$BIN" ]; then
    [ "$cmd" = start ] || die "no PostgreSQL server binaries found"
    [ "$(id -u)" -eq 0 ] || die "no PostgreSQL server binaries found; install Debian's postgresql package (as root: apt-get install -y postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq postgresql >/dev/null \
        || die "apt-get install postgresql failed"
    BIN=$(find_bindir) || die "postgresql installed but initdb/pg_ctl not found"
fi

# as root, everything that touches the cluster runs as the postgres user
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' user to run the server"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

running() { [ -f "$DATA/PG_VERSION" ] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

case "$cmd" in
    status)
        running && { echo "DR_KIT_PG_URL=$URL"; exit 0; }
        exit 1 ;;
    stop)
        if running; then
            as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || die "pg_ctl stop failed"
        fi
        exit 0 ;;
esac

# fast path: already running and set up
if [ -f "$DIR/ready" ] && running; then
    echo "DR_KIT_PG_URL=$URL"
    exit 0
fi

mkdir -p "$DIR"
[ "$(id -u)" -eq 0 ] && chown postgres: "$DIR"
exec 9>>"$DIR/lock"
flock 9  # a concurrent caller waits for the first one to finish

if [ ! -f "$DATA/PG_VERSION" ]; then
    as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        >"$DIR/initdb.log" 2>&1 \
        || { rm -rf "$DATA"; as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale; } \
            >"$DIR/initdb.log" 2>&1 \
        || die "initdb failed, see $DIR/initdb.log"
fi

if ! running; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null \
        || die "server did not start on 127.0.0.1:$PORT; last log lines: $(tail -n 3 "$DIR/server.log" 2>/dev/null | tr '\n' ' ')"
fi

if [ ! -f "$DIR/ready" ]; then
    psql_pg() { as_pg "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
    if [ "$(psql_pg -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" != 1 ]; then
        psql_pg -d postgres -c "CREATE ROLE $DB_USER LOGIN CREATEDB" >/dev/null
    fi
    # CREATEROLE: the read-only tests create a separate analyst role
    psql_pg -d postgres -c "ALTER ROLE $DB_USER CREATEROLE" >/dev/null
    if [ "$(psql_pg -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
        psql_pg -d postgres -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" >/dev/null
    fi
    touch "$DIR/ready"
fi
echo "DR_KIT_PG_URL=$URL"
