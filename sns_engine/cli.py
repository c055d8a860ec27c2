"""`sns-engine` command line: data, train, rollout, evaluate, calibrate, plot, study."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # pyqg and small FFTs: 1 thread is far faster here


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


STUDY_SIZES = (("trajectories", _positive), ("snapshots", _positive),
               ("reference_trajectories", _positive), ("reference_snapshots", _positive),
               ("trajectory_batch", _positive), ("train_steps", _positive), ("members", _positive),
               ("horizon", _positive), ("save_every", _positive), ("windows", _positive),
               ("stability_threshold", float), ("seed", int))


def _overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}")
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
    from sns_engine.data import generate
    from sns_engine.systems import get_system

    system = get_system(args.system, args.preset, **_overrides(args.set))
    store = generate(system, args.out, trajectories=args.trajectories, snapshots=args.snapshots,
                     seed=args.seed, trajectory_batch=args.trajectory_batch,
                     time_chunk=args.time_chunk, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {store.path}: {store.fields.shape} float32")


def cmd_plot(args: argparse.Namespace) -> None:
    from sns_engine import plots

    out = plots.plot_command(args.kind, Path(args.store), Path(args.output),
                             reference=args.reference and Path(args.reference))
    if not args.quiet:
        print("wrote", ", ".join(str(p) for p in out))


def cmd_train(args: argparse.Namespace) -> None:
    from sns_engine.config import TrainConfig
    from sns_engine.train.loop import train

    fields = {k: v for k, v in vars(args).items()
              if k in TrainConfig.__dataclass_fields__ and v is not None}
    train(TrainConfig(**fields), args.data, args.out, resume=args.resume,
          overwrite=args.overwrite, quiet=args.quiet, device=args.device)
    if not args.quiet:
        print(f"trained {args.model} into {args.out}")


def cmd_rollout(args: argparse.Namespace) -> None:
    from sns_engine.engine.ensemble import rollout

    settings = {k: getattr(args, k) for k in ("threshold", "bound") if getattr(args, k) is not None}
    result = rollout(args.bundle, batch=args.batch, steps=args.steps, path=args.path,
                     save_every=args.save_every, out=args.out, device=args.device, seed=args.seed,
                     backend=args.backend, graphs=not args.no_graphs, bf16=args.bf16,
                     resume=args.resume, overwrite=args.overwrite, renoise=not args.no_renoise,
                     checkpoint_every=args.checkpoint_every,
                     quiet=args.quiet, **settings)
    if not args.quiet:
        flagged = int(result.diverged.sum())
        print(f"wrote {result.store}: {args.batch} members × {args.steps} steps, {flagged} flagged")


def cmd_evaluate(args: argparse.Namespace) -> None:
    import json

    from sns_engine.diagnostics.evaluate import evaluate

    report = evaluate(args.ensemble, args.reference, windows=args.windows, threshold=args.threshold)
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
    from sns_engine import plots
    from sns_engine.calibration import calibrate, table

    result = calibrate(args.bundle, args.data, samples=args.samples, free_steps=args.free_steps,
                       seed=args.seed, save=not args.no_save, quiet=args.quiet)
    print(table(result))
    if args.output:
        plots.calibration(result, Path(args.output))
        if not args.quiet:
            print("wrote", args.output)


def cmd_study(args: argparse.Namespace) -> None:
    from sns_engine.study import StudyError, load_recipe, run_study

    settings = load_recipe(args.recipe) if args.recipe else {}
    if args.system:
        settings["system"] = args.system
    if "system" not in settings:
        raise StudyError("name the system (kolmogorov or qg) or pass --recipe")
    for name in ("preset", "methods", *(name for name, _ in STUDY_SIZES)):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    for option, key in (("set", "overrides"), ("train_set", "train"), ("rollout_set", "rollout")):
        settings[key] = {**settings.get(key, {}), **_overrides(getattr(args, option))}
    report = run_study(out=args.out, quiet=args.quiet, device=args.device, **settings)
    if not args.quiet:
        print(f"wrote {report}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sns-engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="generate a solver dataset into a Zarr store (resumable)")
    p.add_argument("system", help="kolmogorov or qg")
    p.add_argument("--preset", default="cpu", help="cpu or paper (default cpu)")
    p.add_argument("--trajectories", type=_positive, default=8)
    p.add_argument("--snapshots", type=_positive, default=200)
    p.add_argument("--out", required=True, help="store path (*.zarr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trajectory-batch", type=_positive, default=8,
                   help="trajectories solved together (vmap / worker processes)")
    p.add_argument("--time-chunk", type=_positive, default=32, help="snapshots per Zarr chunk")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a system parameter, e.g. --set spinup_steps=100")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model into a checkpoint bundle (resumable)")
    p.add_argument("model", choices=["emulator", "refiner", "thermalizer"])
    p.add_argument("--data", required=True, help="solver store (*.zarr)")
    p.add_argument("--out", required=True, help="bundle directory (several models may share it)")
    p.add_argument("--preset", default="small", help="U-Net preset: small or paper")
    for name, kind in (("steps", _positive), ("batch_size", _positive), ("lr", float),
                       ("lag", _positive), ("unroll", _positive), ("level_bias", float),
                       ("val_every", _positive), ("checkpoint_every", _positive), ("seed", int),
                       ("ema_decay", float)):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="retrain a model the bundle has")
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("rollout", help="roll out an ensemble into a Zarr store")
    p.add_argument("--bundle", help="bundle directory (default: the embedded one)")
    p.add_argument("--batch", type=_positive, default=64)
    p.add_argument("--steps", type=_positive, default=100)
    p.add_argument("--path", default="left_down")
    p.add_argument("--save-every", type=_positive, default=1)
    p.add_argument("--out", required=True, help="ensemble store (*.zarr)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=int, help="activation threshold (default 10)")
    p.add_argument("--bound", type=float, help="flag members beyond this |state| (normalised)")
    p.add_argument("--no-renoise", action="store_true", help="walk without re-noising first")
    p.add_argument("--backend", default="auto", help="auto, torch, triton or cuda")
    p.add_argument("--device")
    p.add_argument("--no-graphs", action="store_true")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--checkpoint-every", type=_positive, default=None,
                   help="steps between resume checkpoints, a multiple of --save-every "
                        "(default: the first at or above 50)")
    p.add_argument("--resume", action="store_true", help="continue a killed rollout in --out")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("evaluate", help="metrics of an ensemble against solver data (JSON)")
    p.add_argument("ensemble")
    p.add_argument("--reference", required=True, help="solver store (*.zarr)")
    p.add_argument("-o", "--output", help="JSON report file")
    p.add_argument("--windows", type=_positive, default=4)
    p.add_argument("--threshold", type=float, default=1.0, help="spectrum error of instability")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("plot", help="write PNG figures of a store or an ensemble")
    p.add_argument("kind", choices=["spectrum", "snapshots", "all"])
    p.add_argument("store")
    p.add_argument("-o", "--output", required=True, help="PNG file (or folder for 'all')")
    p.add_argument("--reference", help="solver store to compare with")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("calibrate", help="how well the refiner's level heads read known noise levels "
                       "(table, PNG, stored in the bundle's config.json)")
    p.add_argument("bundle", help="bundle directory with a refiner and an emulator")
    p.add_argument("--data", required=True, help="solver store the bundle was trained on; its "
                   "held-out trajectories are used")
    p.add_argument("-o", "--output", help="PNG file for the calibration figure")
    p.add_argument("--samples", type=_positive, default=32, help="held-out frames (default 32)")
    p.add_argument("--free-steps", type=_positive, nargs="+", default=[1, 10, 100, 1000],
                   help="free emulator steps at which the heads read its proposals "
                        "(default 1 10 100 1000)")
    p.add_argument("--seed", type=int, default=0, help="frames and noise draw (default 0)")
    p.add_argument("--no-save", action="store_true", help="do not record it in config.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("study", help="data → train → rollout every method → evaluate → report "
                       "(resumable; reruns skip finished stages)")
    p.add_argument("system", nargs="?", help="kolmogorov or qg (or from --recipe)")
    p.add_argument("--recipe", help="JSON recipe (e.g. recipes/qg-paper.json); options override it")
    p.add_argument("--preset", help="system preset: cpu or paper (default cpu)")
    p.add_argument("--out", required=True, help="study folder")
    for name, kind in STUDY_SIZES:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    p.add_argument("--methods", nargs="+", help="rollout paths (default: emulator thermalizer "
                   "left_down diagonal fix_short)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a system parameter, e.g. --set spinup_steps=300")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="training setting, e.g. --train-set preset=paper --train-set batch_size=8")
    p.add_argument("--rollout-set", action="append", default=[], metavar="KEY=VALUE",
                   help="rollout setting, e.g. --rollout-set threshold=5")
    p.add_argument("--device")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sns-engine` script; errors are one line on stderr, exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, MemoryError) as err:
        print(f"sns-engine {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
