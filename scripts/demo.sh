#!/usr/bin/env bash
# The main job behind `make demo`: the walkthrough end to end against the embedded lab.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
mkdir -p "$OUT"
if .venv/bin/dr-kit notebooks --help >/dev/null 2>&1; then
    exec .venv/bin/dr-kit notebooks run --out "$OUT"
fi
# Until the notebooks land: the crash-consistency demonstration.
.venv/bin/dr-kit crashtest --trials "${TRIALS:-50}" --seed "${SEED:-1}" | tee "$OUT/crashtest.txt"
