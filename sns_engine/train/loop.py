"""One training loop for the emulator, the SNS refiner and the Thermalizer.

What differs between the three models is a `Task` (which frames an item holds, which random
draws a step needs, which loss). The loop owns everything else: AdamW, gradient clipping, EMA
weights, StepLR, bf16 autocast on CUDA, periodic validation, tqdm progress, checkpoints that a
killed run resumes from, a warm start from another bundle's model (`init_from`: to train a shipped
model longer), and DDP under `torchrun`.

Determinism that DDP and resume rely on: the batch indices and every random draw of step s come
from a generator seeded by (seed, s) for the *global* batch; each rank takes its slice. So one
DDP step equals a single-process step on the same global batch, and a resumed run sees exactly
the batches the uninterrupted run would have.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from sns_engine.bundle import (
    INITIAL,
    check_compatible,
    new_config,
    read_config,
    save_initial,
    save_model,
)
from sns_engine.config import TrainConfig, from_dict, to_dict, write_json
from sns_engine.data import FrameWindows, TrajectoryStore, refiner_triples, windows
from sns_engine.diffusion.schedule import CosineSchedule
from sns_engine.files import atomic_write
from sns_engine.models import build_model, model_unet_config
from sns_engine.train import losses

Draws = dict[str, torch.Tensor]


class TrainingError(ValueError):
    """Training cannot go on (NaN loss, mismatched data, nothing to resume)."""


@dataclass(frozen=True)
class Task:
    """What one model kind needs from the loop."""

    frames: Callable[[TrajectoryStore, TrainConfig, list[int], list[float]], torch.utils.data.Dataset]
    draw: Callable[[torch.Size, CosineSchedule, TrainConfig, torch.Generator], Draws]
    loss: Callable[..., tuple[torch.Tensor, dict[str, float]]]


TASKS: dict[str, Task] = {
    "emulator": Task(
        frames=lambda store, cfg, trajs, std: windows(store, cfg.unroll, trajectories=trajs,
                                                      normalise=std),
        draw=lambda shape, schedule, cfg, gen: {},
        loss=lambda model, frames, draws, schedule, cfg: losses.emulator_loss(model, frames),
    ),
    "refiner": Task(
        frames=lambda store, cfg, trajs, std: refiner_triples(store, cfg.lag, trajectories=trajs,
                                                             normalise=std),
        draw=lambda shape, schedule, cfg, gen: losses.draw_refiner(
            shape, schedule.num_levels, cfg.level_bias, gen),
        loss=lambda model, frames, draws, schedule, cfg: losses.refiner_loss(
            model, schedule, frames, draws, cfg.ce_weight),
    ),
    "thermalizer": Task(
        frames=lambda store, cfg, trajs, std: FrameWindows(store, (0,), trajectories=trajs,
                                                          normalise=std),
        draw=lambda shape, schedule, cfg, gen: losses.draw_thermalizer(
            shape, schedule.num_levels, cfg.level_bias, gen),
        loss=lambda model, frames, draws, schedule, cfg: losses.thermalizer_loss(
            model, schedule, frames, draws, cfg.ce_weight),
    ),
}


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def split_trajectories(n: int, fraction: float) -> tuple[list[int], list[int]]:
    """Trajectories for training and validation: the last ⌈fraction·n⌉ are held out (n ≥ 2)."""
    if n < 2:
        raise TrainingError(f"the store has {n} trajectory; training needs ≥ 2 (one held out)")
    val = max(1, math.ceil(fraction * n))
    return list(range(n - val)), list(range(n - val, n))


def initial_snapshots(store: TrajectoryStore, std: Sequence[float], count: int = 16
                      ) -> torch.Tensor:
    """Snapshots (count, C, H, W) divided by the bundle's `std`, for it to start rollouts from:
    evenly spread over the trajectories and the second half of their time."""
    spec = store.spec
    std = torch.tensor(std, dtype=torch.float32)[:, None, None]
    half = spec.snapshots // 2
    times = [half + i * (spec.snapshots - half) // count for i in range(count)]
    return torch.stack([torch.from_numpy(store.fields[i % spec.trajectories, t]) / std
                        for i, t in enumerate(times)])


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of all randomness of optimizer step `step` (global batch, every rank).

    Step −1 is the fixed validation batch."""
    return torch.Generator().manual_seed((seed << 32) + step + 1)


def sample_batch(dataset, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    index = torch.randint(len(dataset), (batch_size,), generator=gen)
    return torch.stack([dataset[int(i)] for i in index])


class Trainer:
    """State of one run: model, its EMA copy, optimizer, LR schedule, step counter."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, device: torch.device):
        self.cfg = cfg
        self.model = model.to(device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, cfg.lr_step, cfg.lr_gamma)
        self.step = 0

    def update_ema(self) -> None:
        """EMA with the usual warm-up: decay min(d, (1+s)/(10+s)) so early weights fade fast."""
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for ema, live in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                ema.lerp_(live, 1 - decay)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        for i, state in self.opt.state_dict()["state"].items():
            out.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in state.items()})
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.model.load_state_dict(part("model."))
        self.ema.load_state_dict(part("ema."))
        opt_state = self.opt.state_dict()
        for key, value in part("opt.").items():
            i, name = key.split(".", 1)
            opt_state["state"].setdefault(int(i), {})[name] = value
        self.opt.load_state_dict(opt_state)
        self.set_step(step)

    def set_step(self, step: int) -> None:
        """Go on from optimizer step `step`: its learning rate, its EMA decay, its batches."""
        self.step = step
        self.sched.last_epoch = step
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * self.cfg.lr_gamma ** (step // self.cfg.lr_step)

    def warm_start(self, weights: dict[str, torch.Tensor], step: int) -> None:
        """Start from another run's averaged weights at its step `step` (`train`'s `init_from`):
        they become the live and the averaged weights; the optimizer's moments start at zero."""
        self.model.load_state_dict(weights)
        self.ema.load_state_dict(weights)
        self.set_step(step)


def checkpoint_paths(out: Path, kind: str) -> tuple[Path, Path]:
    folder = out / "train"
    return folder / f"{kind}.safetensors", folder / f"{kind}.json"


def save_checkpoint(out: Path, trainer: Trainer, history: list[dict[str, Any]]) -> None:
    """Training state (raw + EMA weights, optimizer) then the step record: resume restarts here."""
    tensors_file, record_file = checkpoint_paths(out, trainer.cfg.model)
    tensors_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(tensors_file) as tmp:
        save_file(trainer.state_tensors(), str(tmp))
    write_json(record_file, {"step": trainer.step, "train": to_dict(trainer.cfg),
                             "history": history})


Probe = Callable[[torch.nn.Module, CosineSchedule, torch.utils.data.Dataset, TrajectoryStore],
                 dict[str, Any]]


def warm_start_weights(source: str | Path, kind: str, unet: Any, steps: int
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The `kind` weights of the bundle `source` and what the run records of them (path, SHA-256,
    step), refused (TrainingError) unless the bundle has that model, trained `steps` or fewer
    steps, with the same U-Net as this run's."""
    config = read_config(source)
    entry = (config or {}).get("models", {}).get(kind)
    if entry is None:
        raise TrainingError(f"init_from={str(source)!r} has no {kind} to start from; name a bundle "
                            f"directory whose config.json lists one")
    held, wanted = to_dict(from_dict(type(unet), entry["unet"])), to_dict(unet)  # defaults filled
    if held != wanted:
        differ = sorted(k for k in wanted.keys() | held.keys() if held.get(k) != wanted.get(k))
        raise TrainingError(f"init_from={str(source)!r}: its {kind} is another network (U-Net "
                            f"settings {differ} differ); use this run's --preset on that bundle's data")
    start = int(entry.get("step", 0))
    if start >= steps:
        raise TrainingError(f"init_from={str(source)!r}: its {kind} has {start} steps already; "
                            f"steps must be more than that, got {steps}")
    weights = load_file(str(Path(source) / entry["file"]))
    return weights, {"bundle": str(source), "sha256": entry.get("sha256"), "step": start}


def check_window(cfg: TrainConfig, store: TrajectoryStore) -> None:
    """Refuse (TrainingError) a `cfg.lag` (refiner) or `cfg.unroll` (emulator) whose window of
    frames is longer than the store's trajectories, naming the setting, the snapshot count and
    the largest value that fits."""
    snapshots = store.spec.snapshots
    name, value, span = {"emulator": ("unroll", cfg.unroll, cfg.unroll + 1),
                         "refiner": ("lag", cfg.lag, cfg.lag + 2)}.get(cfg.model, (None, 0, 1))
    if name is not None and span > snapshots:
        frames = "x_t−lag, x_t and x_t+1" if name == "lag" else f"{value} + 1 consecutive frames"
        fit = value - span + snapshots
        fix = (f"use {name}={fit} or less, or generate longer trajectories" if fit >= 1
               else f"generate trajectories of at least {span} snapshots")
        raise TrainingError(f"{name}={value} needs {span} snapshots per trajectory ({frames}), but "
                            f"{store.path} has {snapshots}; {fix}")


def train(cfg: TrainConfig, data: str | Path, out: str | Path, resume: bool = False,
          overwrite: bool = False, quiet: bool = False, device: str | None = None,
          probe: Probe | None = None, init_from: str | Path | None = None) -> Path:
    """Train `cfg.model` on the store `data` into the bundle directory `out`; returns `out`.

    `probe(ema model, schedule, validation set, store)`, if given, runs at every validation (on
    rank 0) and its numbers join that validation's record in the training history (the refiner's
    walk bias, `sns_engine.walk_bias.training_probe`, is one).

    Several models go into one bundle (run once per kind). With `resume` a killed run continues
    from its last checkpoint; without it an already trained model is refused unless `overwrite`.
    `init_from`, a bundle directory, starts from its `cfg.model` instead of fresh weights: at its
    step count (so `cfg.steps` is the total, and the batches are those an uninterrupted run would
    have drawn next), its averaged weights as both live and averaged weights, fresh optimizer
    moments (a bundle keeps no optimizer state). A resumed warm start continues from its own
    checkpoint.
    Nothing is written before the first checkpoint, so a run that fails earlier leaves no bundle;
    a later failure leaves the checkpoint and a model entry that `load_bundle` reports unfinished
    until `--resume` completes it.
    """
    out = Path(out)
    rank, world = _rank_world()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if cfg.bf16 and device.type != "cuda":  # autocast runs on CUDA only: record what runs
        cfg = dataclasses.replace(cfg, bf16=False)
    if cfg.batch_size % world:
        raise TrainingError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")

    store = TrajectoryStore(data)
    store.check_complete()
    system = store.spec.system_spec
    schedule = CosineSchedule(cfg.num_levels)
    config = read_config(out) or new_config(system, store.normalisation, schedule)
    check_compatible(config, system, str(data))
    tensors_file, record_file = checkpoint_paths(out, cfg.model)
    if resume and not record_file.exists():
        raise TrainingError(f"nothing to resume: {record_file} does not exist; drop --resume")
    if not resume and (cfg.model in config["models"] or record_file.exists()) and not overwrite:
        raise TrainingError(f"{out} already has a {cfg.model}; pass --resume to continue its "
                            "training or --overwrite to train it anew")
    check_window(cfg, store)
    levels = config.get("schedule", {}).get("num_levels", cfg.num_levels)
    if cfg.model != "emulator" and levels != cfg.num_levels:  # its heads read the bundle's levels
        raise TrainingError(f"num_levels={cfg.num_levels} differs from the N = {levels} levels of "
                            f"the bundle {out} (its schedule, set by its first model); use "
                            f"num_levels={levels} or another out=")
    initial = (initial_snapshots(store, config["normalisation"]["std"])
               if rank == 0 and INITIAL not in config else None)

    task = TASKS[cfg.model]
    unet_cfg = model_unet_config(cfg.model, cfg.preset, store.spec.channels, store.spec.grid,
                                 cfg.num_levels)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank and in every rerun
    trainer = Trainer(cfg, build_model(cfg.model, unet_cfg), device)
    history: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if init_from is not None:
        weights, extra["init_from"] = warm_start_weights(init_from, cfg.model, unet_cfg, cfg.steps)
    if resume:
        record = json.loads(record_file.read_text())
        trainer.load_tensors(load_file(str(tensors_file), device=str(device)), record["step"])
        history = record["history"]
    elif init_from is not None:
        trainer.warm_start(weights, extra["init_from"]["step"])
    model = trainer.model
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    train_ids, val_ids = split_trajectories(store.spec.trajectories, cfg.val_fraction)
    std = config["normalisation"]["std"]   # the bundle's scale: a model joining it must share it
    train_set = task.frames(store, cfg, train_ids, std)
    val_set = task.frames(store, cfg, val_ids, std)
    schedule = schedule.to(device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if cfg.bf16 and device.type == "cuda" else nullcontext())
    local = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)

    def run_loss(net, gen: torch.Generator, dataset) -> tuple[torch.Tensor, dict[str, float]]:
        frames = sample_batch(dataset, cfg.batch_size, gen)
        draws = task.draw(frames.shape, schedule, cfg, gen)
        frames = frames[local].to(device)
        draws = {k: v[local].to(device) for k, v in draws.items()}
        with autocast:
            return task.loss(net, frames, draws, schedule, cfg)

    bar = tqdm(total=cfg.steps, initial=trainer.step, disable=quiet or rank > 0,
               desc=f"train {cfg.model}")
    def validation(record: dict[str, Any]) -> dict[str, Any]:
        record["val_loss"] = validate(trainer, run_loss, val_set)
        if probe is not None and rank == 0:
            record.update(probe(trainer.ema, schedule, val_set, store))
        return record

    if not resume:  # the starting point: step 0, or a warm start's
        history.append(validation({"step": trainer.step}))
    model.train()
    while trainer.step < cfg.steps:
        loss, parts = run_loss(model, step_generator(cfg.seed, trainer.step), train_set)
        if not torch.isfinite(loss):
            raise TrainingError(f"{cfg.model} loss is {loss.item()} at step {trainer.step}; the "
                                f"last good checkpoint in {out} is kept; lower --lr or check data")
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        trainer.opt.step()
        trainer.sched.step()
        trainer.step += 1
        trainer.update_ema()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4g}")
        last = trainer.step == cfg.steps
        if trainer.step % cfg.val_every == 0 or last:
            history.append(validation({"step": trainer.step, "train_loss": loss.item(), **parts}))
        if rank == 0 and (trainer.step % cfg.checkpoint_every == 0 or last):
            if initial is not None:  # the bundle appears with the first checkpoint, not before
                save_initial(out, config, initial)
                initial = None
            # model first: a kill in between leaves a newer model and an older checkpoint,
            # from which a resumed run simply redoes the last few steps
            save_model(out, config, cfg.model, unet_cfg, trainer.ema.state_dict(),
                       {"train": to_dict(cfg), "step": trainer.step, **extra})
            save_checkpoint(out, trainer, history)
    bar.close()
    if world > 1:
        dist.barrier()
    return out


def validate(trainer: Trainer, run_loss, val_set) -> float:
    """Loss of the EMA weights on a fixed validation batch (the same batch every time)."""
    with torch.no_grad():
        loss, _ = run_loss(trainer.ema, step_generator(trainer.cfg.seed, -1), val_set)
    return loss.item()
