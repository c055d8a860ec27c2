"""Measure what can be measured without a GPU and write the `expected_cost` of the paper recipes.

    OMP_NUM_THREADS=1 JAX_PLATFORMS=cpu python recipes/measure_cost.py   # rewrites recipes/*-paper.json
    python recipes/measure_cost.py --flops-only   # after a model change: the timings stay

Measured here (CPU): FLOPs of each recipe's U-Nets (its train preset; torch.utils.flop_counter.
FlopCounterMode on meta tensors: the exact operation count, nothing computed), reference-solver
steps per second, host seconds to assemble one training batch, and evaluation spectra per second.
Every H200 time is derived from those and the named ASSUMPTIONS below; nothing else enters.
`--flops-only` recounts the FLOPs and keeps the timings the recipe already records (they do not
depend on the U-Nets), so a busy machine's timing noise does not enter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sns_engine.data import FrameWindows, TrajectoryStore
from sns_engine.diagnostics.evaluate import field_spectra
from sns_engine.generation import store_spec
from sns_engine.models import build_model, model_unet_config
from sns_engine.study import StudyConfig, load_recipe
from sns_engine.systems import get_system
from sns_engine.train.loop import sample_batch

RECIPES = Path(__file__).resolve().parent
ASSUMPTIONS = {
    "sustained_bf16_tflops": {
        "value": 300.0,
        "why": "≈ 30 % of the H200's 989 TFLOP/s dense BF16 peak (NVIDIA datasheet, not measured); "
               "convolutional U-Nets at 64² with 64–512 channels rarely sustain more"},
    "kolmogorov_gpu_speedup": {
        "value": 100.0,
        "why": "H200 (jax, batch of trajectories under vmap) vs the single-trajectory CPU rate "
               "measured here; unmeasured order of magnitude for a 512² pseudo-spectral step"},
    "qg_parallel_processes": {
        "value": 16,
        "why": "pyqg is CPU-only: 16 worker processes on the H200 machine's 16 cores, each as fast "
               "as the one core measured here"},
    "mean_estimated_level": {
        "value": 20,
        "why": "n̂_x ≈ n̂_y ≈ 20 per step for a trained refiner (unmeasured; the study reports the "
               "real forwards per step). Ticks per step: left_down n̂_x + n̂_y, diagonal "
               "max(n̂_x, n̂_y), fix_short n̂_x"},
    "thermalizer_active_fraction": {
        "value": 1.0, "why": "every member thermalized (start 10 → stop 4) every step: upper bound"},
}
TIMINGS = ("solver_steps_per_second_cpu", "host_batch_seconds", "spectra_per_second_cpu", "machine")
TICKS = {"emulator": lambda n: 0, "left_down": lambda n: 2 * n, "diagonal": lambda n: n,
         "fix_short": lambda n: n}


def model_tflop(kind: str, preset: str, channels: int, grid: int, batch: int,
                train_unroll: int = 0) -> float:
    """TFLOP of one forward (train_unroll = 0) or one training step (forward through
    `train_unroll` chained calls + backward) of model `kind` of U-Net `preset` at `batch`."""
    with torch.device("meta"):
        model = build_model(kind, model_unet_config(kind, preset, channels, grid))
        frames = [torch.randn(batch, channels, grid, grid)
                  for _ in range(3 if kind == "refiner" else 1)]
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(train_unroll > 0):
        if kind == "emulator":
            x = frames[0]
            for _ in range(max(train_unroll, 1)):
                x = model(x)
            outputs = [x]
        else:
            outputs = [t for t in model(*frames) if isinstance(t, torch.Tensor)]
        if train_unroll:
            sum(o.float().square().sum() for o in outputs).backward()
    return counter.get_total_flops() / 1e12


def solver_steps_per_second(system: str) -> float:
    """Solver steps/s of one trajectory of the `paper` preset on this CPU (after a warm-up)."""
    solver = get_system(system, "paper", spinup_steps=0)
    state, _ = solver.advance(solver.initial_states([1]), 1)
    snapshots = 4 if system == "kolmogorov" else 40
    start = time.perf_counter()
    solver.advance(state, snapshots)
    return snapshots * solver.params.steps_per_snapshot / (time.perf_counter() - start)


def host_measurements(system: str, folder: Path, offsets: dict[str, tuple[int, ...]]
                      ) -> tuple[dict[str, float], float]:
    """(seconds to assemble one training batch of 64 per model kind, spectra per second) on a
    store of random 64² fields of `system` (the real code paths, random content)."""
    solver = get_system(system, "paper")
    spec = store_spec(solver, trajectories=2, snapshots=160, time_chunk=32)
    store = TrajectoryStore.create(folder / f"{system}.zarr", spec)
    rng = np.random.default_rng(0)
    store.fields[:] = rng.standard_normal(store.fields.shape, dtype=np.float32)
    store.root["progress"][:] = spec.snapshots
    store.finalise()
    batch_seconds = {}
    for kind, frames in offsets.items():
        dataset = FrameWindows(store, frames)
        gen = torch.Generator().manual_seed(0)
        sample_batch(dataset, 64, gen)
        start = time.perf_counter()
        for _ in range(20):
            sample_batch(dataset, 64, gen)
        batch_seconds[kind] = (time.perf_counter() - start) / 20
    fields = torch.from_numpy(np.asarray(store.fields[:, :64]))
    start = time.perf_counter()
    field_spectra(store, fields)
    return batch_seconds, fields.shape[0] * fields.shape[1] / (time.perf_counter() - start)


def expected_cost(recipe: Path, folder: Path, timings: dict | None = None) -> dict:
    """The recipe's `expected_cost`; `timings` (the TIMINGS of an earlier measurement) are
    reused instead of timed anew."""
    cfg = StudyConfig(**load_recipe(recipe))
    channels = 2 if cfg.system == "qg" else 1
    solver = get_system(cfg.system, cfg.preset, **cfg.overrides)
    tflops = ASSUMPTIONS["sustained_bf16_tflops"]["value"]
    kinds = ("emulator", "refiner", "thermalizer")
    preset = {k: cfg.train_config(k).preset for k in kinds}
    unroll = {"emulator": cfg.train_config("emulator").unroll, "refiner": 1, "thermalizer": 1}
    measured = {
        "forward_tflop_batch64": {k: model_tflop(k, preset[k], channels, 64, 64) for k in kinds},
        "train_step_tflop_batch64": {k: model_tflop(k, preset[k], channels, 64, 64, unroll[k])
                                     for k in kinds},
    }
    if timings is None:
        measured["solver_steps_per_second_cpu"] = solver_steps_per_second(cfg.system)
        lag = cfg.train_config("refiner").lag
        offsets = {"emulator": tuple(range(unroll["emulator"] + 1)), "refiner": (-lag, 0, 1),
                   "thermalizer": (0,)}
        measured["host_batch_seconds"], measured["spectra_per_second_cpu"] = host_measurements(
            cfg.system, folder, offsets)
        measured["machine"] = (f"{platform.machine()}, {len(os.sched_getaffinity(0))} usable "
                               f"core(s) shared with other jobs (load average "
                               f"{os.getloadavg()[0]:.1f}: rates are pessimistic), torch "
                               f"{torch.__version__}")
    else:
        measured |= {k: timings[k] for k in TIMINGS}
    measured["how"] = (
        f"FLOPs: FlopCounterMode over the recipe's U-Nets (train preset {preset['refiner']}) on "
        "meta tensors at batch 64 (forward; training = forward through the emulator's 4-step "
        "unroll or one forward, then backward; the loss arithmetic, elementwise, is left out). "
        "Solver: one trajectory of the paper preset after a warm-up, timed with perf_counter. Host "
        "batch: train.loop.sample_batch of 64 items (emulator windows, refiner triples, single "
        "frames) from a FrameWindows of random 64² fields, mean of 20. Spectra: "
        "diagnostics.evaluate.field_spectra on 128 random fields."
        + ("" if timings is None else " Timings from an earlier run (`machine`); FLOPs recounted "
                                      "with --flops-only."))

    stages = {}
    total_steps = sum(n * (solver.params.spinup_steps + t * solver.params.steps_per_snapshot)
                      for n, t in ((cfg.trajectories, cfg.snapshots),
                                   (cfg.reference_trajectories, cfg.reference_snapshots)))
    rate = measured["solver_steps_per_second_cpu"]
    if cfg.system == "kolmogorov":
        speedup = ASSUMPTIONS["kolmogorov_gpu_speedup"]["value"]
        basis = (f"{total_steps:,} solver steps (spin-up + snapshots, train + reference) / "
                 f"({rate:.3g} steps/s measured on CPU × kolmogorov_gpu_speedup {speedup:g})")
    else:
        speedup = ASSUMPTIONS["qg_parallel_processes"]["value"]
        basis = (f"{total_steps:,} solver steps / ({rate:.3g} steps/s measured per core × "
                 f"qg_parallel_processes {speedup}) — on the machine's CPUs, the GPU idles")
    stages["data"] = {"h200_hours": total_steps / (rate * speedup) / 3600, "basis": basis}

    for kind in cfg.models:
        flop = measured["train_step_tflop_batch64"][kind]
        steps = cfg.train_config(kind).steps
        gpu = steps * flop / tflops
        batch = measured["host_batch_seconds"][kind]
        host = steps * batch
        stages[f"train/{kind}"] = {
            "h200_hours": (gpu + host) / 3600,
            "basis": f"{steps:,} steps × ({flop:.3g} TFLOP measured / sustained_bf16_tflops "
                     f"{tflops:g} + {batch * 1e3:.3g} ms host batch "
                     "measured, not overlapped)"}

    level = ASSUMPTIONS["mean_estimated_level"]["value"]
    active = ASSUMPTIONS["thermalizer_active_fraction"]["value"]
    scale = cfg.members / 64  # forward FLOPs are linear in the batch
    for method in cfg.methods:
        emulator = measured["forward_tflop_batch64"]["emulator"] * scale
        if method == "thermalizer":
            # a member estimated above start walks from its estimate (≥ start + 1) down to stop
            start, stop = cfg.rollout.get("thermalizer_start", 11), cfg.rollout.get("thermalizer_stop", 5)
            extra = 1 + active * (max(level, start + 1) - stop)
            per = measured["forward_tflop_batch64"]["thermalizer"] * scale * extra
        else:
            extra = 0 if method == "emulator" else 1 + TICKS[method](level)
            per = measured["forward_tflop_batch64"]["refiner"] * scale * extra
        stages[f"rollout/{method}"] = {
            "h200_hours": cfg.horizon * (emulator + per) / tflops / 3600,
            "basis": f"{cfg.horizon:,} steps × (1 emulator + {extra:g} denoiser forwards at batch "
                     f"{cfg.members}) × measured forward TFLOP / sustained_bf16_tflops {tflops:g}"}

    saved = cfg.members * (cfg.horizon // cfg.save_every)
    reference = cfg.reference_trajectories * min(cfg.reference_snapshots, 64)
    spectra = len(cfg.methods) * (saved + reference)
    stages["evaluate"] = {
        "h200_hours": spectra / measured["spectra_per_second_cpu"] / 3600,
        "basis": f"{spectra:,} field spectra (every saved state of every method + the reference "
                 "sample) at the one-core rate measured here, on the machine's CPU; W1 sorting, "
                 "autocorrelation and store reads unmeasured"}
    return {
        "summary": (f"≈ {sum(s['h200_hours'] for s in stages.values()):.1f} H200-hours in all, "
                    "an estimate: every figure is a measurement here × a named assumption"),
        "measured": measured, "assumptions": ASSUMPTIONS, "stages": stages,
        "total_h200_hours": sum(s["h200_hours"] for s in stages.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flops-only", action="store_true",
                        help="recount the FLOPs; keep the timings each recipe already records")
    flops_only = parser.parse_args().flops_only
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("kolmogorov-paper.json", "qg-paper.json"):
            path = RECIPES / name
            recipe = json.loads(path.read_text())
            timings = recipe["expected_cost"]["measured"] if flops_only else None
            recipe["expected_cost"] = expected_cost(path, Path(tmp), timings)
            path.write_text(json.dumps(recipe, indent=2, ensure_ascii=False) + "\n")
            print(name, recipe["expected_cost"]["summary"])
            for stage, cost in recipe["expected_cost"]["stages"].items():
                print(f"  {stage:22s} {cost['h200_hours']:8.3f} h   {cost['basis']}")


if __name__ == "__main__":
    main()
