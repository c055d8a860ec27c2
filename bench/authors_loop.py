"""The authors' SNS loop, transcribed: the benchmark baseline and the conformance oracle.

QiLiu6/SNS as published (docs/method.md): `SNS_NS_refinement` / `SNS_QG_refinement` — the
emulator's proposal; `ratio_class_both` on (initial condition, previous state, proposal), one
encoder pass per head; every member refined, or those with a class above the QG threshold —
then re-noising to the estimates (`forward_diff=True`) and the masked loops of `SNS_NS.py`: a
descending level index i, a boolean mask of the members still active (a host sync), a gather,
one full network call, their update formula, a scatter. Also the Thermalizer's `therm_algo` /
`denoise_heterogen`. Their classes are our levels − 1; the transcription converts at the estimate.

`published_start=True` runs their loops as published, `range(max − 1, …)`, so the member at the
batch maximum skips its first step (how a user of their code runs it: bench/test_engine.py);
False starts every member at its own level, as their QG code and our engine do (the conformance
test, tests/engine/test_authors_loop.py). A clean estimate (our level 0, which their labels lack)
is neither re-noised nor walked. `noise(member, step, level, stream, shape)` draws the random
numbers: our counter-based source in the conformance test, `torch.randn` in the benchmark.
"""

from __future__ import annotations

import math

import torch

from sns_engine.ops import rng

PATHS = ("fix_short", "left_down", "down_left", "diagonal")   # their denoise_mode values, ours


def authors_tables(timesteps: int, epsilon: float = 0.008) -> dict[str, torch.Tensor]:
    """Their cosine schedule: betas clipped at 0.999, 0-based tables (class k = ᾱ[k])."""
    steps = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / timesteps + epsilon) / (1.0 + epsilon)) * math.pi * 0.5) ** 2
    betas = torch.clip(1.0 - f[1:] / f[:timesteps], 0.0, 0.999)
    alphas = 1.0 - betas
    return {"betas": betas, "alphas": alphas, "alphas_cumprod": torch.cumprod(alphas, 0)}


class AuthorsLoop:
    """Their rollout drivers over N = `num_levels` levels with the random numbers of `noise`."""

    def __init__(self, num_levels: int, noise, published_start: bool = False):
        self.tables = authors_tables(num_levels)
        self.noise = noise
        self.published_start = published_start

    def forward_diffusion(self, x0, classes, z):
        """Their `_forward_diffusion`: x0 noised to class k (ᾱ[k])."""
        ab = self.tables["alphas_cumprod"].to(x0.device)[classes].float().reshape(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * z

    def reverse(self, frame, eps, i, z):
        """Their reverse step at index i (`_reverse_diffusion_fix_*_lag`, `_reverse_diffusion`)."""
        a, ab, b = (float(self.tables[k][i]) for k in ("alphas", "alphas_cumprod", "betas"))
        mean = (1.0 / math.sqrt(a)) * (frame - ((1.0 - a) / math.sqrt(1.0 - ab)) * eps)
        if i == 0:
            return mean
        return mean + math.sqrt(b * (1.0 - float(self.tables["alphas_cumprod"][i - 1])) / (1.0 - ab)) * z

    def top(self, classes) -> int:
        """The loop's first index: max − 1 as published, max with each member at its own level."""
        return int(classes.max()) - self.published_start

    def masked_loop(self, frames, classes, step, members, update, low=-1):
        """for i in range(top, low, −1): active = classes ≥ i; gather; update; scatter."""
        for i in range(self.top(classes), low, -1):
            active = classes >= i
            if active.any():
                frames[active] = update(frames[active], i, members[active], step)

    def move(self, denoiser, which: str):
        """The update of one masked step: one full forward, then x, y or both reverse-stepped."""
        def update(batch, i, ids, step):
            out = denoiser(batch[:, 0], batch[:, 1], batch[:, 2])
            batch = batch.clone()
            level = torch.full_like(ids, i + 1)
            shape = tuple(batch.shape[2:])
            if which in ("x", "both"):
                batch[:, 2] = self.reverse(batch[:, 2], out.eps_x, i,
                                           self.noise(ids, step, level, rng.STREAM_X, shape))
            if which in ("y", "both"):
                batch[:, 1] = self.reverse(batch[:, 1], out.eps_y, i,
                                           self.noise(ids, step, level, rng.STREAM_Y, shape))
            return batch
        return update

    def refine(self, path, denoiser, long, prev, proposal, classes, members, step):
        """One refinement of `SNS_NS.py` (path = their denoise_mode) of the selected members."""
        p_y, p_x = classes[:, 0], classes[:, 1]
        y, x = prev.clone(), proposal.clone()
        for frame, p, stream in ((x, p_x, rng.STREAM_RENOISE_X), (y, p_y, rng.STREAM_RENOISE_Y)):
            keep = p >= 0                                   # our clean class: nothing to re-noise
            z = self.noise(members[keep], step, p[keep] + 1, stream, tuple(frame.shape[1:]))
            frame[keep] = self.forward_diffusion(frame[keep], p[keep], z)
        cond = torch.stack([long, y, x], dim=1)             # x_in = cat((long, short, t))
        if path == "fix_short":                              # denoising_with_fixed_short
            self.masked_loop(cond, p_x, step, members, self.move(denoiser, "x"))
        elif path == "left_down":                            # denoising_left_down
            self.masked_loop(cond, p_y, step, members, self.move(denoiser, "y"))
            self.masked_loop(cond, p_x, step, members, self.move(denoiser, "x"))
        elif path == "down_left":                            # denoising_down_left
            self.masked_loop(cond, p_x, step, members, self.move(denoiser, "x"))
            self.masked_loop(cond, p_y, step, members, self.move(denoiser, "y"))
        elif path == "diagonal":                             # denoising_SNS
            hi, lo = torch.maximum(p_x, p_y), torch.minimum(p_x, p_y)
            for i in range(self.top(hi), -1, -1):
                active = hi >= i
                sub, sx, sy, slo = cond[active], p_x[active], p_y[active], lo[active]
                only = (i > slo) & (i <= torch.maximum(sx, sy))
                for mask, which in ((only & (sx > sy), "x"), (only & (sy > sx), "y"), (i <= slo, "both")):
                    if mask.any():
                        sub[mask] = self.move(denoiser, which)(sub[mask], i, members[active][mask], step)
                cond[active] = sub
        else:
            raise ValueError(f"the authors' loop has no path {path!r}; one of {PATHS}")
        return cond[:, 2]

    @staticmethod
    def classes(denoiser, initial, state, proposal):
        """`ratio_class_both`: one encoder pass per head, argmax, as their classes (our level − 1)."""
        n_y = denoiser.levels(initial, state, proposal).logits_y.argmax(-1)
        n_x = denoiser.levels(initial, state, proposal).logits_x.argmax(-1)
        return torch.stack([n_y, n_x], 1) - 1

    @torch.no_grad()
    def rollout(self, path, emulator, denoiser, initial, steps, threshold=None, first_step=0):
        """`SNS_NS_refinement` (every member; threshold None) or `SNS_QG_refinement` (members
        with either class > threshold); returns the states (B, steps, C, H, W)."""
        members = torch.arange(initial.shape[0], device=initial.device)
        state, saved = initial.clone(), []
        for step in range(first_step, first_step + steps):
            proposal = emulator(state)
            classes = self.classes(denoiser, initial, state, proposal)
            chosen = (torch.ones_like(members, dtype=torch.bool) if threshold is None
                      else (classes > threshold).any(dim=1))
            new = proposal.clone()
            if chosen.any():
                new[chosen] = self.refine(path, denoiser, initial[chosen], state[chosen],
                                          proposal[chosen], classes[chosen], members[chosen], step)
            state = new
            saved.append(state.clone())
        return torch.stack(saved, 1)

    @torch.no_grad()
    def thermalize(self, emulator, thermalizer, initial, steps, start, stop):
        """`therm_algo` with `denoise_heterogen(forward_diff=True)` in their classes: members whose
        class exceeds `start` are re-noised to it and walked down to `stop` (exclusive), x only."""
        members = torch.arange(initial.shape[0], device=initial.device)
        state, saved = initial.clone(), []

        def update(batch, i, ids, step):
            level = torch.full_like(ids, i + 1)
            return self.reverse(batch, thermalizer(batch)[0], i,
                                self.noise(ids, step, level, rng.STREAM_X, tuple(batch.shape[1:])))

        for step in range(steps):
            state = emulator(state)
            classes = thermalizer.levels(state).argmax(-1) - 1             # noise_class
            select = classes > start
            if select.any():
                x, p, ids = state[select], classes[select], members[select]
                x = self.forward_diffusion(x, p, self.noise(ids, step, p + 1, rng.STREAM_RENOISE_X,
                                                            tuple(x.shape[1:])))
                self.masked_loop(x, p, step, ids, update, low=stop)
                state[select] = x
            saved.append(state.clone())
        return torch.stack(saved, 1)
