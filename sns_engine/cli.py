"""`sns-engine` command line: data, train, rollout, evaluate, calibrate, plot, study.

Every error is one line on stderr, `sns-engine COMMAND: error: ...`, with exit status 2 (130 when
interrupted); `--debug` or SNS_ENGINE_DEBUG=1 shows the traceback instead. The commands call the
public API, whose messages name parameters as `name=VALUE`; `cli_message` rewrites them into the
command's own options (`--name VALUE`). Option help is the API's documentation of the parameter.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

# OpenMP pools (pyqg, BLAS) start with the libraries: 1 thread, far faster here for pyqg and small
# FFTs. torch's threads are set per call by the API (sns_engine.threads), as for any caller.
os.environ.setdefault("OMP_NUM_THREADS", "1")

DEBUG_ENV = "SNS_ENGINE_DEBUG"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


STUDY_SIZES = (
    ("trajectories", _positive, "trajectories of the training store"),
    ("snapshots", _positive, "snapshots per training trajectory"),
    ("reference_trajectories", _positive, "trajectories of the held-out reference store (seed + 1)"),
    ("reference_snapshots", _positive, "snapshots per reference trajectory"),
    ("trajectory_batch", _positive, "trajectories solved together (vmap / QG worker processes)"),
    ("train_steps", _positive, "optimizer steps of each model"),
    ("members", _positive, "ensemble members of each method's rollout"),
    ("horizon", _positive, "physical steps of each rollout"),
    ("save_every", _positive, "rollout steps between stored (and evaluated) states; must divide "
                              "--horizon"),
    ("windows", _positive, "evaluation time windows"),
    ("reference_spinup", _positive, "solver steps of spin-up before the reference and control "
                                    "stores' first state (default: the system's)"),
    ("stability_threshold", float, "symmetric spectrum error beyond which a member counts as "
                                   "unstable"),
    ("calibration_quantile", float, "threshold=calibrated: this quantile of n̂_x on clean frames, + 1"),
    ("pilot_steps", _positive, "match=...: physical steps of each pilot rollout"),
    ("seed", int, "seed of the training data (reference: seed + 1, solver control: seed + 2), "
                  "training and rollouts"))
ROLLOUT_OPTIONS = ("batch", "steps", "path", "initial", "perturb", "save_every", "seed", "threshold",
                   "threshold_heads", "renoise", "bound", "noise_limit", "thermalizer_start",
                   "thermalizer_stop", "level_floor", "level_floor_y", "every", "long", "lag",
                   "walk", "backend", "device", "graphs", "bf16", "checkpoint_every",
                   "resume", "overwrite", "quiet", "threads")
DATA_OPTIONS = ("preset", "trajectories", "snapshots", "seed", "trajectory_batch", "time_chunk",
                "overwrite", "quiet")
TRAIN_RUN_OPTIONS = ("resume", "overwrite", "device", "quiet")


def _overrides(option: str, items: list[str]) -> dict[str, object]:
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

    store = sns_engine.generate_data(args.system, args.out, overrides=_overrides("--set", args.set),
                                     **{name: getattr(args, name) for name in DATA_OPTIONS})
    if not args.quiet:
        print(f"wrote {store.path}: {store.fields.shape} float32")


def cmd_plot(args: argparse.Namespace) -> None:
    from sns_engine import plots
    from sns_engine.config import check_path
    from sns_engine.data.store import StoreError, TrajectoryStore

    for name in ("store", "output", "reference"):
        check_path(name, getattr(args, name))
    store = TrajectoryStore(args.store)  # an unfinished rollout's store, before any figure is made
    missing = store.incomplete() if store.is_ensemble else None
    if missing and not args.partial:
        raise StoreError(f"{missing}, or pass partial=True to plot what it has written")
    if missing and args.kind == "all":  # its evaluation reads the whole store
        raise StoreError(f"{missing}; plot all needs a finished store (plot spectrum or snapshots "
                         "take partial=True, evaluate too)")
    out = plots.plot_command(args.kind, Path(args.store), Path(args.output),
                             reference=args.reference and Path(args.reference))
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
                                  quiet=args.quiet)
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


def cmd_import_authors(args: argparse.Namespace) -> None:
    from sns_engine.authors import import_authors

    import_authors(args.refiner, system=args.system, out=args.out, emulator=args.emulator,
                   thermalizer=args.thermalizer, normalisation=args.normalisation,
                   preset=args.preset, system_params=_overrides("--set", args.set) or None,
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
                         **_overrides("--" + option.replace("_", "-"), getattr(args, option))}
    system = get_system(settings["system"], settings.get("preset", StudyConfig.preset))
    check_types(type(system.params), settings["overrides"])  # before any stage runs
    report = run_study(out=args.out, quiet=args.quiet, device=args.device, only=args.only,
                       **settings)
    if not args.quiet:
        print(f"wrote {report}")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line too (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Adds '(default: ...)' to an option's help unless it has no default (None, off, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _command(sub: Any, name: str, func: Callable[[argparse.Namespace], None], summary: str,
             on_interrupt: str | None = None, on_memory: str | None = None) -> argparse.ArgumentParser:
    """A subcommand running `func`; `on_interrupt` / `on_memory` complete the message of a Ctrl-C /
    an out-of-memory error (how to continue, what to make smaller)."""
    p = sub.add_parser(name, help=summary, description=summary, formatter_class=_Help)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    p.set_defaults(func=func, parser=p, on_interrupt=on_interrupt, on_memory=on_memory)
    return p


def _options(p: argparse.ArgumentParser, fn: Callable[..., Any], names: tuple[str, ...],
             **changes: dict[str, Any]) -> None:
    """An option `--name` per parameter of the API function `fn` in `names`: `fn`'s documentation
    of it as help, its default, the default's type (True: --name/--no-name; False: a flag);
    `changes[name]` holds further add_argument settings."""
    from sns_engine.config import param_help

    docs, params = param_help(fn), inspect.signature(fn).parameters
    for name in names:
        settings: dict[str, Any] = {"help": docs[name]}
        default = params[name].default
        if default is not inspect.Parameter.empty:
            settings["default"] = default
        if default is True:
            settings["action"] = argparse.BooleanOptionalAction
        elif default is False:
            settings["action"] = "store_true"
        elif default is not None and default is not inspect.Parameter.empty:
            settings["type"] = type(default)
        settings.update(changes.get(name, {}))
        p.add_argument("--" + name.replace("_", "-"), **settings)


def build_parser() -> argparse.ArgumentParser:
    import sns_engine
    from sns_engine.config import LONG_FRAMES, UNET_PRESETS, WALKS, TrainConfig, param_help
    from sns_engine.diffusion.paths import HEADS, PATHS
    from sns_engine.ops.dispatch import BACKENDS
    from sns_engine.study import METHODS, StudyConfig
    from sns_engine.systems import PRESETS, SYSTEMS

    parser = _Parser(prog="sns-engine", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {sns_engine.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    positive = {"type": _positive}
    quiet = {"help": "no progress bar and no summary line"}
    continue_ = "rerun the same command to continue"
    resume = "rerun with --resume to continue"

    p = _command(sub, "data", cmd_data, "generate a solver dataset into a Zarr store (resumable: "
                 "rerun a killed command as it was)", continue_, "use a smaller --trajectory-batch")
    data = sns_engine.generate_data
    p.add_argument("system", help=param_help(data)["system"])
    p.add_argument("--out", required=True, help=param_help(data)["out"])
    _options(p, data, DATA_OPTIONS, preset={"help": f"solver parameters: {', '.join(PRESETS)}"},
             trajectories={**positive, "default": 8}, snapshots={**positive, "default": 200},
             trajectory_batch=positive, time_chunk=positive, quiet=quiet)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a system parameter, e.g. --set spinup_steps=100 (repeatable)")

    p = _command(sub, "train", cmd_train, "train a model into a checkpoint bundle (resumable)",
                 resume, "use a smaller --batch-size")
    train = sns_engine.train
    p.add_argument("model", choices=["emulator", "refiner", "thermalizer"],
                   help="the model to train (several share one bundle)")
    p.add_argument("--data", required=True, help=param_help(train)["data"])
    p.add_argument("--out", required=True, help=param_help(train)["out"])
    hyper = tuple(name for name in TrainConfig.__dataclass_fields__ if name != "model")
    _options(p, train, hyper + TRAIN_RUN_OPTIONS, preset={"choices": sorted(UNET_PRESETS)}, quiet=quiet,
             **{name: positive for name in ("steps", "batch_size", "unroll", "lag", "num_levels",
                                            "val_every", "checkpoint_every", "lr_step")})

    p = _command(sub, "rollout", cmd_rollout, "roll out an ensemble into a Zarr store (resumable)",
                 resume, "use a smaller --batch")
    p.add_argument("--bundle", help="bundle directory (default: the embedded one, small Kolmogorov "
                                    "64² emulator, refiner and Thermalizer)")
    p.add_argument("--out", required=True, help="ensemble store (*.zarr) to write")
    _options(p, sns_engine.rollout, ROLLOUT_OPTIONS, quiet=quiet,
             batch={**positive, "default": 64}, steps={**positive, "default": 100},
             save_every=positive, checkpoint_every=positive, path={"choices": list(PATHS)},
             initial={"help": "solver or ensemble store (*.zarr) whose trajectories' last snapshots "
                              "the members cycle through (default: the bundle's shipped snapshots)"},
             perturb={"type": float}, threshold={"type": int},
             threshold_heads={"choices": list(HEADS)}, backend={"choices": ["auto", *BACKENDS]},
             every=positive, lag={**positive, "default": None}, long={"choices": list(LONG_FRAMES)},
             walk={"choices": list(WALKS)}, threads=positive)

    p = _command(sub, "evaluate", cmd_evaluate, "metrics of an ensemble against solver data (JSON)")
    evaluate = sns_engine.evaluate
    p.add_argument("ensemble", help=param_help(evaluate)["ensemble"])
    p.add_argument("--reference", required=True, help=param_help(evaluate)["reference"])
    p.add_argument("-o", "--output", help="JSON report file (default: print a summary only)")
    _options(p, evaluate, ("windows", "threshold", "partial"), windows=positive)
    p.add_argument("--quiet", action="store_true", help="print nothing")

    p = _command(sub, "calibrate", cmd_calibrate, "how well the refiner's level heads read known noise "
                 "levels and how biased its walks are: tables, PNGs with -o, the numbers stored in "
                 "the bundle's config.json (or in a copy of the bundle with --out)")
    calibrate = sns_engine.calibrate
    p.add_argument("bundle", nargs="?", help=param_help(calibrate)["bundle"])
    p.add_argument("--data", required=True, help=param_help(calibrate)["data"])
    p.add_argument("-o", "--output", help="PNG file for the calibration figure (the walk bias's: "
                                          "NAME-walk-bias.png beside it)")
    p.add_argument("--out", help=param_help(calibrate)["out"])
    _options(p, calibrate, ("samples", "seed", "save", "walk_bias", "walk_bias_frames", "quiet"),
             samples=positive, walk_bias_frames=positive, quiet=quiet)
    p.add_argument("--free-steps", type=_positive, nargs="+", default=[1, 10, 100, 1000],
                   help=param_help(calibrate)["free_steps"])

    from sns_engine.authors import import_authors

    p = _command(sub, "import-authors", cmd_import_authors, "a bundle from checkpoints trained with "
                 "the authors' code (QiLiu6/SNS), read without running pickled code")
    docs = param_help(import_authors)
    for name in ("refiner", "emulator", "thermalizer"):
        p.add_argument("--" + name, required=name == "refiner", help=docs[name])
    p.add_argument("--system", required=True, choices=list(SYSTEMS), help=docs["system"])
    p.add_argument("--out", required=True, help=docs["out"])
    p.add_argument("--normalisation", type=float, nargs="+", help=docs["normalisation"])
    p.add_argument("--preset", default="paper", choices=list(PRESETS), help=docs["preset"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a solver parameter replacing the preset's, e.g. --set steps_per_snapshot=2 "
                        "(repeatable)")
    p.add_argument("--quiet", action="store_true", help=docs["quiet"])

    p = _command(sub, "plot", cmd_plot, "write PNG figures of a store or an ensemble")
    p.add_argument("kind", choices=["spectrum", "snapshots", "all"],
                   help="spectrum or snapshots of STORE, or all evaluation figures of an ensemble")
    p.add_argument("store", help="solver or ensemble store (*.zarr)")
    p.add_argument("-o", "--output", required=True, help="PNG file (a folder for 'all')")
    p.add_argument("--reference", help="solver store to compare with (needed by 'all')")
    p.add_argument("--partial", action="store_true",
                   help="plot what an unfinished ensemble store (rollout killed or running) has written")
    p.add_argument("--quiet", action="store_true", help="print nothing")

    p = _command(sub, "study", cmd_study, "data → train → rollout every method → evaluate → report "
                 "(resumable: reruns skip finished stages)", continue_,
                 "use fewer --members or a smaller training batch (--train-set batch_size=N)")
    defaults = {name: f.default for name, f in StudyConfig.__dataclass_fields__.items()}
    p.add_argument("system", nargs="?", help=f"{' or '.join(SYSTEMS)} (default: the recipe's)")
    p.add_argument("--recipe", help="JSON recipe (e.g. recipes/qg-paper.json); options override it")
    p.add_argument("--preset", help=f"system preset: {', '.join(PRESETS)} (default: the recipe's, "
                                    f"else {defaults['preset']})")
    p.add_argument("--out", required=True, help="study folder")
    for name, kind, meaning in STUDY_SIZES:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                       help=f"{meaning} (default: the recipe's, else {defaults[name]})")
    p.add_argument("--bundle", help="use this bundle's models instead of training them (it must "
                                    "hold every model the methods need)")
    p.add_argument("--calibration-data", help="threshold=calibrated: the solver store whose held-out "
                                              "clean frames the x head reads (default: the study's "
                                              "training store)")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help=f"methods to compare: a path of {', '.join(PATHS)}, optionally with settings "
                        "path[key=value,...], e.g. left_down[threshold=calibrated], "
                        "thermalizer[match=left_down] (default: the recipe's, else "
                        f"{' '.join(METHODS)})")
    p.add_argument("--only", nargs="+", metavar="METHOD",
                   help="roll out only these of the study's methods (several invocations can share "
                        "the work); the report covers what is rolled out so far")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a system parameter, e.g. --set spinup_steps=300 (repeatable)")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="training hyper-parameter (see `sns-engine train --help`), e.g. "
                        "--train-set preset=paper --train-set batch_size=8 (repeatable)")
    p.add_argument("--rollout-set", action="append", default=[], metavar="KEY=VALUE",
                   help="rollout setting (see `sns-engine rollout --help`), e.g. --rollout-set "
                        "threshold=5 (repeatable)")
    p.add_argument("--device", help=param_help(train)["device"])
    p.add_argument("--quiet", action="store_true", **quiet)
    for p in sub.choices.values():
        for action in p._actions:
            action.help = action.help and cli_message(action.help, p)
    return parser


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("DefaultCPUAllocator" in text or "out of memory" in text))


def describe(err: BaseException, smaller: str | None = None, target: str | None = None) -> str:
    """One line saying what `err` means: its own message for the API's errors (ValueError), a
    plain statement for the machine's (file system, memory), the type as well for anything else.
    `smaller` says what to make smaller when memory ran out; `target` is the path the command
    writes, named when a full disk's error does not say which file it was writing."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if _out_of_memory(err):
        size = re.search(r"allocate (\d+) bytes|allocate ([\d.]+ [KMGTP]i?B)", text, re.IGNORECASE)
        amount = size and (f"{int(size[1]) / 1e9:.1f} GB" if size[1] else size[2])
        return ("out of memory" + (f" allocating {amount}" if amount else "")
                + (f"; {smaller}" if smaller else ""))
    if isinstance(err, ValueError):
        return text
    cause: BaseException | None = err
    while cause is not None and not (isinstance(cause, OSError) and cause.errno is not None):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        where = cause.filename
        if cause.errno == errno.ENOSPC:
            return f"no space left on device writing {where or target or 'the output'}"
        reason = (cause.strerror or str(cause)).lower()
        return f"{reason}: {where}" if where is not None else reason
    if isinstance(err, OSError):
        return text
    return f"unexpected {type(err).__name__}: {text} (rerun with --debug for the traceback)"


def cli_message(message: str, parser: argparse.ArgumentParser) -> str:
    """`message` (an error or a help text) with the API's parameter spellings (name=VALUE,
    name=True, "name must", `name`) in the spelling of `parser`'s options (--name VALUE, --name)."""
    for action in parser._actions:
        options = [s for s in action.option_strings if s.startswith("--")]
        if not options:
            continue
        name = re.escape(action.dest)
        if isinstance(action, argparse.BooleanOptionalAction):
            message = re.sub(rf"(?<![\w-]){name}=True\b", options[0], message)
            message = re.sub(rf"(?<![\w-]){name}=False\b", options[1], message)
        elif action.nargs == 0:
            message = re.sub(rf"(?<![\w-]){name}=True\b", options[0], message)
        else:
            message = re.sub(rf"(?<!-set )(?<![\w-]){name}=(?:'([^']*)'|([\w.+-]*))",
                             lambda m, option=options[0]: f"{option} {m[1] or m[2]}".rstrip(), message)
            message = re.sub(rf"(?<![\w-]){name}(?= must\b)", options[0], message)
        message = message.replace(f"`{action.dest}`", options[0])
    message = re.sub(r"(--[\w-]+) \(\1\)", r"\1", message)  # "overwrite=True (--overwrite)"
    return re.sub(r"\b\w+=True \((--[\w-]+)\)", r"\1", message)  # another command's option


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sns-engine` script; see the module docstring for how errors show."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = args.debug or os.environ.get(DEBUG_ENV, "0") not in ("", "0")
    try:
        from sns_engine.config import check_device

        check_device(getattr(args, "device", None))
        args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        _fail(args, "interrupted" + (f"; {args.on_interrupt}" if args.on_interrupt else ""), 130)
    except Exception as err:
        if debug:
            raise
        target = getattr(args, "out", None) or getattr(args, "output", None)
        _fail(args, cli_message(describe(err, args.on_memory, target), args.parser), 2)


def _fail(args: argparse.Namespace, message: str, status: int) -> NoReturn:
    print(f"sns-engine {args.command}: error: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
