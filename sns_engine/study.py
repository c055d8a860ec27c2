"""The study pipeline: solver data → training → one rollout per method → evaluation → report.

    run_study("qg", "cpu", "out/study", trajectories=8, snapshots=400, members=16, horizon=200)
    → out/study/report.md

Every method rolls out the same ensemble of initial conditions (held-out reference snapshots), so
their metrics compare like with like. Layout of a study directory:

    study.json                   the settings; a rerun with other settings is refused
    stages.json                  what the last run did per stage ("ran" / "skipped") and its seconds
    data/train.zarr              training store (seed s)
    data/reference.zarr          held-out reference store (seed s + 1): initial conditions, metrics
    bundle/                      emulator, refiner, thermalizer (only those the methods need)
    rollouts/<method>.zarr       ensemble store;  rollouts/<method>.json  measured cost
    reports/<method>.json        `diagnostics.evaluate.evaluate` report
    metrics.json, report.md, figures/*.png, figures/<method>/*.png

Every stage is resumable and skipped when its output is complete and nothing upstream of it ran
in this invocation: data and rollouts continue where a killed run stopped (the stores resume by
themselves), training continues from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sns_engine.config import RolloutConfig, TrainConfig, from_dict, to_dict, write_json
from sns_engine.diffusion.paths import get_path

if TYPE_CHECKING:
    from sns_engine.engine.rollout import EngineStats

METHODS = ("emulator", "thermalizer", "left_down", "diagonal", "fix_short")
MODELS = ("emulator", "refiner", "thermalizer")
STUDY_SET = {"train": ("model", "steps"), "rollout": ("path", "steps", "seed", "save_every")}
RECIPE_KEYS = ("system", "preset", "sizes", "overrides", "train", "rollout", "methods",
               "description", "notes", "expected_cost")


class StudyError(ValueError):
    """A study's settings are invalid or clash with the study already in the output folder."""


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines a study's results (JSON round trip with `config.to_dict`)."""

    system: str                          # kolmogorov | qg
    preset: str = "cpu"                  # system preset
    overrides: dict[str, Any] = field(default_factory=dict)   # system parameters (`--set`)
    trajectories: int = 8                # training store
    snapshots: int = 400
    reference_trajectories: int = 4      # held-out store (seed + 1)
    reference_snapshots: int = 400
    trajectory_batch: int = 8            # trajectories solved together (vmap / QG workers)
    train_steps: int = 1000              # optimizer steps of each model
    train: dict[str, Any] = field(default_factory=dict)       # further TrainConfig fields
    rollout: dict[str, Any] = field(default_factory=dict)     # further RolloutConfig fields
    members: int = 16
    horizon: int = 200                   # physical steps of each rollout
    save_every: int = 1                  # rollout steps between stored (and evaluated) states
    windows: int = 4                     # evaluation time windows
    stability_threshold: float = 1.0     # spectrum error beyond which a member is unstable
    seed: int = 0
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(self.methods))
        for name in ("trajectories", "snapshots", "reference_trajectories", "reference_snapshots",
                     "trajectory_batch", "train_steps", "members", "horizon", "save_every",
                     "windows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise StudyError(f"study {name} must be a positive integer, got {value!r}")
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise StudyError(f"methods must be distinct path names, got {list(self.methods)}")
        for method in self.methods:
            get_path(method)
        for section, fixed in STUDY_SET.items():
            clash = sorted(set(getattr(self, section)) & set(fixed))
            if clash:
                raise StudyError(f"{section} settings {clash} are set by the study itself; "
                                 "use the study's options (--train-steps, --horizon, --seed, ...)")
        from_dict(RolloutConfig, dict(self.rollout))
        if self.horizon % self.save_every:
            raise StudyError(f"horizon ({self.horizon}) must be a multiple of save_every "
                             f"({self.save_every})")
        if self.trajectories < 2:
            raise StudyError("study trajectories must be ≥ 2: training holds the last out for "
                             f"validation; got {self.trajectories}")
        lag = self.train_config("refiner").lag if "refiner" in self.models else 0
        need = max(lag + 2, self.train_config("emulator").unroll + 1)
        if self.snapshots < need:
            raise StudyError(f"study snapshots ({self.snapshots}) must be ≥ {need} for the long "
                             "lag and the emulator's unroll; add snapshots or lower them "
                             "(--train-set lag=... / unroll=...)")

    def train_config(self, kind: str) -> TrainConfig:
        """The TrainConfig of model `kind`; the long lag defaults to min(100, snapshots // 4)."""
        lag = min(100, max(1, self.snapshots // 4))
        return from_dict(TrainConfig, {"lag": lag, **self.train, "model": kind,
                                       "steps": self.train_steps})

    @property
    def models(self) -> tuple[str, ...]:
        """The models the methods need (the emulator always)."""
        need = {"emulator"} | {get_path(m).model for m in self.methods} - {None}
        return tuple(m for m in MODELS if m in need)


def study_command(cfg: StudyConfig, out: str | Path) -> str:
    """The `sns-engine study` command line that reproduces `cfg` into `out`, every setting explicit."""
    args = ["sns-engine", "study", cfg.system, "--preset", cfg.preset, "--out", str(out)]
    for name in ("trajectories", "snapshots", "reference_trajectories", "reference_snapshots",
                 "trajectory_batch", "train_steps", "members", "horizon", "save_every",
                 "windows", "stability_threshold", "seed"):
        args += ["--" + name.replace("_", "-"), str(getattr(cfg, name))]
    args += ["--methods", *cfg.methods]
    for option, values in (("--set", cfg.overrides), ("--train-set", cfg.train),
                           ("--rollout-set", cfg.rollout)):
        for key, value in values.items():
            args += [option, f"{key}={value}"]
    return shlex.join(args)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe JSON file as `run_study` keyword arguments (its `sizes` flattened in)."""
    recipe = json.loads(Path(path).read_text())
    unknown = sorted(set(recipe) - set(RECIPE_KEYS))
    if unknown:
        raise StudyError(f"recipe {path} has unknown keys {unknown}; valid: {list(RECIPE_KEYS)}")
    kwargs = {k: recipe[k] for k in ("system", "preset", "overrides", "train", "rollout", "methods")
              if k in recipe}
    return {**kwargs, **recipe.get("sizes", {})}


class StageLog:
    """What this invocation did per stage ("ran" / "skipped") and how long it took, kept in
    `stages.json` (rewritten after every stage)."""

    def __init__(self, path: Path):
        self.path, self.stages = path, {}

    @contextmanager
    def stage(self, name: str, run: bool) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.stages[name] = {"action": "ran" if run else "skipped",
                             "seconds": round(time.perf_counter() - start, 3)}
        write_json(self.path, self.stages)

    def ran(self, *prefixes: str) -> bool:
        """Whether a stage starting with one of `prefixes` ran in this invocation."""
        return any(s.startswith(prefixes) and v["action"] == "ran" for s, v in self.stages.items())


def run_study(system: str, preset: str = "cpu", out: str | Path = "study", *, quiet: bool = True,
              device: str | None = None, **settings: Any) -> Path:
    """Run (or resume) the study of `system` into the folder `out`; returns its report.md.

    `settings` are further StudyConfig fields (trajectories, snapshots, train_steps, members,
    horizon, overrides, train, rollout, methods, ...)."""
    from sns_engine.data import TrajectoryStore, generate
    from sns_engine.systems import get_system

    cfg = StudyConfig(system=system, preset=preset, **settings)
    solver = get_system(cfg.system, cfg.preset, **cfg.overrides)  # checks names before any write
    out = Path(out)
    _claim(out, cfg)
    log = StageLog(out / "stages.json")
    train_store, reference = out / "data" / "train.zarr", out / "data" / "reference.zarr"
    for name, path, trajectories, snapshots, seed in (
            ("train", train_store, cfg.trajectories, cfg.snapshots, cfg.seed),
            ("reference", reference, cfg.reference_trajectories, cfg.reference_snapshots,
             cfg.seed + 1)):
        done = path.exists() and TrajectoryStore(path).complete
        with log.stage(f"data/{name}", not done):
            # generate checks that an existing store has this spec and returns at once if complete
            generate(solver, path, trajectories, snapshots, seed=seed,
                     trajectory_batch=cfg.trajectory_batch, quiet=quiet)
    del solver  # a QG solver's worker processes stop with it
    bundle = out / "bundle"
    for kind in cfg.models:
        _train_stage(cfg, kind, train_store, bundle, log, quiet, device)
    costs = _rollout_stage(cfg, out, bundle, reference, log, quiet, device)
    reports = _evaluate_stage(cfg, out, reference, log)
    report = out / "report.md"
    run = not report.exists() or log.ran("data", "train", "rollout", "evaluate")
    with log.stage("report", run):
        if run:
            write_report(cfg, out, reports, costs)
    return report


def _claim(out: Path, cfg: StudyConfig) -> None:
    """Write study.json, or check that the study already in `out` has the same settings."""
    settings = to_dict(cfg)
    file = out / "study.json"
    if file.exists():
        old = json.loads(file.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise StudyError(f"{out} holds a study with other {changed} "
                             f"(there: { {k: old.get(k) for k in changed} }); rerun it with its "
                             "own settings (see its report.md) or use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(file, settings)


def _train_stage(cfg: StudyConfig, kind: str, data: Path, bundle: Path, log: StageLog,
                 quiet: bool, device: str | None) -> None:
    """Train `kind` into the bundle: skipped when its final step is there, resumed from its
    checkpoint otherwise (trained anew if the training data was regenerated in this run)."""
    from sns_engine.bundle import read_config
    from sns_engine.train.loop import _checkpoint_paths, train

    train_cfg = cfg.train_config(kind)
    fresh = log.ran("data/train")
    entry = (read_config(bundle) or {}).get("models", {}).get(kind, {})
    run = entry.get("step") != train_cfg.steps or fresh
    with log.stage(f"train/{kind}", run):
        if run:
            resume = _checkpoint_paths(bundle, kind)[1].exists() and not fresh
            train(train_cfg, data, bundle, resume=resume, overwrite=not resume, quiet=quiet,
                  device=device)


def held_out_initial(reference: Path, count: int) -> torch.Tensor:
    """`count` snapshots (count, C, H, W) of the reference store, physical units, evenly spread
    over its trajectories × times: the initial conditions every method starts from."""
    from sns_engine.data import TrajectoryStore

    store = TrajectoryStore(reference)
    n, t = store.spec.trajectories, store.spec.snapshots
    flat = np.linspace(0, n * t - 1, count).round().astype(int)
    return torch.stack([torch.from_numpy(np.asarray(store.fields[i // t, i % t])) for i in flat])


def _rollout_stage(cfg: StudyConfig, out: Path, bundle_dir: Path, reference: Path, log: StageLog,
                   quiet: bool, device: str | None) -> dict[str, dict[str, Any]]:
    """Roll out every method from the same initial conditions; returns the cost per method."""
    from sns_engine.bundle import load_bundle

    fresh = log.ran("data", "train")  # rollouts of older models are redone, not resumed
    costs: dict[str, dict[str, Any]] = {}
    bundle = initial = None
    for method in cfg.methods:
        store, cost_file = out / "rollouts" / f"{method}.zarr", out / "rollouts" / f"{method}.json"
        run = not cost_file.exists() or fresh
        with log.stage(f"rollout/{method}", run):
            if not run:
                costs[method] = json.loads(cost_file.read_text())
                continue
            if bundle is None:
                dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
                bundle, initial = load_bundle(bundle_dir, dev), held_out_initial(reference, cfg.members)
            costs[method] = roll_out(cfg, method, bundle, initial, store,
                                     resume=store.exists() and not fresh, quiet=quiet, device=device)
            write_json(cost_file, costs[method])
    return costs


def roll_out(cfg: StudyConfig, method: str, bundle, initial: torch.Tensor, store: Path,
             resume: bool, quiet: bool = True, device: str | None = None) -> dict[str, Any]:
    """Roll out the study's members from `initial` along `method` into `store` (continuing it
    with `resume`, replacing it otherwise); returns the cost per physical step (`rollout_cost`)."""
    from sns_engine.engine.ensemble import rollout

    start = time.perf_counter()
    result = rollout(bundle, batch=cfg.members, steps=cfg.horizon, path=method, initial=initial,
                     out=store, device=device, seed=cfg.seed, save_every=cfg.save_every,
                     resume=resume, overwrite=not resume, quiet=quiet, **cfg.rollout)
    return rollout_cost(result.stats, time.perf_counter() - start, cfg.members)


def rollout_cost(stats: EngineStats, wall: float, members: int) -> dict[str, Any]:
    """Cost per physical step of a rollout from its EngineStats and measured wall seconds
    (engine start-up and store writes included). A run resumed after its last step measured
    nothing: its costs are None."""
    steps = stats.physical_steps
    per_step = (lambda x: x / steps) if steps else (lambda x: None)
    return {"physical_steps_measured": steps, "wall_seconds": wall,
            "seconds_per_step": per_step(wall), "forwards_per_step": per_step(stats.forwards),
            "member_forwards_per_member_step": per_step(stats.useful_member_forwards / members),
            "useful_fraction": stats.useful_fraction if steps else None}


def _evaluate_stage(cfg: StudyConfig, out: Path, reference: Path,
                    log: StageLog) -> dict[str, dict[str, Any]]:
    from sns_engine.diagnostics.evaluate import evaluate

    reports = {}
    for method in cfg.methods:
        file = out / "reports" / f"{method}.json"
        run = not file.exists() or log.ran("data/reference", f"rollout/{method}")
        with log.stage(f"evaluate/{method}", run):
            if run:
                reports[method] = evaluate(out / "rollouts" / f"{method}.zarr", reference,
                                           windows=cfg.windows, threshold=cfg.stability_threshold)
                file.parent.mkdir(parents=True, exist_ok=True)
                write_json(file, reports[method])
            else:
                reports[method] = json.loads(file.read_text())
    return reports


# ------------------------------------------------------------------------------ report
def summarize(report: dict[str, Any], cost: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of one method: stability, errors per window, cost per step."""
    windows, times = report["windows"], report["stability"]["times"]
    horizon = report["snapshots"] * report["snapshot_dt"]
    errors = [v for w in windows for v in w["spectrum_error"].values()]
    finite = [e for e in errors if math.isfinite(e)]
    return {
        "horizon_time": horizon,
        "median_stability_time": report["stability"]["median"],  # None: beyond the horizon
        "survival_at_horizon": report["stability"]["survival_at_horizon"],
        "mean_stability_time": float(np.mean([horizon if t is None else t for t in times])),
        "flagged_at_horizon": windows[-1]["flagged"],
        "mean_spectrum_error": sum(finite) / len(finite) if len(finite) == len(errors) else math.inf,
        "spectrum_error": {name: [w["spectrum_error"][name] for w in windows]
                           for name in windows[0]["spectrum_error"]},
        "w1": [[w["w1"][c] for w in windows] for c in range(len(windows[0]["w1"]))],
        "window_times": [w["time"] for w in windows],
        "mean_refinement_forwards": report.get("moves", {}).get("mean"),
        "steps_measured": cost["physical_steps_measured"],
        "forwards_per_step": cost.get("forwards_per_step"),
        "seconds_per_step": cost.get("seconds_per_step"),
    }


def rank_methods(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Methods best first: highest survival at the horizon, then longest median and mean
    stability time (a member stable to the horizon counts the horizon; a median beyond it counts
    as infinite), then fewest members flagged (frozen) by the end, then lowest mean spectrum error."""
    def key(method: str) -> tuple[float, ...]:
        s = summaries[method]
        median = s["median_stability_time"]
        return (-s["survival_at_horizon"], -(math.inf if median is None else median),
                -s["mean_stability_time"], s["flagged_at_horizon"], s["mean_spectrum_error"])

    return sorted(summaries, key=key)


RANKING_RULE = ("Ranking rule: survival at the horizon (higher is better), then median and mean "
                "stability time (longer), then the share of members flagged by the end (lower), "
                "then the spectrum error averaged over windows and spectra (lower).")


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _stability(s: dict[str, Any]) -> str:
    median = s["median_stability_time"]
    return f"> {s['horizon_time']:.3g}" if median is None else f"{median:.3g}"


def _verdict(order: list[str], summaries: dict[str, dict[str, Any]]) -> str:
    def numbers(m: str) -> str:
        s = summaries[m]
        return (f"survival at the horizon {100 * s['survival_at_horizon']:.0f} %, median stability "
                f"time {_stability(s)}, flagged {100 * s['flagged_at_horizon']:.0f} %, mean spectrum error "
                f"{_fmt(s['mean_spectrum_error'])}")

    text = f"**Best method: {order[0]}** ({numbers(order[0])}). {RANKING_RULE}"
    if summaries[order[0]]["survival_at_horizon"] == 0:
        text += " No method kept any member stable to the horizon."
    if len(order) > 1:
        text += f" Runner-up: {order[1]} ({numbers(order[1])})."
    return text


def write_report(cfg: StudyConfig, out: Path, reports: dict[str, dict[str, Any]],
                 costs: dict[str, dict[str, Any]]) -> Path:
    """metrics.json, the figures and report.md of a finished study."""
    from sns_engine import plots
    from sns_engine.data import TrajectoryStore

    spec = TrajectoryStore(out / "data" / "train.zarr").spec
    channels = list(spec.channel_names)
    summaries = {m: summarize(reports[m], costs[m]) for m in cfg.methods}
    order = rank_methods(summaries)
    command = study_command(cfg, out)
    write_json(out / "metrics.json", {
        "study": to_dict(cfg), "command": command,
        "best": {"method": order[0], "ranking": order},
        "methods": {m: {"summary": summaries[m], "cost": costs[m], "report": reports[m]}
                    for m in cfg.methods}})
    figures = study_figures(reports, out / "figures", channels)
    for m in cfg.methods:
        plots.report_figures(reports[m], out / "figures" / m)

    curves = list(summaries[order[0]]["spectrum_error"])
    train_cfg = cfg.train_config("emulator")
    lines = [
        f"# Study: {cfg.system} ({cfg.preset} preset)", "",
        "Command (reproduces this study, every setting explicit):", "", f"    {command}", "",
        f"Training data: {cfg.trajectories} trajectories × {cfg.snapshots} snapshots (seed "
        f"{cfg.seed}); held-out reference: {cfg.reference_trajectories} × "
        f"{cfg.reference_snapshots} (seed {cfg.seed + 1}); grid {spec.grid}², channels "
        f"{', '.join(channels)}, snapshot interval {spec.snapshot_dt:.4g}. Models "
        f"({', '.join(cfg.models)}): U-Net preset `{train_cfg.preset}`, {cfg.train_steps} steps "
        f"each, batch {train_cfg.batch_size}, lr {train_cfg.lr:g}, N = {train_cfg.num_levels}. "
        f"Every method rolls out the same {cfg.members} members from held-out reference "
        f"snapshots for {cfg.horizon} physical steps; a member is unstable once its spectrum "
        f"error exceeds {cfg.stability_threshold:g} (or it is flagged).", "",
        _verdict(order, summaries), "",
        "## Summary (spectrum error and W1: last window)", "",
        *_table(["method", "median stability time", "survival at horizon", "flagged at end",
                 *(f"spectrum error {c}" for c in curves), *(f"W1 {c}" for c in channels),
                 "mean spectrum error", "forwards / step", "seconds / step"],
                [[m, _stability(s), f"{100 * s['survival_at_horizon']:.0f} %",
                  f"{100 * s['flagged_at_horizon']:.0f} %",
                  *(_fmt(s["spectrum_error"][c][-1]) for c in curves),
                  *(_fmt(w[-1]) for w in s["w1"]), _fmt(s["mean_spectrum_error"]),
                  _fmt(s["forwards_per_step"]) + _partial(s, cfg.horizon),
                  _fmt(s["seconds_per_step"]) + _partial(s, cfg.horizon)]
                 for m, s in ((m, summaries[m]) for m in order)]),
        "", "Forwards per step count network calls (emulator + level estimate + refinement ticks) "
        "per physical step for the whole ensemble; seconds per step is the wall time of the "
        "rollout call over its steps (start-up and store writes included). * measured over the "
        "steps run after a resume only; – nothing was left to run after a resume.", "",
    ]
    for m in cfg.methods:
        lines += _method_section(m, reports[m], summaries[m], curves, channels)
    lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in figures]
    lines += ["", "Per-method figures (spectra over time, errors, autocorrelation and survival, "
              "level histograms): " + ", ".join(f"[{m}](figures/{m}/)" for m in cfg.methods), ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _partial(s: dict[str, Any], horizon: int) -> str:
    measured = s["steps_measured"]
    return "*" if 0 < measured < horizon else ""


def _method_section(method: str, report: dict[str, Any], s: dict[str, Any], curves: list[str],
                    channels: list[str]) -> list[str]:
    rows = [[f"{w['time'][0]:.3g}–{w['time'][1]:.3g}",
             *(_fmt(w["spectrum_error"][c]) for c in curves), *(_fmt(v) for v in w["w1"]),
             _fmt(w["rate_of_change"]), f"{100 * w['flagged']:.0f} %"] for w in report["windows"]]
    acf = report.get("autocorrelation")
    decorrelation = {}
    if acf:  # None: the curve stays above 1/e up to the largest lag
        decorrelation = {who: _fmt(t) if t is not None else f"> {acf['lag_time'][-1]:.3g}"
                         for who, t in acf["decorrelation_time"].items()}
    return [f"## {method}", "",
            *_table(["time window", *(f"spectrum error {c}" for c in curves),
                     *(f"W1 {c}" for c in channels), "rate of change", "flagged"], rows),
            "", f"Decorrelation time: ensemble {decorrelation.get('ensemble', '–')}, solver "
            f"{decorrelation.get('reference', '–')}. Mean refinement forwards per member and step: "
            f"{_fmt(s['mean_refinement_forwards'])}.", ""]


def study_figures(reports: dict[str, dict[str, Any]], folder: Path,
                  channels: list[str]) -> list[Path]:
    """All methods on one plot each: spectrum error and W1 over time, survival curves,
    autocorrelation against the solver's, and histograms of refinement forwards."""
    from sns_engine import plots

    plt = plots.plt
    first = next(iter(reports.values()))
    curves = list(first["reference_spectra"])
    out = []
    fig, axes = plt.subplots(1, len(curves) + len(channels), squeeze=False,
                             figsize=(4.6 * (len(curves) + len(channels)), 4))
    for method, r in reports.items():
        mid = [np.mean(w["time"]) for w in r["windows"]]
        for ax, name in zip(axes[0], curves, strict=False):
            ax.plot(mid, [w["spectrum_error"][name] for w in r["windows"]], "o-", label=method)
            ax.set_title(f"spectrum error ({name})")
        for c, ax in enumerate(axes[0][len(curves):]):
            ax.plot(mid, [w["w1"][c] for w in r["windows"]], "o-", label=method)
            ax.set_title(f"W1 of the {channels[c]} PDF")
    for ax in axes[0]:
        ax.set_xlabel("time")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    out.append(plots._save(fig, folder / "error_over_time.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for method, r in reports.items():
        surv = r["stability"]["survival"]
        ax.step(surv["time"], surv["fraction"], where="post", label=method)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("time")
    ax.set_ylabel("fraction of members stable")
    ax.set_title(f"stability (spectrum error ≤ {first['stability']['threshold']:g})")
    ax.legend(fontsize=7)
    out.append(plots._save(fig, folder / "survival.png"))

    with_acf = {m: r["autocorrelation"] for m, r in reports.items() if "autocorrelation" in r}
    if with_acf:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, acf in with_acf.items():
            ax.plot(acf["lag_time"], acf["ensemble"], label=method)
        acf = next(iter(with_acf.values()))
        ax.plot(acf["lag_time"], acf["reference"], "k--", label="solver")
        ax.set_xlabel("lag")
        ax.set_ylabel("autocorrelation")
        ax.legend(fontsize=7)
        out.append(plots._save(fig, folder / "autocorrelation.png"))

    refining = {m: r["moves"] for m, r in reports.items() if get_path(m).model and "moves" in r}
    if refining:
        fig, axes = plt.subplots(1, len(refining), figsize=(4 * len(refining), 3.6), squeeze=False)
        for ax, (method, hist) in zip(axes[0], refining.items(), strict=True):
            ax.bar(hist["value"], hist["count"], width=1.0)
            ax.set_title(method)
            ax.set_xlabel("refinement forwards per member-step")
            ax.set_ylabel("count")
        out.append(plots._save(fig, folder / "refinement_steps.png"))
    return out
