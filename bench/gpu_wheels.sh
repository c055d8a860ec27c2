#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh needs on the H200 image (Python 3.12, which has
# torch, triton, numpy, safetensors, pytest-benchmark, tqdm but neither zarr nor nvtx) into .whl/
# (ignored by git; name it in the device call's `carry`): zarr and its needs, nvtx (imported by
# the engine's profiling ranges) and setuptools (pyproject.toml's license field needs ≥ 77 to
# install the package; the image's own is of unknown version).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl zarr==3.1.5 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 nvtx==0.2.17 \
    setuptools==84.2.1
ls .whl
