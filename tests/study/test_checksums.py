"""The bundle files a study uses: recorded once, a change to what defines a rollout refused, a
model trained later or a calibration table allowed and recorded."""

import json

import pytest

from sns_engine.study import StudyError
from sns_engine.study.checksums import RECORD, check_bundle_files


@pytest.fixture
def bundle(tmp_path):
    folder = tmp_path / "bundle"
    folder.mkdir()
    config = {"format": 2, "system": {"name": "kolmogorov"}, "activation": {"threshold": 0},
              "calibration": {"levels": [0, 1]},
              "models": {"emulator": {"step": 10}, "refiner": {"step": 10}}}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("emulator", "refiner"):
        (folder / f"{name}.safetensors").write_bytes(name.encode())
    return folder


def _edit(bundle, change):
    config = json.loads((bundle / "config.json").read_text())
    change(config)
    (bundle / "config.json").write_text(json.dumps(config))


def test_the_record_is_written_once_and_unchanged_bundles_pass(bundle, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    record = check_bundle_files(bundle, out, ["emulator", "refiner"])
    assert sorted(record["files"]) == ["config.json", "emulator.safetensors", "refiner.safetensors"]
    assert record["before_first_rollout"] and record["changes"] == []
    written = (out / RECORD).read_text()
    check_bundle_files(bundle, out, ["emulator", "refiner"])
    assert (out / RECORD).read_text() == written


def test_what_defines_a_rollout_may_not_change(bundle, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    check_bundle_files(bundle, out, ["emulator", "refiner"])
    (bundle / "refiner.safetensors").write_bytes(b"retrained")
    with pytest.raises(StudyError, match="refiner.safetensors differ from .*another --out"):
        check_bundle_files(bundle, out, ["emulator", "refiner"])
    (bundle / "refiner.safetensors").write_bytes(b"refiner")
    _edit(bundle, lambda c: c["activation"].update(threshold=5))
    with pytest.raises(StudyError, match="activation"):
        check_bundle_files(bundle, out, ["emulator", "refiner"])


def test_a_later_model_and_a_new_calibration_are_recorded_not_refused(bundle, tmp_path):
    out = tmp_path / "study"
    (out / "rollouts" / "emulator.zarr").mkdir(parents=True)  # a study begun before the record
    assert not check_bundle_files(bundle, out, ["emulator"])["before_first_rollout"]
    (bundle / "thermalizer.safetensors").write_bytes(b"thermalizer")
    _edit(bundle, lambda c: (c["models"].update(thermalizer={"step": 5}),
                             c["calibration"].update(levels=[0, 1, 2])))
    record = check_bundle_files(bundle, out, ["emulator", "thermalizer"])
    (change,) = record["changes"]
    assert change["added"] == ["models.thermalizer", "thermalizer.safetensors"]
    assert change["changed"] == ["calibration"]
    assert "thermalizer.safetensors" in json.loads((out / RECORD).read_text())["files"]
