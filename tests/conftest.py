"""Test-wide settings. Triton runs through its interpreter on CPU; this must be set before any
kernel module is imported, so it lives here at the top of the root conftest."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip where torch sees no CUDA device (one rule for the whole suite)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _cli(*args: str) -> None:
    from sns_engine.cli import main

    main([str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_kolmogorov(tmp_path_factory):
    """A real but tiny Kolmogorov dataset (32² solver and output grid), made through the CLI."""
    out = tmp_path_factory.mktemp("data") / "kolmogorov.zarr"
    _cli("data", "kolmogorov", "--preset", "cpu", "--trajectories", 4, "--snapshots", 40,
         "--out", out, "--set", "solver_grid=32", "--set", "output_grid=32",
         "--set", "spinup_steps=200", "--trajectory-batch", 4, "--time-chunk", 10, "--quiet")
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_kolmogorov, tmp_path_factory):
    """Emulator + refiner + thermalizer briefly trained on `tiny_kolmogorov` (small preset).

    N = 20 diffusion levels: the barely trained heads estimate levels all over 0..N, and the
    Kolmogorov default refines every member every step, so a short schedule keeps the rollouts
    in tests at a few dozen moves per step rather than hundreds."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    for model in ("emulator", "refiner", "thermalizer"):
        _cli("train", model, "--data", tiny_kolmogorov, "--out", out, "--steps", 20,
             "--batch-size", 8, "--lag", 10, "--lr", "1e-3", "--level-bias", "0.1",
             "--num-levels", 20, "--val-every", 10, "--quiet")
    return out
