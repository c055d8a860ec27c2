"""How much one refinement walk changes a frame it should leave alone: the walk bias of a refiner.

Clean held-out solver frames (and, separately, the emulator's proposals x̂ = emulator(y) from
clean y) are noised to a known level k and walked back to 0 by a path, exactly as a rollout walks
(`engine.reference.walk`, `diffusion.paths`), with no level estimate in between:

    case "x"     x noised to k, y clean: the start (n_x, n_y) = (k, 0); the walked x is compared
    case "y"     y noised to k, x clean: (0, k); the walked y is compared
    case "both"  both noised to k (independent noise): (k, k); the walked x is compared

Per (input, case, walk, path, k): the kinetic-energy ratio walked / input per frame (mean − 1,
90 % bootstrap interval over frames, `diagnostics.intervals`); the symmetric log-spectrum error
(`diagnostics.spectra`, solver-resolved shells, per band) of the walked frames' mean spectrum
against the inputs'; the same error between two independent halves of the clean frames (split by
trajectory: the *floor* of an ensemble this size); and (1 + b)^n for n in HORIZONS, b the mean KE
bias. A path that walks nothing from the start (fix_short with y noised: it holds y) is reported
as not walked; paths whose plans coincide (left_down and fix_short with y clean) share one walk.
Noise is antithetic (each frame walked with z and with −z, every draw negated, the pair averaged),
which cancels the odd orders of the noise in the KE ratio. Walks run in chunks of CHUNK members
per network call; `frames` may differ per level, as a walk from k costs k forwards.
"""

from __future__ import annotations

import inspect
import math
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sns_engine.bundle import Bundle, check_compatible, load_bundle
from sns_engine.calibration import data_origin, estimator, summary
from sns_engine.data.datasets import refiner_triples
from sns_engine.data.store import StoreSpec, TrajectoryStore
from sns_engine.diagnostics import intervals, spectra
from sns_engine.diagnostics.evaluate import qg_inversion, resolved_wavenumber, subsample
from sns_engine.diffusion.paths import Settings, get_path
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.engine import reference
from sns_engine.engine.denoiser import Denoiser, TorchNoise, refiner_denoiser
from sns_engine.engine.rollout import chunked
from sns_engine.files import atomic_write
from sns_engine.ops import rng
from sns_engine.train.loop import split_trajectories

LEVELS = (1, 2, 5, 10, 20, 40)
PATHS = ("left_down", "fix_short")
FROM_ESTIMATE = ("left_down", "fix_short", "down_left", "diagonal", "gencast")  # start at (n_x, n_y)
WALKS = ("ddpm", "ddim")
CASES = ("x", "y")
INPUTS = ("clean", "emulator")
HORIZONS = (700, 3000)       # physical steps a per-walk bias is compounded over
CHUNK = 16                   # members per network call on the CPU (engine.rollout.chunked)


def walk_keyword() -> str | None:
    """The keyword of `engine.reference.walk` that picks the reverse step (DDPM or DDIM), or None
    when this engine has only the DDPM step."""
    names = inspect.signature(reference.walk).parameters
    return next((n for n in ("kind", "walk", "update") if n in names), None)


class Antithetic:
    """Noise for a batch of 2m members: m fresh draws and their negatives (member i + m gets −z_i)."""

    def __init__(self, generator: torch.Generator):
        self.inner = TorchNoise(generator)

    def __call__(self, member, step, level, stream, shape):
        half = member.shape[0] // 2
        z = self.inner(member[:half], step, level, stream, shape)
        return torch.cat([z, -z])


def energy_spectra(spec: StoreSpec, fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell wavenumbers (K,) and kinetic-energy spectra (n, curves, K) over every shell of the
    grid of physical fields (n, C, H, W) (Kolmogorov: one curve from vorticity; QG: one per
    layer), as `diagnostics.evaluate` computes them."""
    fields = fields.double()
    if spec.system == "kolmogorov":
        k, e = spectra.energy_spectrum(fields[:, 0], length=spec.domain_length)
        return k, e[:, None]
    if spec.system == "qg":
        return spectra.qg_layer_energy_spectra(fields, **qg_inversion(spec.params))
    raise ValueError(f"no kinetic energy for system {spec.system!r}")


class Measure:
    """Kinetic energy (n,) and resolved-shell spectra (n, curves, K) of physical fields of one
    store's system; `bands` are thirds of the resolved shells (`spectra.spectral_bands`)."""

    def __init__(self, spec: StoreSpec):
        self.spec = spec
        probe = torch.zeros(1, spec.channels, spec.grid, spec.grid)
        k, _ = energy_spectra(spec, probe)
        self.dk = 2 * math.pi / spec.domain_length
        self.keep = (k > 0) & (k <= resolved_wavenumber(spec) + 1e-9 * self.dk)
        self.bands = {"all": slice(None), **spectra.spectral_bands(int(self.keep.sum()))}
        self.k = k[self.keep]

    def __call__(self, fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, e = energy_spectra(self.spec, fields)
        return e.sum((-2, -1)) * self.dk, e[..., self.keep]

    def band_errors(self, s: torch.Tensor, ref: torch.Tensor) -> dict[str, torch.Tensor]:
        """Symmetric log-spectrum error of mean spectra s against ref (..., curves, K), the worst
        curve, over all resolved shells and per band."""
        return {b: spectra.log_spectrum_error(s[..., sl], ref[..., sl]).amax(-1)
                for b, sl in self.bands.items()}


def pair_means(values: torch.Tensor, antithetic: bool) -> torch.Tensor:
    """Per frame: the mean of its antithetic pair (rows i and i + n/2), or the rows as they are."""
    if not antithetic:
        return values
    half = values.shape[0] // 2
    return (values[:half] + values[half:]) / 2


def summarise(measure: Measure, inputs: torch.Tensor, walked: torch.Tensor, antithetic: bool,
              floor: dict[str, float], resamples: int, seed: int) -> dict[str, Any]:
    """KE ratio and band errors of `walked` against `inputs` (physical, paired row by row)."""
    (ke_in, s_in), (ke_out, s_out) = measure(inputs), measure(walked)
    walk_ratio = ke_out / ke_in
    ratio = pair_means(walk_ratio, antithetic)
    s_in, s_out = pair_means(s_in, antithetic), pair_means(s_out, antithetic)
    draws = intervals.resample(ratio.shape[0], resamples, seed)
    b = float(ratio.mean() - 1)
    lo, hi = intervals.interval(intervals.resampled_means(ratio, draws) - 1)
    point = measure.band_errors(s_out.mean(0), s_in.mean(0))
    boot = measure.band_errors(intervals.resampled_means(s_out, draws),
                               intervals.resampled_means(s_in, draws))
    log_ratio = (s_out.mean(0).log() - s_in.mean(0).log()).mean(-2)   # mean over curves
    return {
        "frames": int(ratio.shape[0]), "walks": int(walk_ratio.shape[0]),
        "ke_ratio_minus_1": b, "interval": [lo, hi],
        "walk_sd": float(walk_ratio.std()), "frame_sd": float(ratio.std()),
        "band_error": {k: float(v) for k, v in point.items()},
        "band_error_interval": {k: intervals.interval(v) for k, v in boot.items()},
        "band_error_over_floor": {k: float(v) / floor[k] if floor[k] > 0 else None
                                  for k, v in point.items()},
        "band_log_ratio": {k: float(log_ratio[sl].mean()) for k, sl in measure.bands.items()},
        "compounded": {str(n): [_power(1 + x, n) for x in (b, lo, hi)] for n in HORIZONS},
    }


def _power(base: float, n: int) -> float | None:
    """base**n, None where it would overflow a float (JSON has no inf) or base ≤ 0."""
    return base ** n if base > 0 and n * math.log(base) < 700 else None


def walk_frames(denoiser: Denoiser, schedule: CosineSchedule, frames: tuple[torch.Tensor, ...],
                case: str, path: str, k: int, noise, kind: str = "ddpm") -> torch.Tensor:
    """Noise the case's frame(s) of (long, y, x) (B, C, H, W) to level k and walk `path` back;
    returns the walked frame of the case (x, or y for case "y")."""
    long, y, x = frames
    b = long.shape[0]
    n_x = k if case in ("x", "both") else 0
    n_y = k if case in ("y", "both") else 0
    plan = get_path(path).plan(torch.full((b,), n_x), torch.full((b,), n_y),
                               Settings(schedule.num_levels))
    member = torch.arange(b, device=long.device)
    step = torch.zeros(b, dtype=torch.long, device=long.device)

    def noised(frame: torch.Tensor, level: int, stream: int) -> torch.Tensor:
        n = torch.full((b,), level)
        z = noise(member, step, n, stream, tuple(frame.shape[1:]))
        return schedule.q_sample(frame, n, z) if level else frame

    y, x = noised(y, n_y, rng.STREAM_RENOISE_Y), noised(x, n_x, rng.STREAM_RENOISE_X)
    keyword = walk_keyword()
    y, x = reference.walk(denoiser, schedule, long, y, x, plan, noise, member, step,
                          **({keyword: kind} if keyword else {}))
    return y if case == "y" else x


def plan_key(path: str, case: str, k: int, num_levels: int) -> tuple:
    """What a walk does: start levels, then (move, count) of each phase that moves; paths with
    equal keys walk identically, a key of length 2 walks nothing."""
    n_x, n_y = (k if case in ("x", "both") else 0), (k if case in ("y", "both") else 0)
    plan = get_path(path).plan(torch.tensor([n_x]), torch.tensor([n_y]), Settings(num_levels))
    return (int(plan.start_x[0]), int(plan.start_y[0]),
            *((int(m), int(c)) for m, c in zip(plan.moves[0], plan.counts[0], strict=True) if c))


@torch.no_grad()
def walk_bias(bundle: str | Path | Bundle, data: str | Path, *, levels: Sequence[int] | None = None,
              paths: Sequence[str] = PATHS, walks: Sequence[str] | None = None,
              cases: Sequence[str] = CASES, inputs: Sequence[str] = INPUTS,
              frames: int | Sequence[int] = 32, trajectories: str = "held_out",
              antithetic: bool = True, resamples: int = 1000, seed: int = 0,
              quiet: bool = False) -> dict[str, Any]:
    """The walk bias of the bundle's refiner on frames of the solver store `data` (module
    docstring), from `levels` (default: those of LEVELS within the bundle's N). `frames` per
    level (an int, or one count per level) are spread evenly over the (long-lag, y, x) triples
    of the refiner's held-out trajectories (`trajectories="held_out"`, as `calibrate`) or of all
    of them ("all": a store the bundle never saw); each is walked twice with antithetic noise
    (`antithetic`) or once. `walks` default to WALKS, or ("ddpm",) where the engine has no DDIM
    step. Returns a JSON-able dict."""
    walks = tuple(walks) if walks is not None else WALKS if walk_keyword() else ("ddpm",)
    for name, given, allowed in (("paths", paths, FROM_ESTIMATE), ("walks", walks, WALKS),
                                 ("cases", cases, ("x", "y", "both")), ("inputs", inputs, INPUTS)):
        if not given or any(v not in allowed for v in given):
            raise ValueError(f"{name} must be a non-empty choice of {allowed}, got {list(given)}")
    if trajectories not in ("held_out", "all"):
        raise ValueError(f"trajectories must be 'held_out' or 'all', got {trajectories!r}")
    cpu, wall = time.process_time(), time.perf_counter()
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    schedule, n_max = loaded.schedule, loaded.schedule.num_levels
    levels = [k for k in LEVELS if k <= n_max] if levels is None else list(levels)
    counts = [frames] * len(levels) if isinstance(frames, int) else [int(f) for f in frames]
    if len(counts) != len(levels) or min(counts, default=1) < 2:
        raise ValueError(f"frames must be an int ≥ 2 or one count ≥ 2 per level of {list(levels)}, "
                         f"got {frames!r}")
    if [k for k in levels if not 1 <= k <= n_max]:
        raise ValueError(f"levels must lie in 1..{n_max}, got {list(levels)}")
    if "ddim" in walks and walk_keyword() is None:
        raise ValueError("this engine has no DDIM walk yet; pass walks=('ddpm',)")
    store = TrajectoryStore(data)
    check_compatible(loaded.config, store.spec.system_spec, str(data))
    lag = loaded.config["models"]["refiner"]["train"]["lag"]
    chosen = list(range(store.spec.trajectories))
    if trajectories == "held_out":
        chosen = split_trajectories(store.spec.trajectories,
                                    loaded.config["models"]["refiner"]["train"]["val_fraction"])[1]
    triples = refiner_triples(store, lag, trajectories=chosen, normalise=loaded.normalisation["std"])
    n_frames = max(counts)
    if n_frames > len(triples):
        raise ValueError(f"frames={n_frames} exceeds the {len(triples)} (long, y, x) triples of "
                         f"trajectories {chosen} of {data}")
    pick = subsample(len(triples), n_frames)
    base = torch.stack([triples[int(i)] for i in pick]).unbind(1)      # (long, y, x), normalised
    owner = pick // triples.anchors                                     # row of `chosen` per frame
    scale, measure = loaded.scale, Measure(store.spec)
    denoiser = Denoiser.from_forward(chunked(refiner_denoiser(loaded.model("refiner")).forward, CHUNK))
    proposals = chunked(loaded.model("emulator"), CHUNK)(base[1])
    floor = _floor(measure, base[2] * scale, owner)
    emulator_step = summarise(measure, base[2] * scale, proposals * scale, False, floor,
                              resamples, seed)
    result: dict[str, Any] = {
        "levels": list(levels), "frames": counts, "antithetic": antithetic, "seed": seed,
        "walks": list(walks), "trajectories": [int(t) for t in chosen], "data": data_origin(store),
        "bands": {b: [float(measure.k[sl][0]), float(measure.k[sl][-1])]
                  for b, sl in measure.bands.items()},
        "horizons": list(HORIZONS), "floor": floor, "emulator_step": emulator_step,
        "rows": []}
    twice = (lambda t: torch.cat([t, t])) if antithetic else (lambda t: t)
    jobs = [(i, c, w, p) for i in inputs for c in cases for w in walks for p in paths]
    bar = tqdm(total=len(jobs) * sum(k * n for k, n in zip(levels, counts, strict=True)),
               desc="walk bias", unit="frame-level", disable=quiet)
    done: dict[tuple, str] = {}
    for source, case, kind, path in jobs:
        row: dict[str, Any] = {"input": source, "case": case, "walk": kind, "path": path}
        key = (source, case, kind, plan_key(path, case, max(levels), n_max))
        result["rows"].append(row)
        bar.update(sum(k * n for k, n in zip(levels, counts, strict=True)))
        if key in done:
            row["same_walk_as"] = done[key]
        elif len(key[-1]) == 2:
            row["not_walked"] = f"{path} walks nothing from (n_x, n_y) of case {case!r}"
        else:
            done[key] = path
            row["per_level"] = []
            for k, n in zip(levels, counts, strict=True):
                sub = torch.from_numpy(subsample(n_frames, n))
                long, y, x = (t[sub] for t in base)
                x = proposals[sub] if source == "emulator" else x
                gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{source}/{case}/{kind}/{k}".encode()))
                walked = walk_frames(denoiser, schedule, (twice(long), twice(y), twice(x)), case,
                                     path, k, Antithetic(gen) if antithetic else TorchNoise(gen), kind)
                clean = twice(y if case == "y" else x)
                row["per_level"].append({"k": k, **summarise(measure, clean * scale, walked * scale,
                                                             antithetic, floor, resamples, seed)})
    bar.close()
    result["cpu_seconds"] = time.process_time() - cpu
    result["wall_seconds"] = time.perf_counter() - wall
    return result


def _floor(measure: Measure, clean: torch.Tensor, owner: np.ndarray) -> dict[str, float]:
    """Band errors between the mean spectra of two independent halves of the clean frames: the
    first half of their trajectories against the second (one trajectory: its first half in time
    against its second)."""
    _, s = measure(clean)
    groups = np.unique(owner)
    first = (owner < groups[len(groups) // 2] if len(groups) > 1
             else np.arange(len(owner)) < len(owner) // 2)
    errors = measure.band_errors(s[torch.from_numpy(first)].mean(0), s[torch.from_numpy(~first)].mean(0))
    return {b: float(v) for b, v in errors.items()}


def training_probe(frames: int = 16, level: int = 10, path: str = "left_down", seed: int = 0,
                   head_levels: Sequence[int] = (0, 2, 10)) -> Callable[..., dict[str, Any]]:
    """A cheap walk-bias and head check for the refiner's training validation: `frames` validation
    triples (evenly spread), x noised to `level` with y clean, walked by `path` with antithetic
    noise; returns probe(model, schedule, val_set, store) → {"walk_bias_ke": KE ratio − 1, its
    "walk_bias_interval" (90 %), "walk_bias_level": level, "head_x": {k: median and 10–90 % of
    n̂_x with x at level k, y clean} for k in `head_levels`} (`calibration.calibrate`'s
    x_given_clean_y on these frames: whether the x head still reads clean frames as noisy)."""

    @torch.no_grad()
    def probe(model: torch.nn.Module, schedule: CosineSchedule, val_set, store: TrajectoryStore,
              ) -> dict[str, Any]:
        pick = subsample(len(val_set), frames)
        device = schedule.device
        long, y, x = (torch.cat([t, t]).to(device)
                      for t in torch.stack([val_set[int(i)] for i in pick]).unbind(1))
        denoiser = Denoiser.from_forward(chunked(refiner_denoiser(model).forward, CHUNK))
        gen = torch.Generator(device=device).manual_seed(seed)
        k = min(level, schedule.num_levels)
        walked = walk_frames(denoiser, schedule, (long, y, x), "x", path, k, Antithetic(gen))
        scale = torch.tensor(val_set.std, device=device)[:, None, None]   # back to physical units
        measure = Measure(store.spec)
        ratio = pair_means(measure((walked * scale).cpu())[0] / measure((x * scale).cpu())[0], True)
        draws = intervals.resample(ratio.shape[0], 1000, seed)
        reads, n = estimator(model), len(pick)

        def read_x(j: int) -> dict[str, float]:  # n̂_x with x noised to level j, y clean
            level = torch.full((n,), j, dtype=torch.long, device=device)
            noise = torch.randn(x[:n].shape, generator=gen, device=device)
            return summary(reads(long[:n], y[:n], schedule.q_sample(x[:n], level, noise))[:, 1].cpu())

        head_x = {str(j): read_x(j) for j in head_levels if j <= schedule.num_levels}
        return {"walk_bias_ke": float(ratio.mean() - 1), "walk_bias_level": k, "head_x": head_x,
                "walk_bias_interval": intervals.interval(intervals.resampled_means(ratio, draws) - 1)}

    return probe


def _label(result: dict[str, Any], row: dict[str, Any]) -> str:
    """The row's path, and the paths whose walks are this one ("left_down = fix_short")."""
    same = [r["path"] for r in result["rows"] if r.get("same_walk_as") == row["path"]
            and (r["input"], r["case"], r["walk"]) == (row["input"], row["case"], row["walk"])]
    return " = ".join([row["path"], *same])


def table(result: dict[str, Any]) -> str:
    """The walk bias as a markdown table: per input, case, walk, path and k, the KE ratio − 1 (%)
    with its 90 % interval, its compounding over HORIZONS, and the band errors (× floor)."""
    bands = [b for b in result["bands"] if b != "all"]
    head = (["input", "noised", "walk", "path", "k", "frames × walks", "KE ratio − 1 (%) [90 %]"]
            + [f"× over {n} steps [90 %]" for n in result["horizons"]]
            + [f"{b}-k error (× floor)" for b in bands])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    factor = lambda v: "overflow" if v is None else f"{v:.3g}"  # noqa: E731
    for row in result["rows"]:
        name = [row["input"], row["case"], row["walk"], _label(result, row)]
        if "not_walked" in row:
            lines.append("| " + " | ".join(name + ["–", row["not_walked"]] + [""] * (len(head) - 6))
                         + " |")
        for e in row.get("per_level", []):
            lo, hi = e["interval"]
            cells = name + [str(e["k"]), f"{e['frames']} × {e['walks'] // e['frames']}",
                            f"{100 * e['ke_ratio_minus_1']:+.4f} [{100 * lo:+.4f}, {100 * hi:+.4f}]"]
            cells += [f"{factor(c[0])} [{factor(c[1])}, {factor(c[2])}]"
                      for c in (e["compounded"][str(n)] for n in result["horizons"])]
            over = e["band_error_over_floor"]
            cells += [f"{e['band_error'][b]:.2g} ({'–' if over[b] is None else f'{over[b]:.2g}'})"
                      for b in bands]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], out: str | Path) -> Path:
    """PNG of KE ratio − 1 (%) against k per path and walk, with 90 % intervals; one panel per
    (case, input)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ("x", "y", "both")
    panels = sorted({(r["case"], r["input"]) for r in result["rows"]},
                    key=lambda p: (order.index(p[0]), INPUTS.index(p[1])))
    cols = len({p[1] for p in panels})
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.2 * rows), squeeze=False)
    for ax, (case, source) in zip(axes.flat, panels, strict=False):
        drawn = [r for r in result["rows"] if (r["case"], r["input"]) == (case, source)
                 and r.get("per_level")]
        for i, r in enumerate(drawn):  # a small shift in k per curve keeps the bars apart
            k = np.array([e["k"] for e in r["per_level"]], float) * 1.04 ** (i - len(drawn) / 2)
            m, lo, hi = (np.array([100 * v for v in values]) for values in zip(
                *((e["ke_ratio_minus_1"], *e["interval"]) for e in r["per_level"]), strict=True))
            ax.errorbar(k, m, yerr=[m - lo, hi - m], marker="o", ms=4, capsize=3,
                        label=f"{_label(result, r)}, {r['walk']}")
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(result["levels"], [str(k) for k in result["levels"]])
        ax.set_xlabel("noise level k the frame was walked back from (log axis)")
        ax.set_ylabel("kinetic energy walked / input − 1 (%)")
        frame = {"x": "x noised, y clean", "y": "y noised, x clean: the walked y",
                 "both": "x and y noised: the walked x"}[case]
        what = "clean solver frames" if source == "clean" else "emulator proposals"
        ax.set_title(f"{frame}: {what}", fontsize=10)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("walk bias: one walk's kinetic-energy change (mean, 90 % bootstrap interval)")
    fig.tight_layout()
    with atomic_write(Path(out)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out)
