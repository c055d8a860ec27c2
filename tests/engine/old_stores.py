"""Stores as older sns_engine versions wrote them, made from today's, for the tests that read them."""

import shutil

import numpy as np
import torch
import zarr
from safetensors.torch import save_file

from sns_engine.data import TrajectoryStore
from sns_engine.engine.writer import load_checkpoint


def as_format_1(path) -> None:
    """Rewrite the ensemble store at `path` as sns_engine 0.2 to 0.3.0 wrote it (store format 1):
    no t = 0 state, levels and moves on a `step` dimension, final flags and the steps they were
    raised at, the engine's checkpoint in engine.safetensors, no coordinates, no CF attributes."""
    store = TrajectoryStore(path)
    spec, tensors, step = store.spec, *load_checkpoint(store)
    arrays = {"fields": (store.fields[:, 1:], ("trajectory", "time", "channel", "y", "x")),
              "time": (spec.snapshot_dt * np.arange(1, spec.snapshots + 1), ("time",)),
              "seed": (np.zeros(spec.trajectories, np.uint64), ("trajectory",)),
              "progress": (store.root["progress"][:], ("block",)),
              "levels": (store.per_step("levels"), ("trajectory", "step", "pair")),
              "moves": (store.per_step("moves"), ("trajectory", "step")),
              "flags": (store.root["flags"][:, -1], ("trajectory",)),
              "flagged_at": (store.flagged_steps(), ("trajectory",))}
    attrs = {"sns_engine": {**store.root.attrs["sns_engine"], "format": 1},
             "normalisation": store.root.attrs["normalisation"],
             "rollout": store.root.attrs["rollout"], "bundle": store.root.attrs["bundle"]["files"]}
    shutil.rmtree(path)
    root = zarr.open_group(str(path), mode="w")
    for name, (values, dims) in arrays.items():
        root.create_array(name, shape=values.shape, dtype=values.dtype,
                          dimension_names=dims)[...] = values
    root.attrs.update(attrs)
    save_file({**tensors, "next_step": torch.tensor(step)}, str(path / "engine.safetensors"))
