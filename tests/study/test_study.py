"""`sns-engine study` end to end at a tiny scale (with a given bundle, and training its own models
on QG), its resumability and pre-registration, the criteria, the method syntax and the recipes."""

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

from sns_engine.cli import main
from sns_engine.models import model_unet_config
from sns_engine.models.unet import UNet, forward_flops
from sns_engine.study import METHODS, SOLVER, StudyConfig, StudyError, load_recipe, parse_method
from sns_engine.study.checksums import RECORD
from sns_engine.study.config import slug
from tests.engine.old_stores import as_format_1

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STUDY_FIGURES = ["autocorrelation.png", "band_errors.png", "error_over_time.png",
                 "refinement_steps.png", "snapshots.png", "survival.png"]
WITH_BUNDLE = ["emulator", "left_down", "thermalizer[match=left_down]",
               "left_down[threshold=calibrated]"]


def study(*args) -> None:
    main(["study", *map(str, args)])


def outputs(out: Path) -> dict[str, float]:
    """mtime of every file a stage writes (stores, bundle, plan, costs, reports, report)."""
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "stages.json"]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def actions(out: Path) -> dict[str, str]:
    return {k: v["action"] for k, v in json.loads((out / "stages.json").read_text()).items()}


def check_study(out: Path, methods: list[str], curves: list[str], channels: int) -> dict:
    """The outputs every study has: plan, report, metrics of every method and of the solver."""
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["methods"]) == sorted([SOLVER, *methods])
    for label, entry in metrics["methods"].items():
        report = entry["report"]
        assert len(report["windows"]) == 3
        for w in report["windows"]:
            assert sorted(w["spectrum_error"]) == sorted(curves)
            assert all(v >= 0 for v in w["spectrum_error"].values())
            assert len(w["w1"]) == channels and len(w["interval"]["w1"]) == channels
            assert sorted(w["energy_ratio"]) == sorted(curves)
        cost = entry["summary"]["cost"]
        if label == SOLVER:
            assert cost == {} and "levels" not in report
        else:
            assert cost["physical_steps_measured"] > 0 and cost["flops_per_member_step"] > 0
            assert cost["pass_flops"]["emulator"] > 0
            assert cost["invocations"][-1]["state"] == "finished"
            whole = entry["summary"]["whole_cost"]
            assert whole["wall_seconds"] > 0 and whole["flops_per_member_step"] > 0
        assert sum(entry["summary"]["fates"].values()) == report["members"]
    # the solver control is evaluated from its second state: as many states as every method
    assert len({e["report"]["snapshots"] for e in metrics["methods"].values()}) == 1
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == STUDY_FIGURES
    text = (out / "report.md").read_text()
    assert "Pre-registered criteria" in text and metrics["command"] in text
    assert "| stable / unstable / flagged |" in text and "## Cost of each rollout, whole" in text
    assert json.loads((out / RECORD).read_text())["before_first_rollout"]
    assert "## Bundle files (SHA-256)" in (out / "plan.md").read_text()
    for label in (SOLVER, *methods):
        assert label in text
    plan_written = (out / "plan.json").stat().st_mtime_ns
    assert all(plan_written <= p.stat().st_mtime_ns for p in (out / "rollouts").glob("*.json"))
    return metrics


@pytest.mark.slow
def test_study_with_a_bundle_resolves_its_plan_first_and_resumes(tiny_kolmogorov, tiny_bundle,
                                                                 tmp_path, capsys):
    out = tmp_path / "study"
    args = ["kolmogorov", "--out", out, "--bundle", tiny_bundle, "--calibration-data",
            tiny_kolmogorov, "--set", "solver_grid=32", "--set", "output_grid=32",
            "--reference-trajectories", 2, "--reference-snapshots", 6, "--reference-spinup", 100,
            "--members", 3, "--horizon", 12, "--save-every", 2, "--windows", 3, "--pilot-steps", 2,
            "--methods", *WITH_BUNDLE, "--quiet"]
    study(*args, "--only", "emulator", "left_down")  # a share of the work: a partial report
    assert "train/emulator" not in actions(out) and set(actions(out).values()) == {"ran"}
    assert sorted(json.loads((out / "metrics.json").read_text())["methods"]) == [
        "emulator", "left_down", SOLVER]
    assert "**Incomplete**: thermalizer[match=left_down], left_down[threshold=calibrated]" in (
        out / "report.md").read_text()
    study(*args)  # the rest, and the whole report
    assert {k for k, v in actions(out).items() if v == "ran"} == {
        "rollout/thermalizer[match=left_down]", "rollout/left_down[threshold=calibrated]",
        "evaluate/thermalizer[match=left_down]", "evaluate/left_down[threshold=calibrated]", "report"}
    metrics = check_study(out, WITH_BUNDLE, ["energy"], channels=1)
    assert "Incomplete" not in (out / "report.md").read_text()
    assert all("last_run" in v for v in json.loads((out / "stages.json").read_text()).values())
    plan = json.loads((out / "plan.json").read_text())
    calibrated = plan["methods"]["left_down[threshold=calibrated]"]
    assert calibrated["threshold"] == math.ceil(plan["calibration"]["value"]) + 1
    pilot = plan["pilots"]["thermalizer[match=left_down]"]
    matched = plan["methods"]["thermalizer[match=left_down]"]
    assert matched["thermalizer_start"] == pilot["chosen"]["thermalizer_start"]
    assert matched["thermalizer_stop"] < matched["thermalizer_start"]
    goal = pilot["target_cost"]["flops_per_member_step"]
    best = min(abs(t["flops_per_member_step"] / goal - 1) for t in pilot["trials"])
    assert math.isclose(abs(pilot["ratio"] - 1), best)
    criteria = [(v["criterion"], v["method"]) for v in metrics["criteria"]]
    assert criteria == [("emulator drifts", "emulator"),
                        ("SNS stays on the attractor", "left_down"),
                        ("SNS stays on the attractor", "left_down[threshold=calibrated]"),
                        ("SNS vs Thermalizer at matched forwards",
                         "left_down vs thermalizer[match=left_down]")]

    before = outputs(out)
    study(*args)
    assert set(actions(out).values()) == {"skipped"}
    assert outputs(out) == before
    argv = shlex.split(metrics["command"])[2:]  # the study's own command reproduces it
    study(*argv, "--quiet")
    assert set(actions(out).values()) == {"skipped"}

    # lose one rollout: only it, its evaluation and the report are redone; the plan is kept
    (out / "rollouts" / f"{slug('left_down')}.json").unlink()
    study(*args)
    ran = {k for k, v in actions(out).items() if v == "ran"}
    assert ran == {"rollout/left_down", "evaluate/left_down", "report"}
    assert (out / "plan.json").stat().st_mtime_ns == before["plan.json"]

    # two invocations shared the folder (--only) and the last to finish wrote its report before
    # the other's rollout was done: a rerun that has nothing to roll out still completes it
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["methods"]["left_down"]
    (out / "metrics.json").write_text(json.dumps(metrics))
    study(*args)
    assert {k for k, v in actions(out).items() if v == "ran"} == {"report"}
    assert "left_down" in json.loads((out / "metrics.json").read_text())["methods"]

    # a folder the previous sns_engine wrote: no checksums, no ledgers, cost JSONs without the
    # FLOPs per pass or invocations. It is accepted; the FLOPs are measured, the rest said.
    (out / RECORD).unlink()
    for ledger in (out / "rollouts").glob("*.invocations.json"):
        ledger.unlink()
    for file in (p for p in (out / "rollouts").glob("*.json") if "invocations" not in p.name):
        cost = json.loads(file.read_text())
        file.write_text(json.dumps({k: v for k, v in cost.items()
                                    if k not in ("pass_flops", "invocations")}))
    (out / "report.md").unlink()
    study(*args)
    assert {k for k, v in actions(out).items() if v == "ran"} == {"report"}
    assert json.loads((out / "rollouts" / "emulator.json").read_text())["pass_flops"]["emulator"] > 0
    assert not json.loads((out / RECORD).read_text())["before_first_rollout"]
    text = (out / "report.md").read_text()
    assert "last invocation only" in text and "after rollouts had begun" in text

    with pytest.raises(SystemExit) as exit_info:  # other settings into the same folder: refused
        study(*args[:-1], "--members", 4, "--quiet")
    assert exit_info.value.code == 2

    # a rollout store of an older sns_engine (format 1): read as it is, not continued
    as_format_1(out / "rollouts" / "emulator.zarr")
    (out / "reports" / "emulator.json").unlink()
    study(*args)
    assert {k for k, v in actions(out).items() if v == "ran"} == {"evaluate/emulator", "report"}
    (out / "rollouts" / "emulator.json").unlink()
    with pytest.raises(SystemExit) as exit_info:
        study(*args)
    assert exit_info.value.code == 2
    assert "emulator.zarr was rolled out by an older sns_engine (store format 1)" in capsys.readouterr().err


@pytest.mark.slow
def test_qg_study_trains_its_models(tmp_path):
    out = tmp_path / "qg"
    methods = ["emulator", "fix_short", "thermalizer"]
    study("qg", "--out", out, "--set", "spinup_steps=300", "--trajectories", 3, "--snapshots", 24,
          "--reference-trajectories", 2, "--reference-snapshots", 6, "--train-steps", 10,
          "--members", 2, "--horizon", 6, "--windows", 3, "--train-set", "batch_size=8",
          "--train-set", "num_levels=50", "--train-set", "lr=1e-3", "--methods", *methods,
          "--quiet")
    assert {"train/emulator", "train/refiner", "train/thermalizer"} <= set(actions(out))
    check_study(out, methods, ["energy_upper", "energy_lower"], channels=2)


def test_methods_parse_and_bad_ones_are_named():
    m = parse_method("thermalizer[thermalizer_start=20,match=left_down]")
    assert (m.path, m.settings, m.model) == ("thermalizer", {"thermalizer_start": 20,
                                                             "match": "left_down"}, "thermalizer")
    assert slug(m.label) == "thermalizer-thermalizer_start-20-match-left_down"
    for label, match in (("left_down[threshold]", "is not key=value"),
                         ("nowhere", "unknown path"), ("left down", "not of the form")):
        with pytest.raises(StudyError, match=match):
            parse_method(label)
    base = {"system": "kolmogorov", "bundle": "b", "calibration_data": "d"}
    for methods, match in (
            (("thermalizer[match=left_down]",), "match= tunes a thermalizer"),
            (("left_down", "fix_short[match=left_down]"), "match= tunes a thermalizer"),
            (("thermalizer[threshold=calibrated]",), "needs a refiner path"),
            (("left_down[thermalizer_stop=-1]",), "thermalizer_stop must be 0 or more"),
            (("left_down", "left_down"), "must be distinct")):
        with pytest.raises(StudyError, match=match):
            StudyConfig(**base, methods=methods)
    with pytest.raises(StudyError, match="needs calibration_data"):
        StudyConfig(system="kolmogorov", bundle="b", methods=("left_down[threshold=calibrated]",))
    with pytest.raises(StudyError, match="must cover the horizon"):
        StudyConfig(**base, horizon=100, save_every=10, reference_snapshots=9)
    with pytest.raises(StudyError, match="set by the study itself"):
        StudyConfig(**base, rollout={"steps": 3})


@pytest.mark.parametrize("name,unets", [("kolmogorov-paper.json", "paper"), ("qg-paper.json", "qg-paper")])
def test_paper_recipes_are_valid_studies(name, unets):
    kwargs = load_recipe(RECIPES / name)
    cfg = StudyConfig(**kwargs)
    assert cfg.preset == "paper" and set(cfg.methods) == set(METHODS)
    train = cfg.train_config("refiner")
    assert (train.preset, train.lr, train.weight_decay, train.batch_size, train.grad_clip,
            train.ema_decay) == (unets, 5e-5, 0.05, 64, 1.0, 0.999)
    # its expected cost counts its own U-Nets (recipes/measure_cost.py --flops-only after a change)
    channels = 2 if cfg.system == "qg" else 1
    measured = json.loads((RECIPES / name).read_text())["expected_cost"]["measured"]
    for kind in ("emulator", "refiner", "thermalizer"):
        with torch.device("meta"):
            unet = UNet(model_unet_config(kind, cfg.train_config(kind).preset, channels, 64))
        assert measured["forward_tflop_batch64"][kind] == pytest.approx(
            64 * forward_flops(unet) / 1e12, rel=1e-9)
