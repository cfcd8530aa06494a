#!/usr/bin/env bash
# The GPU check: every CUDA code path of specnb once, under 12 minutes on one GPU, one JSON record
# (outputs/gpu_check/<UTC time>/gpu_check.json) and a summary at the end. See specnb/bench/gpu_check.py.
#
#   tools/gpu_check.sh                      # on a GPU machine; creates .venv with a CUDA torch if missing
#   SPECNB_PYTHON=python3 tools/gpu_check.sh   # use a Python that already has CUDA torch (offline machines)
#   tools/gpu_check.sh --device cpu         # dry run of the plumbing on a machine without a GPU
#
# The real-model check needs SmolLM2 in the cache first (it never downloads): specnb models fetch smollm2-135m-instruct
# Other options: --skip grid,bench  --edge-threads N  --out DIR  (python -m specnb.bench.gpu_check --help)
# Exit code: 0 every check passed, 1 some check failed, 2 no GPU to check (one line says why).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${SPECNB_PYTHON:-}"
if [ -z "$PY" ]; then
    if [ ! -x .venv/bin/python ]; then
        # the README's install; TORCH=torch takes PyPI's default build, which is the CUDA one on Linux
        make TORCH="${TORCH:-torch}" setup
    fi
    PY=.venv/bin/python
fi
# run from this checkout even where specnb is not installed into $PY
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" -m specnb.bench.gpu_check "$@"
