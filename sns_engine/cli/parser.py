"""The `sns-engine` argument parser: its subcommands and options, built from the public API's
signatures and docstrings (`_options`), errors of usage one line like the others."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable
from typing import Any, NoReturn

from sns_engine.cli import commands
from sns_engine.cli.errors import cli_message

DEBUG_ENV = "SNS_ENGINE_DEBUG"
DESCRIPTION = ("`sns-engine` command line: data, train, rollout, evaluate, calibrate, plot, compare, "
               "study.")


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
    """The `sns-engine` parser: one subcommand per command of `commands`, each option's help the
    API's documentation of the parameter, in the command's own spelling (`cli_message`)."""
    import sns_engine
    from sns_engine.config import LONG_FRAMES, UNET_PRESETS, WALKS, TrainConfig, param_help
    from sns_engine.diffusion.paths import HEADS, PATHS
    from sns_engine.ops.dispatch import BACKENDS
    from sns_engine.study import METHODS, StudyConfig
    from sns_engine.systems import PRESETS, SYSTEMS

    parser = _Parser(prog="sns-engine", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {sns_engine.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    positive = {"type": commands.positive}
    quiet = {"help": "no progress bar and no summary line"}
    continue_ = "rerun the same command to continue"
    resume = "rerun with --resume to continue"

    p = _command(sub, "data", commands.cmd_data, "generate a solver dataset into a Zarr store (resumable: "
                 "rerun a killed command as it was)", continue_, "use a smaller --trajectory-batch")
    data = sns_engine.generate_data
    p.add_argument("system", help=param_help(data)["system"])
    p.add_argument("--out", required=True, help=param_help(data)["out"])
    _options(p, data, commands.DATA_OPTIONS, preset={"help": f"solver parameters: {', '.join(PRESETS)}"},
             trajectories={**positive, "default": 8}, snapshots={**positive, "default": 200},
             trajectory_batch=positive, time_chunk=positive, quiet=quiet)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a system parameter, e.g. --set spinup_steps=100 (repeatable)")

    p = _command(sub, "train", commands.cmd_train, "train a model into a checkpoint bundle (resumable)",
                 resume, "use a smaller --batch-size")
    train = sns_engine.train
    p.add_argument("model", choices=["emulator", "refiner", "thermalizer"],
                   help="the model to train (several share one bundle)")
    p.add_argument("--data", required=True, help=param_help(train)["data"])
    p.add_argument("--out", required=True, help=param_help(train)["out"])
    hyper = tuple(name for name in TrainConfig.__dataclass_fields__ if name != "model")
    _options(p, train, hyper + commands.TRAIN_RUN_OPTIONS, preset={"choices": sorted(UNET_PRESETS)},
             quiet=quiet,
             **{name: positive for name in ("steps", "batch_size", "unroll", "lag", "num_levels",
                                            "val_every", "checkpoint_every", "lr_step")})

    p = _command(sub, "rollout", commands.cmd_rollout, "roll out an ensemble into a Zarr store (resumable)",
                 resume, "use a smaller --batch")
    p.add_argument("--bundle", help="bundle directory (default: the embedded one, small Kolmogorov "
                                    "64² emulator, refiner and Thermalizer)")
    p.add_argument("--out", required=True, help="ensemble store (*.zarr) to write")
    _options(p, sns_engine.rollout, commands.ROLLOUT_OPTIONS, quiet=quiet,
             batch={**positive, "default": 64}, steps={**positive, "default": 100},
             save_every=positive, checkpoint_every=positive, path={"choices": list(PATHS)},
             initial={"help": "solver or ensemble store (*.zarr) whose trajectories' last snapshots "
                              "the members cycle through (default: the bundle's shipped snapshots)"},
             perturb={"type": float}, threshold={"type": int},
             threshold_heads={"choices": list(HEADS)}, backend={"choices": ["auto", *BACKENDS]},
             every=positive, lag={**positive, "default": None}, long={"choices": list(LONG_FRAMES)},
             walk={"choices": list(WALKS)}, threads=positive, processes=positive)

    p = _command(sub, "evaluate", commands.cmd_evaluate, "metrics of an ensemble against solver data (JSON)")
    evaluate = sns_engine.evaluate
    p.add_argument("ensemble", help=param_help(evaluate)["ensemble"])
    p.add_argument("--reference", required=True, help=param_help(evaluate)["reference"])
    p.add_argument("-o", "--output", help="JSON report file (default: print a summary only)")
    _options(p, evaluate, ("windows", "threshold", "partial"), windows=positive)
    p.add_argument("--quiet", action="store_true", help="print nothing")

    p = _command(sub, "calibrate", commands.cmd_calibrate, "how well the refiner's level heads read "
                 "known noise levels and how biased its walks are: tables, PNGs with -o, the numbers "
                 "stored in the bundle's config.json (or in a copy of the bundle with --out)")
    calibrate = sns_engine.calibrate
    p.add_argument("bundle", nargs="?", help=param_help(calibrate)["bundle"])
    p.add_argument("--data", required=True, help=param_help(calibrate)["data"])
    p.add_argument("-o", "--output", help="PNG file for the calibration figure (the walk bias's: "
                                          "NAME-walk-bias.png beside it)")
    p.add_argument("--out", help=param_help(calibrate)["out"])
    p.add_argument("--climatology", help=param_help(calibrate)["climatology"])
    _options(p, calibrate, ("samples", "seed", "save", "walk_bias", "walk_bias_frames", "quiet"),
             samples=positive, walk_bias_frames=positive, quiet=quiet)
    p.add_argument("--free-steps", type=commands.positive, nargs="+", default=[1, 10, 100, 1000],
                   help=param_help(calibrate)["free_steps"])

    from sns_engine.authors import import_authors

    p = _command(sub, "import-authors", commands.cmd_import_authors, "a bundle from checkpoints trained with "
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

    p = _command(sub, "plot", commands.cmd_plot, "write PNG figures of a store or an ensemble")
    p.add_argument("kind", choices=["spectrum", "snapshots", "all"],
                   help="spectrum or snapshots of STORE, or all evaluation figures of an ensemble")
    p.add_argument("store", help="solver or ensemble store (*.zarr)")
    p.add_argument("-o", "--output", required=True, help="PNG file (a folder for 'all')")
    p.add_argument("--reference", help="solver store to compare with (needed by 'all')")
    p.add_argument("--partial", action="store_true",
                   help="plot what an unfinished ensemble store (rollout killed or running) has written")
    p.add_argument("--quiet", action="store_true", help="print nothing")

    p = _command(sub, "compare", commands.cmd_compare, "ensembles side by side against the solver's "
                 "climatology: member 0 of each at a few times, every member's spectrum error and "
                 "kinetic energy over time (one PNG)")
    p.add_argument("stores", nargs="+", metavar="STORE", help="ensemble or solver stores (*.zarr)")
    p.add_argument("-o", "--output", required=True, help="PNG file to write the figure to")
    p.add_argument("--reference", help="a solver store of the system, or a bundle calibrated with "
                                       "--climatology (default: the embedded bundle's climatology)")
    p.add_argument("--partial", action="store_true",
                   help="compare what unfinished ensemble stores (rollouts killed or running) have "
                        "written")
    p.add_argument("--quiet", action="store_true", help="print nothing")

    p = _command(sub, "study", commands.cmd_study, "data → train → rollout every method → evaluate → report "
                 "(resumable: reruns skip finished stages)", continue_,
                 "use fewer --members or a smaller training batch (--train-set batch_size=N)")
    defaults = {name: f.default for name, f in StudyConfig.__dataclass_fields__.items()}
    p.add_argument("system", nargs="?", help=f"{' or '.join(SYSTEMS)} (default: the recipe's)")
    p.add_argument("--recipe", help="JSON recipe (e.g. recipes/qg-paper.json); options override it")
    p.add_argument("--preset", help=f"system preset: {', '.join(PRESETS)} (default: the recipe's, "
                                    f"else {defaults['preset']})")
    p.add_argument("--out", required=True, help="study folder")
    for name, kind, meaning in commands.STUDY_SIZES:
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
