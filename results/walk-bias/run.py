"""The walk bias of the embedded default bundle (or of BUNDLE) on a held-out solver store
(README.md here).

    OMP_NUM_THREADS=1 .venv/bin/python results/walk-bias/run.py out/heldout-12345.zarr OUT [BUNDLE] [--short]

(OUT: results/walk-bias for the embedded bundle.)

Two calls of `sns_engine.walk_bias.walk_bias` on the same frames (same seed, so the same frames,
floor and emulator step): x and y noised separately, walked by left_down and fix_short with the
DDPM and the DDIM step; then x and y both noised, DDPM only (fix_short differs from left_down
only there). Frames per level are chosen so a 90 % interval on the KE ratio is ≤ 1e-4 wide
on each side for k ≤ 10 (from a 32-frame pilot's spread) within ≈ 20 CPU-minutes.
`--short`: levels 1–10, x and y noised separately, DDPM only (about a third of the cost).
Writes walk-bias.json, walk-bias.md and walk-bias.png into the output folder.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.walk_bias import plot, table, walk_bias

LEVELS = (1, 2, 5, 10, 20, 40)
FRAMES = (48, 48, 64, 80, 16, 12)


def main(data: str, out: str, bundle: str = DEFAULT_BUNDLE, short: bool = False) -> None:
    torch.set_num_threads(1)
    wall = time.perf_counter()
    bundle = load_bundle(bundle)
    levels, frames = (LEVELS[:4], FRAMES[:4]) if short else (LEVELS, FRAMES)
    common = {"levels": levels, "frames": frames, "trajectories": "all", "seed": 0}
    separate = walk_bias(bundle, data, cases=("x", "y"), walks=("ddpm",) if short else ("ddpm", "ddim"),
                         **common)
    both = {"rows": [], "cpu_seconds": 0.0, "wall_seconds": 0.0}
    if not short:
        both = walk_bias(bundle, data, cases=("both",), walks=("ddpm",), **common)
        for key in ("floor", "emulator_step", "frames", "levels", "bands"):
            assert separate[key] == both[key], key
    result = {**separate, "bundle": {"path": str(bundle.path), "refiner_step": bundle.config[
        "models"]["refiner"].get("step"), "refiner_sha256": bundle.config["models"]["refiner"]["sha256"]},
              "rows": separate["rows"] + both["rows"],
              "cpu_seconds": separate["cpu_seconds"] + both["cpu_seconds"],
              "wall_seconds": separate["wall_seconds"] + both["wall_seconds"]}
    if not short:
        result.update(walks=["ddpm", "ddim"], note="rows of case 'both' are DDPM only")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["process"] = {"cpu_seconds": usage.ru_utime + usage.ru_stime,
                         "wall_seconds": time.perf_counter() - wall, "torch_threads": 1}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "walk-bias.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    (folder / "walk-bias.md").write_text(table(result) + "\n")
    plot(result, folder / "walk-bias.png")
    print(table(result))
    print(f"CPU {result['process']['cpu_seconds']:.0f} s, wall {result['process']['wall_seconds']:.0f} s")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--short"]
    main(*args, short="--short" in sys.argv[1:])
