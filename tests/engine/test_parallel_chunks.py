"""Member-split parallelism (engine.parallel): the chunks of a network call run on a pool of threads,
one torch thread each, and nothing a rollout computes depends on how many."""

import threading

import pytest
import torch

import sns_engine
from sns_engine import bundle as bundle_module
from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.config import ConfigError, RolloutConfig
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine.denoiser import refiner_denoiser
from sns_engine.engine.parallel import ChunkPool
from sns_engine.engine.rollout import CPU_CHUNK, Engine, chunked

from .toys import ToyEmulator

SCHEDULE = CosineSchedule(100)


@pytest.fixture(scope="module")
def default_bundle():
    return load_bundle(DEFAULT_BUNDLE)


@pytest.fixture
def pool():
    with_pool = ChunkPool(2)
    yield with_pool
    with_pool.close()


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sns-chunk")]


@pytest.mark.parametrize("rows,expected", [(1, 1), (3, 2), (16, 8), (21, 11), (40, CPU_CHUNK)])
def test_every_worker_gets_an_even_share(pool, rows, expected):
    assert pool.chunk_size(rows, CPU_CHUNK) == expected


def test_chunks_run_on_the_pool_in_member_order_on_one_torch_thread(pool):
    seen = []

    def fn(x, y):
        seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled()))
        return x * 2 + y

    x, y = torch.randn(37, 3), torch.randn(37, 3)
    with torch.no_grad():
        out = chunked(fn, 8, pool)(x, y)
    assert torch.equal(out, x * 2 + y)
    assert len(seen) == 5  # 37 rows in chunks of 8 (≤ CPU chunk, even share 19)
    assert all(name.startswith("sns-chunk") and threads == 1 and not grad for name, threads, grad in seen)


def test_parallel_network_call_equals_the_sequential_one(default_bundle, pool):
    """The refiner's full forward (a NamedTuple of ε̂ and logits) and the emulator on fresh random
    inputs: same members, chunked otherwise (oneDNN need not be batch-invariant: a tolerance)."""
    g = torch.Generator().manual_seed(11)
    frames = [torch.randn(21, 1, 64, 64, generator=g) for _ in range(3)]
    denoiser = refiner_denoiser(default_bundle.model("refiner"))
    emulator = default_bundle.model("emulator")
    with torch.no_grad():
        for fn, inputs in ((denoiser.forward, frames), (emulator, frames[:1])):
            serial, split = chunked(fn, CPU_CHUNK)(*inputs), chunked(fn, CPU_CHUNK, pool)(*inputs)
            for a, b in zip(*((o,) if isinstance(o, torch.Tensor) else o for o in (serial, split)),
                            strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


def test_rollout_does_not_depend_on_threads(default_bundle, monkeypatch):
    """threads=2 (two workers) against threads=1 on the embedded bundle: levels and moves equal,
    states within 1e-5 of their scale; the pool ran chunks and is gone after the rollout."""
    calls = []
    pool_map = ChunkPool.map

    def counted(self, fn, parts):
        calls.append(len(parts))
        return pool_map(self, fn, parts)

    monkeypatch.setattr(ChunkPool, "map", counted)
    one = sns_engine.rollout(default_bundle, batch=6, steps=2, quiet=True, threads=1)
    before = threading.active_count()  # after tqdm's monitor thread, which the first bar starts
    two = sns_engine.rollout(default_bundle, batch=6, steps=2, quiet=True, threads=2)
    assert calls and threading.active_count() == before and not _pool_threads()
    assert torch.equal(one.levels, two.levels) and torch.equal(one.moves, two.moves)
    assert torch.equal(one.flags, two.flags)
    assert float((one.states - two.states).abs().max()) <= 1e-5 * float(one.states.abs().max())


def test_engine_closes_its_pool_and_steps_on_one_torch_thread(monkeypatch):
    cfg = RolloutConfig(path="emulator", steps=1)
    seen = []
    step = Engine._step

    def recording_step(self):
        seen.append(torch.get_num_threads())
        return step(self)

    monkeypatch.setattr(Engine, "_step", recording_step)
    before, caller = threading.active_count(), torch.get_num_threads()
    with Engine(ToyEmulator(), None, SCHEDULE, torch.randn(5, 1, 8, 8), cfg, graphs=False,
                workers=2) as engine:
        engine.step()
        assert _pool_threads()
    assert seen == [1] and torch.get_num_threads() == caller
    assert threading.active_count() == before and not _pool_threads()
    assert Engine(ToyEmulator(), None, SCHEDULE, torch.randn(5, 1, 8, 8), cfg, workers=1).pool is None


@pytest.mark.parametrize("bad,error,message", [
    (0, ConfigError, "threads must be a positive int or None.*got 0"),
    (-2, ConfigError, "threads must be a positive int or None.*got -2"),
    (1.5, TypeError, "threads must be an int, got float"),
    (True, TypeError, "threads must be an int, got bool")])
def test_bad_threads_are_refused_before_any_work(monkeypatch, bad, error, message):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before threads was checked")

    monkeypatch.setattr(bundle_module, "load_bundle", no_work)
    with pytest.raises(error, match=message):
        sns_engine.rollout(batch=2, steps=1, quiet=True, threads=bad)
    for workers in (0, 2.0, None):
        with pytest.raises(ValueError, match="workers must be a positive int"):
            Engine(ToyEmulator(), None, SCHEDULE, torch.randn(2, 1, 8, 8), RolloutConfig(path="emulator"),
                   workers=workers)
