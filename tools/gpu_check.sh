#!/usr/bin/env bash
# One-shot GPU check (tools/gpu_check.py): run from the repository root on a GPU machine that has
# torch with CUDA; no TensorRT and no internet needed. Writes results.json + summary.md under $OUT
# (default benchmarks/results/gpu-check-<date>), and, when nsys is on PATH, an Nsight Systems
# summary of one short torch-graph run (nsys-*.txt). Whole run: about 8 minutes at most.
#   OUT=/tmp/out bash tools/gpu_check.sh            # extra arguments go to gpu_check.py
#   bash tools/gpu_check.sh --dry-run               # on a CPU: checks the script itself
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu-check-$(date -u +%Y%m%d-%H%M)}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p "$OUT"
timeout "${GPU_CHECK_TIMEOUT_S:-420}" "$PY" tools/gpu_check.py --out "$OUT" "$@"
if command -v nsys >/dev/null 2>&1 && [[ " $* " != *" --dry-run "* ]]; then
    # a short second run under Nsight Systems: NVTX ranges {graph}/{component} per engine call
    timeout 90 nsys profile -t cuda,nvtx -o "$OUT/nsys-trace" --force-overwrite true \
        "$PY" tools/gpu_check.py --out "$OUT/nsys-run" --precisions float16 --batches 1 \
        --timing-precisions float16 --timing-batches 1 --repeat 2 --generations 2 --budget-s 60 \
        --infinity-model none >/dev/null 2>&1 || true
    if [ -f "$OUT/nsys-trace.nsys-rep" ]; then
        timeout 40 nsys stats --report cuda_gpu_kern_sum,nvtx_sum --format csv "$OUT/nsys-trace.nsys-rep" \
            > "$OUT/nsys-summary.txt" 2>&1 || true
    fi
fi
echo "gpu_check: results in $OUT"
