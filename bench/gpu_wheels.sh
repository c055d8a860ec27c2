#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh needs on the H200 image (Python 3.12, which has
# torch, triton, numpy, safetensors, matplotlib, pytest-benchmark, tqdm but not zarr): into .whl/
# (ignored by git; name it in the device call's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl zarr==3.1.5 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
ls .whl
