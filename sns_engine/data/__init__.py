"""Solver datasets: resumable chunked Zarr stores and PyTorch datasets over them (filled by
`sns_engine.generation`, which drives a solver of sns_engine.systems into a store)."""

from sns_engine.data.datasets import FrameWindows, pairs, refiner_triples, windows
from sns_engine.data.store import StoreError, StoreSpec, SystemSpec, TrajectoryStore

__all__ = ["FrameWindows", "StoreError", "StoreSpec", "SystemSpec", "TrajectoryStore", "pairs",
           "refiner_triples", "windows"]
