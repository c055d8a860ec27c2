#!/usr/bin/env bash
# The one prepared GPU check, on a fresh device machine (the H200 image: python3 with CUDA torch and
# triton; nothing can be fetched there). From the repository root:
#   here, once:  bash bench/gpu_wheels.sh             (what the image lacks: zarr's wheels, nvtx,
#                                                      setuptools, into .whl/)
#   device:      bash bench/gpu_check.sh "$OUT"       (carry [".whl"]; timeout_s 540: 8 minutes at most)
#   here, dry:   PYTHON=/tmp/box/bin/python bash bench/gpu_check.sh --cpu /tmp/gpu-check
# The results folder (default bench/results) receives gpu-check-<stamp>.txt (the log) and
# bench-<stamp>-gpu-{kernels,engine}.json (pytest-benchmark's JSON with the summary; copy them into
# bench/results/).
# Stages, in order, each within what is left of BUDGET seconds (a hang cannot eat the lease); the
# first failure ends the check with "GPU CHECK FAILED: <stage>" and exit 1, so nothing unchecked is
# timed:
#   1. install: the carried wheels into /tmp/site, then this package (pip install -e . with no
#      index, no deps, no build isolation), which builds the CUDA extension from csrc/ (sm_90);
#      imported from outside the tree, it reports the extension (not built: the check goes on, its
#      cuda cases skip, and it fails at the end);
#   2. correctness: the kernels against their float64 / torch references (compiled Triton, CUDA
#      C++), the engine on the GPU (CUDA graphs vs eager, the default bundle's rollout vs the CPU
#      reference, Triton and CUDA backends): tests/ops, tests/engine;
#   3. timing: bench/ -k gpu, in two runs, each with its JSON (a timeout in the second keeps the
#      first's): the kernels (torch, Triton, CUDA), then the engine (fp32 and bf16, graphs and eager)
#      and the authors' loop; each case first compares its GPU path with the CPU reference (bf16 by
#      level agreement and error) and fails, untimed, on a mismatch.
# --cpu: a dry run where there is no GPU, into a throwaway environment ($PYTHON, required; it gets the
# package installed): stage 1 without the extension, stage 2 collected only, stage 3 untimed
# (--benchmark-disable) with the GPU cases on the CPU at batch 2 and Triton through its interpreter
# (SNS_BENCH_DRY_RUN=1, bench/cases.py), with BUDGET=1800 on a slow machine. It catches a typo here
# rather than on the lease.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUDGET=${BUDGET:-480}
start=$SECONDS
cpu=0
if [ "${1:-}" = "--cpu" ]; then cpu=1; shift; fi
out=$(mkdir -p "${1:-bench/results}" && cd "${1:-bench/results}" && pwd) || exit 1
stamp=$(date +%Y%m%d-%H%M%S)
log="$out/gpu-check-$stamp.txt"
PY=${PYTHON:-python3}
wheels=${WHEELS:-.whl}   # a dry run on another Python points this at wheels for it
export OMP_NUM_THREADS=4 SNS_BENCH_JSON=0 MAX_JOBS=8 PYTHONUNBUFFERED=1

failed=""   # failures that do not stop the check (the extension missing): reported at the end
fail() { echo "GPU CHECK FAILED: $1 (log: $log)" | tee -a "$log"; exit 1; }
# seconds a stage may take: its own limit or what is left of the budget, whichever is less
limit() {
    local left=$((BUDGET - (SECONDS - start)))
    [ "$left" -ge 20 ] || fail "out of time before '$2' ($BUDGET s budget)"
    echo $(($1 < left ? $1 : left))
}
stage() { echo "== $1 ($((SECONDS - start)) s in)" | tee -a "$log"; }

stage "1. install"
if [ $cpu = 1 ]; then
    [ -n "${PYTHON:-}" ] || fail "--cpu installs the package into \$PYTHON's environment: set PYTHON to a throwaway venv's python"
    export SNS_BENCH_DRY_RUN=1 TRITON_INTERPRET=1
else
    export TRITON_INTERPRET=0
    command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH   # setup.py builds with nvcc
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'
print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$log" || fail "no CUDA device"
fi
if ls "$wheels"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl >>"$log" 2>&1 || fail "install: the carried wheels ($wheels/)"
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
timeout "$(limit 240 install)" "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . \
    >>"$log" 2>&1 || fail "install: pip install -e . (with the CUDA extension's build)"
(cd /tmp && "$PY" -c "
import torch, sns_engine, sns_engine.kernels
from sns_engine.ops import cuda_ext
print('sns_engine', sns_engine.__version__, 'from', sns_engine.__file__)
print('CUDA extension:', 'built' if cuda_ext.is_built() else f'not built ({cuda_ext.unavailable_reason()})')
") 2>&1 | tee -a "$log" || fail "install: the installed package does not import"
if [ $cpu = 0 ] && ! grep -q "^CUDA extension: built" "$log"; then
    failed="the CUDA extension was not built (nvcc on PATH? the build's output is in the log)"
    echo "GPU CHECK: $failed; going on without it" | tee -a "$log"
fi

stage "2. correctness: GPU paths against their references"
select=(-k "gpu or cuda or triton or graph or estimate" -m "gpu or not slow")
if [ $cpu = 1 ]; then select+=(--collect-only); fi
timeout "$(limit 150 correctness)" "$PY" -m pytest -q -p no:cacheprovider tests/ops tests/engine "${select[@]}" \
    2>&1 | tee -a "$log" | tail -25 || fail "correctness"

for part in kernels engine; do
    stage "3. timing: GPU benchmarks of the $part, each checked first"
    json="$out/bench-$stamp-gpu-$part.json"
    files=(bench/test_ddpm_update.py bench/test_level_argmax.py bench/test_conv_block.py) cap=180
    [ $part = kernels ] || files=(bench/test_engine.py) cap=600
    if [ $cpu = 1 ]; then timing=(--benchmark-disable); else timing=(--benchmark-only "--benchmark-json=$json"); fi
    timeout "$(limit $cap "timing of the $part")" "$PY" -m pytest -q -p no:cacheprovider "${files[@]}" -k gpu \
        "${timing[@]}" 2>&1 | tee -a "$log" | tail -45 \
        || fail "timing of the $part (a GPU CHECK FAILED line above names a mismatch)"
done
stage "done"
echo "results: $out/bench-$stamp-gpu-{kernels,engine}.json (copy into bench/results/), log: $log"
[ -z "$failed" ] || fail "$failed"
echo "GPU CHECK PASSED" | tee -a "$log"
