"""The members' initial states: one per member, a store's last snapshots or the bundle's shipped
ones, cycled, each with a small smooth perturbation keyed by (seed, member id)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sns_engine.bundle import Bundle
from sns_engine.data.store import TrajectoryStore, trajectory_seed

PERTURB = 1e-3  # default relative RMS amplitude of the perturbation of cycled initial states
SMOOTH_MODES = 8  # the perturbation holds Fourier modes 0 < |k| ≤ this (in grid wavenumbers)


def perturbation(initial: torch.Tensor | str | Path | None, perturb: float | None) -> float:
    """The relative perturbation amplitude a rollout uses: `perturb`, or by default PERTURB for
    cycled states (the bundle's or a store's) and 0 for states given one per member."""
    if perturb is None:
        given = initial is not None and not isinstance(initial, (str, os.PathLike))
        return 0.0 if given else PERTURB
    if not 0 <= perturb < float("inf"):
        raise ValueError(f"perturb must be a finite amplitude ≥ 0, got {perturb!r}")
    return float(perturb)


def smooth_noise(seed: int, members: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Random smooth fields (B, C, H, W), zero mean and unit RMS per channel: white noise from a
    generator keyed by (seed, member id) alone, low-passed to 0 < |k| ≤ SMOOTH_MODES."""
    white = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(
        trajectory_seed(seed % 2**64, int(m)))) for m in members])
    ky = torch.fft.fftfreq(shape[1], 1 / shape[1])[:, None]
    kx = torch.fft.rfftfreq(shape[2], 1 / shape[2])[None, :]
    keep = ((ky**2 + kx**2 <= SMOOTH_MODES**2) & (ky**2 + kx**2 > 0)).to(torch.complex64)
    field = torch.fft.irfft2(torch.fft.rfft2(white) * keep, s=shape[1:])
    return field / field.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()


def initial_conditions(bundle: Bundle, batch: int, initial: torch.Tensor | str | Path | None,
                       members: torch.Tensor, seed: int = 0,
                       perturb: float | None = None) -> torch.Tensor:
    """Normalised initial states (B, C, H, W) of the members with ids `members`.

    `initial` is one state per member (physical units), a solver or ensemble store path whose
    trajectories' last snapshots member i cycles through (i mod K), or None for the bundle's K
    shipped snapshots (i mod K). Every member then gets its state plus `perturbation(initial,
    perturb)` × its per-channel std × `smooth_noise` keyed by (seed, member id), so cycled members
    are distinct, and a member's start depends on neither the batch nor the sharding."""
    c, g = bundle.system.channels, bundle.system.grid
    amplitude = perturbation(initial, perturb)
    if isinstance(initial, (str, os.PathLike)):
        store = TrajectoryStore(initial)
        store.check_complete()
        last = torch.from_numpy(np.asarray(store.fields[:, -1]))
        if tuple(last.shape[1:]) != (c, g, g):
            raise ValueError(f"initial store {initial} holds {tuple(last.shape[1:])} fields; this "
                             f"bundle needs ({c}, {g}, {g})")
        x0 = last[members % last.shape[0]] / bundle.scale
    elif initial is not None:
        initial = torch.as_tensor(initial, dtype=torch.float32).cpu()
        if initial.ndim != 4 or tuple(initial.shape[1:]) != (c, g, g) or initial.shape[0] != batch:
            raise ValueError(f"initial must have shape ({batch}, {c}, {g}, {g}) for this bundle, got "
                             f"{tuple(initial.shape)}")
        x0 = initial / bundle.scale
    elif bundle.initial is None:
        raise ValueError(f"bundle {bundle.path} ships no initial conditions; pass initial=...")
    else:
        x0 = bundle.initial.cpu()[members % bundle.initial.shape[0]]
    if not torch.isfinite(x0).all():
        raise ValueError("initial holds NaN/Inf values; pass finite states")
    if amplitude == 0:
        return x0
    std = x0.std(dim=(-2, -1), keepdim=True)
    return x0 + amplitude * std * smooth_noise(seed, members, (c, g, g))
