"""Ensemble engine vs the authors' loop as published (and vs the per-member oracle, for information).

Same bundle (the embedded default, `small` preset), path `left_down`, re-noising (the authors'
`forward_diff=True`, our default), same initial states, one physical step per round (five on the
GPU), in the two settings the authors run: Kolmogorov (every member refined every step) and QG
(members whose either head's class exceeds 5, our level ≥ 7). The baseline is
bench/authors_loop.py as a user of their code runs it: `ratio_class_both` (one encoder pass per
head), re-noising, `range(max − 1, −1, −1)` with a boolean mask, gather, full forward, scatter and
a host sync per level, torch.randn noise, eager NCHW float32 (its networks do not take the U-Net's
CPU fast path, the engine's do). On the CPU the two run side by side per setting and batch size:
`pytest bench/test_engine.py --benchmark-only -k cpu`.
extra_info: member-steps and network FLOPs of a call (the summary prints member-steps/s, FLOP/s and
the ratio to the authors' loop at the same device, setting and batch; padded members count),
forwards and levels-only passes per physical step, the useful fraction and the achieved GFLOP/s.
"""

from __future__ import annotations

import pytest
import torch

from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.config import RolloutConfig
from sns_engine.engine.denoiser import CounterNoise, TorchNoise, refiner_denoiser
from sns_engine.engine.initial import initial_conditions
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import CPU_CHUNK, Engine
from sns_engine.models.unet_cpu import use_fast_cpu

from .authors_loop import AuthorsLoop
from .report import describe

# batch 256 takes minutes per case on one core: only with --bench-long (bench/conftest.py)
CPU_BATCHES = [1, 16, 64, pytest.param(256, marks=pytest.mark.long)]
GPU_BATCHES = [1, 64, 256, 1024]
BASELINE = "authors_loop"  # the implementation the others are compared to in the run's summary
# setting → (our threshold, heads; their QG class threshold or None for every member)
SETTINGS = {"kolmogorov": (0, "x", None), "qg": (7, "either", 5)}


def _setup(device: str, batch: int):
    bundle = load_bundle(DEFAULT_BUNDLE, device=device)
    x0 = initial_conditions(bundle, batch, None, torch.arange(batch)).to(device)
    return bundle, x0


def _describe(benchmark, op: str, device: str, setting: str, batch: int, *variant: str,
              steps: int = 1) -> None:
    """Name `op[left_down, setting, device, *variant, batch=B]`, grouped by device, setting and
    batch with BASELINE; the work: batch × steps member-steps."""
    name = ", ".join(("left_down", setting, device, *variant, f"batch={batch}"))
    describe(benchmark, f"{op}[{name}]", group=f"left_down, {setting}, {device}, batch={batch}",
             baseline=op == BASELINE, member_steps=batch * steps)


def _engine(bundle, x0, setting: str, graphs=False, bf16=False, **kw) -> Engine:
    threshold, heads, _ = SETTINGS[setting]
    cfg = RolloutConfig(path="left_down", steps=1, threshold=threshold, threshold_heads=heads)
    return Engine(bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")),
                  bundle.schedule, x0, cfg, graphs=graphs, bf16=bf16, **kw)


def _authors_step(bundle, x0, setting: str):
    """One physical step of the authors' loop as published (eager NCHW networks)."""
    loop = AuthorsLoop(bundle.schedule.num_levels, TorchNoise(), published_start=True)
    emulator = use_fast_cpu(bundle.model("emulator"), False)
    denoiser = refiner_denoiser(use_fast_cpu(bundle.model("refiner"), False))

    def step():
        loop.rollout("left_down", emulator, denoiser, x0, 1, SETTINGS[setting][2])
        if x0.is_cuda:
            torch.cuda.synchronize()

    return step


def _time_engine(benchmark, engine: Engine, steps: int, rounds: int) -> None:
    """Time `steps` engine steps from the same start each round (an untimed reset before each); a
    call's FLOPs are those of its steps (every round repeats the same work)."""
    start = {k: v.clone() for k, v in engine.state_tensors().items()}

    def run():
        for _ in range(steps):
            engine.step()
        if engine.x.is_cuda:
            torch.cuda.synchronize()

    run()  # warm-up (graph capture, autotuning on a GPU)
    flops = engine.stats.flops
    benchmark.extra_info["flops"] = flops
    benchmark.pedantic(run, setup=lambda: engine.load_state(start, 0), rounds=rounds)
    stats = engine.stats
    benchmark.extra_info.update(forwards_per_step=stats.forwards_per_step,
                                level_passes_per_step=stats.level_passes / max(stats.physical_steps, 1),
                                useful_fraction=stats.useful_fraction)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.mean / 1e9


@pytest.mark.parametrize("impl", ["engine", "engine_unchunked", "authors_loop"])
@pytest.mark.parametrize("batch", CPU_BATCHES)
@pytest.mark.parametrize("setting", list(SETTINGS))  # the slowest-varying: side by side below it
def test_left_down_cpu(benchmark, setting, batch, impl):
    """One physical step from the same states, engine and authors' loop side by side. The engine
    is built once (a rollout builds it once for all its steps). `engine_unchunked` makes every
    network call on the whole packed batch (cpu_chunk=None), to tell the gain of the engine's CPU
    chunking from that of its scheduling."""
    bundle, x0 = _setup("cpu", batch)
    rounds = max(3, 32 // batch)  # small batches are quick and noisier: more rounds
    _describe(benchmark, impl, "cpu", setting, batch)
    if impl == BASELINE:
        step = _authors_step(bundle, x0, setting)
        step()
        benchmark.pedantic(step, rounds=rounds)
    else:
        chunk = None if impl == "engine_unchunked" else CPU_CHUNK
        _time_engine(benchmark, _engine(bundle, x0, setting, cpu_chunk=chunk), 1, rounds)


@pytest.mark.parametrize("batch", [1, 16])
def test_reference_oracle_cpu(benchmark, batch):
    bundle, x0 = _setup("cpu", batch)
    cfg = RolloutConfig(path="left_down", steps=1, threshold=0)
    _describe(benchmark, "oracle", "cpu", "kolmogorov", batch)
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
    engine = _engine(bundle, x0, "kolmogorov", graphs, bf16)
    _describe(benchmark, "engine", "gpu", "kolmogorov", batch, "graphs" if graphs else "eager",
              "bf16" if bf16 else "fp32", steps=5)
    _time_engine(benchmark, engine, 5, rounds=3)


@gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_authors_loop_gpu(benchmark, batch):
    bundle, x0 = _setup("cuda", batch)
    step = _authors_step(bundle, x0, "kolmogorov")
    _describe(benchmark, BASELINE, "gpu", "kolmogorov", batch)
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
