"""Level labels of heads trained without a clean class (docs/method.md §Labels).

Our heads have N + 1 classes, level 0 = clean. Heads trained with the authors' code have N
classes and no clean one: their class c is our level c + `offset` (offset 1). A model built with
such heads keeps their N logits inside (the decoder reads their N-class softmax, as theirs) and
shows the outside world logits over our levels 0 … N, the first `offset` of them −inf, and
estimates shifted by `offset`; so argmax over what it returns is their class + 1, and the engine
needs to know nothing of it.
"""

from __future__ import annotations

import torch

LABEL_OFFSETS = (0, 1)   # 0: our heads (N + 1 classes); 1: the authors' (N classes, no clean one)


def check_offset(offset: int) -> int:
    """`offset` if it is one of LABEL_OFFSETS, else ValueError naming it."""
    if isinstance(offset, bool) or offset not in LABEL_OFFSETS:
        raise ValueError(f"label_offset must be one of {LABEL_OFFSETS}, got {offset!r}")
    return int(offset)


def to_levels(logits: torch.Tensor, offset: int) -> torch.Tensor:
    """Logits (B, classes) over the heads' classes → logits (B, classes + offset) over our levels:
    `offset` columns of −inf first (levels the heads cannot name)."""
    if not offset:
        return logits
    missing = logits.new_full((logits.shape[0], offset), float("-inf"))
    return torch.cat([missing, logits], dim=-1)


def shift(levels: torch.Tensor, offset: int) -> torch.Tensor:
    """Argmax classes of the heads → our levels."""
    return levels + offset if offset else levels
