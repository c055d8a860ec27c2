"""`sns-engine compare`: ensembles side by side against the solver's climatology, from the
embedded bundle, a solver store or a calibrated bundle; mismatches refused before any figure."""

import json

import pytest

from sns_engine.api import DEFAULT_BUNDLE, rollout
from sns_engine.calibration import climate_of
from sns_engine.cli import main
from sns_engine.data import TrajectoryStore
from sns_engine.plots.compare import label_of


@pytest.fixture(scope="module")
def ensembles(tmp_path_factory):
    """The emulator and lagged SNS from the embedded bundle's first 2 states, 4 steps each."""
    out = tmp_path_factory.mktemp("compare")
    rollout(batch=2, steps=4, path="emulator", out=out / "emulator.zarr", quiet=True)
    rollout(batch=2, steps=4, long="lagged", lag=2, out=out / "sns.zarr", quiet=True)
    return out / "emulator.zarr", out / "sns.zarr"


def test_compare_against_the_embedded_climatology(ensembles, tmp_path, capsys):
    png = tmp_path / "compare.png"
    main(["compare", *map(str, ensembles), "-o", str(png)])
    assert png.stat().st_size > 30_000 and "wrote" in capsys.readouterr().out
    assert [label_of(TrajectoryStore(s)) for s in ensembles] == ["emulator",
                                                                 "SNS left_down, long=lagged"]


def test_compare_refuses_a_climatology_of_another_grid(ensembles, tiny_kolmogorov, tmp_path, capsys):
    png = tmp_path / "compare.png"
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(ensembles[0]), "-o", str(png), "--reference", str(tiny_kolmogorov)])
    assert exit_.value.code == 2 and not png.exists()
    assert "climatology is of kolmogorov at 32²" in capsys.readouterr().err


def test_a_bundle_without_climatology_is_named(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    config = json.loads((DEFAULT_BUNDLE / "config.json").read_text())
    del config["calibration"]["climatology"]
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="records no climatology; calibrate it with --climatology"):
        climate_of(bundle)
    assert climate_of(DEFAULT_BUNDLE)["source"] == "reference.zarr"
