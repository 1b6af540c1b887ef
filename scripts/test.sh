#!/usr/bin/env bash
# The test run behind `make test` (and CI): lint (ruff, import contracts, mypy), then the
# whole suite on two workers; arguments go to pytest (`make test-fast` passes -m "not slow").
# Starts the services the tests need on 127.0.0.1 (a throwaway PostgreSQL) and installs
# Debian's kubectl and sqlite3 when we may (root), so the kubectl compatibility tests and
# the sqlite3 checks of exports run too.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

if [ "$(id -u)" = 0 ] && ! command -v kubectl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing kubectl (Debian kubernetes-client) for the compatibility tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client) >/dev/null 2>&1 \
        || echo "kubectl could not be installed; its tests will be skipped"
fi
if [ "$(id -u)" = 0 ] && ! command -v sqlite3 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing the sqlite3 command line tool (exports are checked with it)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3) >/dev/null 2>&1 \
        || echo "sqlite3 could not be installed; its checks will be skipped"
fi

# The browser tests (tests/test_browser.py): Playwright drives Debian's chromium, never a
# browser of its own; installed here when we may (root), skipped with a reason otherwise.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ "$(id -u)" = 0 ] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian) for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "chromium could not be installed; the browser tests will be skipped"
fi

PGDIR=${DR_KIT_PG_DIR:-/tmp/dr-kit-pg}
if pg=$(bash scripts/postgres.sh start "$PGDIR" 2>/tmp/dr-kit-pg.err); then
    export "$(echo "$pg" | grep '^DR_KIT_PG_URL=')"
    trap 'bash scripts/postgres.sh stop "$PGDIR" >/dev/null 2>&1 || true' EXIT
else
    echo "PostgreSQL could not be started ($(tail -n1 /tmp/dr-kit-pg.err)); its tests will be skipped"
fi

bash scripts/space.sh "${TMPDIR:-/tmp}" 4 "the test suite (its lab sites, under TMPDIR)"
$BIN/ruff check dr_kit tests || exit 1
$BIN/lint-imports --no-cache >/tmp/dr-kit-lint-imports.log 2>&1 \
    || { cat /tmp/dr-kit-lint-imports.log; exit 1; }
$BIN/mypy dr_kit || exit 1
# two workers by default (DR_KIT_TEST_WORKERS=1 for one process), one test file per worker at
# a time: a file's tests share their fixtures, and most of them wait on lab processes
WORKERS=${DR_KIT_TEST_WORKERS:-2}
XDIST=()
[ "$WORKERS" -gt 1 ] && XDIST=(-n "$WORKERS" --dist loadfile)
$BIN/python -m pytest -q -p no:cacheprovider "${XDIST[@]}" "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests collected"; exit 1; }
exit $rc
