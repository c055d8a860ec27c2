"""Packing members into dense prefixes and sizing the batches the network runs on.

After the level estimate every member knows how many moves (forwards) its walk takes. Sorting the
members by that count, descending, makes the members still walking at tick k exactly the prefix
of length a_k = #{members with more than k moves}. Each tick runs the network on that prefix
padded up to a *bucket* size (few distinct sizes, so each can be one captured CUDA graph); the
padding rows are members that are already done, which the update leaves untouched.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch


def bucket_sizes(capacity: int, per_octave: int = 16) -> list[int]:
    """Batch sizes the network may run at: every size up to `per_octave`, then `per_octave`
    geometric steps per doubling (each rounded up), always ending at `capacity`.

    Padding a prefix to the next bucket then wastes < 1/per_octave of a batch (≤ 6.25 % at 16).
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    sizes = set(range(1, min(capacity, per_octave) + 1))
    size = per_octave
    while size < capacity:
        step = max(1, 2 ** (size.bit_length() - 1) // per_octave)
        size += step
        sizes.add(min(size, capacity))
    sizes.add(capacity)
    return sorted(sizes)


@dataclass
class TickSchedule:
    """Per physical step: the member order and, for every tick, the prefix and bucket sizes."""

    order: torch.Tensor           # (B,) permutation: sorted by moves, descending
    active: list[int]             # a_k per tick
    padded: list[int]             # bucket(a_k) per tick

    @property
    def useful(self) -> int:
        return sum(self.active)

    @property
    def total(self) -> int:
        return sum(self.padded)


def schedule_ticks(moves: torch.Tensor, buckets: list[int]) -> TickSchedule:
    """Sort members by their move count and size every tick; the one host sync of a step."""
    counts, order = torch.sort(moves, descending=True, stable=True)
    counts = counts.cpu().tolist()  # host sync: sizes every tick of this physical step
    active, padded = [], []
    a = len(counts)
    for k in range(counts[0] if counts else 0):
        while counts[a - 1] <= k:  # members with more than k moves: a prefix, shrinking
            a -= 1
        active.append(a)
        padded.append(buckets[bisect.bisect_left(buckets, a)])
    return TickSchedule(order, active, padded)
