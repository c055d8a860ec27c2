#!/usr/bin/env bash
# The one prepared GPU check, on the device machine (H200 image: its own python3 with CUDA torch
# and triton; nothing can be installed from a registry there). From the repository root:
#   here:   bash bench/gpu_wheels.sh                      (once: zarr and its needs into .whl/)
#   device: bash bench/gpu_check.sh [results_dir]         (carry: [".whl"]; ≈ 8 minutes at most)
# Stages, each under its own time limit so one hang cannot eat the lease:
#   1. install the carried wheels and this package (no deps) with the CUDA extension (sm_90);
#   2. GPU correctness: kernels vs torch references (compiled Triton, CUDA C++), the engine on the
#      GPU (graphs vs eager, bf16, the levels-only estimate through the fused level_argmax, the
#      default bundle's rollout vs the CPU reference);
#   3. the GPU benchmarks (kernels, engine vs the authors' loop) into <results_dir>/<date>-h200.json.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
stamp=$(date +%Y-%m-%d-%H%M)
mkdir -p "$out"
PY=${PYTHON:-python3}
export TRITON_INTERPRET=0 OMP_NUM_THREADS=4 SNS_BENCH_JSON=0
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())" || exit 1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # the package from this tree, no install
timeout 240 $PY setup.py -q build_ext --inplace \
    || echo "CUDA extension build failed; backend='cuda' tests will say why"
timeout 200 $PY -m pytest -q -p no:cacheprovider -m "gpu or not slow" tests/ops tests/engine \
    -k "gpu or cuda or triton or graph or bf16 or estimate" 2>&1 | tee "$out/$stamp-h200-tests.txt" | tail -25
timeout 150 $PY -m pytest -q -p no:cacheprovider bench --benchmark-only \
    --benchmark-json="$out/$stamp-h200.json" -k "gpu or cuda or triton" 2>&1 | tail -40
echo "results: $out/$stamp-h200.json, $out/$stamp-h200-tests.txt"
