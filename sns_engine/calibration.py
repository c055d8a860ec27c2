"""How well a bundle's level heads read noise levels: the numbers that decide what SNS does.

On held-out clean frames of a solver store (the trajectories training left out), each frame is
noised to known levels k and the refiner's levels-only pass estimates them:

    x_given_clean_y   n̂_x with x at level k, y clean
    y_given_clean_x   n̂_y with y at level k, x clean
    both_x, both_y    n̂_x and n̂_y with both frames at level k (independent noise)

and, on the emulator's own proposals, n̂_x and n̂_y after 1, 10, 100 and 1000 free emulator
steps from those frames (long frame = the start, y = the previous state, x = the proposal, as in
a rollout). Each entry keeps the median and the 10–90 % range over the frames. A head
*resolves* level k when its median is within max(2, 25 % of k) of k; the bar is every k in
3..200 for both heads (x_given_clean_y and y_given_clean_x).

Where a calibration is stored: the bundle's config.json ("calibration"), or, with `out`, a copy
of the bundle made for it (`record`). A bundle inside the installed package (the embedded
default) is never written: calibrate a copy. The data is recorded by its origin (`data_origin`:
the command and seed that make it, its spec's checksum), never by a local path.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sns_engine.bundle import CONFIG, Bundle, check_compatible, load_bundle, read_config, save_calibration
from sns_engine.data.datasets import refiner_triples
from sns_engine.data.store import TrajectoryStore
from sns_engine.engine.rollout import chunked
from sns_engine.train.loop import split_trajectories

LEVELS = (0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100, 200, 500, 1000)
FREE_STEPS = (1, 10, 100, 1000)
CHECKED = (3, 200)          # the bar: every level in this range
CHUNK = 16                  # members per network call (cache-sized on the CPU)


def held_out_triples(loaded: Bundle, data: str | Path, samples: int,
                     gen: torch.Generator) -> tuple[list[int], tuple[torch.Tensor, ...]]:
    """`samples` random clean (long-lag, y, x) frames (in the bundle's units) of the trajectories the
    refiner's training held out of the solver store `data`; returns (those trajectories, frames)."""
    store = TrajectoryStore(data)
    check_compatible(loaded.config, store.spec.system_spec, str(data))
    train = loaded.config["models"]["refiner"]["train"]
    _, held_out = split_trajectories(store.spec.trajectories, train["val_fraction"])
    triples = refiner_triples(store, train["lag"], trajectories=held_out,
                              normalise=loaded.normalisation["std"])
    picks = torch.randint(len(triples), (samples,), generator=gen)
    return held_out, torch.stack([triples[int(i)] for i in picks]).unbind(1)


def data_origin(store: TrajectoryStore) -> dict[str, Any]:
    """Where a solver store came from, relative to nothing: the `sns-engine data` command and seed
    that make it (solver parameters other than the preset's are not in the command: they are in
    the spec) and the SHA-256 of its spec (system, every parameter, sizes, seed, chunking) as
    sorted JSON; no local path."""
    spec = store.spec
    fields = {k: getattr(spec, k) for k in spec.__dataclass_fields__}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()
    return {"command": f"sns-engine data {spec.system} --preset {spec.preset} --trajectories "
                       f"{spec.trajectories} --snapshots {spec.snapshots} --seed {spec.seed} "
                       f"--trajectory-batch {spec.trajectory_batch} --time-chunk {spec.time_chunk}",
            "seed": spec.seed, "spec_sha256": digest}


PACKAGE = Path(__file__).resolve().parent   # bundles inside it are the package's own files


def check_target(bundle: str | Path, out: str | Path | None = None) -> None:
    """Refuse, before any work, a calibration that could not be stored: into a bundle inside the
    installed sns_engine package (the embedded default: its files are never changed; the error
    says how to calibrate a copy), or into an `out` that exists and is not an empty directory."""
    source = Path(bundle)
    if out is not None and Path(out).resolve() != source.resolve():
        target = Path(out)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ValueError(f"out={target} exists and is not an empty directory; choose a new "
                             "directory for the calibrated copy of the bundle")
        return
    if source.resolve().is_relative_to(PACKAGE):
        raise ValueError(f"bundle {source} is part of the installed sns_engine package (the "
                         "embedded default), whose files sns_engine never changes; pass out=DIR "
                         "to write the calibration into a copy of the bundle there, or save=False "
                         "to only print it")


def writable_bundle(bundle: str | Path, out: str | Path | None = None) -> Path:
    """The bundle directory a calibration of `bundle` is written to (`check_target` first):
    `bundle` itself, or with `out` a copy of it made there (config.json and the weight and state
    files it names)."""
    check_target(bundle, out)
    source = Path(bundle)
    if out is None or Path(out).resolve() == source.resolve():
        return source
    config = read_config(source)
    if config is None:
        raise ValueError(f"bundle {source} is not a bundle (no {CONFIG})")
    files = [entry["file"] for entry in (*config["models"].values(), config.get("initial"))
             if entry and "file" in entry]
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    for name in (*files, CONFIG):
        shutil.copyfile(source / name, target / name)
    return target


def climatology_of(bundle: str | Path, store: str | Path) -> dict[str, Any]:
    """The climatology (sns_engine.diagnostics.climatology) of the solver store `store`, after
    checking that it holds the bundle's system."""
    from sns_engine.diagnostics.climatology import climatology

    config = read_config(bundle)
    if config is None:
        raise ValueError(f"bundle {bundle} is not a bundle (no {CONFIG})")
    check_compatible(config, TrajectoryStore(store).spec.system_spec, str(store))
    return climatology(store)


def climate_of(reference: str | Path) -> dict[str, Any]:
    """The climatology recorded in a bundle directory's calibration (`climatology_of`), or
    computed from a solver store (*.zarr)."""
    from sns_engine.diagnostics.climatology import climatology

    path = Path(reference)
    if not (path / CONFIG).exists():
        return climatology(path)
    climate = (read_config(path) or {}).get("calibration", {}).get("climatology")
    if climate is None:
        raise ValueError(f"bundle {path} records no climatology; calibrate it with --climatology "
                         "STORE, or compare with a solver store")
    return climate


def record(bundle: str | Path, result: dict[str, Any], out: str | Path | None = None) -> Path:
    """Store a calibration in the bundle's config.json, or in a copy of the bundle at `out`
    (`writable_bundle`); returns the bundle directory written."""
    target = writable_bundle(bundle, out)
    save_calibration(target, result)
    return target


def estimator(refiner: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """(long, y, x) → (S, 2) estimates (n̂_y, n̂_x) of the refiner's levels-only pass, in chunks."""
    return chunked(lambda lo, y, x: torch.stack([z.argmax(-1) for z in refiner.levels(lo, y, x)]).T,
                   CHUNK)


@torch.no_grad()
def clean_threshold(bundle: Bundle, data: str | Path, quantile: float = 0.99, samples: int = 256,
                    seed: int = 0) -> dict[str, Any]:
    """An activation threshold read from clean frames before any rollout: the `quantile` of n̂_x
    on `samples` held-out clean frames of `data` (as `calibrate` picks them), + 1. A member whose
    proposal the x head reads at or above it looks noisier than all but 1 − quantile of clean
    frames."""
    gen = torch.Generator().manual_seed(seed)
    _, (long, y, x) = held_out_triples(bundle, data, samples, gen)
    n_x = estimator(bundle.model("refiner"))(long, y, x)[:, 1].double()
    value = float(torch.quantile(n_x, quantile))
    return {"quantile": quantile, "samples": samples, "data": str(data), "value": value,
            "threshold": math.ceil(value) + 1, "n_x": summary(n_x)}


def tolerance(k: int) -> float:
    """Allowed |median n̂ − k| for a head to resolve level k."""
    return max(2.0, 0.25 * k)


def summary(values: torch.Tensor) -> dict[str, float]:
    """Median and 10 / 90 % quantiles of a 1-D tensor of estimates."""
    q = torch.quantile(values.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def resolved(entry: list[dict[str, float]], levels: Sequence[int]) -> list[bool]:
    """Per level: is the median within tolerance(k) of k."""
    return [abs(s["median"] - k) <= tolerance(k) for k, s in zip(levels, entry, strict=True)]


@torch.no_grad()
def calibrate(bundle: str | Path, data: str | Path, levels: Sequence[int] | None = None,
              free_steps: Sequence[int] = FREE_STEPS, samples: int = 32, seed: int = 0,
              save: bool = True, out: str | Path | None = None,
              quiet: bool = True) -> dict[str, Any]:
    """Calibrate the refiner heads of `bundle` on held-out frames of the solver store `data`
    (see the module docstring); `levels` default to those of LEVELS within the bundle's N; with
    `save` the result goes into the bundle's config.json, or into a copy of the bundle at `out`
    (`record`; the embedded default bundle needs `out`)."""
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    if save:
        check_target(bundle, out)
    loaded = load_bundle(bundle)
    refiner, emulator = loaded.model("refiner"), loaded.model("emulator")
    n_max = loaded.schedule.num_levels
    levels = [k for k in LEVELS if k <= n_max] if levels is None else list(levels)
    bad = [k for k in levels if not 0 <= k <= n_max]
    if bad or list(free_steps) != sorted(set(free_steps)) or min(free_steps, default=1) < 1:
        raise ValueError(f"levels must lie in 0..{n_max} (got {bad}) and free_steps be increasing "
                         f"positive step counts (got {list(free_steps)})")
    gen = torch.Generator().manual_seed(seed)
    held_out, (long, y0, x0) = held_out_triples(loaded, data, samples, gen)
    estimate = estimator(refiner)
    schedule = loaded.schedule

    def noised(frame: torch.Tensor, k: int) -> torch.Tensor:
        z = torch.randn(frame.shape, generator=gen)
        return schedule.q_sample(frame, torch.full((frame.shape[0],), k, dtype=torch.long), z)

    result: dict[str, Any] = {"levels": list(levels), "samples": samples, "seed": seed,
                              "data": data_origin(TrajectoryStore(data)),
                              "held_out_trajectories": held_out}
    columns: dict[str, list[dict[str, float]]] = {name: [] for name in
                                                  ("x_given_clean_y", "y_given_clean_x", "both_x", "both_y")}
    for k in tqdm(levels, desc="calibrate: noised frames", disable=quiet):
        columns["x_given_clean_y"].append(summary(estimate(long, y0, noised(x0, k))[:, 1]))
        columns["y_given_clean_x"].append(summary(estimate(long, noised(y0, k), x0)[:, 0]))
        both = estimate(long, noised(y0, k), noised(x0, k))
        columns["both_y"].append(summary(both[:, 0]))
        columns["both_x"].append(summary(both[:, 1]))
    result.update(columns)

    emulate = chunked(emulator, CHUNK)
    free: dict[str, Any] = {"steps": list(free_steps), "n_x": [], "n_y": []}
    state = y0.clone()
    bar = tqdm(total=max(free_steps, default=0), desc="calibrate: free emulator", disable=quiet)
    for step in range(1, max(free_steps, default=0) + 1):
        proposal = emulate(state)
        if step in free_steps:
            est = estimate(y0, state, proposal)
            free["n_y"].append(summary(est[:, 0]))
            free["n_x"].append(summary(est[:, 1]))
        state = torch.where(torch.isfinite(proposal), proposal, state)
        bar.update(1)
    bar.close()
    result["emulator"] = free
    checked = [i for i, k in enumerate(levels) if CHECKED[0] <= k <= CHECKED[1]]
    ok = {name: resolved(columns[name], levels) for name in ("x_given_clean_y", "y_given_clean_x")}
    result["resolved"] = ok
    result["resolves_low_levels"] = bool(checked) and all(ok[name][i] for name in ok for i in checked)
    if save:
        record(bundle, result, out)
    return result


def table(result: dict[str, Any]) -> str:
    """The calibration as a text table: median [p10, p90] per level and column."""
    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:6.0f} [{s['p10']:4.0f},{s['p90']:5.0f}]"

    names = ("x_given_clean_y", "y_given_clean_x", "both_x", "both_y")
    lines = [f"{'k':>5}  " + "  ".join(f"{n:>19}" for n in names) + "   resolved (x, y)"]
    for i, k in enumerate(result["levels"]):
        marks = "".join("✓" if result["resolved"][n][i] else "✗"
                        for n in ("x_given_clean_y", "y_given_clean_x"))
        lines.append(f"{k:>5}  " + "  ".join(f"{cell(result[n][i]):>19}" for n in names)
                     + f"   {marks}")
    free = result["emulator"]
    for i, step in enumerate(free["steps"]):
        lines.append(f"emulator after {step:>4} steps: n̂_x {cell(free['n_x'][i])}  "
                     f"n̂_y {cell(free['n_y'][i])}")
    verdict = "resolve" if result["resolves_low_levels"] else "do NOT resolve"
    lines.append(f"the heads {verdict} every level in {CHECKED[0]}..{CHECKED[1]} within max(2, 25 %) "
                 f"of it ({result['samples']} held-out frames)")
    return "\n".join(lines)
