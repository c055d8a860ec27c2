"""The refine tick and the re-noise: every backend against the float64 torch reference, the
reference against a case worked by hand, input checks and backend dispatch.

Triton runs in its interpreter on CPU (TRITON_INTERPRET=1, tests/conftest.py); CUDA cases skip
without a GPU and the extension. Runtime ≈ 4 s on one CPU core.
"""

import pytest
import torch

from sns_engine.kernels import KernelInputError
from sns_engine.kernels import ddpm_update as kernel
from sns_engine.ops import cuda_ext, rng, update
from sns_engine.ops.dispatch import BackendError, available_backends, resolve_backend

from .cases import CUDA_EXT_MISSING, clone, cuda_param, moving, poison_unread, tick_case

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton", cuda_param("cuda")]
# float32 against the float64 oracle: ε̂ enters both exactly (the oracle upcasts the same bf16
# values), so one float32 tolerance serves both ε̂ dtypes; a wrong coefficient or noise is O(1).
TOL = dict(rtol=1e-5, atol=1e-5)
ARGS = ("x", "y", "eps_x", "eps_y", "n_x", "n_y", "moves", "counts", "member", "step", "seed",
        "coefs")
RENOISE_ARGS = ("frame", "level", "member", "step", "seed", "sqrt_ab", "sqrt_1mab", "stream")


def run(case: dict, backend: str) -> None:
    update.ddpm_tick(*(case[k] for k in ARGS), backend=backend)


def oracle(case: dict) -> dict:
    """The tick applied by the float64 torch reference to a copy of `case`."""
    ref = clone(case, torch.float64)
    update.tick_reference(*(ref[k] for k in ARGS))
    return ref


def assert_tick_equal(out: dict, ref: dict) -> None:
    for k in ("x", "y"):
        torch.testing.assert_close(out[k].double(), ref[k], **TOL)
    for k in ("n_x", "n_y", "counts"):
        assert torch.equal(out[k], ref[k]), k


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eps_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, channels, size", [(3, 2, 8), (9, 1, 16)])
def test_tick_matches_reference(backend, eps_dtype, batch, channels, size):
    case = tick_case(batch, channels, size, eps_dtype=eps_dtype, seed=batch, device=DEVICE)
    poison_unread(case)  # ε̂ of frames that must not move is NaN
    before, ref = clone(case), oracle(case)
    run(case, backend)
    assert_tick_equal(case, ref)
    move_x, move_y = moving(before)
    for k, moved in (("x", move_x), ("y", move_y)):
        assert torch.isfinite(case[k]).all(), k
        assert torch.equal(case[k][~moved], before[k][~moved]), f"{k} moved where it must not"
        assert (case[k][moved] != before[k][moved]).flatten(1).any(1).all(), f"{k} did not move"


@pytest.mark.parametrize("backend", BACKENDS)
def test_tick_walks_every_phase_to_the_end(backend):
    case = tick_case(7, 1, 8, seed=11, device=DEVICE)
    ref = clone(case, torch.float64)
    g = torch.Generator().manual_seed(3)
    for _ in range(8):  # the longest walk in KINDS is 6 moves
        for k in ("eps_x", "eps_y"):
            case[k] = torch.randn(case[k].shape, generator=g).to(DEVICE)
            ref[k] = case[k].double()
        run(case, backend)
        update.tick_reference(*(ref[k] for k in ARGS))
        assert_tick_equal(case, ref)
    assert not case["counts"].any()


@pytest.mark.parametrize("backend", ["triton", BACKENDS[2]])
def test_tick_does_not_depend_on_batch_composition(backend):
    case = tick_case(5, 2, 8, seed=5, device=DEVICE)
    alone = [{k: v[i:i + 1].clone() if isinstance(v, torch.Tensor) and k != "coefs" else v
              for k, v in case.items()} for i in range(5)]
    run(case, backend)
    for i, member in enumerate(alone):
        run(member, backend)
        for k in ("x", "y", "n_x", "n_y", "counts"):
            assert torch.equal(member[k][0], case[k][i]), (i, k)


def test_reference_worked_by_hand():
    """Three members: phase 0 moving both (x at level 1: noiseless), phase 1 moving y, idle."""
    coefs = torch.tensor([[1.0, 1.1, 1.2, 1.3, 1.4], [0.0, 0.3, 0.4, 0.5, 0.6],
                          [0.0, 0.0, 0.2, 0.25, 0.3]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x, y, ex, ey = (torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(4))
    n_x = torch.tensor([1, 3, 2], dtype=torch.int32)
    n_y = torch.tensor([4, 3, 2], dtype=torch.int32)
    moves = torch.tensor([[3, 1], [1, 2], [3, 3]], dtype=torch.int32)
    counts = torch.tensor([[1, 1], [0, 2], [0, 0]], dtype=torch.int32)
    member, step = torch.tensor([10, 20, 30]), torch.tensor([7, 8, 9], dtype=torch.int32)
    x0, y0 = x.clone(), y.clone()
    update.tick_reference(x, y, ex, ey, n_x, n_y, moves, counts, member, step, 99, coefs)

    def z(i, level, stream):
        return rng.normal(99, member[i:i + 1], step[i:i + 1], torch.tensor([level]), stream,
                          (1, 4, 4), torch.float64)[0]

    torch.testing.assert_close(x[0], 1.1 * x0[0] - 0.3 * ex[0])                       # σ_1 = 0
    torch.testing.assert_close(y[0], 1.4 * y0[0] - 0.6 * ey[0] + 0.3 * z(0, 4, rng.STREAM_Y))
    torch.testing.assert_close(y[1], 1.3 * y0[1] - 0.5 * ey[1] + 0.25 * z(1, 3, rng.STREAM_Y))
    assert torch.equal(x[1], x0[1]) and torch.equal(x[2], x0[2]) and torch.equal(y[2], y0[2])
    assert n_x.tolist() == [0, 3, 2] and n_y.tolist() == [3, 2, 2]
    assert counts.tolist() == [[0, 1], [0, 1], [0, 0]]


def renoise_case(batch: int, levels: int = 20, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    level = torch.randint(0, levels + 1, (batch,), generator=g, dtype=torch.int32)
    level[:3] = torch.tensor([0, 1, levels], dtype=torch.int32)[:batch]
    case = {"frame": torch.randn(batch, 2, 8, 8, generator=g), "level": level,
            "member": torch.randint(0, 2**40, (batch,), generator=g),
            "step": torch.randint(0, 2**31 - 1, (batch,), generator=g, dtype=torch.int32),
            "seed": 2**32 - 1 - seed, "sqrt_ab": torch.rand(levels + 1, generator=g),
            "sqrt_1mab": torch.rand(levels + 1, generator=g), "stream": rng.STREAM_RENOISE_X}
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [3, 6])
def test_renoise_matches_forward_diffusion(backend, batch):
    case = renoise_case(batch, seed=batch)
    frame0 = case["frame"].clone()
    update.renoise(*(case[k] for k in RENOISE_ARGS), backend=backend)
    n = case["level"].long()
    z = rng.normal(case["seed"], case["member"], case["step"], n, case["stream"], (2, 8, 8),
                   torch.float64)
    col = (-1, 1, 1, 1)
    want = (case["sqrt_ab"].double()[n].reshape(col) * frame0.double()
            + case["sqrt_1mab"].double()[n].reshape(col) * z)
    on = n > 0
    torch.testing.assert_close(case["frame"][on].double(), want[on], **TOL)
    assert torch.equal(case["frame"][~on], frame0[~on])


BAD_TICK_INPUTS = [
    ("x", lambda c: c["x"].double(), "x has dtype"),
    ("eps_y", lambda c: c["eps_y"].transpose(2, 3), "eps_y is not contiguous"),
    ("counts", lambda c: c["counts"].repeat(1, 2), "counts has shape"),
    ("member", lambda c: c["member"].int(), "member has dtype"),
    ("n_y", lambda c: c["n_y"][:-1], "n_y has shape"),
    ("coefs", lambda c: c["coefs"].to("meta"), "coefs is on meta"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name, corrupt, message", BAD_TICK_INPUTS,
                         ids=[b[0] for b in BAD_TICK_INPUTS])
def test_tick_rejects_bad_inputs(backend, name, corrupt, message):
    case = tick_case(3, 1, 8, device=DEVICE)
    case[name] = corrupt(case)
    with pytest.raises(KernelInputError, match=message):
        run(case, backend)


def test_renoise_rejects_bad_inputs():
    case = renoise_case(3)
    case["level"] = case["level"].long()
    with pytest.raises(KernelInputError, match="level has dtype torch.int64"):
        update.renoise(*(case[k] for k in RENOISE_ARGS), backend="triton")
    case = renoise_case(3)
    with pytest.raises(ValueError, match="seed must be in"):
        update.renoise(*(-1 if k == "seed" else case[k] for k in RENOISE_ARGS))


def test_dispatch(monkeypatch):
    assert resolve_backend("auto", "cpu") == "torch" and resolve_backend(None, "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("triton", "cpu") == "triton"  # the interpreter is on in tests
    assert "triton" in available_backends("cpu") and "cuda" not in available_backends("cpu")
    with pytest.raises(BackendError, match="unknown backend 'cudnn'"):
        resolve_backend("cudnn", "cpu")
    with pytest.raises(BackendError, match="backend 'cuda' needs a CUDA device"):
        resolve_backend("cuda", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendError, match="backend 'triton' needs a CUDA device"):
        resolve_backend("triton", "cpu")
    assert available_backends("cpu") == ("torch",)
    case = tick_case(2, 1, 8)
    with pytest.raises(KernelInputError, match="the Triton kernel needs CUDA tensors, got cpu"):
        kernel.ddpm_tick(*(case[k] for k in ARGS))


@pytest.mark.skipif(CUDA_EXT_MISSING is None, reason="the extension is available here")
def test_missing_extension_says_how_to_go_on():
    message = "built without CUDA; use backend='triton' or 'torch'"
    with pytest.raises(cuda_ext.CudaExtensionError, match=message):
        cuda_ext.load()
