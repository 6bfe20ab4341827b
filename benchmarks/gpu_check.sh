#!/usr/bin/env bash
# The GPU check in one go (benchmarks/README.md): install what this machine lacks from
# benchmarks/wheels/ (made by benchmarks/wheels.sh on a machine with a registry) and gradlab
# itself, without a registry; then run benchmarks/gpu_check.py. Results go to $OUT, or
# results/gpu_check/: gpu_check.json and gpu_check.md (written as each section ends),
# gpu_check.log, and measured.json (engine=auto's figures for this GPU).
#
#     bash benchmarks/gpu_check.sh [--budget SECONDS]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/gpu_check}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then  # the project's environment where there is one, else the machine's
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
{
    if ! "$PYTHON" -c "import gradlab.models, hydra, omegaconf" 2>/dev/null; then
        echo "[gpu_check] installing: $(ls benchmarks/wheels 2>/dev/null | wc -l) wheels from benchmarks/wheels, then gradlab"
        if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
            "$PYTHON" -m pip install -q --no-index --no-deps --no-compile benchmarks/wheels/*.whl || exit 1
        fi
        # gradlab as a user installs it, from this checkout, without a registry
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
    fi
    "$PYTHON" benchmarks/gpu_check.py --out "$OUT" "$@"
} 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
