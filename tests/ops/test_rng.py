"""Counter-based RNG: Philox4x32-10 known answers, backends agree on the raw words, the normals'
statistics and independence across members, pixels, levels, steps, streams and seeds.

Statistical bounds are 5 standard errors for the sample size used (false alarm < 1e-6 per check).
Runtime ≈ 3 s on one CPU core.
"""

import math
import threading

import pytest
import torch
import triton
import triton.language as tl

from sns_engine.kernels import rng as triton_rng
from sns_engine.ops import cuda_ext, rng

from .cases import cuda_param

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SAMPLES = (16, 4096)  # members × pixels per statistical check: n = 65 536

# Random123 kat_vectors, "philox4x32 10": counter (4 words), key (2 words) → output (4 words)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    out = rng.philox4x32_10(tuple(torch.tensor(c) for c in counter),
                            tuple(torch.tensor(k) for k in key))
    assert [int(w) for w in out] == list(expected)


@triton.jit
def _library_philox(c_ptr, k_ptr, out_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    w0, w1, w2, w3 = tl.philox_impl(
        tl.load(c_ptr + 4 * i).to(tl.uint32), tl.load(c_ptr + 4 * i + 1).to(tl.uint32),
        tl.load(c_ptr + 4 * i + 2).to(tl.uint32), tl.load(c_ptr + 4 * i + 3).to(tl.uint32),
        tl.load(k_ptr + 2 * i).to(tl.uint32), tl.load(k_ptr + 2 * i + 1).to(tl.uint32), 10)
    tl.store(out_ptr + 4 * i, w0.to(tl.int64))
    tl.store(out_ptr + 4 * i + 1, w1.to(tl.int64))
    tl.store(out_ptr + 4 * i + 2, w2.to(tl.int64))
    tl.store(out_ptr + 4 * i + 3, w3.to(tl.int64))


def test_philox_matches_tritons_library_philox():
    """An independent published implementation (triton.language.philox_impl), all four words."""
    g = torch.Generator().manual_seed(1)
    counter = torch.randint(0, 2**32, (64, 4), generator=g)
    key = torch.randint(0, 2**32, (64, 2), generator=g)
    counter[0], key[0] = 0, 2**32 - 1
    out = torch.empty_like(counter)
    _library_philox[(1,)](counter, key, out, N=64)
    ours = rng.philox4x32_10(counter.unbind(1), key.unbind(1))
    assert torch.equal(torch.stack(ours, 1), out & 0xFFFFFFFF)


def test_key_and_counter_layout():
    """normal[b, c, h, w] is Box–Muller of Philox(counter=(c·H·W + h·W + w, level, step, stream),
    key=(seed, member)) — checked at one pixel from the words themselves."""
    seed, member, step, level, stream = 2**32 - 3, 2**33 + 5, 123, 17, rng.STREAM_Y
    z = rng.normal(seed, torch.tensor([member]), step, torch.tensor([level]), stream, (2, 3, 5))
    pixel = 1 * 15 + 2 * 5 + 4
    words = rng.philox4x32_10(tuple(torch.tensor(v) for v in (pixel, level, step, stream)),
                              (torch.tensor(seed), torch.tensor(member % 2**32)))
    assert z[0, 1, 2, 4] == rng.box_muller(words[0], words[1])


def _triton_words(seed, member, step, level, stream, numel):
    return triton_rng.philox_normal(seed, member, step, level, stream, numel)


def _cuda_words(seed, member, step, level, stream, numel):
    w0, w1, z = cuda_ext.load().philox_normal(member, step, level, seed, stream, numel)
    return w0.long() & 0xFFFFFFFF, w1.long() & 0xFFFFFFFF, z


@pytest.mark.parametrize("words", [pytest.param(_triton_words, id="triton"),
                                   cuda_param(_cuda_words)])
def test_backends_agree_on_words_and_normals(words):
    g = torch.Generator().manual_seed(2)
    member = torch.randint(0, 2**40, (5,), generator=g).to(DEVICE)
    step = torch.tensor([0, 1, 2**31 - 1, 77, 5], dtype=torch.int32, device=DEVICE)
    level = torch.tensor([0, 1000, 1, 3, 0], dtype=torch.int32, device=DEVICE)
    for seed, stream in ((0, 0), (2**32 - 1, 3), (12345, 1)):
        w0, w1, z = words(seed, member, step, level, stream, 777)
        r0, r1 = rng.philox_words(seed, member, step, level, stream, 777)
        assert torch.equal(w0, r0) and torch.equal(w1, r1)
        want = rng.normal(seed, member, step, level, stream, (777,), torch.float64)
        torch.testing.assert_close(z.double(), want, rtol=1e-6, atol=2e-6)


def test_float32_normals_match_float64():
    args = (9, torch.arange(8), 3, torch.arange(8) * 100, rng.STREAM_RENOISE_Y, (3, 32, 32))
    z32, z64 = rng.normal(*args), rng.normal(*args, dtype=torch.float64)
    assert z32.dtype == torch.float32 and z64.dtype == torch.float64
    torch.testing.assert_close(z32.double(), z64, rtol=1e-6, atol=1e-6)


def test_uniforms_stay_inside_the_unit_interval():
    edge = torch.tensor([0, 1, 0xFF, 0x100, 0x7FFFFFFF, 0xFFFFFF00, 0xFFFFFFFF])
    w0, w1 = torch.meshgrid(edge, edge, indexing="ij")
    z = rng.box_muller(w0, w1)
    assert torch.isfinite(z).all()
    assert z.abs().max() <= math.sqrt(48 * math.log(2)) + 1e-5     # u1 ≥ 2⁻²⁴
    assert (z[-2:] == 0).all()                                      # u1 = 1 → radius 0
    assert z[0, 0] == pytest.approx(-math.sqrt(48 * math.log(2)), rel=1e-6)  # u2 = −½: cos = −1


def _coordinates() -> dict:
    b = SAMPLES[0]
    return dict(seed=5, member=torch.arange(b) * 3 + 1, step=torch.full((b,), 40),
                level=torch.full((b,), 500), stream=rng.STREAM_X)


def _sample(**changes) -> torch.Tensor:
    """n = 65 536 normals: SAMPLES members × pixels, with `changes` to the default coordinates."""
    a = _coordinates() | changes
    return rng.normal(a["seed"], a["member"], a["step"], a["level"], a["stream"], (SAMPLES[1],),
                      torch.float64)


def test_moments_and_quantiles():
    z = _sample().flatten()
    n = z.numel()
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z**4).mean() - 3) < 5 * math.sqrt(96 / n)
    for t in (-2.0, -1.0, 0.0, 0.5, 1.5, 2.5):
        p = 0.5 * (1 + math.erf(t / math.sqrt(2)))
        assert abs((z <= t).double().mean() - p) < 5 * math.sqrt(p * (1 - p) / n), t


def _uncorrelated(a: torch.Tensor, b: torch.Tensor) -> None:
    """Neither the values nor their squares correlate beyond 5/√n."""
    a, b = a.flatten(), b.flatten()
    bound = 5 / math.sqrt(a.numel())
    for f in (lambda v: v, torch.square):
        r = torch.corrcoef(torch.stack([f(a), f(b)]))[0, 1]
        assert abs(r) < bound


@pytest.mark.parametrize("neighbour", ["member", "level", "step", "stream", "seed"])
def test_no_correlation_between_neighbours(neighbour):
    a, b = _sample(), _sample(**{neighbour: _coordinates()[neighbour] + 1})
    assert not torch.equal(a, b)
    _uncorrelated(a, b)


def test_no_correlation_between_neighbouring_pixels():
    z = _sample()
    _uncorrelated(z[:, :-1], z[:, 1:])


def test_reproducible_and_independent_of_the_batch():
    member = torch.tensor([4, 9, 2**35 + 1])
    level = torch.tensor([3, 0, 999], dtype=torch.int32)
    step = torch.tensor([8, 8, 8])
    z = rng.normal(7, member, step, level, rng.STREAM_Y, (2, 8, 8))
    assert torch.equal(z, rng.normal(7, member, 8, level, rng.STREAM_Y, (2, 8, 8)))
    alone = rng.normal(7, member[2:], step[2:], level[2:], rng.STREAM_Y, (2, 8, 8))
    assert torch.equal(alone[0], z[2])


def test_draws_in_blocks_and_threads_match_one_member_at_a_time():
    """`normal`'s blocks of members (rng.CHUNK) and its per-thread memory, reused across sizes,
    dtypes and threads, change no value: every member equals its draw alone, word by word through
    the public philox4x32_10 and box_muller (whose input words stay as they were)."""
    g = torch.Generator().manual_seed(5)
    member = torch.randint(0, 2**40, (11,), generator=g)
    level = torch.randint(0, 1000, (11,), generator=g, dtype=torch.int32)
    shape = (2, 9, 9)  # 162 pixels: blocks of CHUNK // 162 members, the last one short
    draws = {}

    def draw(key, dtype, rows):
        draws[key] = rng.normal(3, member[:rows], 40, level[:rows], rng.STREAM_X, shape, dtype)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rng, "CHUNK", 162 * 4)
        draw("first", torch.float32, 11)
        draw("float64", torch.float64, 7)
        draw("again", torch.float32, 11)
        worker = threading.Thread(target=draw, args=("thread", torch.float32, 11))
        worker.start()
        worker.join()
    assert torch.equal(draws["first"], draws["again"]) and torch.equal(draws["first"], draws["thread"])
    pixel = torch.arange(162).reshape(1, -1)
    for b in range(11):
        words = rng.philox4x32_10((pixel, level[b].long(), torch.tensor(40), rng.STREAM_X),
                                  (torch.tensor(3), member[b] % 2**32))
        kept = [w.clone() for w in words]
        assert torch.equal(draws["first"][b].flatten(), rng.box_muller(words[0], words[1])[0])
        assert all(torch.equal(w, k) for w, k in zip(words, kept, strict=True))
        if b < 7:
            want = rng.box_muller(words[0], words[1], torch.float64)[0]
            assert torch.equal(draws["float64"][b].flatten(), want)


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range_is_refused(seed):
    with pytest.raises(ValueError, match="seed must be in"):
        rng.normal(seed, torch.arange(2), 0, 0, 0, (4,))


def test_mismatched_counter_shape_is_refused():
    with pytest.raises(ValueError, match="level has shape"):
        rng.normal(0, torch.arange(3), 0, torch.zeros(2, dtype=torch.int32), 0, (4,))
