"""Generate a solver dataset into a store, chunk by chunk, resuming whatever was already written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from sns_engine.data.store import StoreSpec, TrajectoryStore

if TYPE_CHECKING:
    from sns_engine.systems import System


def store_spec(system: System, trajectories: int, snapshots: int, seed: int = 0,
               trajectory_batch: int = 8, time_chunk: int = 32) -> StoreSpec:
    """The identity of a dataset of `system` (JSON-normalised so it compares equal after a reload)."""
    return StoreSpec(
        system=system.name, preset=system.preset,
        params=json.loads(json.dumps(system.metadata())),
        channels=system.channels, channel_names=tuple(system.channel_names), grid=system.grid,
        snapshot_dt=float(system.snapshot_dt), domain_length=float(system.domain_length),
        trajectories=trajectories, snapshots=snapshots, seed=seed,
        trajectory_batch=min(trajectory_batch, trajectories), time_chunk=min(time_chunk, snapshots),
    )


def generate(system: System, out: str | Path, trajectories: int, snapshots: int, seed: int = 0,
             trajectory_batch: int = 8, time_chunk: int = 32, overwrite: bool = False,
             quiet: bool = False) -> TrajectoryStore:
    """Run `system` for `trajectories` × `snapshots` and stream them into the store at `out`.

    Trajectories run in blocks of `trajectory_batch` (batched in the solver); each block appends
    `time_chunk` snapshots at a time and saves its solver state, so memory stays bounded and a
    rerun after a kill continues where the last finished chunk left off. Rerunning a finished
    generation does nothing.
    """
    spec = store_spec(system, trajectories, snapshots, seed, trajectory_batch, time_chunk)
    store = TrajectoryStore.create(out, spec, overwrite=overwrite)
    if store.complete and "normalisation" in store.root.attrs:
        return store
    seeds = store.root["seed"][:]
    bar = tqdm(total=spec.trajectories * spec.snapshots, disable=quiet, unit="snap",
               desc=f"{spec.system}/{spec.preset}")
    for block in range(spec.blocks):
        members = spec.block_members(block)
        done = store.progress(block)
        bar.update(max(done, 0) * len(members))
        if done == spec.snapshots:
            continue
        if done < 0:
            state = system.initial_states([int(s) for s in seeds[members.start:members.stop]])
            done = 0
            store.save_state(block, done, system.state_to_arrays(state))
        else:
            state = system.state_from_arrays(store.load_state(block))
        while done < spec.snapshots:
            count = min(spec.time_chunk, spec.snapshots - done)
            state, snaps = system.advance(state, count)
            store.write(block, done, snaps)
            done += count
            store.save_state(block, done, system.state_to_arrays(state))
            bar.update(count * len(members))
    bar.close()
    store.finalise()
    return store
