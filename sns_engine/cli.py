"""`sns-engine` command line: data, train, rollout, evaluate, plot."""

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

    p = sub.add_parser("plot", help="write PNG figures of a store or an ensemble")
    p.add_argument("kind", choices=["spectrum", "snapshots", "all"])
    p.add_argument("store")
    p.add_argument("-o", "--output", required=True, help="PNG file (or folder for 'all')")
    p.add_argument("--reference", help="solver store to compare with")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sns-engine` script; errors are one line on stderr, exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, MemoryError) as err:
        print(f"sns-engine {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
