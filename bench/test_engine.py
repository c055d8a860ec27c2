"""Ensemble engine vs the paper code's batched loop (and vs the per-member oracle, for information).

Same bundle (the embedded default, `small` preset), path `left_down` with activation threshold 0
(every member refines), same initial states, one
physical step per round, `renoise=False` (the setting in which the estimate forward can be
reused). extra_info: member-steps/s, forwards per physical step, useful member-forward fraction.
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
from sns_engine.engine.rollout import Engine

from .paper_loop import paper_style_step

CPU_BATCHES = [1, 16, 64, 256]
GPU_BATCHES = [1, 64, 256, 1024]


def _setup(device: str, batch: int):
    bundle = load_bundle(DEFAULT_BUNDLE, device=device)
    x0 = initial_conditions(bundle, batch, None, torch.arange(batch)).to(device)
    return bundle, x0


def _engine_round(bundle, x0, graphs=False, bf16=False, steps=1):
    cfg = RolloutConfig(path="left_down", steps=steps, renoise=False, threshold=0)
    engine = Engine(bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")),
                    bundle.schedule, x0, cfg, graphs=graphs, bf16=bf16)
    for _ in range(steps):
        engine.step()
    if x0.is_cuda:
        torch.cuda.synchronize()
    return engine


@pytest.mark.parametrize("batch", CPU_BATCHES)
def test_engine_cpu(benchmark, batch):
    bundle, x0 = _setup("cpu", batch)
    engine = benchmark.pedantic(_engine_round, args=(bundle, x0), rounds=3, iterations=1)
    s = engine.stats
    benchmark.extra_info.update(
        member_steps_per_s=batch / benchmark.stats.stats.mean,
        forwards_per_step=s.forwards_per_step, useful_fraction=s.useful_fraction)


@pytest.mark.parametrize("batch", CPU_BATCHES)
def test_paper_loop_cpu(benchmark, batch):
    bundle, x0 = _setup("cpu", batch)
    refiner = bundle.model("refiner")
    forwards = benchmark.pedantic(
        lambda: paper_style_step(bundle.model("emulator"), refiner, bundle.schedule, x0, x0, 0)[1],
        rounds=3, iterations=1)
    benchmark.extra_info.update(member_steps_per_s=batch / benchmark.stats.stats.mean,
                                forwards_per_step=forwards, useful_fraction=1.0)


@pytest.mark.parametrize("batch", [1, 16])
def test_reference_oracle_cpu(benchmark, batch):
    bundle, x0 = _setup("cpu", batch)
    cfg = RolloutConfig(path="left_down", steps=1, renoise=False, threshold=0)
    benchmark.pedantic(reference_rollout, args=(
        bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")), bundle.schedule, x0,
        cfg, CounterNoise(0)), rounds=1, iterations=1)
    benchmark.extra_info["member_steps_per_s"] = batch / benchmark.stats.stats.mean


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("bf16", [True, False])
def test_engine_gpu(benchmark, batch, graphs, bf16):
    bundle, x0 = _setup("cuda", batch)
    _engine_round(bundle, x0, graphs, bf16, steps=2)  # capture graphs, autotune
    engine = benchmark.pedantic(_engine_round, args=(bundle, x0, graphs, bf16, 5), rounds=3)
    benchmark.extra_info.update(member_steps_per_s=5 * batch / benchmark.stats.stats.mean,
                                forwards_per_step=engine.stats.forwards_per_step,
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

    forwards = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(member_steps_per_s=batch / benchmark.stats.stats.mean,
                                forwards_per_step=forwards)
