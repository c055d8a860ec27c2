"""Fused level argmax: every backend against the float64 torch reference, the tie rule (lowest
index, also across K tiles) and input checks. Runtime ≈ 3 s on one CPU core.
"""

import pytest
import torch

from sns_engine.kernels import KernelInputError
from sns_engine.ops.level_argmax import level_argmax, level_argmax_reference

from .cases import cuda_param

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton", cuda_param("cuda")]
# Inputs enter exactly in both precisions (the oracle upcasts the same bf16 values); what differs
# is float32 accumulation over F ≤ 64 terms of size O(1), so ~1e-5 on logits and max-probs.
P_TOL = dict(rtol=1e-5, atol=1e-6)
GAP = 1e-3  # rows whose top-two logits are closer than this may pick either, within GAP


def inputs(rows, classes, width, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(rows, width, generator=g).to(dtype)
    w = (torch.randn(classes, width, generator=g) / width**0.5).to(dtype)
    b = torch.randn(classes, generator=g).to(dtype)
    return f.to(DEVICE), w.to(DEVICE), b.to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows, classes, width", [(3, 37, 50), (17, 130, 33), (1, 1, 5),
                                                  (20, 1001, 16)])
def test_matches_reference(backend, dtype, rows, classes, width):
    f, w, b = inputs(rows, classes, width, dtype, seed=rows + classes)
    idx, p_max = level_argmax(f, w, b, return_max_prob=True, backend=backend)
    assert torch.equal(level_argmax(f, w, b, backend=backend), idx)
    logits = f.double() @ w.double().T + b.double()
    top2 = logits.topk(min(2, classes), dim=1).values
    clear = (top2[:, 0] - top2[:, -1] > GAP) | (classes == 1)
    ref_idx, ref_p = level_argmax_reference(f.double(), w.double(), b.double(), True)
    assert idx.dtype == torch.int64 and p_max.dtype == torch.float32
    assert torch.equal(idx[clear], ref_idx[clear])
    assert (logits.gather(1, idx[:, None])[:, 0] >= top2[:, 0] - GAP).all()
    torch.testing.assert_close(p_max.double(), ref_p, **P_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_index(backend):
    """Small integers make every logit exact. Rows 0-2 of the features point along e0, where
    weight rows 3, 65 and 140 tie (three K tiles of the Triton kernel, 64 wide); rows 3-5 along
    e1, where weight rows 70 and 100 tie inside one tile. Every other logit is ≤ 56 < 200."""
    g = torch.Generator().manual_seed(4)
    f = torch.randint(-1, 2, (6, 20), generator=g).float()
    f[:, :2] = torch.tensor([[10.0, 0.0]] * 3 + [[0.0, 10.0]] * 3)
    w = torch.randint(-2, 3, (150, 20), generator=g).float()
    w[[3, 65, 140]] = 20 * torch.eye(20)[0]
    w[[70, 100]] = 20 * torch.eye(20)[1]
    b = torch.zeros(150)
    f, w, b = f.to(DEVICE), w.to(DEVICE), b.to(DEVICE)
    idx, p_max = level_argmax(f, w, b, return_max_prob=True, backend=backend)
    assert idx.tolist() == [3, 3, 3, 70, 70, 70]
    assert torch.equal(idx, level_argmax_reference(f, w, b))
    torch.testing.assert_close(p_max, level_argmax_reference(f, w, b, True)[1].float(), **P_TOL)


BAD = [
    ("weight", lambda f, w, b: (f, w[:, :-1].contiguous(), b), "weight has shape"),
    ("bias", lambda f, w, b: (f, w, b.bfloat16()), "bias has dtype"),
    ("features", lambda f, w, b: (f.double(), w, b), "features has dtype"),
    ("layout", lambda f, w, b: (f, w.T.contiguous().T, b), "weight is not contiguous"),
    ("empty", lambda f, w, b: (f, w[:0], b[:0]), "K = 0"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name, corrupt, message", BAD, ids=[b[0] for b in BAD])
def test_rejects_bad_inputs(backend, name, corrupt, message):
    f, w, b = corrupt(*inputs(3, 10, 8, torch.float32, seed=0))
    with pytest.raises(KernelInputError, match=message):
        level_argmax(f, w, b, backend=backend)
