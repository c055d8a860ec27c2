"""What each `sns-engine` command does: the API call it makes from its parsed options, and what it
prints. The options each command passes through to the API are listed here (ROLLOUT_OPTIONS, ...);
`parser` builds them from the API's signatures and docstrings.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def positive(text: str) -> int:
    """argparse type: a positive integer (else the option's error says so)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


STUDY_SIZES = (
    ("trajectories", positive, "trajectories of the training store"),
    ("snapshots", positive, "snapshots per training trajectory"),
    ("reference_trajectories", positive, "trajectories of the held-out reference store (seed + 1)"),
    ("reference_snapshots", positive, "snapshots per reference trajectory"),
    ("trajectory_batch", positive, "trajectories solved together (vmap / QG worker processes)"),
    ("train_steps", positive, "optimizer steps of each model"),
    ("members", positive, "ensemble members of each method's rollout"),
    ("horizon", positive, "physical steps of each rollout"),
    ("save_every", positive, "rollout steps between stored (and evaluated) states; must divide "
                              "--horizon"),
    ("windows", positive, "evaluation time windows"),
    ("reference_spinup", positive, "solver steps of spin-up before the reference and control "
                                    "stores' first state (default: the system's)"),
    ("stability_threshold", float, "symmetric spectrum error beyond which a member counts as "
                                   "unstable"),
    ("calibration_quantile", float, "threshold=calibrated: this quantile of n̂_x on clean frames, + 1"),
    ("pilot_steps", positive, "match=...: physical steps of each pilot rollout"),
    ("seed", int, "seed of the training data (reference: seed + 1, solver control: seed + 2), "
                  "training and rollouts"))
ROLLOUT_OPTIONS = ("batch", "steps", "path", "initial", "perturb", "save_every", "seed", "threshold",
                   "threshold_heads", "renoise", "bound", "noise_limit", "thermalizer_start",
                   "thermalizer_stop", "level_floor", "level_floor_y", "every", "long", "lag",
                   "walk", "backend", "device", "graphs", "bf16", "checkpoint_every",
                   "resume", "overwrite", "quiet", "threads", "processes")
DATA_OPTIONS = ("preset", "trajectories", "snapshots", "seed", "trajectory_batch", "time_chunk",
                "overwrite", "quiet")
TRAIN_RUN_OPTIONS = ("resume", "overwrite", "device", "init_from", "quiet")


def overrides(option: str, items: list[str]) -> dict[str, object]:
    """`KEY=VALUE` settings, each value an int, a float, true/false or else a string (the API
    checks it against the parameter's type)."""
    from sns_engine.config import ConfigError

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=VALUE, got {item!r}")
        for cast in (int, float):
            try:
                out[key] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


def cmd_data(args: argparse.Namespace) -> None:
    import sns_engine

    store = sns_engine.generate_data(args.system, args.out, overrides=overrides("--set", args.set),
                                     **{name: getattr(args, name) for name in DATA_OPTIONS})
    if not args.quiet:
        print(f"wrote {store.path}: {store.fields.shape} float32")


def _check_finished(path: str, partial: bool, verb: str) -> None:
    """Refuse an unfinished ensemble store (a rollout killed or running) unless `partial`."""
    from sns_engine.data.store import StoreError, TrajectoryStore

    store = TrajectoryStore(path)
    missing = store.incomplete() if store.is_ensemble else None
    if missing and not partial:
        raise StoreError(f"{missing}, or pass partial=True to {verb} what it has written")


def cmd_plot(args: argparse.Namespace) -> None:
    from sns_engine import plots
    from sns_engine.config import check_path

    for name in ("store", "output", "reference"):
        check_path(name, getattr(args, name))
    _check_finished(args.store, args.partial, "plot")  # before any figure is made
    out = plots.plot_command(args.kind, Path(args.store), Path(args.output),
                             reference=args.reference and Path(args.reference), partial=args.partial)
    if not args.quiet:
        print("wrote", ", ".join(str(p) for p in out))


def cmd_train(args: argparse.Namespace) -> None:
    import sns_engine
    from sns_engine.config import TrainConfig

    names = (*(name for name in TrainConfig.__dataclass_fields__ if name != "model"), *TRAIN_RUN_OPTIONS)
    sns_engine.train(args.model, args.data, args.out, **{name: getattr(args, name) for name in names})
    if not args.quiet:
        print(f"trained {args.model} into {args.out}")


def cmd_rollout(args: argparse.Namespace) -> None:
    import sns_engine

    result = sns_engine.rollout(args.bundle, out=args.out,
                                **{name: getattr(args, name) for name in ROLLOUT_OPTIONS})
    if not args.quiet:
        flagged = int(result.diverged.sum())
        print(f"wrote {result.store}: {args.batch} members × {args.steps} steps, {flagged} flagged")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    import sns_engine
    from sns_engine.config import check_path

    check_path("output", args.output)
    report = sns_engine.evaluate(args.ensemble, args.reference, windows=args.windows,
                                 threshold=args.threshold, partial=args.partial)
    text = json.dumps(report, indent=1)
    if args.output:
        Path(args.output).write_text(text + "\n")
    if not args.quiet:
        for w in report["windows"]:
            print(f"t={w['time'][0]:8.3g}..{w['time'][1]:<8.3g} spectrum error "
                  + " ".join(f"{k}={v:.3g}" for k, v in w["spectrum_error"].items())
                  + "  W1=" + " ".join(f"{v:.3g}" for v in w["w1"]) + f"  flagged={w['flagged']:.2f}")
        if args.output:
            print("wrote", args.output)


def cmd_calibrate(args: argparse.Namespace) -> None:
    import sns_engine
    from sns_engine import plots, walk_bias
    from sns_engine.calibration import table

    result = sns_engine.calibrate(args.bundle, args.data, samples=args.samples, seed=args.seed,
                                  free_steps=tuple(args.free_steps), save=args.save, out=args.out,
                                  walk_bias=args.walk_bias, walk_bias_frames=args.walk_bias_frames,
                                  climatology=args.climatology, quiet=args.quiet)
    print(table(result))
    if "walk_bias" in result:
        print(walk_bias.table(result["walk_bias"]))
    if args.output:  # the heads' figure, and the walk bias's beside it (NAME-walk-bias.png)
        written = [plots.calibration(result, Path(args.output))]
        if "walk_bias" in result:
            png = Path(args.output)
            written.append(walk_bias.plot(result["walk_bias"], png.with_name(f"{png.stem}-walk-bias.png")))
        if not args.quiet:
            print("wrote", ", ".join(str(p) for p in written))
    if args.save and not args.quiet:
        print("recorded in", Path(args.out or args.bundle) / "config.json")


def cmd_compare(args: argparse.Namespace) -> None:
    from sns_engine.api import DEFAULT_BUNDLE
    from sns_engine.calibration import climate_of
    from sns_engine.config import check_path
    from sns_engine.plots.compare import compare

    check_path("output", args.output)
    check_path("reference", args.reference)
    for path in args.stores:
        check_path("store", path)
        _check_finished(path, args.partial, "compare")
    out = compare(args.stores, args.output, climate_of(args.reference or DEFAULT_BUNDLE))
    if not args.quiet:
        print("wrote", out)


def cmd_import_authors(args: argparse.Namespace) -> None:
    from sns_engine.authors import import_authors

    import_authors(args.refiner, system=args.system, out=args.out, emulator=args.emulator,
                   thermalizer=args.thermalizer, normalisation=args.normalisation,
                   preset=args.preset, system_params=overrides("--set", args.set) or None,
                   quiet=args.quiet)


def cmd_study(args: argparse.Namespace) -> None:
    from sns_engine.config import check_types
    from sns_engine.study import StudyConfig, StudyError, load_recipe, run_study
    from sns_engine.systems import get_system

    settings = load_recipe(args.recipe) if args.recipe else {}
    if args.system:
        settings["system"] = args.system
    if "system" not in settings:
        raise StudyError("name the system (kolmogorov or qg) or pass --recipe")
    for name in ("preset", "methods", "bundle", "calibration_data", *(name for name, _, _ in STUDY_SIZES)):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    for option, key in (("set", "overrides"), ("train_set", "train"), ("rollout_set", "rollout")):
        settings[key] = {**settings.get(key, {}),
                         **overrides("--" + option.replace("_", "-"), getattr(args, option))}
    system = get_system(settings["system"], settings.get("preset", StudyConfig.preset))
    check_types(type(system.params), settings["overrides"])  # before any stage runs
    report = run_study(out=args.out, quiet=args.quiet, device=args.device, only=args.only,
                       **settings)
    if not args.quiet:
        print(f"wrote {report}")
