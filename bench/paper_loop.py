"""The baseline the engine has to beat: the paper code's way of refining a batch (benchmark only).

Per physical step: emulator forward; the level estimate as its own forward; then for each frame
in path order (left_down: y, then x) one level at a time from the batch's highest level down:
a boolean mask of the members at that level (a host sync), gather them, one forward, reverse
step, scatter back. Noise from torch.randn (same statistics as the engine's counter RNG).
"""

from __future__ import annotations

import torch

from sns_engine.diffusion.schedule import CosineSchedule


@torch.no_grad()
def paper_style_step(emulator, refiner, schedule: CosineSchedule, long: torch.Tensor,
                     x: torch.Tensor, threshold: int = 10) -> tuple[torch.Tensor, int]:
    """One physical step of `left_down` refinement, paper style; returns (x_next, forwards)."""
    proposal = emulator(x)
    out = refiner(long, x, proposal)
    forwards = 2
    n_x, n_y = out.logits_x.argmax(-1), out.logits_y.argmax(-1)
    refine = n_x >= threshold
    n_x, n_y = torch.where(refine, n_x, 0), torch.where(refine, n_y, 0)
    y, xs = x.clone(), proposal.clone()
    for frame in ("y", "x"):
        levels = n_y if frame == "y" else n_x
        top = int(levels.max())  # host sync
        for level in range(top, 0, -1):
            mask = levels == level
            if not bool(mask.any()):  # host sync per level
                continue
            idx = mask.nonzero().squeeze(1)
            o = refiner(long[idx], y[idx], xs[idx])
            forwards += 1
            n = torch.full((idx.numel(),), level, device=x.device)
            if frame == "y":
                y[idx] = schedule.reverse_step(y[idx], o.eps_y, n, torch.randn_like(y[idx]))
            else:
                xs[idx] = schedule.reverse_step(xs[idx], o.eps_x, n, torch.randn_like(xs[idx]))
            levels[idx] -= 1
    return xs, forwards
