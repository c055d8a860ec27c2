"""The U-Net forwards against the machine's GEMM rate: how near the CPU's roofline they run.

One thread (torch.set_num_threads(1)). In the same run: a 2048² float32 `torch.mm` (the GEMM rate)
and, at batch 64 with the default bundle, the emulator and refiner forwards and the refiner's
levels-only pass (encoder, middle, heads), each in the implementations compared side by side:

- `reference`: the eager NCHW float32 path (`use_fast_cpu(model, False)`; the authors' loop's);
- `channels_last`: the same code on channels_last weights and inputs (a candidate);
- `fast`: the U-Net's CPU fast path (models/unet_cpu.py: channels_last, the circular halo made by hand,
  GELUs on the contiguous NHWC view, the heads' convs batched, chunks of 16 members);
- `bf16`: the same call under `torch.autocast("cpu", dtype=torch.bfloat16)` (issue 22 item 3: its
  speed; the U-Net then takes its eager path, models/unet_cpu.takes_fast_path; its accuracy:
  bench/bf16_accuracy.py);
- `compiled`: `torch.compile` (inductor, C++) of the reference, marked `long` (minutes to compile).

Then the emulator's widest decoder block (unconditioned, 64²): the reference and the fast path
(whose first conv runs with its GELU fused, on packed weights: `unet_cpu.conv2d`).

extra_info: `flops` of a call (models.unet.forward_flops × batch), `gflops_per_s` achieved and
`percent_of_gemm`, of the GEMM rate measured in the same run (the summary prints it after the
rates). On a loaded machine time the CPU, not the wall: `--benchmark-timer=time.process_time`.

    pytest bench/test_unet_efficiency.py --benchmark-only
"""

from __future__ import annotations

import time

import pytest
import torch

from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.models import unet_cpu
from sns_engine.models.unet import forward_flops
from sns_engine.models.unet_cpu import use_fast_cpu

from . import bf16_accuracy
from .report import describe

BATCH = 64
GEMM = 2048
NETWORKS = {"emulator": ("emulator", "forward"), "refiner": ("refiner", "forward"),
            "levels": ("refiner", "levels")}
IMPLS = ["reference", "channels_last", "fast", "bf16", pytest.param("compiled", marks=pytest.mark.long)]
BASELINE = "reference"
MEASURED: dict[str, float] = {}  # the GEMM rate (FLOP/s) of this run, once measured


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gemm_operands() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(GEMM, GEMM, generator=gen) for _ in range(2))


def gemm_rate() -> float:
    """FLOP/s of the GEMM: test_gemm's mean if it ran in this session, else the best of 5."""
    if "gemm" not in MEASURED:
        a, b = _gemm_operands()
        torch.mm(a, b)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
        MEASURED["gemm"] = 2 * GEMM**3 / best
    return MEASURED["gemm"]


def _report(benchmark, flops: float) -> None:
    """Achieved GFLOP/s and percent of the GEMM rate, from the benchmark's mean."""
    if benchmark.stats is None:  # --benchmark-disable
        return
    rate = flops / benchmark.stats.stats.mean
    benchmark.extra_info.update(gflops_per_s=rate / 1e9, percent_of_gemm=100 * rate / gemm_rate())


def test_gemm(benchmark):
    a, b = _gemm_operands()
    flops = 2 * GEMM**3
    describe(benchmark, f"gemm[torch.mm, fp32, {GEMM}², 1 thread]", flops=flops)
    benchmark.pedantic(torch.mm, args=(a, b), rounds=5, warmup_rounds=1)
    if benchmark.stats is not None:
        MEASURED["gemm"] = flops / benchmark.stats.stats.mean
    _report(benchmark, flops)


def _model(kind: str, impl: str) -> torch.nn.Module:
    model = load_bundle(DEFAULT_BUNDLE).model(kind)
    use_fast_cpu(model, impl == "fast")
    if impl == "channels_last":
        model.to(memory_format=torch.channels_last)
    return model


def _call(model: torch.nn.Module, network: str, impl: str):
    """The timed call: the network's pass on fresh batch-64 frames (channels_last for that one)."""
    gen = torch.Generator().manual_seed(1)
    layout = torch.channels_last if impl == "channels_last" else torch.contiguous_format
    x = torch.randn(BATCH, 1, 64, 64, generator=gen).contiguous(memory_format=layout)
    if network == "emulator":
        run, args = model, (x,)
    else:
        run, args = (model if network == "refiner" else model.levels), (x, x.flip(-1), x.flip(-2))
    if impl == "compiled":  # freezing: weights as constants (oneDNN weight prepacking, fusions)
        run = torch.compile(run, options={"freezing": True})

    def call():
        with torch.no_grad(), bf16_accuracy.precision(impl == "bf16"):
            return run(*args)

    return call


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("network", list(NETWORKS))
def test_unet_cpu(benchmark, network, impl):
    kind, flop_kind = NETWORKS[network]
    model = _model(kind, impl)
    flops = BATCH * forward_flops(model, flop_kind)
    describe(benchmark, f"unet[{network}, {impl}, batch={BATCH}]",
             group=f"unet, {network}, cpu, fp32, batch={BATCH}", baseline=impl == BASELINE,
             flops=flops)
    call = _call(model, network, impl)
    call()  # warm-up (oneDNN primitives; compilation)
    benchmark.pedantic(call, rounds=5)
    _report(benchmark, flops)


def test_bf16_accuracy_runs():
    """bench/bf16_accuracy.py on two members, one set of states, one known level (not timed)."""
    figures = bf16_accuracy.measure(members=2, emulator_steps=(0,), levels=(5,))
    first = figures["states_after_emulator_steps"]["0"]
    assert 0 <= first["heads"]["n_x_agreement"] <= 1 and "lead" in figures["verdict"]
    assert first["walk"]["relative_error_all"]["max"] < 0.1   # a walk moves the state ≈ 1 %


BLOCKS = {"reference": lambda block, x, skip: block(x, skip),
          "fast": lambda block, x, skip: unet_cpu.block(block, x, skip, ())}


@pytest.mark.parametrize("impl", list(BLOCKS))
def test_block_cpu(benchmark, impl):
    """The emulator's widest decoder block (16 + 16 skip → 16 channels at 64², unconditioned)."""
    block = load_bundle(DEFAULT_BUNDLE).model("emulator").unet.decoder[-1][0].block
    gen = torch.Generator().manual_seed(2)
    x, skip = (torch.randn(BATCH, 16, 64, 64, generator=gen) for _ in range(2))
    c_in, c_out = block.conv1.in_channels, block.conv1.out_channels
    flops = 2 * BATCH * 64 * 64 * (9 * c_in * c_out + 9 * c_out * c_out + c_in * c_out)
    describe(benchmark, f"unet_block[{impl}, l0_dec, batch={BATCH}]",
             group=f"unet_block, cpu, fp32, l0_dec, batch={BATCH}", baseline=impl == BASELINE,
             flops=flops)
    if impl != BASELINE:
        x, skip = (t.contiguous(memory_format=torch.channels_last) for t in (x, skip))
    run = BLOCKS[impl]
    with torch.no_grad():
        expected = block(x, skip)
        torch.testing.assert_close(run(block, x, skip), expected, rtol=1e-4,
                                   atol=1e-5 * expected.abs().max().item())
        benchmark.pedantic(run, args=(block, x, skip), rounds=5, warmup_rounds=1)
    _report(benchmark, flops)
