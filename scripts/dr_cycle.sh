#!/usr/bin/env bash
# One full DR cycle of the shop on a fresh lab, with the figures of each step as JSON:
# a DR test, relocate, relocate back, failover (link cut, then the main site killed),
# the main site back (fenced), failback.  Usage: scripts/dr_cycle.sh [LAB_DIR] [OUT_DIR]
set -euo pipefail
LAB=${1:-/tmp/dr-cycle-lab}
OUT=${2:-/tmp/dr-cycle-out}
DRKIT=${DRKIT:-.venv/bin/dr-kit}
rm -rf "$LAB" "$OUT"
mkdir -p "$OUT"
trap '$DRKIT lab down --dir "$LAB" --purge >/dev/null 2>&1 || true' EXIT
$DRKIT lab up --dir "$LAB" --rate 20 >/dev/null
$DRKIT protect shop --dir "$LAB" --wait 60 >/dev/null
sleep 3
$DRKIT dr test shop --dir "$LAB" --json --quiet > "$OUT/1-test.json"
$DRKIT dr relocate shop --dir "$LAB" --json --quiet > "$OUT/2-relocate.json"
$DRKIT dr relocate shop --dir "$LAB" --json --quiet > "$OUT/3-relocate-back.json"
$DRKIT lab link --dir "$LAB" --cut >/dev/null
sleep 1.5  # the main site keeps writing what the backup never gets
$DRKIT lab crash main --dir "$LAB" >/dev/null
$DRKIT lab link --dir "$LAB" --restore >/dev/null
$DRKIT dr failover shop --dir "$LAB" --json --quiet > "$OUT/4-failover.json"
$DRKIT lab up --dir "$LAB" >/dev/null  # the old main returns: fenced, its shop not restarted
$DRKIT dr failback shop --dir "$LAB" --json --quiet > "$OUT/5-failback.json"
$DRKIT dr status shop --dir "$LAB" > "$OUT/status.txt"
for f in "$OUT"/*.json; do echo "== $(basename "$f")"; cat "$f"; echo; done
cat "$OUT/status.txt"
