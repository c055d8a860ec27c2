# Every target installs what it needs into .venv first; nothing outside the repo is assumed.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export OMP_NUM_THREADS ?= 1

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml setup.py
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# pyqg 0.7.2 only builds against numpy<2 and Cython<3, without build isolation.
	$(PIP) install -q "numpy<2" "cython<3" setuptools wheel setuptools_scm
	$(PIP) install -q --no-build-isolation pyqg==0.7.2
	# torch==2.13.0 is the local CPU wheel; an unpinned torch would pull GBs of CUDA wheels.
	$(PIP) install -q "numpy<2" torch==2.13.0 -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the emulator and the default SNS policy side by side from the same 2 initial states of
# the embedded default bundle (Kolmogorov 64²), 800 steps = 4 time units, against its climatology.
demo: $(STAMP)
	.venv/bin/sns-engine rollout --path emulator --batch 2 --steps 800 --save-every 10 --out out/demo/emulator.zarr --overwrite
	.venv/bin/sns-engine rollout --batch 2 --steps 800 --save-every 10 --out out/demo/sns.zarr --overwrite
	.venv/bin/sns-engine compare out/demo/emulator.zarr out/demo/sns.zarr -o out/demo/compare.png

lint: $(STAMP)
	.venv/bin/ruff check .

test: lint
	.venv/bin/pytest -q tests

bench: $(STAMP)
	.venv/bin/pytest bench --benchmark-only

clean:
	rm -rf .venv out
