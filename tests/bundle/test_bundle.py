"""Checkpoint bundles: a round trip in a fresh process, refusals of damaged bundles, and the
system record of config.json."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sns_engine.bundle import BundleError, check_compatible, load_bundle, new_config
from sns_engine.data.store import SystemSpec
from sns_engine.diffusion.schedule import CosineSchedule

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "sns_engine" / "default_bundle"


def test_bundle_round_trip_in_fresh_process(tiny_bundle, tmp_path):
    code = """
import sys, torch
from sns_engine.bundle import load_bundle
b = load_bundle(sys.argv[1])
g = torch.Generator().manual_seed(0)
x = torch.randn(3, 1, 32, 32, generator=g)
out = b.model("refiner")(x, x.flip(-1), x.roll(3, -2))
torch.save({"emu": b.model("emulator")(x), "eps": out.eps_x, "logits": out.logits_y,
            "therm": b.model("thermalizer")(x)[0]}, sys.argv[2])
"""
    for name in ("a.pt", "b.pt"):
        subprocess.run([sys.executable, "-c", code, str(tiny_bundle), str(tmp_path / name)],
                       check=True, env=ENV)
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # the loaded bundle holds the EMA weights saved at the last step
    bundle = load_bundle(tiny_bundle)
    assert set(bundle.models) == {"emulator", "refiner", "thermalizer"}
    assert not any(p.requires_grad for p in bundle.model("refiner").parameters())


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_truncated_missing_and_newer_bundles_are_refused(tiny_bundle, tmp_path):
    bad = _copy(tiny_bundle, tmp_path / "tampered")
    data = bytearray((bad / "refiner.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (bad / "refiner.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="refiner.safetensors does not match its checksum"):
        load_bundle(bad)
    cut = _copy(tiny_bundle, tmp_path / "truncated")
    (cut / "emulator.safetensors").write_bytes((cut / "emulator.safetensors").read_bytes()[:100])
    with pytest.raises(BundleError, match="emulator.safetensors"):
        load_bundle(cut)
    gone = _copy(tiny_bundle, tmp_path / "missing")
    (gone / "thermalizer.safetensors").unlink()
    with pytest.raises(BundleError, match="thermalizer weights thermalizer.safetensors are missing"):
        load_bundle(gone)
    newer = _copy(tiny_bundle, tmp_path / "newer")
    config = json.loads((newer / "config.json").read_text())
    config["format"] = 99
    (newer / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="newer than this sns_engine"):
        load_bundle(newer)
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(tmp_path)


def test_default_bundle_system_round_trips_unchanged():
    """config.json's "system" entry reads into the one system record and writes back the same."""
    config = json.loads((DEFAULT_BUNDLE / "config.json").read_text())
    system = SystemSpec.from_json(config["system"])
    assert system.system == "kolmogorov" and system.channel_names == ("vorticity",)
    assert json.dumps(system.to_json(), sort_keys=True) == json.dumps(config["system"], sort_keys=True)
    fresh = new_config(system, config["normalisation"], CosineSchedule(20))
    assert fresh["system"] == config["system"] and fresh["activation"] == config["activation"]
    assert load_bundle(DEFAULT_BUNDLE).system == system


def test_data_of_another_system_is_refused_by_name():
    config = json.loads((DEFAULT_BUNDLE / "config.json").read_text())
    system = SystemSpec.from_json(config["system"])
    check_compatible(config, system, "data.zarr")
    other = dataclasses.replace(system, system="qg")
    with pytest.raises(BundleError, match="data.zarr: bundle holds name='kolmogorov' but the data has "
                                          "name='qg'"):
        check_compatible(config, other, "data.zarr")
    with pytest.raises(BundleError, match="no valid system entry"):
        check_compatible({**config, "system": {"name": "kolmogorov"}}, system, "data.zarr")
