"""CPU bf16 against fp32 on the default bundle: do the level heads read the same levels, and how far
does a refined step's output move? (issue 22 item 3, its accuracy half; the speed is for an idle
machine: bench/test_unet_efficiency.py's `bf16` cases.)

States: the bundle's shipped initial states as a rollout's members 0..B−1 (perturbed as a rollout
perturbs them) and the states 2 and 4 emulator steps on: the states a rollout refines. For each
set, fp32 against the same code under `torch.autocast("cpu", dtype=torch.bfloat16)`:

- emulator: relative L2 error of its proposal;
- heads: agreement of the levels-only estimate (n̂_x, n̂_y) on (long = initial, y = state,
  x = proposal), and of n̂_x on the proposal noised to known levels (LEVELS), with each precision's
  mean |n̂_x − level|;
- walk: one engine step as the authors run Kolmogorov flow (left_down, every member, re-noised;
  same counter-based noise in both): agreement of levels and moves, and the relative L2 error of
  the new states over all members and over those whose levels and moves agree, set against the
  refinement's own size ‖new − proposal‖ / ‖proposal‖ (and their ratio, member by member).

Under autocast the U-Nets leave their CPU fast path (models/unet_cpu.takes_fast_path): the bf16
arithmetic is the eager path's. Writes bench/results/cpu-bf16-accuracy.json:

    .venv/bin/python -m bench.bf16_accuracy [--members 16] [--emulator-steps 0 2 4] [--levels 1 2 5 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from sns_engine.api import DEFAULT_BUNDLE
from sns_engine.bundle import load_bundle
from sns_engine.config import RolloutConfig
from sns_engine.engine.denoiser import refiner_denoiser
from sns_engine.engine.initial import initial_conditions
from sns_engine.engine.rollout import Engine

OUT = Path(__file__).parent / "results" / "cpu-bf16-accuracy.json"
EMULATOR_STEPS = (0, 2, 4)
LEVELS = (1, 2, 5, 10, 20, 50)
VERDICT = ("accuracy only, measured on a loaded machine; the speed of bf16 on this CPU (and so "
           "whether bf16=True ships on the CPU) is left to the lead's run on an idle core: "
           "pytest bench/test_unet_efficiency.py --benchmark-only -k bf16")


def precision(bf16: bool):
    """bf16 autocast on the CPU, or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def _relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) ‖a − b‖ / ‖b‖ per member, in float64."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1)


def _spread(values: torch.Tensor) -> dict:
    values = values.double()
    if values.numel() == 0:
        return {"members": 0}
    return {"members": values.numel(), "median": float(values.median()), "mean": float(values.mean()),
            "max": float(values.max())}


def _step(bundle, state: torch.Tensor, long: torch.Tensor, bf16: bool):
    """One Kolmogorov engine step from `state` (long-lag frame `long`): (new states, levels, moves)."""
    cfg = RolloutConfig(path="left_down", steps=1, threshold=0)
    engine = Engine(bundle.model("emulator"), refiner_denoiser(bundle.model("refiner")),
                    bundle.schedule, state, cfg, long=long, graphs=False)
    with precision(bf16):
        levels, moves = engine.step()
    return engine.x.clone(), levels, moves


def _both(fn) -> dict[bool, object]:
    """{False: fn() in fp32, True: fn() under bf16 autocast}."""
    out = {}
    for bf16 in (False, True):
        with precision(bf16):
            out[bf16] = fn()
    return out


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).double().mean())


def _set(bundle, x0: torch.Tensor, state: torch.Tensor, levels: tuple[int, ...],
         gen: torch.Generator) -> dict:
    """The figures of one set of states (module docstring)."""
    emulator, refiner = bundle.model("emulator"), bundle.model("refiner")
    proposal = _both(lambda: emulator(state).float())
    x = proposal[False]
    est = _both(lambda: refiner.estimate(x0, state, x))
    known = {}
    for level in levels:
        n = torch.full((x.shape[0],), level)
        noised = bundle.schedule.q_sample(x, n, torch.randn(x.shape, generator=gen))
        read = _both(lambda noised=noised: refiner.estimate(x0, state, noised)[1])
        known[str(level)] = {"n_x_agreement": _agreement(read[True], read[False]),
                             **{f"mean_abs_error_{'bf16' if bf16 else 'fp32'}":
                                float((read[bf16] - level).abs().double().mean()) for bf16 in read}}
    new = {bf16: _step(bundle, state, x0, bf16) for bf16 in (False, True)}
    agree = (new[True][1] == new[False][1]).all(1) & (new[True][2] == new[False][2])
    error, refinement = _relative(new[True][0], new[False][0]), _relative(new[False][0], x)
    return {"emulator_relative_error": _spread(_relative(proposal[True], x)),
            "heads": {"n_y_agreement": _agreement(est[True][0], est[False][0]),
                      "n_x_agreement": _agreement(est[True][1], est[False][1]),
                      **{f"{head}_{'bf16' if bf16 else 'fp32'}": est[bf16][i].tolist()
                         for bf16 in est for i, head in enumerate(("n_y", "n_x"))},
                      "noised_to_known_levels": known},
            "walk": {"levels_and_moves_agreement": float(agree.double().mean()),
                     "moves_fp32": new[False][2].tolist(), "moves_bf16": new[True][2].tolist(),
                     "relative_error_all": _spread(error),
                     "relative_error_agreeing": _spread(error[agree]),
                     "refinement_size_fp32": _spread(refinement),
                     "error_over_refinement_agreeing": _spread((error / refinement)[agree])}}


@torch.no_grad()
def measure(members: int = 16, emulator_steps: tuple[int, ...] = EMULATOR_STEPS,
            levels: tuple[int, ...] = LEVELS) -> dict:
    """The figures of the module docstring, per set of states (keyed by emulator steps)."""
    bundle = load_bundle(DEFAULT_BUNDLE)
    x0 = initial_conditions(bundle, members, None, torch.arange(members))
    gen = torch.Generator().manual_seed(0)
    sets, state = {}, x0
    for k in range(max(emulator_steps) + 1):
        if k in emulator_steps:
            sets[str(k)] = _set(bundle, x0, state, levels, gen)
        state = bundle.model("emulator")(state)
    return {"what": "CPU bf16 autocast vs fp32, embedded default bundle (issue 22 item 3)",
            "verdict": VERDICT, "members": members, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "states_after_emulator_steps": sets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--emulator-steps", type=int, nargs="+", default=list(EMULATOR_STEPS))
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = measure(args.members, tuple(args.emulator_steps), tuple(args.levels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"{args.out}")


if __name__ == "__main__":
    main()
