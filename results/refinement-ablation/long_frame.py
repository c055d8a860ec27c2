"""Post-hoc diagnostic (not pre-registered): does the long-lag frame decide how biased a walk is?

    OMP_NUM_THREADS=1 .venv/bin/python results/refinement-ablation/long_frame.py \
        out/heldout-12345.zarr results/refinement-ablation/long_frame.json

The pilot found `long="lagged"` far better than the authors' initial-state long frame. Rollouts
with the initial state hand the refiner (long, y, x) triples whose long frame is many decorrelation
times older than the 100 steps it was trained on. Here the same held-out clean frames (y, x) are
paired with three long frames: the training lag (x_{t−100}), x_{t−250} (1.25 time units,
≈ 1.5 decorrelation times) and a frame of another trajectory (unrelated, as the
initial state is after many time units). For each: the heads' estimates on the clean triple, and
the KE ratio of x walked back from level k by left_down (DDPM, antithetic noise).
"""

from __future__ import annotations

import json
import sys
import time

import torch

from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.data.datasets import refiner_triples
from sns_engine.data.store import TrajectoryStore
from sns_engine.diagnostics.evaluate import subsample
from sns_engine.engine.denoiser import Denoiser, refiner_denoiser
from sns_engine.engine.rollout import chunked
from sns_engine.walk_bias import CHUNK, Antithetic, Measure, summarise, walk_frames

LEVELS, FRAMES, OLDEST = (2, 10), 48, 250


def triples_at(store: TrajectoryStore, lag: int, rows, times) -> tuple[torch.Tensor, ...]:
    """(long, y, x) with y at `times` of trajectory `rows`, long `lag` snapshots before y."""
    windows = refiner_triples(store, lag, trajectories=list(range(store.spec.trajectories)))
    return torch.stack([windows[int(j) * windows.anchors + int(t) - lag]
                        for j, t in zip(rows, times, strict=True)]).unbind(1)


def main(data: str, out: str) -> None:
    torch.set_num_threads(1)
    cpu = time.process_time()
    bundle = load_bundle(DEFAULT_BUNDLE)
    store = TrajectoryStore(data)
    refiner = bundle.model("refiner")
    denoiser = Denoiser.from_forward(chunked(refiner_denoiser(refiner).forward, CHUNK))
    measure = Measure(store.spec)
    anchors = store.spec.snapshots - OLDEST - 1
    pick = subsample(store.spec.trajectories * anchors, FRAMES)
    rows, times = pick // anchors, pick % anchors + OLDEST
    recent, y, x = triples_at(store, 100, rows, times)
    oldest, y_old, x_old = triples_at(store, OLDEST, rows, times)
    assert torch.equal(y_old, y) and torch.equal(x_old, x)             # the same (y, x) pairs
    other = oldest.roll(FRAMES // store.spec.trajectories, dims=0)     # another trajectory's frame
    longs = {"lag 100 (training)": recent, f"lag {OLDEST}": oldest, "other trajectory": other}
    result = {"frames": FRAMES, "levels": list(LEVELS), "rows": []}
    floor = {b: 1.0 for b in measure.bands}
    for name, long in longs.items():
        n_y, n_x = (t.float() for t in chunked(lambda lo, a, b: torch.stack(refiner.estimate(lo, a, b)).T,
                                               CHUNK)(long, y, x).T)
        row = {"long": name, "n_x_median": float(n_x.median()), "n_x_mean": float(n_x.mean()),
               "n_y_median": float(n_y.median()), "n_y_mean": float(n_y.mean()), "per_level": []}
        for k in LEVELS:
            gen = torch.Generator().manual_seed(k)
            twice = tuple(torch.cat([t, t]) for t in (long, y, x))
            walked = walk_frames(denoiser, bundle.schedule, twice, "x", "left_down", k, Antithetic(gen))
            s = summarise(measure, twice[2] * bundle.scale, walked * bundle.scale, True, floor, 1000, 0)
            row["per_level"].append({"k": k, "ke_ratio_minus_1": s["ke_ratio_minus_1"],
                                     "interval": s["interval"], "band_log_ratio": s["band_log_ratio"]})
        result["rows"].append(row)
        print(json.dumps(row))
    result["cpu_seconds"] = time.process_time() - cpu
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
