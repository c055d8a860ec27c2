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
from sns_engine.engine import parallel
from sns_engine.engine.denoiser import refiner_denoiser
from sns_engine.engine.parallel import ChunkPool, CoreLoad
from sns_engine.engine.rollout import CPU_CHUNK, Engine, chunked

from .toys import ToyEmulator

SCHEDULE = CosineSchedule(100)


@pytest.fixture(scope="module")
def default_bundle():
    return load_bundle(DEFAULT_BUNDLE)


class SetLoad(CoreLoad):
    """Two cores, `others` of them kept busy by other processes (whatever the machine runs)."""

    def __init__(self, others: float = 0.0) -> None:
        self.cpus, self.others = [0, 1], others

    def busy_cores(self) -> float:
        return self.others


@pytest.fixture
def pool():
    with_pool = ChunkPool(2, SetLoad())
    yield with_pool
    with_pool.close()


@pytest.fixture
def idle_cores(monkeypatch):
    """Every ChunkPool sees its cores free, as on an idle machine (another suite may run here)."""
    monkeypatch.setattr(CoreLoad, "busy_cores", lambda self: 0.0)


def _pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sns-chunk")]


@pytest.mark.parametrize("rows,expected", [(1, 1), (3, 2), (16, 8), (21, 11), (32, CPU_CHUNK),
                                          (33, 9), (40, 10), (64, CPU_CHUNK), (65, 11)])
def test_every_worker_gets_an_even_share(pool, rows, expected):
    """As few chunks as CPU_CHUNK allows, their number even (two workers), of near-equal sizes."""
    assert pool.chunk_size(rows, CPU_CHUNK) == expected


def test_chunks_run_on_the_pool_in_member_order_on_one_torch_thread(pool):
    seen = []

    def fn(x, y):
        seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled(),
                     x.shape[0]))
        return x * 2 + y

    x, y = torch.randn(37, 3), torch.randn(37, 3)
    with torch.no_grad():
        out = chunked(fn, 8, pool)(x, y)
    assert torch.equal(out, x * 2 + y)
    assert sorted(n for *_, n in seen) == [2, 7, 7, 7, 7, 7]  # ≤ 8 rows each: 6 chunks, 3 per worker
    assert all(name.startswith("sns-chunk") and threads == 1 and not grad
               for name, threads, grad, _ in seen)


@pytest.mark.parametrize("regroup", [False, True])
def test_a_core_held_by_another_process_leaves_the_pool_one_worker_in_the_callers_thread(regroup):
    """One of two cores busy: in the caller's thread, the chunks of free cores one after another,
    or with `regroup` (batch-invariant networks) those of one thread; the core free again: on the
    pool's threads."""
    load = SetLoad(others=0.9)
    split = ChunkPool(2, load, regroup=regroup)
    seen = []

    def fn(x):
        seen.append((threading.current_thread().name, x.shape[0]))
        return x + 1

    x = torch.randn(40, 3)
    try:
        for others, on_pool in ((0.9, False), (0.3, True)):
            load.others, seen[:] = others, []
            one_thread = regroup and not on_pool
            assert split.active() == (2 if on_pool else 1)
            assert split.chunk_size(16, CPU_CHUNK) == (16 if one_thread else 8)
            assert torch.equal(chunked(fn, 16, split)(x[:16]), x[:16] + 1)
            assert torch.equal(chunked(fn, 16, split)(x), x + 1)
            assert sorted(n for _, n in seen) == ([12, 14, 14, 16] if one_thread else [8, 8, 10, 10, 10, 10])
            assert all(t.startswith("sns-chunk") == on_pool for t, _ in seen)
    finally:
        split.close()


def test_an_engine_regroups_only_batch_invariant_networks(monkeypatch):
    """Its pool follows the load with fp32 networks on a CPU whose convs are batch-invariant, not
    with bf16 (autocast leaves the fast path) nor where the convs are not."""
    from sns_engine.models import unet_cpu

    def pool_of(bf16: bool, invariant: bool) -> ChunkPool:
        monkeypatch.setattr(unet_cpu, "convs_batch_invariant", lambda: invariant)
        engine = Engine(ToyEmulator(), None, SCHEDULE, torch.randn(4, 1, 8, 8),
                        RolloutConfig(path="emulator"), backend="torch", bf16=bf16, workers=2)
        engine.close()
        return engine.pool

    assert pool_of(False, True).regroup
    assert not pool_of(True, True).regroup and not pool_of(False, False).regroup


def test_core_load_counts_other_processes_cpu_time_not_ours(tmp_path, monkeypatch):
    """/proc/stat's busy ticks (all but idle and iowait) of this process's CPUs less its own CPU
    time, per wall second, updated once a window has passed; unreadable: nothing busy."""
    stat, clock = tmp_path / "stat", {"wall": 0.0, "own": 0.0}

    def write(busy0: int, busy1: int, other_cpu: int = 0) -> None:  # user ticks; idle 500 each
        stat.write_text(f"cpu  {busy0 + busy1} 0 0 1000 0 0 0 0 0 0\n"
                        f"cpu0 {busy0} 0 0 500 7 0 0 0 0 0\n"
                        f"cpu1 {busy1 // 2} 0 {busy1 - busy1 // 2} 500 9 0 0 0 0 0\n"
                        f"cpu2 {other_cpu} 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n")

    monkeypatch.setattr(parallel, "PROC_STAT", str(stat))
    monkeypatch.setattr(parallel.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(parallel.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    write(1000, 1000)
    load = CoreLoad(window=0.5, first_window=0.1)
    # 1 s later: 250 busy ticks (2.5 CPU-s at 100 Hz, and cpu2, not ours, ignored), 1 CPU-s ours
    write(1100, 1150, other_cpu=900)
    clock.update(wall=1.0, own=1.0)
    assert load.busy_cores() == pytest.approx(1.5) and load.free_cores() == 1
    write(1120, 1160)          # 0.2 s on: under a window, the last figure stands
    clock.update(wall=1.2, own=1.1)
    assert load.busy_cores() == pytest.approx(1.5)
    write(1150, 1200)          # 1 s after the last window: 1 CPU-s busy, all of it ours
    clock.update(wall=2.0, own=2.0)
    assert load.busy_cores() == pytest.approx(0.0) and load.free_cores() == 2
    stat.unlink()
    assert CoreLoad().busy_cores() == 0.0


def test_parallel_network_call_equals_the_sequential_one(default_bundle, pool):
    """The refiner's full forward (a NamedTuple of ε̂ and logits) and the emulator on fresh random
    inputs: same members, chunked otherwise (oneDNN's convs need not be batch-invariant on every
    CPU: a tolerance)."""
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


def test_rollout_does_not_depend_on_threads(default_bundle, monkeypatch, idle_cores):
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


def test_engine_closes_its_pool_and_steps_on_one_torch_thread(monkeypatch, idle_cores):
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


def test_core_load_reads_its_first_window_early(tmp_path, monkeypatch):
    """The first figure comes after `first_window` (a rollout sees a busy core within its first
    steps), the later ones after `window`."""
    stat, clock = tmp_path / "stat", {"wall": 0.0}
    monkeypatch.setattr(parallel, "PROC_STAT", str(stat))
    monkeypatch.setattr(parallel.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(parallel.time, "process_time", lambda: 0.0)
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    stat.write_text("cpu0 0 0 0 100 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0\n")
    load = CoreLoad(window=0.5, first_window=0.1)
    stat.write_text("cpu0 15 0 0 100 0 0 0 0\ncpu1 0 0 0 115 0 0 0 0\n")  # 0.15 s: cpu0 busy
    clock["wall"] = 0.15
    assert load.busy_cores() == pytest.approx(1.0) and load.free_cores() == 1
    stat.write_text("cpu0 15 0 0 130 0 0 0 0\ncpu1 0 0 0 145 0 0 0 0\n")  # then idle
    clock["wall"] = 0.45  # 0.3 s on: under the 0.5 s window, the first figure stands
    assert load.busy_cores() == pytest.approx(1.0)
    clock["wall"] = 0.7
    assert load.busy_cores() == pytest.approx(0.0) and load.free_cores() == 2
