#!/usr/bin/env bash
# The main job behind `make demo`: the walkthrough notebooks end to end against the
# embedded lab (started in .dr-lab when it is not running).  Results go to $OUT (default
# out/).  The lab is stopped at the end; KEEP_LAB=1 keeps it running for exploration.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out}
LAB=${DR_KIT_LAB_DIR:-.dr-lab}
mkdir -p "$OUT"
bash scripts/space.sh "$LAB" 2 "the demo (its lab sites and outputs)"
status=0
.venv/bin/dr-kit notebooks run --out "$OUT" -p lab_dir "$LAB" || status=$?
if [ "${KEEP_LAB:-0}" != 1 ]; then
    .venv/bin/dr-kit lab down --dir "$LAB" >/dev/null 2>&1 || true
    echo "lab stopped (its state is kept in $LAB; KEEP_LAB=1 make demo leaves it running)"
fi
exit $status
