"""Level-head calibration: the command's table, figure and bundle record, and the bar's rule."""

import json

import pytest

from sns_engine.calibration import calibrate, resolved, table, tolerance
from sns_engine.cli import main


def test_tolerance_and_resolution_rule():
    assert tolerance(3) == 2 and tolerance(8) == 2 and tolerance(40) == 10
    entry = [{"median": m} for m in (5.0, 6.0, 125.0, 149.0)]
    assert resolved(entry, [3, 3, 100, 200]) == [True, False, True, False]


def test_calibrate_on_a_tiny_bundle_records_table_and_figure(tiny_bundle, tiny_kolmogorov, tmp_path):
    levels = (0, 3, 10, 20)
    result = calibrate(tiny_bundle, tiny_kolmogorov, levels=levels, free_steps=(1, 3), samples=4,
                       save=False)
    assert result["levels"] == list(levels) and result["samples"] == 4
    for name in ("x_given_clean_y", "y_given_clean_x", "both_x", "both_y"):
        assert len(result[name]) == len(levels)
        for s in result[name]:
            assert 0 <= s["p10"] <= s["median"] <= s["p90"] <= 20     # the tiny bundle's N
    assert result["emulator"]["steps"] == [1, 3] and len(result["emulator"]["n_x"]) == 2
    assert isinstance(result["resolves_low_levels"], bool)
    assert len(table(result).splitlines()) == 1 + len(levels) + 2 + 1
    assert "calibration" not in json.loads((tiny_bundle / "config.json").read_text())

    png = tmp_path / "calibration.png"
    main(["calibrate", str(tiny_bundle), "--data", str(tiny_kolmogorov), "--samples", "3",
          "--free-steps", "1", "2", "--walk-bias-frames", "2", "-o", str(png),
          "--climatology", str(tiny_kolmogorov), "--quiet"])
    assert png.stat().st_size > 10_000
    assert (tmp_path / "calibration-walk-bias.png").stat().st_size > 10_000
    stored = json.loads((tiny_bundle / "config.json").read_text())["calibration"]
    assert stored["samples"] == 3 and stored["emulator"]["steps"] == [1, 2]
    assert stored["walk_bias"]["frames"] == [2] * len(stored["walk_bias"]["levels"])
    assert stored["data"]["command"].startswith("sns-engine data kolmogorov --preset cpu")
    assert stored["climatology"]["grid"] == 32 and stored["climatology"]["energy"]["energy"] > 0


def test_calibrate_refuses_bad_levels(tiny_bundle, tiny_kolmogorov):
    with pytest.raises(ValueError, match="levels must lie in"):
        calibrate(tiny_bundle, tiny_kolmogorov, levels=(5, 2000), save=False)
    with pytest.raises(ValueError, match="free_steps"):
        calibrate(tiny_bundle, tiny_kolmogorov, free_steps=(10, 1), save=False)


def test_held_out_frames_are_in_the_bundles_units(tiny_bundle, tiny_kolmogorov, tmp_path):
    """Calibration and the walk-bias diagnostic read data that may not be the bundle's own (held
    out, another spin-up): the refiner sees them divided by the bundle's std, as in a rollout."""
    import shutil

    import torch

    from sns_engine.bundle import load_bundle
    from sns_engine.calibration import held_out_triples

    other = tmp_path / "b"
    shutil.copytree(tiny_bundle, other)
    config = json.loads((other / "config.json").read_text())
    std = config["normalisation"]["std"][0]
    config["normalisation"]["std"] = [3.0 * std]
    (other / "config.json").write_text(json.dumps(config))
    frames = [held_out_triples(load_bundle(b), tiny_kolmogorov, 6, torch.Generator().manual_seed(1))[1]
              for b in (tiny_bundle, other)]
    for own, scaled in zip(*frames, strict=True):
        torch.testing.assert_close(scaled * 3.0, own)
        assert own.std() > 0.1
