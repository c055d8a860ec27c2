"""The study pipeline: solver data → models → plan → one rollout per method → evaluation → report.

    run_study("kolmogorov", "cpu", "out/study", bundle="out/bundle", members=16, horizon=6000)
    → out/study/report.md

Every method rolls out the same members from the same initial states: the first snapshots of the
*solver control* ensemble, which is the solver itself run from those states. The control is
evaluated exactly like a method: its errors against the reference are the *solver floor*, the
error a perfect surrogate would show at this ensemble size. Layout of a study directory:

    study.json                   the settings; a rerun with other settings is refused
    stages.json                  per stage: "ran" / "skipped", wall and CPU seconds
    data/train.zarr              training store (seed s; not made when a bundle is given)
    data/reference.zarr          reference store (seed s + 1), stored every save_every model steps
    data/control.zarr            solver control (seed s + 2): the members' initial states and the floor
    bundle/                      emulator, refiner, thermalizer (only those the methods need)
    bundle.sha256.json           SHA-256 of the bundle files the methods use (`checksums`)
    plan.json, plan.md           methods with every setting resolved and the pass/fail criteria,
                                 written before the first rollout and never rewritten after it
    rollouts/<method>.zarr       ensemble store;  rollouts/<method>.json  measured cost (`costs`)
    rollouts/<method>.invocations.json   wall and CPU seconds of every invocation that rolled it out
    reports/<method>.json        `diagnostics.evaluate.evaluate` report (reports/solver.json: floor)
    metrics.json, report.md, figures/*.png, figures/<method>/*.png

Every stage is resumable and skipped when its output is complete and nothing upstream of it ran
in this invocation: data and rollouts continue where a killed run stopped (the stores resume by
themselves), training continues from its last checkpoint.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sns_engine.config import to_dict, write_json
from sns_engine.study import costs
from sns_engine.study.checksums import check_bundle_files
from sns_engine.study.config import SOLVER, Method, StudyConfig, StudyError, slug

DATA_ONLY = ("spinup_steps", "steps_per_snapshot")  # solver parameters that do not change the system


class StageLog:
    """Per stage: what this invocation did ("ran" / "skipped") and its wall and CPU seconds (this
    process, all threads), and `last_run`, the cost of the last invocation that ran it (kept
    across invocations, also when several share a study), in `stages.json`."""

    def __init__(self, path: Path):
        self.path, self.stages = path, {}

    @contextmanager
    def stage(self, name: str, run: bool) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        entry = {"action": "ran" if run else "skipped",
                 "seconds": round(time.perf_counter() - wall, 3),
                 "cpu_seconds": round(time.process_time() - cpu, 3)}
        on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}
        if run:
            entry["last_run"] = {"seconds": entry["seconds"], "cpu_seconds": entry["cpu_seconds"],
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        elif "last_run" in on_disk.get(name, {}):
            entry["last_run"] = on_disk[name]["last_run"]
        self.stages[name] = entry
        write_json(self.path, {**on_disk, name: entry})

    def ran(self, *prefixes: str) -> bool:
        """Whether a stage named one of `prefixes`, or inside one (`data` → `data/train`), ran in
        this invocation."""
        return any(v["action"] == "ran" and any(s == p or s.startswith(p + "/") for p in prefixes)
                   for s, v in self.stages.items())


def run_study(system: str, preset: str = "cpu", out: str | Path = "study", *, quiet: bool = True,
              device: str | None = None, only: Sequence[str] | None = None,
              **settings: Any) -> Path:
    """Run (or resume) the study of `system` into the folder `out`; returns its report.md.

    `settings` are further StudyConfig fields (bundle, trajectories, snapshots, train_steps,
    members, horizon, overrides, train, rollout, methods, criteria, ...). `only` rolls out just
    those methods (several invocations can share the work); the report then covers every method
    rolled out so far and names the others."""
    from sns_engine.study.report import write_report
    from sns_engine.systems import get_system

    cfg = StudyConfig(system=system, preset=preset, **settings)
    unknown = sorted(set(only or ()) - set(cfg.methods))
    if unknown:
        raise StudyError(f"only names methods the study does not have: {unknown}; its methods: "
                         f"{list(cfg.methods)}")
    solver = get_system(cfg.system, cfg.preset, **cfg.overrides)  # checks names before any write
    out = Path(out)
    _claim(out, cfg)
    log = StageLog(out / "stages.json")
    stores = _data_stage(cfg, solver, out, log, quiet)
    del solver  # a QG solver's worker processes stop with it
    bundle = Path(cfg.bundle) if cfg.bundle is not None else out / "bundle"
    if cfg.bundle is None:
        for kind in cfg.models:
            _train_stage(cfg, kind, stores["train"], bundle, log, quiet, device)
    missing = _check_bundle(cfg, bundle, stores["control"])
    check_bundle_files(bundle, out, [m for m in cfg.models if m not in missing])
    plan = _plan_stage(cfg, out, bundle, stores, missing, log, device)
    spent = _rollout_stage(cfg, plan, out, bundle, stores["control"], log, quiet, device, only)
    reports = _evaluate_stage(cfg, spent, out, stores, log)
    report = out / "report.md"
    run = (not report.exists() or log.ran("data", "train", "plan", "rollout", "evaluate")
           or not set(reports) <= _reported_methods(out))
    if plan["pending"] and not quiet:
        print(f"waiting for models {missing}: methods {plan['pending']} are not rolled out yet; "
              "rerun the same command once the bundle holds them")
    with log.stage("report", run):
        if run:
            write_report(cfg, out, plan, reports, spent, json.loads(log.path.read_text()))
    return report


def _reported_methods(out: Path) -> set[str]:
    """The methods (and solver) the study's last report covers: another invocation sharing the
    folder (`only`) may have finished a rollout after that report was written."""
    metrics = out / "metrics.json"
    return set(json.loads(metrics.read_text())["methods"]) if metrics.exists() else set()


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


# ------------------------------------------------------------------------------ data
def _data_stage(cfg: StudyConfig, solver, out: Path, log: StageLog, quiet: bool) -> dict[str, Path]:
    """Training store (unless a bundle is given), reference and control stores. Reference and
    control are stored every `save_every` model steps, after `reference_spinup` solver steps."""
    from sns_engine.data import TrajectoryStore
    from sns_engine.generation import generate
    from sns_engine.systems import get_system

    long_run = {"steps_per_snapshot": solver.params.steps_per_snapshot * cfg.save_every}
    if cfg.reference_spinup is not None:
        long_run["spinup_steps"] = cfg.reference_spinup
    held_out = get_system(cfg.system, cfg.preset, **{**cfg.overrides, **long_run})
    controls = cfg.horizon // cfg.save_every + 1    # the initial state, then one per saved state
    jobs = [("reference", held_out, cfg.reference_trajectories, cfg.reference_snapshots, 1),
            ("control", held_out, cfg.members, controls, 2)]
    if cfg.bundle is None:
        jobs.insert(0, ("train", solver, cfg.trajectories, cfg.snapshots, 0))
    stores = {}
    for name, system, trajectories, snapshots, offset in jobs:
        path = stores[name] = out / "data" / f"{name}.zarr"
        done = path.exists() and TrajectoryStore(path).complete
        with log.stage(f"data/{name}", not done):
            # generate checks that an existing store has this spec and returns at once if complete
            generate(system, path, trajectories, snapshots, seed=cfg.seed + offset,
                     trajectory_batch=cfg.trajectory_batch, quiet=quiet)
    return stores


def _train_stage(cfg: StudyConfig, kind: str, data: Path, bundle: Path, log: StageLog,
                 quiet: bool, device: str | None) -> None:
    """Train `kind` into the bundle: skipped when its final step is there, resumed from its
    checkpoint otherwise (trained anew if the training data was regenerated in this run)."""
    from sns_engine.bundle import read_config
    from sns_engine.train.loop import checkpoint_paths, train

    train_cfg = cfg.train_config(kind)
    fresh = log.ran("data/train")
    entry = (read_config(bundle) or {}).get("models", {}).get(kind, {})
    run = entry.get("step") != train_cfg.steps or fresh
    with log.stage(f"train/{kind}", run):
        if run:
            resume = checkpoint_paths(bundle, kind)[1].exists() and not fresh
            train(train_cfg, data, bundle, resume=resume, overwrite=not resume, quiet=quiet,
                  device=device)


def _check_bundle(cfg: StudyConfig, bundle: Path, control: Path) -> list[str]:
    """The bundle's system is this study's (up to the solver parameters that only change how
    data is stored); returns the models the methods need that it does not hold yet (their
    methods wait: `pending`)."""
    from sns_engine.bundle import read_config
    from sns_engine.data import TrajectoryStore

    config = read_config(bundle)
    if config is None:
        raise StudyError(f"{bundle} is not a bundle (no config.json)")
    if "emulator" not in config.get("models", {}):
        raise StudyError(f"bundle {bundle} has no emulator; every method needs one")
    ours, theirs = TrajectoryStore(control).spec, config["system"]
    params = {k: v for k, v in ours.params.items() if k not in DATA_ONLY}
    trained = {k: v for k, v in theirs["params"].items() if k not in DATA_ONLY}
    if (ours.system, ours.preset, ours.grid, params) != (theirs["name"], theirs["preset"],
                                                         theirs["grid"], trained):
        changed = sorted(k for k in set(params) | set(trained) if params.get(k) != trained.get(k))
        raise StudyError(f"bundle {bundle} was trained on {theirs['name']}/{theirs['preset']} "
                         f"{theirs['grid']}² (parameters differing from this study's: {changed})")
    stored = theirs["snapshot_dt"] * cfg.save_every
    if not math.isclose(stored, ours.snapshot_dt, rel_tol=1e-9):
        raise StudyError(f"bundle {bundle} steps {theirs['snapshot_dt']} per model step, so the "
                         f"study stores every {stored}, but its solver stores every "
                         f"{ours.snapshot_dt}")
    def finished(kind: str) -> bool:  # as load_bundle judges it: its training reached its steps
        entry = config["models"].get(kind)
        if entry is None:
            return False
        step, steps = entry.get("step"), entry.get("train", {}).get("steps")
        return step is None or steps is None or step >= steps

    return [m for m in cfg.models if not finished(m)]


def initial_states(control: Path, count: int) -> torch.Tensor:
    """The first snapshot of each control trajectory (count, C, H, W), physical units: the state
    every method's member starts from."""
    from sns_engine.data import TrajectoryStore

    store = TrajectoryStore(control)
    return torch.from_numpy(np.asarray(store.fields[:count, 0]))


# ------------------------------------------------------------------------------ plan
def _plan_stage(cfg: StudyConfig, out: Path, bundle_dir: Path, stores: dict[str, Path],
                missing: list[str], log: StageLog, device: str | None) -> dict[str, Any]:
    """Write the pass/fail criteria and every method's resolved settings (calibrated thresholds,
    matched Thermalizer starts) into plan.json / plan.md before any rollout. A method whose
    model the bundle lacks stays `pending` (its rule is in the plan, its resolution waits) and is
    resolved by a later run once the model exists: a pilot of its cost, never an outcome. The
    criteria and resolved methods are never rewritten once a rollout exists."""
    file = out / "plan.json"
    rolled = any((out / "rollouts").glob("*.json"))
    fresh = not file.exists() or (log.ran("data", "train") and not rolled)
    plan = None if fresh else json.loads(file.read_text())
    waiting = cfg.methods if plan is None else plan["pending"]
    ready = [m for m in cfg.method_specs if m.label in waiting and m.model not in missing]
    with log.stage("plan", bool(fresh or ready)):
        if not (fresh or ready):
            return plan
        from sns_engine.bundle import load_bundle
        from sns_engine.calibration import clean_threshold

        if plan is None:
            plan = {"methods": {}, "pending": list(cfg.methods), "calibration": None,
                    "pilots": {}, "criteria": to_dict(cfg.criteria),
                    "written": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        bundle = load_bundle(bundle_dir, _device(device))
        if plan["calibration"] is None and any(m.settings.get("threshold") == "calibrated"
                                               for m in ready):
            data = cfg.calibration_data or stores["train"]
            plan["calibration"] = clean_threshold(bundle, data, cfg.calibration_quantile,
                                                  seed=cfg.seed)
        initial = initial_states(stores["control"], cfg.members)
        for m in sorted(ready, key=lambda m: "match" in m.settings):  # targets first
            settings = _resolved(cfg, m, plan["calibration"])
            if "match" in m.settings:
                target = plan["methods"].get(m.settings["match"])
                if target is None:  # its target waits for a model too
                    continue
                pilot = costs.match_thermalizer(cfg, bundle, initial, target, settings)
                plan["pilots"][m.label] = {**pilot, "match": m.settings["match"]}
                settings.update(pilot["chosen"])
            plan["methods"][m.label] = settings
            plan["pending"].remove(m.label)
            if not fresh:
                plan.setdefault("resolved_later", {})[m.label] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        write_json(file, plan)
        from sns_engine.study.report import plan_text

        (out / "plan.md").write_text(plan_text(cfg, plan, out))
    return plan


def _resolved(cfg: StudyConfig, m: Method, calibration: dict[str, Any] | None) -> dict[str, Any]:
    """The rollout settings of method `m` (study-wide settings, then the method's own)."""
    settings = {**cfg.rollout, **{k: v for k, v in m.settings.items() if k != "match"},
                "path": m.path}
    if settings.get("threshold") == "calibrated":
        settings["threshold"] = calibration["threshold"]
    return settings


# ------------------------------------------------------------------------------ rollouts
def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _rollout_stage(cfg: StudyConfig, plan: dict[str, Any], out: Path, bundle_dir: Path,
                   control: Path, log: StageLog, quiet: bool, device: str | None,
                   only: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Roll out every resolved method (or those in `only`) from the control's initial states;
    returns the cost JSON of every method rolled out so far. A cost JSON written before the
    networks' FLOPs per pass were recorded gets them, from a one-step pilot."""
    from sns_engine.bundle import load_bundle

    fresh = log.ran("data", "train") or (log.ran("plan") and not plan.get("resolved_later"))
    spent: dict[str, dict[str, Any]] = {}

    @functools.cache
    def bundle_and_initial() -> tuple[Any, torch.Tensor]:  # loaded once, when first needed
        return load_bundle(bundle_dir, _device(device)), initial_states(control, cfg.members)

    def finished(label: str, cost_file: Path) -> dict[str, Any]:
        cost = json.loads(cost_file.read_text())
        if "pass_flops" not in cost:
            cost["pass_flops"] = costs.pass_flops(cfg, *bundle_and_initial(), plan["methods"][label])
            write_json(cost_file, cost)
        return cost

    for label in (m for m in cfg.methods if m in plan["methods"]):
        store, cost_file = (out / "rollouts" / f"{slug(label)}.zarr",
                            out / "rollouts" / f"{slug(label)}.json")
        run = not cost_file.exists() or fresh
        if only is not None and label not in only:
            if not run:
                spent[label] = finished(label, cost_file)
            continue
        with log.stage(f"rollout/{label}", run):
            if not run:
                spent[label] = finished(label, cost_file)
                continue
            spent[label] = roll_out(cfg, plan["methods"][label], *bundle_and_initial(), store,
                                    resume=store.exists() and not fresh, quiet=quiet, device=device)
            cost_file.parent.mkdir(parents=True, exist_ok=True)
            write_json(cost_file, spent[label])
    return spent


def roll_out(cfg: StudyConfig, settings: dict[str, Any], bundle, initial: torch.Tensor,
             store: Path, resume: bool, quiet: bool = True,
             device: str | None = None) -> dict[str, Any]:
    """Roll out the study's members from `initial` with the resolved `settings` into `store`
    (continuing it with `resume`, replacing it otherwise), timing this invocation in the
    rollout's ledger; returns its cost (`costs.rollout_cost`) with every invocation's times."""
    from sns_engine.api import rollout
    from sns_engine.data.store import FORMAT, TrajectoryStore

    held = TrajectoryStore(store).format if resume else FORMAT
    if held < FORMAT:
        raise StudyError(f"{store} was rolled out by an older sns_engine (store format {held}), "
                         "which this one reads but does not continue; delete it and rerun the "
                         "study to roll it out anew")
    options = {k: v for k, v in settings.items() if k != "path"}
    ledger = store.with_suffix(".invocations.json")
    with costs.invocation(ledger, _next_step(store) if resume else 0, fresh=not resume) as parts:
        start = time.perf_counter()
        result = rollout(bundle, batch=cfg.members, steps=cfg.horizon, path=settings["path"],
                         initial=initial, out=store, device=device, seed=cfg.seed,
                         save_every=cfg.save_every, resume=resume, overwrite=not resume,
                         quiet=quiet, **options)
        wall = time.perf_counter() - start
    return {**costs.rollout_cost(result.stats, wall, cfg.members), "invocations": parts}


def _next_step(store: Path) -> int | None:
    """The physical step a resumed rollout in `store` continues from (its checkpoint's); None
    where the store cannot tell (the rollout itself then says what is wrong)."""
    from sns_engine.data import TrajectoryStore
    from sns_engine.data.store import StoreError
    from sns_engine.engine.writer import load_checkpoint

    try:
        saved = load_checkpoint(TrajectoryStore(store))
    except (StoreError, OSError, ValueError):
        return None
    return 0 if saved is None else saved[1]


# ------------------------------------------------------------------------------ evaluation
def _evaluate_stage(cfg: StudyConfig, spent: dict[str, Any], out: Path, stores: dict[str, Path],
                    log: StageLog) -> dict[str, dict[str, Any]]:
    """Evaluate every method rolled out and the solver control (from its second snapshot,
    aligned with the methods' first saved state) against the reference."""
    from sns_engine.diagnostics.evaluate import evaluate

    reports = {}
    for label in (SOLVER, *(m for m in cfg.methods if m in spent)):
        file = out / "reports" / f"{slug(label)}.json"
        source = f"data/{SOLVER}" if label == SOLVER else f"rollout/{label}"
        run = not file.exists() or log.ran("data/reference", "data/control", source)
        with log.stage(f"evaluate/{label}", run):
            if run:
                ensemble, start = ((stores["control"], 1) if label == SOLVER
                                   else (out / "rollouts" / f"{slug(label)}.zarr", 0))
                reports[label] = evaluate(ensemble, stores["reference"], windows=cfg.windows,
                                          threshold=cfg.stability_threshold, start=start)
                file.parent.mkdir(parents=True, exist_ok=True)
                write_json(file, reports[label])
            else:
                reports[label] = json.loads(file.read_text())
    return reports
