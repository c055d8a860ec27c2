"""`sns-engine study` end to end at a tiny scale (QG and Kolmogorov), its resumability, the
method ranking and the shipped paper recipes."""

import json
import math
import shlex
from pathlib import Path

import pytest

from sns_engine.cli import main
from sns_engine.study import METHODS, StudyConfig, StudyError, load_recipe, rank_methods

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = ["--trajectories", 3, "--snapshots", 24, "--reference-trajectories", 2,
        "--reference-snapshots", 24, "--train-steps", 10, "--members", 2, "--horizon", 6,
        "--windows", 3, "--train-set", "batch_size=8", "--train-set", "num_levels=50",
        "--train-set", "lr=1e-3", "--quiet"]
STUDY_FIGURES = ["autocorrelation.png", "error_over_time.png", "refinement_steps.png", "survival.png"]
METHOD_FIGURES = ["autocorrelation_stability.png", "error_over_time.png", "levels.png", "spectra.png"]


def study(*args) -> None:
    main(["study", *map(str, args)])


def outputs(out: Path) -> dict[str, float]:
    """mtime of every file a stage writes (stores, bundle, costs, reports, report)."""
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "stages.json"]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def actions(out: Path) -> dict[str, str]:
    return {k: v["action"] for k, v in json.loads((out / "stages.json").read_text()).items()}


def check_study(out: Path, curves: list[str], channels: int) -> dict:
    """The outputs every study has: report, metrics of every method, figures."""
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["methods"]) == sorted(METHODS)
    assert metrics["best"]["method"] in METHODS and sorted(metrics["best"]["ranking"]) == sorted(METHODS)
    for method, entry in metrics["methods"].items():
        report, cost = entry["report"], entry["cost"]
        assert report["members"] == 2 and report["snapshots"] == 6 and len(report["windows"]) == 3
        for w in report["windows"]:
            assert sorted(w["spectrum_error"]) == sorted(curves)
            assert all(math.isfinite(v) and v >= 0 for v in w["spectrum_error"].values())
            assert len(w["w1"]) == channels and all(v >= 0 for v in w["w1"])
            assert sorted(w["mean_spectra"]) == sorted(curves)
        assert len(report["stability"]["times"]) == 2
        assert cost["physical_steps_measured"] == 6 and cost["seconds_per_step"] > 0
        # emulator: one forward per step; refining paths: + estimate + ticks; all integral counts
        if method == "emulator":
            assert cost["forwards_per_step"] == 1
        else:
            assert cost["forwards_per_step"] >= 2
        assert sorted(p.name for p in (out / "figures" / method).glob("*.png")) == METHOD_FIGURES
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == STUDY_FIGURES
    text = (out / "report.md").read_text()
    assert f"**Best method: {metrics['best']['method']}**" in text
    assert metrics["command"] in text and metrics["command"].startswith("sns-engine study ")
    for name in [*curves, *METHODS]:
        assert name in text
    return metrics


@pytest.mark.slow
def test_qg_study_end_to_end_and_rerun_skips(tmp_path):
    out = tmp_path / "qg"
    study("qg", "--out", out, "--set", "spinup_steps=300", *TINY)
    assert set(actions(out).values()) == {"ran"}
    metrics = check_study(out, ["energy_upper", "energy_lower"], channels=2)
    assert "W1 q_upper" in (out / "report.md").read_text()

    before = outputs(out)
    study("qg", "--out", out, "--set", "spinup_steps=300", *TINY)
    assert set(actions(out).values()) == {"skipped"}
    assert outputs(out) == before

    # the study's own command reproduces it: same settings, so everything is skipped again
    argv = shlex.split(metrics["command"])[2:]
    study(*argv, "--quiet")
    assert set(actions(out).values()) == {"skipped"}

    with pytest.raises(SystemExit) as exit_info:  # other settings into the same folder: refused
        study("qg", "--out", out, "--set", "spinup_steps=300", *TINY, "--members", 3)
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_kolmogorov_study_from_recipe_resumes_a_lost_rollout(tmp_path):
    recipe = tmp_path / "tiny.json"
    recipe.write_text(json.dumps({
        "system": "kolmogorov", "preset": "cpu",
        "overrides": {"solver_grid": 32, "output_grid": 32, "spinup_steps": 100},
        "sizes": {"trajectories": 3, "snapshots": 24, "reference_trajectories": 2,
                  "reference_snapshots": 24, "train_steps": 10, "members": 5, "horizon": 6,
                  "windows": 3},
        "train": {"batch_size": 8, "num_levels": 50, "lr": 1e-3},
        "expected_cost": {"note": "ignored by the pipeline"}}))
    out = tmp_path / "kolmogorov"
    study("--recipe", recipe, "--out", out, "--members", 2, "--quiet")  # options override it
    metrics = check_study(out, ["energy"], channels=1)
    assert metrics["study"]["overrides"]["solver_grid"] == 32

    # lose one method's rollout: only it, its evaluation and the report are redone
    (out / "rollouts" / "fix_short.json").unlink()
    before = outputs(out)
    study("--recipe", recipe, "--out", out, "--members", 2, "--quiet")
    done = actions(out)
    redone = {"rollout/fix_short", "evaluate/fix_short", "report"}
    assert {k for k, v in done.items() if v == "ran"} == redone
    after = outputs(out)
    unchanged = [k for k in before if not k.startswith(("rollouts/fix_short", "reports/fix_short",
                                                         "figures", "metrics", "report.md"))]
    assert unchanged and all(after[k] == before[k] for k in unchanged)
    # the resumed rollout had nothing left to run: its cost is honestly unmeasured
    assert json.loads((out / "rollouts" / "fix_short.json").read_text())["seconds_per_step"] is None


def test_rank_methods_prefers_survival_then_stability_then_unflagged_then_error():
    def summary(survival, median, mean, flagged, error):
        return {"survival_at_horizon": survival, "median_stability_time": median,
                "mean_stability_time": mean, "flagged_at_horizon": flagged,
                "mean_spectrum_error": error}

    summaries = {"a": summary(0.5, None, 8.0, 0.0, 0.9), "b": summary(0.75, None, 9.0, 0.0, 2.0),
                 "c": summary(0.0, 3.0, 3.0, 0.0, 0.1), "d": summary(0.0, 3.0, 3.0, 1.0, 0.01),
                 "e": summary(0.0, 3.0, 3.0, 0.0, math.inf), "f": summary(0.0, 4.0, 3.5, 1.0, 5.0)}
    assert rank_methods(summaries) == ["b", "a", "f", "c", "e", "d"]


@pytest.mark.parametrize("name", ["kolmogorov-paper.json", "qg-paper.json"])
def test_paper_recipes_are_valid_studies(name):
    kwargs = load_recipe(RECIPES / name)
    cfg = StudyConfig(**kwargs)
    assert cfg.preset == "paper" and set(cfg.methods) == set(METHODS)
    train = cfg.train_config("refiner")
    assert (train.preset, train.lr, train.weight_decay, train.batch_size, train.grad_clip,
            train.ema_decay) == ("paper", 5e-5, 0.05, 64, 1.0, 0.999)
    held_out = math.ceil(train.val_fraction * cfg.trajectories)  # the train loop's validation split
    assert 430_000 <= (cfg.trajectories - held_out) * (cfg.snapshots - 1) <= 450_000
    cost = json.loads((RECIPES / name).read_text())["expected_cost"]
    assert cost["stages"] and all("h200_hours" in stage for stage in cost["stages"].values())
    assert cost["measured"] and cost["assumptions"]


def test_bad_study_settings_are_named():
    with pytest.raises(StudyError, match="members must be a positive integer"):
        StudyConfig(system="qg", members=0)
    with pytest.raises(ValueError, match="unknown path 'zigzag'"):
        StudyConfig(system="qg", methods=("zigzag",))
    with pytest.raises(StudyError, match=r"\['steps'\] are set by the study itself"):
        StudyConfig(system="qg", train={"steps": 5})
    with pytest.raises(ValueError, match="TrainConfig has no field"):
        StudyConfig(system="qg", train={"learning_rate": 1e-3})
    with pytest.raises(StudyError, match=r"snapshots \(24\) must be ≥ 32"):
        StudyConfig(system="qg", snapshots=24, train={"lag": 30})
    with pytest.raises(StudyError, match="trajectories must be ≥ 2"):
        StudyConfig(system="qg", trajectories=1)
