"""This process's share of an ensemble: a torchrun rank's, or a local worker process's."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sns_engine.config import ConfigError


@dataclass(frozen=True)
class Shard:
    """This process's share of an ensemble: a contiguous, chunk-aligned range of members. Every
    rank writes only its own rows (and chunks) of the one ensemble store; with a single process
    the shard is everything. Under `torchrun` (`from_env`) the ranks meet at `barrier`; multi-node
    works the same way (torchrun --nnodes). The worker processes of `rollout(processes=N)`
    (`local`, engine/processes.py) share nothing but the store, which their parent creates first."""

    rank: int
    world: int
    local_rank: int
    chunk: int           # members per rank (the last one may have fewer)
    rows: slice
    distributed: bool = False  # the ranks are torch.distributed's (torchrun, world > 1)

    @classmethod
    def from_env(cls, batch: int) -> Shard:
        """The share of torchrun's rank RANK of WORLD_SIZE (everything without torchrun)."""
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        chunk = _chunk(batch, world, "rank", "ranks")
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", 0)), chunk,
                   slice(rank * chunk, min((rank + 1) * chunk, batch)), distributed=world > 1)

    @classmethod
    def local(cls, batch: int, rank: int, world: int) -> Shard:
        """The share of local worker process `rank` of `world`, without torch.distributed."""
        chunk = _chunk(batch, world, "process", "processes")
        return cls(rank, world, 0, chunk, slice(rank * chunk, min((rank + 1) * chunk, batch)))

    def barrier(self) -> None:
        """Wait for every torchrun rank; a no-op for a single process or local workers."""
        if self.distributed:
            dist.barrier()


def _chunk(batch: int, world: int, unit: str, units: str) -> int:
    """Members per `unit` (rank, process) when `world` `units` split `batch` members in contiguous
    chunks, every one non-empty; a ConfigError (a ValueError) otherwise."""
    if world > batch:
        raise ConfigError(f"{world} {units} for {batch} members: use at most one {unit} per member")
    chunk = -(-batch // world)
    if (world - 1) * chunk >= batch:
        raise ConfigError(f"{batch} members do not split over {world} {units} in chunks of {chunk}; "
                          f"use a batch that is a multiple of {world}")
    return chunk
