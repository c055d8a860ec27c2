"""The public functions (sns_engine.api): the backend is chosen per call and the caller's objects
are left as they were."""

from __future__ import annotations

import pytest
import torch

import sns_engine


def _snapshot(bundle) -> dict:
    """Every model's tensors and every module's plain attributes (what a backend switch or a
    mode change would alter)."""
    state = {}
    for kind, model in bundle.models.items():
        state |= {f"{kind}.{k}": v.clone() for k, v in model.state_dict().items()}
        for name, module in model.named_modules():
            plain = {k: v for k, v in vars(module).items() if not k.startswith("_")}
            state[f"{kind}.{name}:attrs"] = repr(sorted(plain.items()))
    return state


@pytest.mark.parametrize("engine", ["engine", "reference"])
def test_rollout_takes_the_backend_per_call_and_leaves_the_bundle_alone(tiny_bundle, engine):
    bundle = sns_engine.load_bundle(tiny_bundle)
    before = _snapshot(bundle)
    common = dict(batch=2, steps=2, path="emulator", engine=engine, quiet=True)
    fused = sns_engine.rollout(bundle, backend="triton", **common)   # Triton's CPU interpreter
    after = _snapshot(bundle)
    assert after.keys() == before.keys()
    for key, value in before.items():
        same = torch.equal(value, after[key]) if isinstance(value, torch.Tensor) else value == after[key]
        assert same, f"rollout changed the caller's bundle: {key}"
    plain = sns_engine.rollout(bundle, backend="torch", **common)
    assert not torch.equal(fused.states, plain.states)   # the fused convs did run...
    torch.testing.assert_close(fused.states, plain.states, rtol=1e-4, atol=1e-4 * plain.states.abs().max())
