#!/usr/bin/env bash
# One prepared GPU check (run on a machine with CUDA, from the repository root):
#   1. build the CUDA extension (sm_90) into the venv,
#   2. run every GPU correctness test: kernels vs torch references (compiled Triton, not the
#      interpreter; CUDA C++), engine graphs vs eager and bf16, the rest of the engine suite,
#   3. run the kernel and engine benchmarks (GPU sections included),
#   4. write bench/results/<date>-h200.json (benchmarks) and <date>-h200-tests.txt.
# Usage: bash bench/gpu_check.sh [results_dir]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench/results}
stamp=$(date +%Y-%m-%d)
mkdir -p "$out"
make install >/dev/null
export TRITON_INTERPRET=0 OMP_NUM_THREADS=4
.venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
.venv/bin/pip install -q --no-build-isolation -e . || echo "CUDA extension build failed; backend='cuda' will report why"
.venv/bin/pytest -q tests/kernels tests/engine -p no:cacheprovider 2>&1 | tee "$out/$stamp-h200-tests.txt"
.venv/bin/pytest -q bench --benchmark-only --benchmark-json="$out/$stamp-h200.json" \
    -k "gpu or cuda or triton or engine or authors" 2>&1 | tail -60
echo "results: $out/$stamp-h200.json"
