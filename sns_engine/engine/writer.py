"""Streaming an ensemble to a Zarr store from a writer thread; the engine's resume checkpoint.

An ensemble store is a trajectory store (sns_engine.data.store) whose trajectories are the
members (dimension `member`, coordinate: their ids), in physical units, with the members' initial
states at t = 0 and, on the same `time` axis (state i at i·save_every physical steps):

    levels      (member, time, substep, estimate) int16  estimated (n̂_x, n̂_y) of the save_every steps
                                              that led to the state at `time`, −1 where not estimated
    moves       (member, time, substep) int16 refinement forwards spent on those steps
    flags       (member, time) int32          divergence flags of each state (engine.rules bits): a
                                              flagged member is frozen at its last good state
    flagged_at  (member,) float64             time at which the member's step was rejected, NaN if never
    solver_state/b{rank}/t{i}/...             the engine's resume checkpoint after saved state i
    attrs["rollout"]                          the RolloutConfig, plus "perturb": the relative
                                              amplitude of the initial-state perturbation
    attrs["bundle"]                           the bundle's name and the SHA-256 of each file the
                                              rollout reads; a resume with another bundle is refused
    progress    (rank,) int64                 saved states of each rank's block of members whose
                                              checkpoint is on disk: how far the rollout got

The rollout loop hands over device tensors; they are copied into pinned host buffers (on CUDA)
and written by one background thread a time chunk at a time (aligned with the chunks on disk),
so the GPU never waits for the disk and memory stays bounded whatever the number of steps.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from sns_engine.config import to_dict
from sns_engine.data.store import StoreError, StoreSpec, SystemSpec, TrajectoryStore, foreign
from sns_engine.engine.rules import NOISE_LIMIT, NONFINITE, OUT_OF_BOUND


def create_ensemble_store(out: str | Path, system: SystemSpec, normalisation: dict[str, Any],
                          cfg, members: Sequence[int], time_chunk: int, resume: bool,
                          overwrite: bool, member_chunk: int | None = None, perturb: float = 0.0,
                          bundle: dict[str, Any] | None = None) -> TrajectoryStore:
    """The ensemble store of the members with ids `members` rolled out with `cfg` (a
    RolloutConfig) of `system` (the bundle's), storing every save_every-th step; reopened to resume.

    Per-member arrays are chunked by `member_chunk` members (default: all), so ranks that own
    disjoint, chunk-aligned member ranges never write the same chunk. `perturb` (the initial
    states' perturbation amplitude) is recorded with `cfg`, `bundle` ({"name", "files": file name
    → SHA-256 of the bundle files the rollout reads}) as attrs["bundle"]. A resume is refused,
    naming the setting in the API's words, unless the store was made by this store format with the
    same settings, members and bundle. Only a sns_engine store is ever replaced or continued
    (TrajectoryStore.create refuses anything else)."""
    count = len(members)
    member_chunk = member_chunk or count
    saves = cfg.steps // cfg.save_every
    saved = dataclasses.replace(system, snapshot_dt=system.snapshot_dt * cfg.save_every)
    spec = StoreSpec.of(saved, trajectories=count, snapshots=saves, seed=cfg.seed,
                        trajectory_batch=member_chunk,  # a progress entry per rank
                        time_chunk=min(time_chunk, saves + 1))
    out = Path(out)
    record = {**to_dict(cfg), "perturb": perturb}
    bundle = bundle or {"name": None, "files": {}}
    if out.exists() and not resume and not overwrite and foreign(out) is None:
        raise FileExistsError(f"{out} exists; pass resume=True to continue it or overwrite=True "
                              "to replace it")
    if out.exists() and resume and foreign(out) is None and (out / "zarr.json").is_file():
        _check_resumable(TrajectoryStore(out), record, members, member_chunk, saved,
                         normalisation, bundle)

    def add_rollout_arrays(root: zarr.Group) -> None:
        rows, times, every = (member_chunk,), (spec.time_chunk,), cfg.save_every
        shape = (count, saves + 1)
        root.create_array("levels", shape=(*shape, every, 2), chunks=(*rows, *times, every, 2),
                          dtype="int16", fill_value=-1,
                          dimension_names=("member", "time", "substep", "estimate"))
        root.create_array("moves", shape=(*shape, every), chunks=(*rows, *times, every),
                          dtype="int16", fill_value=-1, dimension_names=("member", "time", "substep"))
        root.create_array("flags", shape=shape, chunks=(*rows, *times), dtype="int32",
                          fill_value=-1, dimension_names=("member", "time"))
        root.create_array("flagged_at", shape=(count,), chunks=rows, dtype="float64",
                          fill_value=np.nan, dimension_names=("member",))
        root.create_array("substep", shape=(every,), dtype="int64",
                          dimension_names=("substep",))[:] = np.arange(every)
        root.create_array("estimate", shape=(2,), dtype=str,
                          dimension_names=("estimate",))[:] = np.array(["n_x", "n_y"], dtype=object)
        for name in ("levels", "moves"):  # CF: the value that means "none"
            root[name].attrs["_FillValue"] = -1
        root["flags"].attrs.update(flag_masks=[NONFINITE, OUT_OF_BOUND, NOISE_LIMIT],
                                   flag_meanings="non_finite out_of_bound noise_limit")
        root.attrs["normalisation"] = normalisation
        root.attrs["rollout"] = record
        root.attrs["bundle"] = bundle

    return TrajectoryStore.create(out, spec, overwrite=overwrite and not resume,
                                  extend=add_rollout_arrays, members=members)


def _check_resumable(store: TrajectoryStore, record: dict[str, Any], members: Sequence[int],
                     member_chunk: int, system: SystemSpec, normalisation: dict[str, Any],
                     bundle: dict[str, Any]) -> None:
    """Refuse (FileExistsError) to continue `store` with other settings, members, system or bundle
    than it was made with, or written in an older store format, naming the first difference as
    the rollout's parameter."""
    out, spec = store.path, store.spec
    fix = "resume with what it was made with, or pass overwrite=True to replace it or choose another out="
    if not store.is_ensemble:
        raise FileExistsError(f"{out} is a solver store, not a rollout's; choose another out=")
    if store.format < 2:
        made = store.root.attrs["sns_engine"].get("version", "≤ 0.2.0")
        raise FileExistsError(f"{out} was written by sns_engine {made} in store format "
                              f"{store.format} (sns_engine 0.2 to 0.3.0), which this sns_engine reads "
                              "but does not continue; pass overwrite=True to roll it out anew")
    if spec.trajectories != len(members):
        raise FileExistsError(f"{out} was made with batch={spec.trajectories}, not "
                              f"batch={len(members)}; {fix}")
    held = np.asarray(store.root["member"][:])
    if not np.array_equal(held, np.asarray(members)):
        raise FileExistsError(f"{out} holds members {held[0]}..{held[-1]}, not {members[0]}.."
                              f"{members[-1]} (member_offset={members[0]}); {fix}")
    stored = store.root.attrs.get("rollout") or {}
    for key in sorted({*record, *stored}):
        if stored.get(key) != record.get(key):
            raise FileExistsError(f"{out} was made with {key}={stored.get(key)!r}, not "
                                  f"{key}={record.get(key)!r}; {fix}")
    held_files, files = store.root.attrs["bundle"]["files"], bundle["files"]
    changed = sorted(name for name in {*held_files, *files} if held_files.get(name) != files.get(name))
    if changed:
        name = changed[0]
        raise FileExistsError(f"{out} was rolled out with another bundle: its {name} had SHA-256 "
                              f"{str(held_files.get(name))[:12]}…, this bundle's "
                              f"{str(files.get(name))[:12]}…; resume it with the bundle it was made "
                              "with, or pass overwrite=True to replace it or choose another out=")
    if (spec.system_spec != system or store.root.attrs.get("normalisation") != normalisation):
        raise FileExistsError(f"{out} was rolled out with a bundle of another system or "
                              "normalisation; resume it with the bundle it was made with, or pass "
                              "overwrite=True to replace it or choose another out=")
    chunk = store.root["flags"].chunks[0]  # members per rank of the run that made it
    if chunk != member_chunk:
        ranks = -(-len(members) // chunk)
        raise FileExistsError(f"{out} was written by {ranks} process(es) of {chunk} members; resume "
                              f"it with as many: processes={ranks}, or torchrun --nproc_per_node={ranks}")


class EnsembleWriter:
    """Background writer: `put` per physical step, `flush` before a checkpoint, `close` at the end.

    `initial` (the members' states before the first step, normalised as the engine holds them) is
    written at t = 0 when the rollout starts at step 0."""

    def __init__(self, store: TrajectoryStore, scale: torch.Tensor, save_every: int, start_step: int,
                 members: slice | None = None, initial: torch.Tensor | None = None):
        self.store, self.save_every = store, save_every
        self.members = members or slice(0, store.spec.trajectories)  # the rows this writer owns
        self.scale = scale.cpu().numpy()[None, None]     # (1, 1, C, 1, 1)
        self.chunk = store.spec.time_chunk
        self.start = start_step // save_every + 1        # time index of the next save
        self.saves: list[torch.Tensor] = []
        self.steps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.flagged_to = self.start                     # time index from which flags are unwritten
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if start_step == 0 and initial is not None:
            self.start, self.flagged_to = 0, 0
            self.saves.append(_to_host(initial))

    def put(self, states: torch.Tensor | None, levels: torch.Tensor, moves: torch.Tensor) -> None:
        """Record the next physical step; `states` (B, C, H, W) only on save steps."""
        self._raise()
        self.steps.append((_to_host(levels), _to_host(moves)))
        if states is not None:
            self.saves.append(_to_host(states))
            if (self.start + len(self.saves)) % self.chunk == 0:  # a whole chunk on disk
                self._hand_over()

    def flush(self, flags: torch.Tensor, flagged_at: torch.Tensor) -> None:
        """Write everything recorded so far (on save steps only), with the flags of the states
        written since the last flush, and wait until it is on disk."""
        self._hand_over()
        self.queue.put(("flags", (self.flagged_to, self.start, _to_host(flags), _to_host(flagged_at)),
                        _event()))
        self.flagged_to = self.start
        self.queue.join()
        self._raise()

    def close(self, flags: torch.Tensor, flagged_at: torch.Tensor) -> None:
        self.flush(flags, flagged_at)
        self.queue.put(None)
        self.thread.join()

    def _hand_over(self) -> None:
        if not self.saves:
            return
        if len(self.steps) != self.save_every * (len(self.saves) - (self.start == 0)):
            raise RuntimeError(f"{len(self.steps)} steps recorded for {len(self.saves)} saves of "
                               f"every {self.save_every}: the writer only hands over saved steps")
        event = _event()
        self.queue.put(("fields", (self.start, self.saves), event))
        if self.steps:
            self.queue.put(("steps", (max(self.start, 1), self.steps), event))
        self.start += len(self.saves)
        self.saves, self.steps = [], []

    def _run(self) -> None:
        root, rows = self.store.root, self.members
        while (item := self.queue.get()) is not None:
            try:
                kind, payload, event = item
                if event is not None:
                    event.synchronize()  # the device-to-host copies of this batch are done
                if kind == "fields":
                    start, saves = payload
                    states = np.stack([s.numpy() for s in saves], axis=1) * self.scale
                    self.store.fields[rows, start:start + states.shape[1]] = states.astype(np.float32)
                elif kind == "steps":  # (B, saves × save_every, …) → (B, saves, save_every, …)
                    start, steps = payload
                    for name, values in (("levels", [lv for lv, _ in steps]),
                                         ("moves", [mv for _, mv in steps])):
                        values = np.stack([v.numpy() for v in values], axis=1).astype(np.int16)
                        values = values.reshape(values.shape[0], -1, self.save_every, *values.shape[2:])
                        root[name][rows, start:start + values.shape[1]] = values
                else:
                    self._write_flags(*payload)
            except BaseException as err:  # surfaced in the rollout thread by _raise
                self.error = err
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def _write_flags(self, lo: int, hi: int, flags: torch.Tensor, flagged_at: torch.Tensor) -> None:
        """Flags of the states at time indices lo..hi−1 (state i follows step i·save_every − 1: a
        member flagged at step s is frozen from state ⌈(s + 1)/save_every⌉ on) and each member's
        flag time."""
        flags, step = flags.numpy(), flagged_at.numpy()
        flagged = (step[:, None] >= 0) & (step[:, None] < np.arange(lo, hi) * self.save_every)
        root = self.store.root
        root["flags"][self.members, lo:hi] = np.where(flagged, flags[:, None], 0).astype(np.int32)
        step_dt = self.store.spec.snapshot_dt / self.save_every
        root["flagged_at"][self.members] = np.where(step >= 0, (step + 1) * step_dt, np.nan)

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


def save_checkpoint(store: TrajectoryStore, tensors: dict[str, torch.Tensor], next_step: int,
                    rank: int = 0) -> None:
    """Engine state after `next_step` physical steps (a saved step, written after a flush): the
    store's resume state of block `rank` (`TrajectoryStore.save_state`), which then records the
    rank's progress."""
    arrays = {k: v.detach().contiguous().cpu().numpy() for k, v in tensors.items()}
    store.save_state(rank, next_step // store.save_every, arrays)


def load_checkpoint(store: TrajectoryStore, rank: int = 0) -> tuple[dict[str, torch.Tensor], int] | None:
    """The saved engine state of `rank` and its step, or None for a run that never checkpointed.
    A store of format 1 (its checkpoint in engine*.safetensors) is refused: it is not continued."""
    if store.format < 2:
        raise StoreError(f"{store.path} is of store format {store.format}, whose rollout this "
                         "sns_engine does not continue; pass overwrite=True to roll it out anew")
    done = store.progress(rank)
    if done < 0:
        return None
    return ({k: torch.from_numpy(v) for k, v in store.load_state(rank).items()},
            done * store.save_every)
