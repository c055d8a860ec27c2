"""This process's share of an ensemble under torchrun."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's share of an ensemble under `torchrun`: a contiguous, chunk-aligned range of
    members. Every rank writes only its own rows (and chunks) of the one ensemble store; with a
    single process the shard is everything. Multi-node works the same way (torchrun --nnodes)."""

    rank: int
    world: int
    local_rank: int
    chunk: int           # members per rank (the last one may have fewer)
    rows: slice

    @classmethod
    def from_env(cls, batch: int) -> Shard:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if world > batch:
            raise ValueError(f"{world} ranks for {batch} members: use at most one rank per member")
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        chunk = -(-batch // world)
        if (world - 1) * chunk >= batch:
            raise ValueError(f"{batch} members do not split over {world} ranks in chunks of {chunk}; "
                             f"use a batch that is a multiple of {world}")
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", 0)), chunk,
                   slice(rank * chunk, min((rank + 1) * chunk, batch)))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
