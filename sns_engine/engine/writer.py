"""Streaming an ensemble to a Zarr store from a writer thread, plus the engine's resume checkpoint.

An ensemble store is a trajectory store (sns_engine.data.store) whose trajectories are the
members, in physical units, with extra per-step arrays:

    levels      (trajectory, step, 2) int16   estimated (n̂_x, n̂_y), −1 where not estimated
    moves       (trajectory, step) int16      refinement forwards spent
    flags       (trajectory,) int32           divergence flags (engine.reference)
    flagged_at  (trajectory,) int64           physical step of the flag, −1 if none
    engine.safetensors + attrs["engine"]      the resume checkpoint (states, flags, next step)
    attrs["rollout"]                          the RolloutConfig, plus "perturb": the relative
                                              amplitude of the initial-state perturbation
    attrs["bundle"]                           SHA-256 of each bundle file the rollout reads; a
                                              resume with another bundle is refused
    progress    (rank,) int64                 saved states on disk per rank's block of members
                                              (written at each flush): how far the rollout got

The rollout loop hands over device tensors; they are copied into pinned host buffers (on CUDA)
and written by one background thread, `time_chunk` saves per chunk write, so the GPU never waits
for the disk and memory stays bounded whatever the number of steps.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from safetensors.torch import load_file, save_file

from sns_engine.config import to_dict
from sns_engine.data.store import StoreSpec, SystemSpec, TrajectoryStore, foreign
from sns_engine.files import atomic_write

CHECKPOINT = "engine.safetensors"  # engine-r{rank}.safetensors for rank > 0 of a sharded run


def create_ensemble_store(out: str | Path, system: SystemSpec, normalisation: dict[str, Any],
                          cfg, members: int, time_chunk: int, resume: bool, overwrite: bool,
                          member_chunk: int | None = None, perturb: float = 0.0,
                          bundle_files: dict[str, str] | None = None) -> TrajectoryStore:
    """The ensemble store for `members` members of `cfg` (a RolloutConfig) of `system` (the
    bundle's), storing every save_every-th step; reopened to resume.

    Per-member arrays are chunked by `member_chunk` members (default: all), so ranks that own
    disjoint, chunk-aligned member ranges never write the same chunk. `perturb` (the initial
    states' perturbation amplitude) is recorded with `cfg`, `bundle_files` (file name → SHA-256
    of the bundle files the rollout reads) as attrs["bundle"]. A resume is refused, naming the
    setting in the API's words, unless the store was made with the same settings, members and
    bundle. Only a sns_engine store is ever replaced or continued (TrajectoryStore.create refuses
    anything else)."""
    member_chunk = member_chunk or members
    saved = dataclasses.replace(system, snapshot_dt=system.snapshot_dt * cfg.save_every)
    spec = StoreSpec.of(saved, trajectories=members, snapshots=cfg.steps // cfg.save_every,
                        seed=cfg.seed, trajectory_batch=member_chunk,  # a progress entry per rank
                        time_chunk=min(time_chunk, max(cfg.steps // cfg.save_every, 1)))
    out = Path(out)
    record = {**to_dict(cfg), "perturb": perturb}
    if out.exists() and not resume and not overwrite and foreign(out) is None:
        raise FileExistsError(f"{out} exists; pass resume=True to continue it or overwrite=True "
                              "to replace it")
    if out.exists() and resume and foreign(out) is None and (out / "zarr.json").is_file():
        _check_resumable(TrajectoryStore(out), record, members, member_chunk, saved,
                         normalisation, bundle_files)

    def add_rollout_arrays(root: zarr.Group) -> None:
        root.create_array("levels", shape=(members, cfg.steps, 2), chunks=(member_chunk, time_chunk, 2),
                          dtype="int16", fill_value=-1, dimension_names=("trajectory", "step", "pair"))
        root.create_array("moves", shape=(members, cfg.steps), chunks=(member_chunk, time_chunk),
                          dtype="int16", fill_value=-1, dimension_names=("trajectory", "step"))
        root.create_array("flags", shape=(members,), chunks=(member_chunk,), dtype="int32",
                          dimension_names=("trajectory",))
        root.create_array("flagged_at", shape=(members,), chunks=(member_chunk,), dtype="int64",
                          fill_value=-1, dimension_names=("trajectory",))
        root.attrs["normalisation"] = normalisation
        root.attrs["rollout"] = record
        root.attrs["bundle"] = bundle_files or {}

    store = TrajectoryStore.create(out, spec, overwrite=overwrite and not resume,
                                   extend=add_rollout_arrays)
    return store


def _check_resumable(store: TrajectoryStore, record: dict[str, Any], members: int, member_chunk: int,
                     system: SystemSpec, normalisation: dict[str, Any],
                     bundle_files: dict[str, str] | None) -> None:
    """Refuse (FileExistsError) to continue `store` with other settings, members, system or bundle
    than it was made with, naming the first difference as the rollout's parameter."""
    out, spec = store.path, store.spec
    fix = "resume with what it was made with, or pass overwrite=True to replace it or choose another out="
    if not store.is_ensemble:
        raise FileExistsError(f"{out} is a solver store, not a rollout's; choose another out=")
    if spec.trajectories != members:
        raise FileExistsError(f"{out} was made with batch={spec.trajectories}, not batch={members}; {fix}")
    stored = store.root.attrs.get("rollout") or {}
    for key in sorted({*record, *stored}):
        if stored.get(key) != record.get(key):
            raise FileExistsError(f"{out} was made with {key}={stored.get(key)!r}, not "
                                  f"{key}={record.get(key)!r}; {fix}")
    held = store.root.attrs.get("bundle")
    files = bundle_files or {}
    changed = sorted(name for name in {*(held or {}), *files} if (held or {}).get(name) != files.get(name))
    if held is not None and changed:  # stores of sns_engine ≤ 0.2.0 recorded no bundle
        name = changed[0]
        raise FileExistsError(f"{out} was rolled out with another bundle: its {name} had SHA-256 "
                              f"{str(held.get(name))[:12]}…, this bundle's {str(files.get(name))[:12]}…; "
                              "resume it with the bundle it was made with, or pass overwrite=True "
                              "to replace it or choose another out=")
    if (spec.system_spec != system or store.root.attrs.get("normalisation") != normalisation):
        raise FileExistsError(f"{out} was rolled out with a bundle of another system or "
                              "normalisation; resume it with the bundle it was made with, or pass "
                              "overwrite=True to replace it or choose another out=")
    chunk = store.root["flags"].chunks[0]  # members per rank of the run that made it
    if chunk != member_chunk:
        ranks = -(-members // chunk)
        raise FileExistsError(f"{out} was written by {ranks} rank(s) of {chunk} members; resume it "
                              f"with {ranks} (torchrun --nproc_per_node={ranks})")
    if spec.trajectory_batch != member_chunk:  # sns_engine ≤ 0.2.0 on several ranks
        raise FileExistsError(f"{out} was written by an older sns_engine on several ranks, which "
                              "this version cannot resume; pass overwrite=True to roll it out anew")


class EnsembleWriter:
    """Background writer: `put` per physical step, `flush` before a checkpoint, `close` at the end."""

    def __init__(self, store: TrajectoryStore, scale: torch.Tensor, save_every: int, start_step: int,
                 members: slice | None = None):
        self.store, self.save_every = store, save_every
        self.members = members or slice(0, store.spec.trajectories)  # the rows this writer owns
        self.scale = scale.cpu().numpy()[None, None]     # (1, 1, C, 1, 1)
        self.chunk = store.spec.time_chunk
        self.saves: list[torch.Tensor] = []
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.save_start = start_step // save_every
        self.step_start = start_step
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def put(self, states: torch.Tensor | None, levels: torch.Tensor, moves: torch.Tensor) -> None:
        """Record the next physical step; `states` (B, C, H, W) only on save steps."""
        self._raise()
        self.steps.append((_to_host(levels), _to_host(moves)))
        if states is not None:
            self.saves.append(_to_host(states))
        if len(self.saves) >= self.chunk or len(self.steps) >= self.chunk * self.save_every:
            self._hand_over()

    def flush(self, flags: torch.Tensor, flagged_at: torch.Tensor) -> None:
        """Write everything recorded so far, wait until it is on disk, then record this rank's
        progress (the saved states its members have on disk)."""
        self._hand_over()
        self.queue.put(("flags", (_to_host(flags), _to_host(flagged_at)), _event()))
        self.queue.join()
        self._raise()
        block = self.members.start // self.store.spec.trajectory_batch
        self.store.root["progress"][block] = self.save_start

    def close(self, flags: torch.Tensor, flagged_at: torch.Tensor) -> None:
        self.flush(flags, flagged_at)
        self.queue.put(None)
        self.thread.join()

    def _hand_over(self) -> None:
        event = _event()
        if self.saves:
            self.queue.put(("fields", (self.save_start, self.saves), event))
            self.save_start += len(self.saves)
            self.saves = []
        if self.steps:
            self.queue.put(("steps", (self.step_start, self.steps), event))
            self.step_start += len(self.steps)
            self.steps = []

    def _run(self) -> None:
        root = self.store.root
        while (item := self.queue.get()) is not None:
            try:
                kind, payload, event = item
                if event is not None:
                    event.synchronize()  # the device-to-host copies of this batch are done
                if kind == "fields":
                    start, saves = payload
                    states = np.stack([s.numpy() for s in saves], axis=1) * self.scale
                    self.store.fields[self.members, start:start + states.shape[1]] = states.astype(np.float32)
                elif kind == "steps":
                    start, steps = payload
                    levels = np.stack([lv.numpy() for lv, _ in steps], axis=1).astype(np.int16)
                    moves = np.stack([mv.numpy() for _, mv in steps], axis=1).astype(np.int16)
                    root["levels"][self.members, start:start + levels.shape[1]] = levels
                    root["moves"][self.members, start:start + moves.shape[1]] = moves
                else:
                    flags, flagged_at = payload
                    root["flags"][self.members] = flags.numpy()
                    root["flagged_at"][self.members] = flagged_at.numpy()
            except BaseException as err:  # surfaced in the rollout thread by _raise
                self.error = err
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing {self.store.path} failed: {self.error}") from self.error


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A host copy; from CUDA into pinned memory without blocking (see `_event`)."""
    if not t.is_cuda:
        return t.detach().clone()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


def _event():
    """A CUDA event after the pending copies, for the writer thread to wait on (None on CPU)."""
    if not torch.cuda.is_available():
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def checkpoint_file(store: TrajectoryStore, rank: int = 0) -> Path:
    return store.path / (CHECKPOINT if rank == 0 else f"engine-r{rank}.safetensors")


def save_checkpoint(store: TrajectoryStore, tensors: dict[str, torch.Tensor], next_step: int,
                    rank: int = 0) -> None:
    """Engine state after `next_step` physical steps, one atomic file (written after a flush)."""
    payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    payload["next_step"] = torch.tensor(next_step)
    with atomic_write(checkpoint_file(store, rank)) as tmp:
        save_file(payload, str(tmp))


def load_checkpoint(store: TrajectoryStore, rank: int = 0) -> tuple[dict[str, torch.Tensor], int] | None:
    """The saved engine state and its step, or None for a run that never checkpointed."""
    file = checkpoint_file(store, rank)
    if not file.exists():
        return None
    tensors = load_file(str(file))
    return tensors, int(tensors.pop("next_step"))
