"""Generate a solver dataset into a store, chunk by chunk, resuming whatever was already written.

This drives a solver (sns_engine.systems) into a store (sns_engine.data), so it sits above both:
data knows nothing of the solvers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from sns_engine.data.store import StoreError, StoreSpec, SystemSpec, TrajectoryStore
from sns_engine.systems import SolverDivergedError, System, check_finite


def system_spec(system: System) -> SystemSpec:
    """The identity of `system`'s data (JSON-normalised so it compares equal after a reload)."""
    return SystemSpec(
        system=system.name, preset=system.preset,
        params=json.loads(json.dumps(system.metadata())),
        channels=system.channels, channel_names=tuple(system.channel_names), grid=system.grid,
        snapshot_dt=float(system.snapshot_dt), domain_length=float(system.domain_length))


def store_spec(system: System, trajectories: int, snapshots: int, seed: int = 0,
               trajectory_batch: int = 8, time_chunk: int = 32) -> StoreSpec:
    """The identity of a dataset of `system`."""
    return StoreSpec.of(system_spec(system), trajectories=trajectories, snapshots=snapshots,
                        seed=seed, trajectory_batch=min(trajectory_batch, trajectories),
                        time_chunk=min(time_chunk, snapshots))


def generate(system: System, out: str | Path, trajectories: int, snapshots: int, seed: int = 0,
             trajectory_batch: int = 8, time_chunk: int = 32, overwrite: bool = False,
             quiet: bool = False) -> TrajectoryStore:
    """Run `system` for `trajectories` × `snapshots` and stream them into the store at `out`.

    Trajectories run in blocks of `trajectory_batch` (batched in the solver); each block appends
    `time_chunk` snapshots at a time and saves its solver state, so memory stays bounded and a
    rerun after a kill continues where the last finished chunk left off. Rerunning a finished
    generation does nothing. If the solver diverges (NaN/Inf), nothing of the diverged chunk is
    written, the store is marked failed (readers refuse it) and a StoreError says what to do.
    """
    spec = store_spec(system, trajectories, snapshots, seed, trajectory_batch, time_chunk)
    store = TrajectoryStore.create(out, spec, overwrite=overwrite)
    if store.complete and "normalisation" in store.root.attrs:
        return store
    bar = tqdm(total=spec.trajectories * spec.snapshots, disable=quiet, unit="snap",
               desc=f"{spec.system}/{spec.preset}")
    try:
        _run_blocks(system, store, bar)
    except SolverDivergedError as err:
        store.update_attrs(failed=str(err))
        raise StoreError(f"{err}; {store.path} is left incomplete and marked failed (training refuses "
                         "it): rerun with other settings and --overwrite to replace it, or delete "
                         "it") from err
    finally:
        bar.close()
    store.finalise()
    return store


@contextmanager
def _locating(system: System, first: int, where: str) -> Iterator[None]:
    """A divergence in a block whose first trajectory is `first` names the store's trajectory,
    `where` (which solver steps) it happened and, unless the solver did, the fix."""
    try:
        yield
    except SolverDivergedError as err:
        err.trajectory, err.where = first + err.trajectory, where
        advice = getattr(system, "divergence_fix", None)  # a System's; duck-typed solvers may lack it
        err.fix = err.fix or (advice() if advice else "lower dt or change the parameters")
        raise


def _run_blocks(system: System, store: TrajectoryStore, bar: tqdm) -> None:
    """Advance every unfinished block to the end, one time chunk (data, then state) at a time."""
    spec = store.spec
    seeds = store.root["seed"][:]
    spinup = getattr(system.params, "spinup_steps", 0)
    per = getattr(system.params, "steps_per_snapshot", 1)
    for block in range(spec.blocks):
        members = spec.block_members(block)
        done = store.progress(block)
        bar.update(max(done, 0) * len(members))
        if done == spec.snapshots:
            continue
        if done < 0:
            with _locating(system, members.start, f" in its spin-up (solver steps 1 to {spinup})"):
                state = system.initial_states([int(s) for s in seeds[members.start:members.stop]])
            done = 0
            store.save_state(block, done, system.state_to_arrays(state))
        else:
            state = system.state_from_arrays(store.load_state(block))
        while done < spec.snapshots:
            count = min(spec.time_chunk, spec.snapshots - done)
            with _locating(system, members.start, f" between solver steps {spinup + done * per + 1} "
                                                  f"and {spinup + (done + count) * per}"):
                state, snaps = system.advance(state, count)
                check_finite(spec.system, snaps, "")
            store.write(block, done, snaps)
            done += count
            store.save_state(block, done, system.state_to_arrays(state))
            bar.update(count * len(members))
