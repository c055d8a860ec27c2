"""Solver datasets: resumable chunked Zarr stores and PyTorch datasets over them."""

from sns_engine.data.datasets import FrameWindows, pairs, refiner_triples, windows
from sns_engine.data.generate import generate, store_spec
from sns_engine.data.store import StoreError, StoreSpec, TrajectoryStore

__all__ = ["FrameWindows", "StoreError", "StoreSpec", "TrajectoryStore", "generate", "pairs",
           "refiner_triples", "store_spec", "windows"]
