#!/bin/sh
# The capacity study's timed run (docs/capacity.md): the preset through the notebook, then the cost of a
# verifier without a session cache, with the load average before and after. Run from the repository root
# with PYTHONPATH set to it; OUT is a folder relative to the root (its records are committed as they are).
#   PYTHONPATH=$PWD flock /tmp/specnb-quiet.lock sh tools/capacity_run.sh docs/measurements/capacity-DATE
# More arguments go to papermill after the preset (a smaller run: -p ns '[1, 2, 4, 8, 16]' -p reps 1).
set -e
OUT=${1:?usage: tools/capacity_run.sh OUT_DIR [papermill overrides]}
shift
PY=${PYTHON:-python}
mkdir -p "$OUT"
{ echo "start: $(date -u +%FT%TZ)"; echo "overrides: $*"; echo "before: $(uptime)"; } > "$OUT/load.txt"
"$PY" -m papermill notebooks/capacity.ipynb "$OUT/capacity.ipynb" -f params/capacity.yaml "$@" -p out_dir "$OUT" \
    --cwd . --log-level WARNING --no-progress-bar
{ echo "after the study: $(uptime)"; echo "study done: $(date -u +%FT%TZ)"; } >> "$OUT/load.txt"
"$PY" tools/verify_cost.py --model zoo:tiny-cloud --lengths 64 128 256 448 \
    --model registry:smollm2-135m-instruct --lengths 256 512 1024 2048 --reps 3 > "$OUT/verify_cost.md" 2>/dev/null
{ echo "after verify_cost: $(uptime)"; echo "end: $(date -u +%FT%TZ)"; } >> "$OUT/load.txt"
