"""`sns-engine study` end to end at a tiny scale (with a given bundle, and training its own models
on QG), its resumability and pre-registration, the criteria, the method syntax and the recipes."""

import json
import math
import shlex
from pathlib import Path

import pytest

from sns_engine.cli import main
from sns_engine.study import METHODS, SOLVER, StudyConfig, StudyError, load_recipe, parse_method
from sns_engine.study.config import slug
from sns_engine.study.report import judge

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
    # the solver control is evaluated from its second state: as many states as every method
    assert len({e["report"]["snapshots"] for e in metrics["methods"].values()}) == 1
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == STUDY_FIGURES
    text = (out / "report.md").read_text()
    assert "Pre-registered criteria" in text and metrics["command"] in text
    for label in (SOLVER, *methods):
        assert label in text
    plan_written = (out / "plan.json").stat().st_mtime_ns
    assert all(plan_written <= p.stat().st_mtime_ns for p in (out / "rollouts").glob("*.json"))
    return metrics


@pytest.mark.slow
def test_study_with_a_bundle_resolves_its_plan_first_and_resumes(tiny_kolmogorov, tiny_bundle,
                                                                 tmp_path):
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

    with pytest.raises(SystemExit) as exit_info:  # other settings into the same folder: refused
        study(*args[:-1], "--members", 4, "--quiet")
    assert exit_info.value.code == 2


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


def _report(survival, errors, w1=(0.1,), energy=1.0, tau=None, bands=None):
    """A minimal evaluation report: one curve, one window per error."""
    windows = [{"spectrum_error": {"energy": e}, "w1": list(w1), "energy_ratio": {"energy": energy},
                "band_error": {"energy": bands or {"low": e, "mid": e, "high": e}}}
               for e in errors]
    acf = {"decorrelation_time": {"ensemble": tau, "reference": 1.0}} if tau else None
    return {"windows": windows, "stability": {"survival_at_horizon": survival},
            "autocorrelation": acf}


def test_judge_applies_the_preregistered_criteria():
    cfg = StudyConfig(system="kolmogorov", bundle="b", methods=("emulator", "left_down",
                                                                "thermalizer[match=left_down]"))
    plan = {"criteria": {"drift_unstable_fraction": 0.75, "drift_floor_factor": 3.0,
                         "attractor_floor_factor": 1.5, "energy_tolerance": 0.1},
            "methods": {"emulator": {"path": "emulator"}, "left_down": {"path": "left_down"},
                        "thermalizer[match=left_down]": {"path": "thermalizer"}},
            "pilots": {"thermalizer[match=left_down]": {"match": "left_down", "ratio": 1.02}}}
    floor = _report(1.0, [0.2, 0.2])

    def verdicts(emulator, sns, thermalizer):
        reports = {SOLVER: floor, "emulator": emulator, "left_down": sns,
                   "thermalizer[match=left_down]": thermalizer}
        return [v["holds"] for v in judge(cfg, plan, reports)]

    good_sns, tau_therm = _report(1.0, [0.25, 0.29], tau=1.1), _report(1.0, [0.2, 0.2], tau=1.5)
    assert verdicts(_report(0.25, [0.3, 0.61]), good_sns, tau_therm) == [True, True, True]
    # the emulator: 75 % unstable is enough, 3× the floor is needed
    assert verdicts(_report(0.25, [0.3, 0.59]), good_sns, tau_therm)[0] is False
    assert verdicts(_report(0.3, [0.3, 0.6]), good_sns, tau_therm)[0] is False
    # SNS: one lost member, one band over 1.5× the floor, 11 % too much energy: each fails it
    for bad in (_report(15 / 16, [0.25, 0.29]),
                _report(1.0, [0.25, 0.25], bands={"low": 0.2, "mid": 0.31, "high": 0.2}),
                _report(1.0, [0.25, 0.25], w1=(0.151,)), _report(1.0, [0.25, 0.25], energy=1.11)):
        assert verdicts(_report(0.25, [0.3, 0.61]), bad, tau_therm)[1] is False
    # decorrelation: the Thermalizer closer to the solver's time → SNS does not win
    assert verdicts(_report(0.25, [0.3, 0.61]), _report(1.0, [0.2, 0.2], tau=2.0),
                    _report(1.0, [0.2, 0.2], tau=1.2))[2] is False
    assert verdicts(_report(0.25, [0.3, 0.61]), _report(1.0, [0.2, 0.2]),
                    _report(1.0, [0.2, 0.2], tau=1.2))[2] is None


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


@pytest.mark.parametrize("name", ["kolmogorov-paper.json", "qg-paper.json"])
def test_paper_recipes_are_valid_studies(name):
    kwargs = load_recipe(RECIPES / name)
    cfg = StudyConfig(**kwargs)
    assert cfg.preset == "paper" and set(cfg.methods) == set(METHODS)
    train = cfg.train_config("refiner")
    assert (train.preset, train.lr, train.weight_decay, train.batch_size, train.grad_clip,
            train.ema_decay) == ("paper", 5e-5, 0.05, 64, 1.0, 0.999)
