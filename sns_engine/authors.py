"""Import checkpoints trained with the authors' code (QiLiu6/SNS at b247017) into a bundle.

models.authors maps their tensors onto our models (the table in docs/method.md §Checkpoints
trained with the authors' code); this module adds what a bundle needs beside the weights: the
normalisation their data used (their configs name it, else their loaders' constants), the system
their data came from, the schedule their heads' N implies, the label offset, initial states.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sns_engine.bundle import new_config, save_initial, save_model
from sns_engine.data.store import TrajectoryStore
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.generation import system_spec
from sns_engine.models.authors import (
    CLASSES,
    COMMIT,
    REPOSITORY,
    AuthorsCheckpointError,
    map_state,
    read_authors,
    read_checkpoint,
)
from sns_engine.systems import SYSTEMS, get_system

__all__ = ["AUTHORS_STD", "AuthorsCheckpointError", "import_authors", "map_state", "read_authors"]

# their data loaders divide the fields by these (CT/Data/Dataset.py, Emulator/Data/datasets.py):
# Kolmogorov `field_std` at Re = 1e4; QG jet `upper_std`, `lower_std`; no mean is removed
AUTHORS_STD = {"kolmogorov": (4.44,), "qg": (7.6382e-6, 3.0120e-7)}


def _from_configs(configs: dict[str, dict[str, Any]], keys: Sequence[str]) -> tuple[Any, str] | None:
    """The values of `keys` in their training configs (all present in one), the same in every
    file that has them, and the first such file; None if no file has them."""
    found = {kind: tuple(c[k] for k in keys) for kind, c in configs.items() if all(k in c for k in keys)}
    if not found:
        return None
    if len(set(found.values())) > 1:
        raise AuthorsCheckpointError(f"their checkpoints disagree on {list(keys)}: {found}; import "
                                     "checkpoints trained on the same data")
    kind, values = next(iter(found.items()))
    return values, kind


def _normalisation(system: str, given: Sequence[float] | None,
                   configs: dict[str, dict[str, Any]]) -> tuple[list[float], str]:
    """Per-channel std and where it came from: the argument, their configs, or their constants."""
    keys = ("field_std",) if system == "kolmogorov" else ("upper_std", "lower_std")
    found = None if given is not None else _from_configs(configs, keys)
    if given is not None:
        std, source = [float(v) for v in given], "given"
    elif found is not None:
        std, source = [float(v) for v in found[0]], f"the {found[1]} checkpoint's config {list(keys)}"
    else:
        std, source = list(AUTHORS_STD[system]), "their data loaders' constants"
    if len(std) != len(AUTHORS_STD[system]) or not all(math.isfinite(v) and v > 0 for v in std):
        raise ValueError(f"normalisation must be {len(AUTHORS_STD[system])} finite positive "
                         f"std(s) for {system}, got {std}")
    return std, source


def _system_params(system: str, given: dict[str, Any] | None,
                   configs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """Solver parameters replacing the preset's: what their Kolmogorov configs say of their data
    (their loader copies its data config: dt, Dt, reynolds, gridsize), updated by `given`."""
    for kind, c in configs.items():
        pde = {"kolmogorov": "Kolmogorov", "qg": "QG"}[system]
        if c.get("PDE", pde) != pde:
            raise AuthorsCheckpointError(f"the {kind} checkpoint was trained on {c['PDE']} data, "
                                         f"not {pde}; pass system={c['PDE'].lower()!r}")
        if system == "qg" and c.get("qg", "jet") != "jet":
            raise AuthorsCheckpointError(f"the {kind} checkpoint was trained on the QG {c['qg']} "
                                         "configuration; sns_engine's QG system is the jet")
    found = _from_configs(configs, ("dt", "Dt")) if system == "kolmogorov" else None
    if found is None:
        return dict(given or {}), "given" if given else "the preset"
    (dt, big_dt), kind = found
    steps = round(big_dt / dt)
    if not math.isclose(steps * dt, big_dt, rel_tol=1e-9):
        raise AuthorsCheckpointError(f"the {kind} checkpoint's data step Dt={big_dt} is not a "
                                     f"multiple of its solver dt={dt}; pass system_params")
    params = {"dt": float(dt), "steps_per_snapshot": steps}
    for theirs, ours, cast in (("reynolds", "reynolds", float), ("gridsize", "solver_grid", int)):
        if theirs in configs[kind]:
            params[ours] = cast(configs[kind][theirs])
    return params | dict(given or {}), f"the {kind} checkpoint's data config" + (
        f", {sorted(given)} given" if given else "")


def _initial(initial: str | Path | torch.Tensor | None, std: list[float], channels: int,
             grid: int, count: int = 16) -> torch.Tensor | None:
    """Normalised initial states (K, C, H, W): the tensor (physical units) or the last snapshots
    of up to `count` trajectories of a solver store."""
    if initial is None:
        return None
    if isinstance(initial, (str, os.PathLike)):
        store = TrajectoryStore(initial)
        store.check_complete()
        states = torch.from_numpy(np.asarray(store.fields[:count, -1]))
    elif isinstance(initial, torch.Tensor):
        states = initial.detach().cpu()
    else:
        raise TypeError(f"initial must be a store path or a tensor, got {type(initial).__name__}")
    if states.ndim != 4 or tuple(states.shape[1:]) != (channels, grid, grid) or not len(states):
        raise ValueError(f"initial states have shape {tuple(states.shape)}; this bundle needs "
                         f"(K, {channels}, {grid}, {grid})")
    states = states.float() / torch.tensor(std, dtype=torch.float32)[:, None, None]
    if not torch.isfinite(states).all():
        raise ValueError("initial states hold NaN or Inf")
    return states


def import_authors(refiner: str | Path, *, system: str, out: str | Path,
                   emulator: str | Path | None = None, thermalizer: str | Path | None = None,
                   normalisation: Sequence[float] | None = None, preset: str = "paper",
                   system_params: dict[str, Any] | None = None,
                   initial: str | Path | torch.Tensor | None = None, quiet: bool = False) -> Path:
    """Import checkpoints trained with the authors' code (QiLiu6/SNS) into a new bundle at `out`;
    returns `out`.

    Each file is read with torch.load(weights_only=True) (no pickled code runs): a checkpoint
    their trainer saved ({"state_dict", "config", …}) or a bare state dict. Every tensor is mapped
    onto our network (docs/method.md §Checkpoints trained with the authors' code); a checkpoint
    with a tensor that maps nowhere, a module of ours it leaves without weights, or a shape that
    differs is refused (AuthorsCheckpointError, a ValueError naming them). Their heads have N
    classes and no clean class (their class c = our level c + 1): the refiner's and Thermalizer's
    U-Net configs in the bundle record "label_offset": 1, and these models then return logits over
    our levels 0 … N with level 0 at −inf, so rollouts run exactly as in their code. The weights
    are stored in float32; their EMA weights are the *_ema.p files their trainers write. Prints a
    one-line summary on stderr unless `quiet`.

    refiner: their SNS checkpoint (ModernUnetDoubleRegressor_plus, inside SNS_NS / SNS_QG)
    system: "kolmogorov" or "qg" (the QG jet), the data they were trained on
    out: a new (or empty) directory for the bundle
    emulator: their emulator checkpoint (ModernUnet); a rollout needs one (default None)
    thermalizer: their Thermalizer checkpoint (ModernUnetRegressor) (default None)
    normalisation: per-channel std their data were divided by; by default the one their
        checkpoints' configs record (field_std; upper_std, lower_std), else their loaders'
        constants: Kolmogorov 4.44, QG 7.6382e-6, 3.0120e-7 (default None)
    preset: the system preset the bundle describes, "paper" or "cpu" (default 'paper')
    system_params: solver parameters replacing the preset's, e.g. {"steps_per_snapshot": 2}; they
        update those their Kolmogorov checkpoints' data config records (dt, Dt → dt,
        steps_per_snapshot; reynolds; gridsize → solver_grid) (default None)
    initial: initial states shipped with the bundle: a solver store (the last snapshots of up to
        16 trajectories) or a tensor (K, C, H, W) in physical units; None ships none, and
        rollouts then need initial= (default None)
    quiet: no summary line on stderr (default False)
    """
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    if system_params is not None and not isinstance(system_params, dict):
        raise TypeError(f"system_params must be a dict, got {type(system_params).__name__}")
    if normalisation is not None and (isinstance(normalisation, (str, bytes))
                                      or not isinstance(normalisation, Sequence)):
        raise TypeError(f"normalisation must be a sequence of stds, got {normalisation!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out={out} exists and is not an empty directory; choose a new one")
    files = {k: Path(p) for k, p in (("refiner", refiner), ("emulator", emulator),
                                     ("thermalizer", thermalizer)) if p is not None}
    for kind, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{kind} checkpoint {path} does not exist")
    loaded = {kind: read_checkpoint(path) for kind, path in files.items()}
    configs = {kind: config for kind, (_, config) in loaded.items()}
    std, std_source = _normalisation(system, normalisation, configs)
    params, params_source = _system_params(system, system_params, configs)
    spec = system_spec(get_system(system, preset, **params))
    models = {kind: map_state(state, kind, spec.grid, config, f"{kind} checkpoint {files[kind]}")
              for kind, (state, config) in loaded.items()}
    del loaded
    levels = {m.unet.head_classes for m in models.values() if m.unet.heads}
    if len(levels) != 1:
        raise AuthorsCheckpointError(f"the refiner and Thermalizer heads have {sorted(levels)} "
                                     "classes; import ones trained with the same number of levels")
    schedule = CosineSchedule(levels.pop())
    states = _initial(initial, std, spec.channels, spec.grid)
    config = new_config(spec, {"std": std}, schedule)
    config["authors"] = {"repository": REPOSITORY, "commit": COMMIT,
                         "normalisation_source": std_source, "system_params": params,
                         "system_params_source": params_source}
    tmp = out.with_name(f".{out.name}.importing.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for kind, m in models.items():
            extra = {"authors": {"class": CLASSES[kind][0], "file": str(files[kind].resolve()),
                                 "sha256": hashlib.sha256(files[kind].read_bytes()).hexdigest(),
                                 "not_copied": m.dropped}}
            save_model(tmp, config, kind, m.unet, {k: v.float() for k, v in m.model.state_dict().items()},
                       extra)
        if states is not None:
            save_initial(tmp, config, states)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(f"sns_engine: imported {', '.join(sorted(models))} from {REPOSITORY} checkpoints "
              f"into {out} (N = {schedule.num_levels}, label offset 1, std {std} from "
              f"{std_source})", file=sys.stderr)
    return out
