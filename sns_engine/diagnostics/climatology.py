"""The solver's climatology, small enough to travel in a bundle: the mean energy spectrum over the
resolved shells and the mean kinetic energy of a solver store, per curve (Kolmogorov: "energy";
QG: "energy_upper", "energy_lower"). And how far each member of an ensemble store is from it at
every saved time (`drift`): the symmetric spectrum error and the kinetic-energy ratio the
evaluation's stability rules use, without a solver store at hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sns_engine.data.store import StoreError, TrajectoryStore
from sns_engine.diagnostics import spectra
from sns_engine.diagnostics.evaluate import all_shells, resolved_shells, subsample


def climatology(store: str | Path, sample: int = 64) -> dict[str, Any]:
    """Mean resolved energy spectrum and mean kinetic energy of the solver store at `store`, over
    every trajectory and at most `sample` snapshots of each (evenly spread); JSON-able. Its
    "spectrum_error" is the 5 / 50 / 95 % quantiles of the solver's own snapshots' symmetric
    spectrum error against that mean: the floor a single member's error (`drift`) sits on."""
    data = TrajectoryStore(store)
    if data.is_ensemble:
        raise StoreError(f"{store} is an ensemble store; a climatology is the solver's: pass a "
                         "solver store (sns-engine data)")
    data.check_complete()
    times = subsample(data.spec.snapshots, sample)
    k, curves = all_shells(data.spec, torch.from_numpy(np.asarray(data.fields[:, times])))
    keep = resolved_shells(data.spec, k)
    mean = {c: v[..., keep].mean(dim=(0, 1)) for c, v in curves.items()}
    empty = [c for c, v in mean.items() if not (torch.isfinite(v) & (v > 0)).all()]
    if empty:
        raise StoreError(f"{store} has no energy in some resolved shell of {empty}")
    own = torch.stack([spectra.log_spectrum_error(v[..., keep], mean[c]) for c, v in curves.items()])
    spread = own.amax(0).flatten().quantile(torch.tensor([0.05, 0.5, 0.95], dtype=own.dtype))
    dk = 2 * math.pi / data.spec.domain_length
    return {"source": Path(store).name, "system": data.spec.system, "grid": data.spec.grid,
            "trajectories": data.spec.trajectories, "snapshots": len(times),
            "time": [float(t) for t in np.asarray(data.root["time"][:])[times[[0, -1]]]],
            "k": k[keep].tolist(), "spectra": {c: v.tolist() for c, v in mean.items()},
            "energy": {c: float(v.sum(-1).mean() * dk) for c, v in curves.items()},
            "spectrum_error": dict(zip(("p5", "median", "p95"), spread.tolist(), strict=True))}


def drift(store: str | Path, climate: dict[str, Any], members: int | None = None) -> dict[str, Any]:
    """Per member (the first `members`, default all) and saved time of the ensemble or solver
    store: "spectrum_error", the symmetric spectrum error against the climatology's mean spectrum
    (the worst curve), and "energy_ratio", the kinetic energy over the climatology's (the curve
    furthest from 1 by ratio); "time" the store's times, from t = 0 where it holds the initial
    states. A store's unwritten snapshots are left out (a rollout still running)."""
    data = TrajectoryStore(store)
    spec = data.spec
    if (spec.system, spec.grid) != (climate["system"], climate["grid"]):
        raise StoreError(f"{store} holds {spec.system} at {spec.grid}² but the climatology is of "
                         f"{climate['system']} at {climate['grid']}²")
    n = spec.trajectories if members is None else min(members, spec.trajectories)
    end = data.t0 + data.written()  # the initial states at t = 0 too, where the store holds them
    k, curves = all_shells(spec, torch.from_numpy(np.asarray(data.fields[:n, :end])))
    keep = resolved_shells(data.spec, k)
    if not torch.allclose(k[keep].double(), torch.tensor(climate["k"], dtype=torch.float64)):
        raise StoreError(f"{store}'s resolved shells differ from the climatology's")
    dk = 2 * math.pi / spec.domain_length
    error = torch.stack([spectra.log_spectrum_error(v[..., keep], torch.tensor(climate["spectra"][c],
                                                                              dtype=v.dtype))
                         for c, v in curves.items()]).amax(0)
    ratios = torch.stack([v.sum(-1) * dk / climate["energy"][c] for c, v in curves.items()])
    worst = ratios.log().abs().nan_to_num(math.inf).argmax(0, keepdim=True)
    return {"time": np.asarray(data.root["time"][:end]).tolist(),
            "spectrum_error": error.tolist(),
            "energy_ratio": ratios.gather(0, worst)[0].tolist()}

