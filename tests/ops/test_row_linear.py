"""ops.row_linear: F.linear's values, and a row's bits whatever the batch around it."""

import pytest
import torch
import torch.nn.functional as F

from sns_engine.ops.row_linear import row_linear


@pytest.mark.parametrize("inputs, outputs", [(4096, 64), (64, 1001), (1001, 64), (5, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_row_linear_is_f_linear_row_by_row(inputs, outputs, with_bias):
    """Close to the float64 F.linear, and every slice of a batch of 17 rows (a walk tick of 1,
    2 … 17 members) the same bits as those rows in the whole batch."""
    gen = torch.Generator().manual_seed(inputs + outputs)
    x = torch.randn(17, inputs, generator=gen)
    weight = torch.randn(outputs, inputs, generator=gen) / inputs**0.5
    bias = torch.randn(outputs, generator=gen) if with_bias else None
    whole = row_linear(x, weight, bias)
    expected = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    torch.testing.assert_close(whole.double(), expected, rtol=1e-5, atol=1e-5)
    for start in range(17):
        for stop in (start + 1, start + 2, 17):
            assert torch.equal(row_linear(x[start:stop], weight, bias), whole[start:stop])


def test_row_linear_refuses_a_mismatched_input():
    with pytest.raises(ValueError, match=r"takes x of shape \(B, 4\)"):
        row_linear(torch.randn(2, 5), torch.randn(3, 4))
