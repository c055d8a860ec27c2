"""`sns-engine` command line: data, train, rollout, evaluate, calibrate, plot, compare, study.

Every error is one line on stderr, `sns-engine COMMAND: error: ...`, with exit status 2 (130 when
interrupted); `--debug` or SNS_ENGINE_DEBUG=1 shows the traceback instead. The commands call the
public API, whose messages name parameters as `name=VALUE`; `cli_message` rewrites them into the
command's own options (`--name VALUE`). Option help is the API's documentation of the parameter.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

# OpenMP pools (pyqg, BLAS) start with the libraries: 1 thread, far faster here for pyqg and small
# FFTs. torch's threads are set per call by the API (sns_engine.threads), as for any caller.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from sns_engine.cli import commands  # noqa: E402 (after the environment above)
from sns_engine.cli.errors import cli_message, describe  # noqa: E402
from sns_engine.cli.parser import DEBUG_ENV, build_parser  # noqa: E402

__all__ = ["DEBUG_ENV", "build_parser", "cli_message", "commands", "describe", "main"]


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
