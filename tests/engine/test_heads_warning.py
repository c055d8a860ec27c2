"""A rollout warns once, at its start, when the level heads read far above the bundle's
calibration (untrained or mismatched heads make every walk hundreds of forwards long)."""

import hashlib
import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from sns_engine.api import DEFAULT_BUNDLE, rollout
from sns_engine.engine.rules import UNCALIBRATED_LEVEL, far_above_calibration

CALIBRATION = {"emulator": {"n_x": [{"median": 2.0, "p10": 1.0, "p90": 2.0}]}}


def levels(n_x):
    return torch.stack([torch.tensor(n_x), torch.zeros(len(n_x), dtype=torch.long)], 1)


def test_the_rule_compares_the_median_first_estimate_with_the_calibration():
    assert far_above_calibration(levels([2, 3, 1, 11]), CALIBRATION) is None     # limit 3·2 + 5
    message = far_above_calibration(levels([12, 40, 9, 300]), CALIBRATION)
    assert "median n̂_x = 12" in message                 # torch's median: the lower middle value
    assert "≤ 2 on the emulator's proposals" in message
    assert "sns-engine calibrate" in message
    assert far_above_calibration(levels([-1, -1]), CALIBRATION) is None          # none estimated
    assert far_above_calibration(levels([UNCALIBRATED_LEVEL] * 3), None) is None
    assert "no calibration" in far_above_calibration(levels([UNCALIBRATED_LEVEL + 1] * 3), None)


def test_a_bundle_whose_heads_read_level_60_warns_once_and_the_shipped_one_does_not(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    weights = load_file(bundle / "refiner.safetensors")
    for head in (0, 1):   # push both heads' logits to level 60: heads that read the wrong data
        weights[f"unet.level_heads.{head}.fc2.bias"][60] += 1e4
    save_file(weights, bundle / "refiner.safetensors")
    config = json.loads((bundle / "config.json").read_text())   # a consistent bundle, other heads
    config["models"]["refiner"]["sha256"] = hashlib.sha256(
        (bundle / "refiner.safetensors").read_bytes()).hexdigest()
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="far above this bundle's calibration") as caught:
        rollout(bundle, batch=2, steps=2, path="fix_short", quiet=True)
    assert len([w for w in caught if "far above" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rollout(batch=2, steps=1, quiet=True)
