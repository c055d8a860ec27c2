"""The packed engine against the per-member reference, and its invariances."""

import pytest
import torch
import zarr

from sns_engine.api import DEFAULT_BUNDLE, rollout
from sns_engine.bundle import load_bundle
from sns_engine.config import RolloutConfig
from sns_engine.data.store import StoreError, TrajectoryStore
from sns_engine.diffusion.paths import PATHS
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import CounterNoise, refiner_denoiser, thermalizer_denoiser
from sns_engine.engine.initial import PERTURB, initial_conditions
from sns_engine.engine.reference import reference_rollout
from sns_engine.engine.rollout import Engine, chunked, drive
from sns_engine.engine.rules import NONFINITE
from sns_engine.engine.scheduler import bucket_sizes, schedule_ticks

from .toys import ToyEmulator, ToyRefiner, ToyThermalizer

SCHEDULE = CosineSchedule(100)  # N = 100 keeps acdm/generate walks short
TOL = dict(rtol=1e-4, atol=1e-4)  # float32; batched vs single-member convolutions differ by ulps


def initial(batch, seed=0, size=8, channels=1):
    """Random states whose amplitude varies by member, so the toy estimates differ widely."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.1 + 0.3 * (torch.arange(batch) % 7).float()
    return torch.randn(batch, channels, size, size, generator=g) * scale[:, None, None, None]


def models(path, device="cpu"):
    denoiser = (thermalizer_denoiser(ToyThermalizer(num_levels=100).to(device)) if path == "thermalizer"
                else refiner_denoiser(ToyRefiner(num_levels=100).to(device)))
    return ToyEmulator().to(device), denoiser


def run_engine(x0, cfg, members=None, **kw):
    emulator, denoiser = models(cfg.path)
    engine = Engine(emulator, denoiser if cfg.path != "emulator" else None, SCHEDULE, x0, cfg,
                    members=members, graphs=False, **kw)
    states, levels, moves = drive(engine, cfg.steps, cfg.save_every)
    return engine, torch.stack(states, 1), torch.stack(levels, 1), torch.stack(moves, 1)


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("renoise", [True, False])
def test_engine_equals_reference_member_by_member(path, renoise):
    steps = 3
    cfg = RolloutConfig(path=path, steps=steps, renoise=renoise, seed=7, threshold=10,
                        noise_limit=50, bound=1e6)
    x0 = initial(6, seed=3)
    emulator, denoiser = models(path)
    ref = reference_rollout(emulator, denoiser if path != "emulator" else None, SCHEDULE, x0, cfg,
                            CounterNoise(7))
    engine, states, levels, moves = run_engine(x0, cfg)
    torch.testing.assert_close(states, ref.states, **TOL)
    torch.testing.assert_close(levels, ref.levels)
    torch.testing.assert_close(moves, ref.moves)
    torch.testing.assert_close(engine.flags.cpu(), ref.flags)
    if path not in ("emulator", "thermalizer"):
        # the batch really mixes members: different levels, some below the threshold
        assert len(set(levels[:, 0, 0].tolist())) >= 3
        assert (levels[:, :, 0] < 10).any() and (levels[:, :, 0] >= 10).any()


def test_first_tick_reuses_the_estimate_forward_when_nothing_is_renoised():
    x0 = initial(16, seed=5)
    cfg = RolloutConfig(path="left_down", steps=2, renoise=False, threshold=0)
    engine, _, _, moves = run_engine(x0, cfg)
    longest = moves.max(0).values
    # per physical step: emulator + estimate + (longest walk − 1 reused) forwards
    assert engine.stats.forwards == sum(2 + int(m) - 1 for m in longest)


def test_estimate_is_a_levels_only_pass_when_frames_are_renoised():
    """With re-noising (the default) the estimate's ε̂ cannot be reused, so the engine and the
    reference run only encoder + middle + heads for it (the authors' ratio_class_both)."""
    x0 = initial(8, seed=6)
    cfg = RolloutConfig(path="left_down", steps=2, renoise=True, threshold=0)
    emulator, denoiser = models(cfg.path)
    calls = {"forward": 0, "levels": 0, "estimate": 0}

    def counted(name, fn):
        def run(*inputs):
            calls[name] += 1
            return fn(*inputs)
        return run

    spy = type(denoiser)(*(counted(name, getattr(denoiser, name)) for name in calls))
    engine = Engine(emulator, spy, SCHEDULE, x0, cfg, graphs=False, cpu_chunk=None)
    _, _, moves = drive(engine, cfg.steps, cfg.save_every)
    longest = torch.stack(moves, 1).max(0).values
    assert calls["estimate"] == engine.stats.level_passes == cfg.steps and calls["levels"] == 0
    assert calls["forward"] == int(longest.sum())          # one full forward per tick, no more
    assert engine.stats.forwards == cfg.steps + int(longest.sum())   # + the emulator's
    calls.update(forward=0, levels=0, estimate=0)
    reference_rollout(emulator, spy, SCHEDULE, x0[:1], cfg, CounterNoise(0))
    assert calls["estimate"] == cfg.steps


def test_member_trajectory_independent_of_batch_composition():
    cfg = RolloutConfig(path="left_down", steps=3, seed=11)
    big = initial(256, seed=9)
    member = 5
    _, alone, _, _ = run_engine(big[member:member + 1], cfg, members=torch.tensor([member]))
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(37)[perm]
    _, among37, _, _ = run_engine(big[ids], cfg, members=ids)
    _, among256, _, _ = run_engine(big, cfg)
    row = int((ids == member).nonzero())
    torch.testing.assert_close(among37[row], alone[0], **TOL)
    torch.testing.assert_close(among256[member], alone[0], **TOL)


def test_nan_member_is_flagged_frozen_and_others_unaffected():
    cfg = RolloutConfig(path="left_down", steps=3)
    x0 = initial(5, seed=2)
    bad = x0.clone()
    bad[2, 0, 1, 1] = float("nan")
    clean_engine, clean, _, _ = run_engine(x0, cfg)
    engine, states, _, _ = run_engine(bad, cfg)
    assert engine.flags.tolist() == [0, 0, NONFINITE, 0, 0]
    assert engine.flagged_at.tolist()[2] == 0
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(states[keep], clean[keep], **TOL)
    torch.testing.assert_close(states[2, -1], bad[2], equal_nan=True)  # frozen as it was


def test_bucket_sizes_and_packing():
    sizes = bucket_sizes(1024)
    assert sizes[:16] == list(range(1, 17)) and sizes[-1] == 1024
    waste = max((b - a) / b for a, b in zip([s + 1 for s in sizes[:-1]], sizes[1:], strict=True))
    assert waste < 1 / 16 + 1e-9
    moves = torch.tensor([3, 0, 5, 1, 5, 2])
    ticks = schedule_ticks(moves, bucket_sizes(6, 2))
    assert moves[ticks.order].tolist() == [5, 5, 3, 2, 1, 0]
    assert ticks.active == [5, 4, 3, 2, 2]
    assert all(p >= a for a, p in zip(ticks.active, ticks.padded, strict=True))


def test_engine_with_triton_backend_equals_torch():
    """The fused Triton tick and re-noise (CPU interpreter) against the torch path, whole engine."""
    cfg = RolloutConfig(path="left_down", steps=2, seed=3)
    x0 = initial(5, seed=4)
    _, torch_states, torch_levels, _ = run_engine(x0, cfg, backend="torch")
    _, triton_states, triton_levels, _ = run_engine(x0, cfg, backend="triton")
    torch.testing.assert_close(triton_states, torch_states, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(triton_levels, torch_levels)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["left_down", "diagonal", "thermalizer"])
def test_cuda_graphs_equal_eager(path):
    cfg = RolloutConfig(path=path, steps=3, seed=5)
    x0 = initial(37, seed=6).cuda()
    emulator, denoiser = models(path, "cuda")
    runs = []
    for graphs in (False, True):
        engine = Engine(emulator, denoiser, SCHEDULE.to("cuda"), x0, cfg, graphs=graphs)
        states, _, _ = drive(engine, cfg.steps, 1)
        runs.append(torch.stack(states, 1))
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-5, atol=1e-5)


def test_chunked_calls_split_the_batch_and_join_the_outputs():
    refiner = ToyRefiner(num_levels=100)
    calls = []

    def counted(*inputs):
        calls.append(inputs[0].shape[0])
        return refiner_denoiser(refiner)(*inputs)

    frames = [initial(37, seed=s) for s in range(3)]
    whole = refiner_denoiser(refiner)(*frames)
    parts = chunked(counted, 16)(*frames)
    assert calls == [16, 16, 5] and type(parts) is type(whole)
    for a, b in zip(parts, whole, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(chunked(ToyEmulator(), 8)(frames[0]), ToyEmulator()(frames[0]))


def test_cpu_chunking_does_not_change_the_rollout():
    x0 = initial(37, seed=5)
    cfg = RolloutConfig(path="left_down", steps=3, seed=2, threshold=0)
    _, whole, lw, mw = run_engine(x0, cfg, cpu_chunk=None)
    _, parts, lp, mp = run_engine(x0, cfg, cpu_chunk=4)
    torch.testing.assert_close(parts, whole, **TOL)
    assert torch.equal(lp, lw) and torch.equal(mp, mw)


@pytest.mark.parametrize("path", ["left_down", "thermalizer"])
def test_engine_flops_are_the_flops_its_networks_ran(path):
    """stats.flops (member-forwards × FLOPs per member of each pass, padding included) is what
    FlopCounterMode counts over the whole rollout; analytic networks count none."""
    from torch.utils.flop_counter import FlopCounterMode

    from sns_engine.models.emulator import Emulator
    from sns_engine.models.refiner import Refiner
    from sns_engine.models.thermalizer import Thermalizer
    from sns_engine.models.unet import forward_flops

    grid, schedule = 16, CosineSchedule(20)
    gen = torch.Generator().manual_seed(3)
    network = (Thermalizer(Thermalizer.unet_config("small", 1, grid, num_levels=20))
               if path == "thermalizer" else Refiner(Refiner.unet_config("small", 1, grid, num_levels=20)))
    models = (Emulator(Emulator.unet_config("small", 1, grid)), network)
    with torch.no_grad():
        for p in (p for model in models for p in model.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * (p[0].numel() ** -0.5 if p.ndim > 1 else 0.1))
    emulator, network = models
    denoiser = (thermalizer_denoiser if path == "thermalizer" else refiner_denoiser)(network)
    cfg = RolloutConfig(path=path, steps=2, threshold=0, seed=1)
    engine = Engine(emulator, denoiser, schedule, initial(11, seed=4, size=grid), cfg, graphs=False,
                    cpu_chunk=4, buckets_per_octave=1)    # power-of-two buckets: padded ticks
    with FlopCounterMode(display=False) as counter:
        drive(engine, cfg.steps, 1)
    stats, per = engine.stats, engine.stats.per_member()
    assert (per.emulator, per.forward, per.levels) == (
        forward_flops(emulator), forward_flops(network), forward_flops(network, "levels"))
    assert stats.emulator_member_forwards == 2 * 11 and stats.level_pass_members == 11 * stats.level_passes
    assert stats.flops == counter.get_total_flops()
    assert stats.member_forwards > stats.useful_member_forwards > 2 * 11
    padding = stats.member_forwards - stats.useful_member_forwards
    assert stats.useful_flops == stats.flops - padding * per.forward
    toy, _, _, _ = run_engine(initial(6), RolloutConfig(path=path, steps=1, threshold=0))
    assert toy.stats.forwards > 0 and toy.stats.flops == toy.stats.useful_flops == 0


@pytest.fixture(scope="module")
def default_bundle():
    return load_bundle(DEFAULT_BUNDLE)


def test_default_ensemble_members_are_pairwise_distinct(default_bundle):
    r = rollout(default_bundle, batch=64, steps=2, quiet=True)  # 4 members per shipped snapshot
    last = r.states[:, -1].flatten(1)
    gaps = torch.cdist(last, last) + torch.diag(torch.full((64,), float("inf")))
    assert gaps.min() > 0


def test_seed_changes_the_ensemble_and_a_member_ignores_the_batch(default_bundle):
    four, other_seed = (rollout(default_bundle, batch=4, steps=2, seed=s, quiet=True) for s in (0, 123))
    assert not torch.allclose(four.states, other_seed.states)
    eight = rollout(default_bundle, batch=8, steps=2, quiet=True)
    torch.testing.assert_close(eight.states[3], four.states[3], **TOL)
    shifted = rollout(default_bundle, batch=2, steps=2, member_offset=2, quiet=True)  # members 2 and 3
    torch.testing.assert_close(shifted.states[1], four.states[3], **TOL)


def test_initial_conditions_perturb_cycled_states_only(default_bundle):
    shipped = default_bundle.initial[torch.arange(32) % 16]
    x0 = initial_conditions(default_bundle, 32, None, torch.arange(32), seed=5)
    rms = (x0 - shipped).pow(2).mean(dim=(-2, -1)).sqrt()
    torch.testing.assert_close(rms / shipped.std(dim=(-2, -1)), torch.full_like(rms, PERTURB), rtol=1e-3,
                               atol=0)
    assert not torch.equal(x0[0], x0[16])  # same snapshot, distinct members
    assert torch.equal(initial_conditions(default_bundle, 32, None, torch.arange(32), perturb=0), shipped)
    given = shipped[:2] * default_bundle.scale
    torch.testing.assert_close(initial_conditions(default_bundle, 2, given, torch.arange(2)),
                               given / default_bundle.scale, rtol=0, atol=0)
    assert not torch.equal(initial_conditions(default_bundle, 2, given, torch.arange(2), perturb=1e-3),
                           given / default_bundle.scale)
    with pytest.raises(ValueError, match="perturb must be a finite amplitude"):
        initial_conditions(default_bundle, 2, None, torch.arange(2), perturb=-1.0)


def test_initial_states_from_a_store_and_the_recorded_amplitude(default_bundle, tmp_path):
    ens = tmp_path / "ens.zarr"
    rollout(default_bundle, batch=2, steps=2, out=ens, perturb=2e-3, quiet=True)
    store = TrajectoryStore(ens)
    assert store.root.attrs["rollout"]["perturb"] == 2e-3
    x0 = initial_conditions(default_bundle, 3, ens, torch.arange(3), perturb=0)
    last = torch.from_numpy(store.fields[[0, 1, 0], -1]) / default_bundle.scale
    torch.testing.assert_close(x0, last, rtol=0, atol=0)


def test_rollout_overwrite_deletes_only_an_ensemble_store(default_bundle, tmp_path, monkeypatch):
    plain = tmp_path / "results"
    plain.mkdir()
    (plain / "paper.pdf").write_text("keep me")
    theirs = tmp_path / "theirs.zarr"
    zarr.open_group(str(theirs), mode="w").attrs["owner"] = "someone else"
    for out in (plain, theirs):
        for flags in ({"overwrite": True}, {}, {"resume": True}):
            with pytest.raises(StoreError, match="not a sns_engine store, so it will not be deleted") as err:
                rollout(default_bundle, batch=2, steps=2, out=out, **flags, quiet=True)
            assert str(out) in str(err.value) and "--overwrite" not in str(err.value)
    assert (plain / "paper.pdf").read_text() == "keep me"
    assert dict(zarr.open_group(str(theirs)).attrs) == {"owner": "someone else"}
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(StoreError, match=r"\.\. is the working directory or one above it"):
        rollout(default_bundle, batch=2, steps=2, out="..", overwrite=True, quiet=True)
    assert (plain / "paper.pdf").exists() and work.is_dir()
    ens = tmp_path / "ens.zarr"
    first = rollout(default_bundle, batch=2, steps=2, out=ens, quiet=True)
    again = rollout(default_bundle, batch=2, steps=2, out=ens, seed=1, overwrite=True, quiet=True)
    assert first.store == again.store and TrajectoryStore(ens).root.attrs["rollout"]["seed"] == 1


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_rollout_of_the_default_bundle_equals_the_cpu_reference(backend):
    """The whole GPU path on the shipped models — fused conv blocks, the levels-only estimate with
    the fused level_argmax, the packed ticks, CUDA graphs — against the CPU oracle, in float32."""
    from sns_engine.ops import cuda_ext

    if backend == "cuda" and not cuda_ext.is_built():
        pytest.skip("CUDA extension not built")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    gpu = rollout(batch=6, steps=3, device="cuda", backend=backend, quiet=True)
    cpu = rollout(batch=6, steps=3, engine="reference", device="cpu", quiet=True)
    assert torch.equal(gpu.levels.cpu(), cpu.levels)
    torch.testing.assert_close(gpu.states.cpu(), cpu.states, rtol=1e-3, atol=1e-3)
