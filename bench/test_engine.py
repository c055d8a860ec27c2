"""Ensemble engine vs the authors' loop as published, vs the same loop calling our network, and vs
its own network passes alone.

Same bundle (the embedded default, `small` preset), path `left_down`, re-noising (the authors'
`forward_diff=True`, our default), same initial states, one physical step per round (five on the
GPU), in the two settings the authors run: Kolmogorov (every member refined every step) and QG
(members whose either head's class exceeds 5, our level ≥ 7). Side by side per setting and batch
(`pytest bench/test_engine.py --benchmark-only -k cpu`):

- `authors_loop` (the baseline): bench/authors_loop.py as a user of their code runs it:
  `ratio_class_both` (one encoder pass per head), re-noising, `range(max − 1, −1, −1)` with a
  boolean mask, gather, full forward, scatter and a host sync per level, torch.randn noise, eager
  NCHW float32 networks;
- `masked_loop` (the second baseline): the same loop calling our networks (their CPU fast path),
  every member starting at its own level as the engine does (`published_start=False`: the same
  network work), so the engine's lead over it is the scheduler's own, apart from the network's;
  the published loop's `range(max − 1, …)` skips the first step of the members at the batch
  maximum (docs/method.md, "Where we differ"), so it runs fewer forwards than the method asks:
  at batch 1 one fewer per walked frame. extra_info["forwards_per_step"] of both loops says how
  many they ran (emulator included), beside the engine's;
- `engine`, `engine_unchunked` (every network call on the whole packed batch, cpu_chunk=None);
- `network` (the limit): the network passes the engine's step ran, alone, at the batch sizes it ran
  them (emulator, levels-only estimate, each tick's forward at its padded size; logged by `PassLog`),
  on the same callables (chunking, backend); the summary prints the others' time over it.

Policy cases (`test_policy_cpu`, Kolmogorov): a level floor (x re-noised to ≥ 5: members walk alike
and ticks stay full), a stride (`every=4`: one refined step and three bare emulator steps per call)
and the lagged long frame; engine against its network time.

Every engine case first runs its timed steps once from the timed start and compares its first
members with the per-member CPU reference (engine.reference, float32; bf16 on a GPU: its first step,
`BF16`): a mismatch fails the case before it is timed.
extra_info: member-steps and network FLOPs of a call (the summary prints member-steps/s, FLOP/s and
the ratios; padded members count), forwards and levels-only passes per physical step, the useful
fraction and the achieved GFLOP/s.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.config import RolloutConfig
from sns_engine.engine.denoiser import CounterNoise, TorchNoise, refiner_denoiser
from sns_engine.engine.initial import initial_conditions
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import CPU_CHUNK, Engine, EngineStats
from sns_engine.models.unet_cpu import use_fast_cpu

from .authors_loop import AuthorsLoop
from .cases import GPU, GPU_BATCHES, check_close, needs_gpu
from .report import describe

LONG = pytest.mark.long  # batch 256 takes minutes per case on one core: only with --bench-long
CPU_BATCHES = [1, 4, 16, 64, pytest.param(256, marks=LONG)]
POLICY_BATCHES = [16, 64, pytest.param(256, marks=LONG)]
BASELINE, SECOND_BASELINE, LIMIT = "authors_loop", "masked_loop", "network"
IMPLS = ["engine", "engine_unchunked", LIMIT, SECOND_BASELINE, BASELINE]
# setting → (our threshold, heads; their QG class threshold or None for every member)
SETTINGS = {"kolmogorov": (0, "x", None), "qg": (7, "either", 5)}
# policy → (its RolloutConfig fields, physical steps per timed call); lagged takes the training lag
POLICIES = {"floor5": (dict(level_floor=5), 1), "every4": (dict(every=4), 4),
            "lagged": (dict(long="lagged"), 1)}
CHECKED = 2            # members compared with the CPU reference before timing (8 on a GPU)
FP32 = 1e-3            # their states within FP32 × max |reference|, their levels and moves equal
# bf16 on a GPU, first step only (bf16 flips near-tied heads to a neighbouring level, and a member
# whose walk differs then has another trajectory: CPU bf16 autocast vs fp32 on this bundle moved
# n̂_x 2 → 1 for 1–2 of 4 members, bench/results/cpu-bf16-accuracy.json): every checked member's
# levels within BF16_LEVELS of the reference's, the members whose levels and moves agree within
# BF16 × max |reference| (they moved ≈ 5e-4 of a state's norm); a broken path is off by O(1)
BF16, BF16_LEVELS = 0.1, 2


def _setup(device: str, batch: int):
    bundle = load_bundle(DEFAULT_BUNDLE, device=device)
    x0 = initial_conditions(bundle, batch, None, torch.arange(batch)).to(device)
    return bundle, x0


def _config(bundle, setting: str, policy: str | None = None, steps: int = 1) -> RolloutConfig:
    threshold, heads, _ = SETTINGS[setting]
    fields = dict(POLICIES[policy][0]) if policy else {}
    if fields.get("long") == "lagged":
        fields["lag"] = bundle.config["models"]["refiner"]["train"]["lag"]
    return RolloutConfig(path="left_down", steps=steps, threshold=threshold, threshold_heads=heads,
                         **fields)


def _describe(benchmark, op: str, device: str, setting: str, batch: int, *variant: str,
              policy: str | None = None, steps: int = 1) -> None:
    """Name `op[left_down, setting, policy, device, *variant, batch=B]`, grouped by setting, policy,
    device and batch with BASELINE, SECOND_BASELINE and LIMIT; the work: batch × steps member-steps."""
    case = ("left_down", setting, *([policy] if policy else []), "gpu" if device == "cuda" else "cpu")
    describe(benchmark, f"{op}[{', '.join((*case, *variant))}, batch={batch}]",
             group=f"{', '.join(case)}, batch={batch}", baseline=op == BASELINE,
             second_baseline=op == SECOND_BASELINE, limit=op == LIMIT, member_steps=batch * steps)


@dataclass
class PassLog(EngineStats):
    """The engine's stats, each network pass it runs also logged as (kind, members): the emulator,
    the levels-only estimate and the full forwards (walk ticks at their padded sizes)."""

    passes: list[tuple[str, int]] = field(default_factory=list)

    def count_forward(self, members: int, useful: int, emulator: bool = False) -> None:
        super().count_forward(members, useful, emulator)
        self.passes.append(("emulator" if emulator else "forward", members))

    def count_level_pass(self, members: int) -> None:
        super().count_level_pass(members)
        self.passes.append(("levels", members))


def _engine(bundle, x0, cfg: RolloutConfig, graphs=False, bf16=False, **kw) -> Engine:
    engine = Engine(bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")),
                    bundle.schedule, x0, cfg, graphs=graphs, bf16=bf16, **kw)
    engine.stats = PassLog(per_member=engine.stats.per_member)
    return engine


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def _network(engine: Engine, passes: list[tuple[str, int]]) -> Callable[[], None]:
    """The LIMIT's timed call: `passes` on the engine's own callables and buffers."""
    calls = {"emulator": lambda m: engine.emulator(engine.x[:m]),
             "levels": lambda m: engine.denoiser.estimate(engine.long[:m], engine.x[:m],
                                                          engine.proposal[:m]),
             "forward": lambda m: engine.denoiser(engine.slong[:m], engine.sy[:m], engine.sx[:m])}

    def run():
        with torch.no_grad(), engine.autocast:
            for kind, members in passes:
                calls[kind](members)

    return _synced(run, engine.x.device)


@functools.cache
def _reference(setting: str, policy: str | None, steps: int, members: int):
    """The CPU reference rollout (float32, per member) of the first `members` members."""
    bundle, x0 = _setup("cpu", members)
    cfg = _config(bundle, setting, policy, steps)
    return reference_rollout(bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")),
                             bundle.schedule, x0, cfg, CounterNoise(cfg.seed))


def check_engine(engine: Engine, setting: str, policy: str | None, steps: int, bf16: bool) -> None:
    """Run `steps` engine steps and compare its first members with the CPU reference (module
    docstring); the engine's state is left after them."""
    k = min(engine.size, 8 if engine.x.is_cuda else CHECKED)
    states, levels, moves = [], [], []
    for _ in range(steps):
        lv, mv = engine.step()
        states.append(engine.x[:k].cpu().clone())
        levels.append(lv[:k].cpu())
        moves.append(mv[:k].cpu())
    states, levels, moves = (torch.stack(t, 1) for t in (states, levels, moves))
    ref = _reference(setting, policy, steps, k)
    what = f"engine[{setting}, {policy or 'published'}, {engine.x.device.type}{', bf16' * bf16}]"
    if not bf16:
        agree = (levels == ref.levels).flatten(1).all(1) & (moves == ref.moves).all(1)
        assert bool(agree.all()), (f"GPU CHECK FAILED: {what}: levels {levels.tolist()} / moves "
                                   f"{moves.tolist()} where the reference has {ref.levels.tolist()} / "
                                   f"{ref.moves.tolist()}")
        check_close(states, ref.states, FP32, what)
        return
    apart = int((levels[:, 0] - ref.levels[:, 0]).abs().max())
    assert apart <= BF16_LEVELS, (f"GPU CHECK FAILED: {what}: first-step levels {apart} apart from the "
                                  f"reference's (at most {BF16_LEVELS})")
    first = (levels[:, 0] == ref.levels[:, 0]).all(1) & (moves[:, 0] == ref.moves[:, 0])
    if first.any():
        check_close(states[first, 0], ref.states[first, 0], BF16, what)


def _time_engine(benchmark, engine: Engine, steps: int, rounds: int, check: Callable[[], None],
                 network: bool = False) -> None:
    """Check (module docstring) and warm up on `steps` steps from the start, then time them from the
    same start each round (an untimed reset before each), or, with `network`, time the network
    passes they ran. A call's FLOPs are those of its steps (every round repeats the same work)."""
    start = {k: v.clone() for k, v in engine.state_tensors().items()}
    check()   # the warm-up too (graph capture, autotuning on a GPU)
    flops, passes = engine.stats.flops, list(engine.stats.passes)
    benchmark.extra_info["flops"] = flops
    if network:
        benchmark.pedantic(_network(engine, passes), rounds=rounds)
    else:
        run = _synced(lambda: [engine.step() for _ in range(steps)], engine.x.device)
        benchmark.pedantic(run, setup=lambda: engine.load_state(start, 0), rounds=rounds)
    stats = engine.stats
    benchmark.extra_info.update(forwards_per_step=stats.forwards_per_step,
                                level_passes_per_step=stats.level_passes / max(stats.physical_steps, 1),
                                useful_fraction=stats.useful_fraction,
                                forward_batches=[m for kind, m in passes if kind == "forward"])
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops_per_s"] = flops / benchmark.stats.stats.mean / 1e9


def _authors_step(benchmark, bundle, x0, setting: str, fast: bool = False) -> Callable[[], None]:
    """One physical step of the authors' loop: as published (eager NCHW networks) or, `fast`,
    calling our networks with every member at its own level (the masked loop); the fast networks'
    proposal and level classes are first checked against the eager ones (a second copy of the
    bundle). Its full forwards per step go to extra_info."""
    loop = AuthorsLoop(bundle.schedule.num_levels, TorchNoise(), published_start=not fast)
    emulator = use_fast_cpu(bundle.model("emulator"), fast)
    denoiser = refiner_denoiser(use_fast_cpu(bundle.model("refiner"), fast))
    full = denoiser.forward

    def counted(long, y, x):
        forwards[0] += 1
        return full(long, y, x)

    forwards = [0]
    denoiser = dataclasses.replace(denoiser, forward=counted)
    if fast:
        eager = load_bundle(DEFAULT_BUNDLE, device=x0.device)
        eager_emulator = use_fast_cpu(eager.model("emulator"), False)
        eager_denoiser = refiner_denoiser(use_fast_cpu(eager.model("refiner"), False))
        with torch.no_grad():
            proposal, expected = emulator(x0), eager_emulator(x0)
            check_close(proposal, expected, FP32, "masked_loop's emulator")
            classes = loop.classes(denoiser, x0, x0, proposal)
            assert torch.equal(classes, loop.classes(eager_denoiser, x0, x0, proposal)), \
                "masked_loop's level classes differ from the eager networks'"
    step = _synced(lambda: loop.rollout("left_down", emulator, denoiser, x0, 1, SETTINGS[setting][2]),
                   x0.device)
    forwards[0] = 0
    step()  # warm-up, counting the forwards of the step (the same every round)
    benchmark.extra_info["forwards_per_step"] = forwards[0] + 1  # + the emulator, as the engine's
    return step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", CPU_BATCHES)
@pytest.mark.parametrize("setting", list(SETTINGS))  # the slowest-varying: side by side below it
def test_left_down_cpu(benchmark, setting, batch, impl):
    """One physical step from the same states, every implementation side by side. The engine is
    built once (a rollout builds it once for all its steps). `engine_unchunked` tells the gain of
    the engine's CPU chunking from that of its scheduling."""
    bundle, x0 = _setup("cpu", batch)
    rounds = max(3, 32 // batch)  # small batches are quick and noisier: more rounds
    _describe(benchmark, impl, "cpu", setting, batch)
    if impl in (BASELINE, SECOND_BASELINE):
        benchmark.pedantic(_authors_step(benchmark, bundle, x0, setting, fast=impl == SECOND_BASELINE),
                           rounds=rounds)
        return
    chunk = None if impl == "engine_unchunked" else CPU_CHUNK
    engine = _engine(bundle, x0, _config(bundle, setting), cpu_chunk=chunk)
    _time_engine(benchmark, engine, 1, rounds, lambda: check_engine(engine, setting, None, 1, False),
                 network=impl == LIMIT)


@pytest.mark.parametrize("impl", ["engine", LIMIT])
@pytest.mark.parametrize("batch", POLICY_BATCHES)
@pytest.mark.parametrize("policy", list(POLICIES))
def test_policy_cpu(benchmark, policy, batch, impl):
    """A refinement policy (Kolmogorov setting): the engine against its own network passes."""
    bundle, x0 = _setup("cpu", batch)
    steps = POLICIES[policy][1]
    _describe(benchmark, impl, "cpu", "kolmogorov", batch, policy=policy, steps=steps)
    engine = _engine(bundle, x0, _config(bundle, "kolmogorov", policy, steps))
    _time_engine(benchmark, engine, steps, max(3, 16 // batch),
                 lambda: check_engine(engine, "kolmogorov", policy, steps, False), network=impl == LIMIT)


@pytest.mark.parametrize("batch", [1, 16])
def test_reference_oracle_cpu(benchmark, batch):
    bundle, x0 = _setup("cpu", batch)
    cfg = RolloutConfig(path="left_down", steps=1, threshold=0)
    _describe(benchmark, "oracle", "cpu", "kolmogorov", batch)
    benchmark.pedantic(reference_rollout, args=(
        bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")), bundle.schedule, x0,
        cfg, CounterNoise(0)), rounds=1, iterations=1)


@pytest.fixture
def strict_fp32():
    """float32 means float32 on the GPU: TF32 off for the case, restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@needs_gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
@pytest.mark.parametrize("graphs", [True, False])
@pytest.mark.parametrize("bf16", [True, False])
def test_engine_gpu(benchmark, strict_fp32, batch, graphs, bf16):
    """Five steps, float32 (TF32 off) or bf16 autocast, CUDA graphs or eager."""
    bundle, x0 = _setup(GPU, batch)
    engine = _engine(bundle, x0, _config(bundle, "kolmogorov"), graphs, bf16)
    _describe(benchmark, "engine", GPU, "kolmogorov", batch, "graphs" if graphs else "eager",
              "bf16" if bf16 else "fp32", steps=5)
    _time_engine(benchmark, engine, 5, 3, lambda: check_engine(engine, "kolmogorov", None, 5, bf16))


@needs_gpu
@pytest.mark.parametrize("batch", GPU_BATCHES)
def test_authors_loop_gpu(benchmark, strict_fp32, batch):
    bundle, x0 = _setup(GPU, batch)
    step = _authors_step(benchmark, bundle, x0, "kolmogorov")
    _describe(benchmark, BASELINE, GPU, "kolmogorov", batch)
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
