"""Is the surrogate faster than the solver it replaces? Simulated time per wall second per member.

Same machine, same run, same output grid and physical time per step: the jax-cfd solver of the
Kolmogorov `cpu` preset at its solve grid (128²) and dt (1e-3, 5 solver steps per stored 64²
snapshot), batched with vmap as the data generator runs it (8 trajectories); and the embedded
default bundle, whose emulator advances one snapshot interval per step, alone, with SNS as the
authors run Kolmogorov (left_down, every member refined every step), with an activation
threshold (n̂_x ≥ 5, the default bundle's calibrated threshold: 99th percentile of n̂_x on clean
held-out frames + 1), with the refinement policies beyond the authors that the ablation measured
(results/refinement-ablation: the lagged long frame, alone and with an x floor of 2, the stage-2
decisive runs' best arm, and an x floor of 10 every 5th step) and with
the Thermalizer at its defaults. The summary's ratio to the solver
answers the question per member-step; extra_info["time_per_second"] is simulated time units per
wall second per member, extra_info["gflop_per_member_step"] the networks' work.
Run: `pytest bench/test_vs_solver.py --benchmark-only`.
"""

from __future__ import annotations

import pytest
import torch

from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.config import RolloutConfig
from sns_engine.engine.denoiser import refiner_denoiser, thermalizer_denoiser
from sns_engine.engine.initial import initial_conditions
from sns_engine.engine.rollout import Engine
from sns_engine.systems import get_system

from .report import describe

BATCH = 8          # the data generator's trajectory batch
STEPS = 10         # stored snapshots (= surrogate steps) per timed round
GROUP = "vs solver, kolmogorov cpu"
# surrogate case → its RolloutConfig fields (threshold 0 refines every member every step)
SURROGATES = {"emulator": dict(path="emulator"), "sns_every_step": dict(path="left_down"),
              "sns_threshold5": dict(path="left_down", threshold=5),
              "sns_lagged": dict(path="left_down", long="lagged"),
              "sns_lagged_floor2": dict(path="left_down", long="lagged", level_floor=2),
              "sns_floor10_every5": dict(path="left_down", level_floor=10, every=5),
              "thermalizer": dict(path="thermalizer")}


def _record(benchmark, snapshot_dt: float) -> None:
    """Simulated time units per wall second per member (each member advanced STEPS snapshots)."""
    benchmark.extra_info["time_per_second"] = STEPS * snapshot_dt / benchmark.stats.stats.mean


def test_solver(benchmark):
    solver = get_system("kolmogorov", "cpu", spinup_steps=0)
    state = solver.initial_states(list(range(BATCH)))
    state, _ = solver.advance(state, 1)             # compile (jit) outside the timing
    describe(benchmark, f"solver[kolmogorov cpu, 128² dt 1e-3, batch={BATCH}]", GROUP, baseline=True,
             member_steps=BATCH * STEPS)
    benchmark.pedantic(lambda: solver.advance(state, STEPS), rounds=3)
    if benchmark.stats is not None:
        _record(benchmark, solver.snapshot_dt)


@pytest.mark.parametrize("case", list(SURROGATES))
def test_surrogate(benchmark, case):
    fields = {"threshold": 0, **SURROGATES[case]}
    bundle = load_bundle(DEFAULT_BUNDLE)
    x0 = initial_conditions(bundle, BATCH, None, torch.arange(BATCH))
    if fields.get("long") == "lagged":
        fields["lag"] = bundle.config["models"]["refiner"]["train"]["lag"]
    cfg = RolloutConfig(steps=STEPS, threshold_heads="x", **fields)
    denoiser = {"emulator": None, "left_down": refiner_denoiser(bundle.model("refiner")),
                "thermalizer": thermalizer_denoiser(bundle.model("thermalizer"))}[cfg.path]
    engine = Engine(bundle.model("emulator"), denoiser, bundle.schedule, x0, cfg, graphs=False)
    start = {k: v.clone() for k, v in engine.state_tensors().items()}

    def run():
        for _ in range(STEPS):
            engine.step()

    describe(benchmark, f"{case}[default bundle, 64², batch={BATCH}]", GROUP, member_steps=BATCH * STEPS)
    benchmark.pedantic(run, setup=lambda: engine.load_state(start, 0), rounds=3)
    stats = engine.stats
    member_steps = max(stats.physical_steps, 1) * BATCH
    benchmark.extra_info.update(forwards_per_step=stats.forwards_per_step,
                                level_passes_per_step=stats.level_passes / max(stats.physical_steps, 1),
                                gflop_per_member_step=stats.useful_flops / member_steps / 1e9)
    if benchmark.stats is not None:
        _record(benchmark, bundle.system.snapshot_dt)
