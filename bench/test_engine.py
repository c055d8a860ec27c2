"""Ensemble engine vs the paper code's batched loop (and vs the per-member oracle, for information).

Same bundle (the embedded default, `small` preset), path `left_down` with activation threshold 0
(every member refines), same initial states, one physical step per round (five on the GPU),
`renoise=False` (the setting in which the estimate forward can be reused). On the CPU the two run
side by side per batch size: `pytest bench/test_engine.py --benchmark-only -k left_down_cpu`.
extra_info: member-steps of a call (the summary prints member-steps/s and the ratio to the paper
loop at the same device and batch), forwards per physical step, useful member-forward fraction.
Run: `pytest bench --benchmark-only` (CPU: torch paths; the GPU section needs CUDA).
"""

from __future__ import annotations

import pytest
import torch

from sns_engine.bundle import load_bundle
from sns_engine.config import RolloutConfig
from sns_engine.engine.denoiser import CounterNoise, refiner_denoiser
from sns_engine.engine.ensemble import DEFAULT_BUNDLE, initial_conditions
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import CPU_CHUNK, Engine

from .paper_loop import paper_style_step
from .report import describe

CPU_BATCHES = [1, 16, 64, 256]
GPU_BATCHES = [1, 64, 256, 1024]
BASELINE = "paper_loop"  # the implementation the others are compared to in the run's summary


def _setup(device: str, batch: int):
    bundle = load_bundle(DEFAULT_BUNDLE, device=device)
    x0 = initial_conditions(bundle, batch, None, torch.arange(batch)).to(device)
    return bundle, x0


def _describe(benchmark, op: str, device: str, batch: int, *variant: str, steps: int = 1) -> None:
    """Name `op[left_down, device, *variant, batch=B]`, grouped by device and batch with BASELINE;
    the work: batch × steps member-steps."""
    name = ", ".join(("left_down", device, *variant, f"batch={batch}"))
    describe(benchmark, f"{op}[{name}]", group=f"left_down, {device}, batch={batch}",
             baseline=op == BASELINE, member_steps=batch * steps)


def _engine(bundle, x0, graphs=False, bf16=False, **kw) -> Engine:
    cfg = RolloutConfig(path="left_down", steps=1, renoise=False, threshold=0)
    return Engine(bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")),
                  bundle.schedule, x0, cfg, graphs=graphs, bf16=bf16, **kw)


@pytest.mark.parametrize("impl", ["engine", "engine_unchunked", "paper_loop"])
@pytest.mark.parametrize("batch", CPU_BATCHES)  # the slower-varying parameter: side by side
def test_left_down_cpu(benchmark, batch, impl):
    """One physical step from the same states, engine and paper loop side by side per batch size.
    The engine is built once (a rollout builds it once for all its steps); an untimed setup resets
    it to step 0 before every round, so each round does the same work as the paper loop's.
    `engine_unchunked` makes every network call on the whole packed batch (cpu_chunk=None), to
    tell the gain of the engine's CPU chunking from that of its scheduling."""
    bundle, x0 = _setup("cpu", batch)
    rounds = max(3, 32 // batch)  # small batches are quick and noisier: more rounds
    _describe(benchmark, impl, "cpu", batch)
    if impl.startswith("engine"):
        engine = _engine(bundle, x0, cpu_chunk=None if impl == "engine_unchunked" else CPU_CHUNK)
        start = {k: v.clone() for k, v in engine.state_tensors().items()}
        engine.step()  # warm-up, as the paper loop gets below
        benchmark.pedantic(engine.step, setup=lambda: engine.load_state(start, 0), rounds=rounds)
        forwards, useful = engine.stats.forwards_per_step, engine.stats.useful_fraction
    else:
        def step():
            return paper_style_step(bundle.model("emulator"), bundle.model("refiner"),
                                    bundle.schedule, x0, x0, threshold=0)[1]
        step()
        forwards = benchmark.pedantic(step, rounds=rounds)
        useful = 1.0
    benchmark.extra_info.update(forwards_per_step=forwards, useful_fraction=useful)


@pytest.mark.parametrize("batch", [1, 16])
def test_reference_oracle_cpu(benchmark, batch):
    bundle, x0 = _setup("cpu", batch)
    cfg = RolloutConfig(path="left_down", steps=1, renoise=False, threshold=0)
    _describe(benchmark, "oracle", "cpu", batch)
    benchmark.pedantic(reference_rollout, args=(
        bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")), bundle.schedule, x0,
        cfg, CounterNoise(0)), rounds=1, iterations=1)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("bf16", [True, False])
def test_engine_gpu(benchmark, batch, graphs, bf16):
    bundle, x0 = _setup("cuda", batch)
    engine = _engine(bundle, x0, graphs, bf16)
    start = {k: v.clone() for k, v in engine.state_tensors().items()}
    steps = 5

    def run():
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()

    run()  # capture the graphs, autotune
    _describe(benchmark, "engine", "gpu", batch, "graphs" if graphs else "eager", "bf16" if bf16 else "fp32",
              steps=steps)
    benchmark.pedantic(run, setup=lambda: engine.load_state(start, 0), rounds=3)
    benchmark.extra_info.update(forwards_per_step=engine.stats.forwards_per_step,
                                useful_fraction=engine.stats.useful_fraction)


@gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_paper_loop_gpu(benchmark, batch):
    bundle, x0 = _setup("cuda", batch)

    def run():
        out = paper_style_step(bundle.model("emulator"), bundle.model("refiner"), bundle.schedule,
                               x0, x0)
        torch.cuda.synchronize()
        return out[1]

    _describe(benchmark, "paper_loop", "gpu", batch)
    forwards = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info["forwards_per_step"] = forwards
