"""PyTorch datasets over a trajectory store: frames at fixed time offsets from a common anchor.

One class covers every training need:
- pairs (x_t, x_{t+1})                    offsets (0, 1)
- k-step windows for unrolled training    offsets (0, 1, …, k)
- refiner triples (long-lag, x_t, x_{t+1}) offsets (−lag, 0, 1)
Items are tensors (len(offsets), C, H, W), normalised per channel by a fixed std (the reference
code's fixed-std normalisation; the mean is kept, as the fields are ~zero-mean): the store's own, or
the bundle's when frames feed a model trained on other data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sns_engine.data.store import StoreError, TrajectoryStore


def memory_budget() -> int:
    """Bytes a dataset may hold in memory by default: half of this machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class FrameWindows(Dataset):
    """Frames x_{t+o} for o in `offsets`, for every trajectory and every valid anchor t.

    `trajectories` selects which trajectories (e.g. a train/validation split). The selected data
    is loaded into memory once (float32, normalised in place: no second copy); `max_bytes` guards
    it and defaults to half of this machine's physical memory (`memory_budget`). `normalise`:
    True divides by the store's per-channel std, a sequence by those stds (a bundle's, whose
    models expect their own scale), False keeps physical units.
    """

    def __init__(self, store: TrajectoryStore, offsets: Sequence[int],
                 trajectories: Sequence[int] | None = None,
                 normalise: bool | Sequence[float] = True, max_bytes: int | None = None):
        self.offsets = tuple(int(o) for o in offsets)
        if not self.offsets:
            raise ValueError("offsets must name at least one frame")
        spec = store.spec
        trajectories = list(range(spec.trajectories) if trajectories is None else trajectories)
        if not trajectories:
            raise ValueError("no trajectories selected")
        lo, hi = min(self.offsets), max(self.offsets)
        self.anchors = spec.snapshots - (hi - lo)
        if self.anchors <= 0:
            raise StoreError(f"{store.path} has {spec.snapshots} snapshots per trajectory, fewer "
                             f"than the {hi - lo + 1} a window of offsets {self.offsets} spans")
        shape = (len(trajectories), spec.snapshots, spec.channels, spec.grid, spec.grid)
        nbytes = math.prod(shape) * 4
        limit = memory_budget() if max_bytes is None else max_bytes
        if nbytes > limit:
            raise MemoryError(f"{nbytes / 2**30:.1f} GiB of frames exceed the {limit / 2**30:.1f} GiB "
                              "in-memory budget (max_bytes); select fewer trajectories or use a "
                              "machine with more memory")
        data = np.empty(shape, dtype=np.float32)
        std = None
        if normalise is not False:
            std = np.asarray(store.normalisation["std"] if normalise is True else normalise,
                             dtype=np.float32)
            if std.shape != (spec.channels,) or not (np.isfinite(std).all() and (std > 0).all()):
                raise ValueError(f"normalise needs {spec.channels} finite positive stds, got "
                                 f"{list(std)}")
            std = std[None, :, None, None]
        for row, i in enumerate(trajectories):  # one trajectory at a time: peak memory ≈ nbytes
            data[row] = store.fields[i]
            if not np.isfinite(data[row]).all():
                raise StoreError(f"{store.path} holds NaN/Inf (an unfinished generation?); "
                                 "rerun the same data generation to complete it")
            if std is not None:
                data[row] /= std
        self.data = torch.from_numpy(data)
        self.std = None if std is None else std.ravel().tolist()   # what the frames were divided by
        self._shift = -lo

    def __len__(self) -> int:
        return self.data.shape[0] * self.anchors

    def __getitem__(self, index: int) -> torch.Tensor:
        traj, start = divmod(int(index), self.anchors)
        t = start + self._shift
        return torch.stack([self.data[traj, t + o] for o in self.offsets])


def pairs(store: TrajectoryStore, **kw) -> FrameWindows:
    """(x_t, x_{t+1}) pairs."""
    return FrameWindows(store, (0, 1), **kw)


def windows(store: TrajectoryStore, steps: int, **kw) -> FrameWindows:
    """(x_t, …, x_{t+steps}) windows for `steps`-step unrolled training."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    return FrameWindows(store, range(steps + 1), **kw)


def refiner_triples(store: TrajectoryStore, lag: int = 100, **kw) -> FrameWindows:
    """(x_{t−lag}, x_t, x_{t+1}): long-lag clean frame, conditioning frame, target frame."""
    if lag <= 0:
        raise ValueError(f"lag must be positive, got {lag}")
    return FrameWindows(store, (-lag, 0, 1), **kw)
