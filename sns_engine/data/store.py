"""Chunked Zarr stores of solver trajectories and rollout ensembles, written as they run and
resumable after a kill; each opens in xarray as CF-described data (`xarray.open_zarr(path)`).

Layout of a store (zarr format 3, consolidated metadata, CF attributes from `sns_engine.data.cf`):

    fields      (trajectory, time, channel, y, x) float32, chunks (1, time_chunk, C, H, W): one
                trajectory's time chunk is one atomic chunk write. An ensemble store's first
                dimension is `member`, and its time 0 holds the members' initial states
    time, x, y, channel   coordinates: model time (an ensemble's from its initial state, a
                solver's from the end of spin-up), grid point positions, channel names
    trajectory / member   coordinate: trajectory index, or member id
    seed        (trajectory,) the seed each trajectory was started from (solver stores)
    progress    (block,) states finished per block of trajectories (an ensemble store: per
                rank's block of members); the last thing written
    solver_state/b{block}/t{done}/...   the solver's (or the rollout engine's) state after `done`
                states, to resume
    attrs["sns_engine"]   identity (`StoreSpec`: system, preset, every parameter, sizes, seed, version)
    attrs["normalisation"]  per-channel mean and std, written when the store is complete
    attrs["failed"]       why the generation stopped (solver divergence), until a rerun finishes it
    attrs: Conventions, title, source (the package and version), history, date_created

An ensemble store (sns_engine.engine.writer) adds per-step arrays on the same time axis. Stores of
format 1 (sns_engine 0.2 to 0.3.0: no t = 0 state, `levels`/`moves` on a `step` dimension, the
engine's checkpoint in engine*.safetensors) are read through `t0`, `per_step` and
`flagged_steps`; resuming one is refused.

Readers refuse an unfinished store (`check_complete`: a solver store without normalisation, an
ensemble store whose progress is short of its steps); `written` is how far every trajectory got.
Overwriting deletes only what sns_engine made (`remove_ours`): never a plain directory, a file or
another program's Zarr group.

Crash safety: a new store is built in a scratch folder and renamed into place, so the path holds
either nothing or a whole empty store. Then for each chunk the order is data → solver state →
progress, and zarr's local store writes every file atomically, so after a kill -9 `progress` always
points at a complete solver state and all data before it. Rerunning the same generation continues
from there. Attributes change only through `update_attrs`, which consolidates the metadata again.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from sns_engine._version import __version__
from sns_engine.data import cf

FORMAT = 2  # 1: sns_engine 0.2 to 0.3.0 (see the module docstring)


class StoreError(ValueError):
    """A path is not a usable store, or a store does not match what was asked of it."""


def foreign(path: str | Path) -> str | None:
    """Why the existing `path` is not something sns_engine made, or None when it is: a store
    (zarr.json with the 'sns_engine' attribute) or the `<name>.creating` scratch folder of one
    being built (empty, or a Zarr group)."""
    path = Path(path)
    if path.is_symlink():
        return "a link"
    if not path.is_dir():
        return "a file"
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        meta = None
    group = isinstance(meta, dict) and meta.get("node_type") == "group"
    if group and "sns_engine" in (meta.get("attributes") or {}):
        return None
    if path.name.endswith(".creating") and (group or not any(path.iterdir())):
        return None
    return "a Zarr group of another program" if group else "a plain directory"


def refusal(path: str | Path, reason: str) -> StoreError:
    """The error for a `path` that sns_engine will neither delete nor write into."""
    return StoreError(f"{path} is {reason}, not a sns_engine store, so it will not be deleted or "
                      "written into; choose another out=")


def remove_ours(*paths: str | Path) -> None:
    """Delete the existing `paths` (for --overwrite, or a stale scratch folder) after checking them
    all: each must be made by sns_engine (`foreign`) and be neither the working directory, one above
    it, nor the home directory. Otherwise nothing is deleted and the first refused path is named."""
    here = Path.cwd().resolve()
    existing = [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    for path in existing:
        target = path.resolve()
        reason = ("the working directory or one above it" if target == here or target in here.parents
                  else "the home directory" if target == Path.home().resolve() else foreign(path))
        if reason is not None:
            raise refusal(path, reason)
    for path in existing:
        shutil.rmtree(path)


@dataclass(frozen=True)
class SystemSpec:
    """The identity of a system's data, the one record of it: which solver (`system`, its name)
    with which `preset` and `params` (every parameter, JSON-normalised), the fields it stores
    (`channels`, `channel_names`, on a `grid`² grid over a square of side `domain_length`) and the
    physical time between stored states (`snapshot_dt`).

    A store records it as the first fields of its `StoreSpec`; a bundle records the system its
    models were trained on in config.json's "system" entry (`to_json`, where the name is spelled
    "name"); an ensemble store is the bundle's system with `snapshot_dt` times save_every."""

    system: str
    preset: str
    params: dict[str, Any]
    channels: int
    channel_names: tuple[str, ...]
    grid: int
    snapshot_dt: float
    domain_length: float

    def to_json(self) -> dict[str, Any]:
        """The bundle's config.json form (the system's name under "name", lists for tuples)."""
        return {"name": self.system, "preset": self.preset, "params": self.params,
                "channels": self.channels, "channel_names": list(self.channel_names),
                "grid": self.grid, "snapshot_dt": self.snapshot_dt,
                "domain_length": self.domain_length}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SystemSpec:
        """Inverse of `to_json` (a KeyError names a missing entry)."""
        return cls(system=data["name"], preset=data["preset"], params=data["params"],
                   channels=data["channels"], channel_names=tuple(data["channel_names"]),
                   grid=data["grid"], snapshot_dt=data["snapshot_dt"],
                   domain_length=data["domain_length"])


@dataclass(frozen=True)
class StoreSpec(SystemSpec):
    """Everything that identifies a generated dataset: its system (`SystemSpec`, the first
    fields), then its sizes, seed and chunking; two runs with equal specs write equal data."""

    trajectories: int
    snapshots: int
    seed: int
    trajectory_batch: int
    time_chunk: int

    def __post_init__(self) -> None:
        for name in ("trajectories", "snapshots", "trajectory_batch", "time_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise StoreError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def of(cls, system: SystemSpec, *, trajectories: int, snapshots: int, seed: int,
           trajectory_batch: int, time_chunk: int) -> StoreSpec:
        """The spec of a store of `system`'s data with these sizes, seed and chunking."""
        return cls(**_system_fields(system), trajectories=trajectories, snapshots=snapshots,
                   seed=seed, trajectory_batch=trajectory_batch, time_chunk=time_chunk)

    @property
    def system_spec(self) -> SystemSpec:
        """The identity of the system whose data this store holds."""
        return SystemSpec(**_system_fields(self))

    @property
    def blocks(self) -> int:
        return -(-self.trajectories // self.trajectory_batch)

    def block_members(self, block: int) -> range:
        start = block * self.trajectory_batch
        return range(start, min(start + self.trajectory_batch, self.trajectories))

    def to_attrs(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["channel_names"] = list(self.channel_names)
        return {"format": FORMAT, "version": __version__, **d}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreSpec:
        d = {k: attrs[k] for k in cls.__dataclass_fields__}
        d["channel_names"] = tuple(d["channel_names"])
        return cls(**d)


def _system_fields(spec: SystemSpec) -> dict[str, Any]:
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(SystemSpec)}


def trajectory_seed(seed: int, trajectory: int) -> int:
    """Seed of one trajectory: independent streams for (seed, trajectory), stable across runs."""
    return int(np.random.SeedSequence([seed, trajectory]).generate_state(1)[0])


class TrajectoryStore:
    """A dataset store on disk: read access for everyone, resumable appends for the generator."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path} does not exist; check the path, or generate the store first")
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"{self.path} is not a sns_engine store (no zarr.json); "
                             "generate one first")
        # the files, not the consolidated metadata: resume states come and go under solver_state
        self.root = zarr.open_group(str(self.path), mode=mode, use_consolidated=False)
        attrs = self.root.attrs.get("sns_engine")
        if attrs is None or "fields" not in self.root:
            raise StoreError(f"{self.path} is a Zarr group but not a sns_engine store "
                             "(missing 'sns_engine' attributes or 'fields')")
        if attrs.get("format", 0) > FORMAT:
            raise StoreError(f"{self.path} has store format {attrs['format']}, newer than this "
                             f"sns_engine ({__version__}) reads ({FORMAT}); upgrade sns_engine")
        self.format: int = attrs.get("format", 0)
        self.spec = StoreSpec.from_attrs(attrs)
        self.fields: zarr.Array = self.root["fields"]

    # ----------------------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: str | Path, spec: StoreSpec, overwrite: bool = False,
               extend: Callable[[zarr.Group], None] | None = None,
               members: Sequence[int] | None = None) -> TrajectoryStore:
        """Create an empty store for `spec`, or reopen a matching one to resume.

        With `members` (their ids) it is an ensemble store: a `member` dimension and a t = 0 slot
        for the initial states. An existing store made with a different spec is an error unless
        `overwrite` is set; a path that is not a sns_engine store is always refused and never
        deleted (`remove_ours`). A new store is built in a scratch folder (`extend` may add arrays,
        named in `cf.VARIABLES`, and attributes to it), described (CF attributes), consolidated and
        renamed into place, so `path` never holds a half-made store, whenever the process is killed.
        """
        path = Path(path)
        exists = path.exists() or path.is_symlink()
        if exists and not overwrite:
            reason = foreign(path)
            if reason is not None:
                raise refusal(path, reason)
            existing = cls(path, mode="r+")
            _check_same_spec(path, existing.spec, spec)
            return existing
        building = path.parent / f"{path.name}.creating"
        remove_ours(path, building)  # the store to overwrite; a scratch folder of a killed run
        root = cls._build(building, spec, members)
        if extend is not None:
            extend(root)
        u = cf.units(spec.system, spec.channel_names)
        for name, array in root.arrays():
            array.attrs.update(cf.attributes(name, u, members is not None))
        _consolidate(building)
        # a directory, so not files.atomic_write: its fixed scratch name is how a rerun finds (and
        # `remove_ours` deletes) the folder of a killed run, and a folder cannot replace another
        building.rename(path)
        return cls(path, mode="r+")

    @staticmethod
    def _build(path: Path, spec: StoreSpec, members: Sequence[int] | None) -> zarr.Group:
        """Write an empty store for `spec` at `path` (a scratch folder renamed into place after):
        a solver store, or with `members` an ensemble store (see `create`)."""
        root = zarr.open_group(str(path), mode="w")
        c, g, n = spec.channels, spec.grid, spec.trajectories
        ensemble = members is not None
        who = "member" if ensemble else "trajectory"
        times = spec.snapshot_dt * (np.arange(spec.snapshots + 1) if ensemble
                                    else np.arange(1, spec.snapshots + 1))
        root.create_array("fields", shape=(n, len(times), c, g, g),
                          chunks=(1, spec.time_chunk, c, g, g), dtype="float32",
                          fill_value=np.nan, dimension_names=(who, "time", "channel", "y", "x"))
        offset = cf.units(spec.system, spec.channel_names).grid_offset
        positions = (np.arange(g) + offset) * spec.domain_length / g
        coordinates = {who: np.asarray(members if ensemble else range(n), dtype=np.int64),
                       "time": times, "channel": np.array(spec.channel_names, dtype=object),
                       "y": positions, "x": positions}
        if not ensemble:
            coordinates["seed"] = np.array([trajectory_seed(spec.seed, i) for i in range(n)],
                                           dtype=np.uint64)
        for name, values in coordinates.items():
            array = root.create_array(name, shape=values.shape, dtype=str if name == "channel"
                                      else values.dtype, dimension_names=(
                                          "trajectory" if name == "seed" else name,))
            array[:] = values
        root.create_array("progress", shape=(spec.blocks,), chunks=(1,), dtype="int64",
                          fill_value=-1, dimension_names=("block",))
        root.require_group("solver_state")
        now = _now()
        root.attrs.update({
            "Conventions": "CF-1.10",
            "title": f"{spec.system}/{spec.preset} " + ("ensemble rolled out by sns_engine" if ensemble
                                                        else "solver trajectories"),
            "source": f"sns_engine {__version__}",
            "history": f"{now} created by sns_engine {__version__}",
            "date_created": now,
            "sns_engine": spec.to_attrs()})
        return root

    def update_attrs(self, **attrs: Any) -> None:
        """Set the store's attributes (None deletes one), then consolidate its metadata again."""
        for key, value in attrs.items():
            if value is not None:
                self.root.attrs[key] = value
            elif key in self.root.attrs:
                del self.root.attrs[key]
        _consolidate(self.path)

    # ----------------------------------------------------------------------------- progress
    def progress(self, block: int) -> int:
        """Snapshots finished in `block`; -1 before its spin-up state was saved."""
        return int(self.root["progress"][block])

    @property
    def complete(self) -> bool:
        return bool(np.all(self.root["progress"][:] == self.spec.snapshots))

    @property
    def is_ensemble(self) -> bool:
        """Whether a rollout wrote this store (sns_engine.engine.writer), not a solver."""
        return "rollout" in self.root.attrs

    @property
    def save_every(self) -> int:
        """Physical steps per stored state (1 for a solver store)."""
        return self.root.attrs.get("rollout", {}).get("save_every", 1)

    @property
    def t0(self) -> int:
        """Index along `fields`' time of the first state after time 0: 1 in an ensemble store that
        holds its initial states at t = 0, else 0 (solver stores, ensemble stores of format 1)."""
        return self.fields.shape[1] - self.spec.snapshots

    def per_step(self, name: str, rows: slice = slice(None)) -> np.ndarray:
        """An ensemble store's per-step array `name` ("levels" or "moves") of the members `rows`,
        (members, steps, …) in the order of the physical steps, whatever the store's format."""
        values = np.asarray(self.root[name][rows])
        if self.format < 2:  # (member, step, …)
            return values
        values = values[:, 1:]  # (member, time, substep, …): no step leads to t = 0
        return values.reshape(values.shape[0], -1, *values.shape[3:])

    def flagged_steps(self) -> np.ndarray:
        """(members,) the physical step (0-based) at which each member was flagged and frozen, −1
        if never (a solver store: −1 for all), whatever the store's format."""
        if "flagged_at" not in self.root:
            return np.full(self.spec.trajectories, -1, dtype=np.int64)
        values = np.asarray(self.root["flagged_at"][:])
        if self.format < 2:  # the step itself
            return values.astype(np.int64)
        step_dt = self.spec.snapshot_dt / self.save_every  # flagged_at = (step + 1)·step_dt
        return np.where(np.isfinite(values), np.rint(values / step_dt) - 1, -1).astype(np.int64)

    def written(self) -> int:
        """Snapshots written of every trajectory: all of them in a finished store."""
        if not self.is_ensemble:
            return self.spec.snapshots if "normalisation" in self.root.attrs else max(
                int(self.root["progress"][:].min()), 0)
        progress = np.asarray(self.root["progress"][:])
        if self.format < 2 and (progress < 0).all():  # sns_engine ≤ 0.2.0 recorded none
            return self._checkpointed()
        return max(int(progress.min()), 0)

    def _checkpointed(self) -> int:
        """Saved states of an ensemble store that records no progress (sns_engine ≤ 0.2.0): the
        least step of its ranks' resume checkpoints (engine.safetensors, engine-r{rank}...), each
        written after its states; 0 unless every rank has one."""
        from safetensors import safe_open

        files = sorted(self.path.glob("engine*.safetensors"))
        ranks = -(-self.spec.trajectories // self.root["flags"].chunks[0])
        if len(files) < ranks:
            return 0
        steps = []
        for file in files:
            with safe_open(str(file), framework="numpy") as f:
                steps.append(int(f.get_tensor("next_step")))
        return min(steps) // self.save_every

    def incomplete(self) -> str | None:
        """None for a finished store, else what it lacks and how to finish it (one line)."""
        spec = self.spec
        if self.is_ensemble:
            done, every = self.written(), self.save_every
            if done >= spec.snapshots:
                return None
            return (f"{self.path} is incomplete: {done * every} of {spec.snapshots * every} rollout "
                    "steps written (a rollout that was killed, failed or is still running); "
                    "finish it by rerunning its rollout with resume=True (--resume)")
        if "normalisation" in self.root.attrs:
            return None
        done = sum(max(self.progress(b), 0) * len(spec.block_members(b)) for b in range(spec.blocks))
        where = f"{self.path} is incomplete ({done} of {spec.trajectories * spec.snapshots} snapshots)"
        failed = self.root.attrs.get("failed")
        if failed is not None:
            return (f"{where}: its generation failed ({failed}); generate it again with other "
                    "settings and overwrite=True, or delete it")
        return f"{where}; rerun the same data generation to finish it"

    def check_complete(self) -> None:
        """Refuse (StoreError) a store whose generation or rollout has not finished, saying how
        far it got and how to go on (`incomplete`)."""
        reason = self.incomplete()
        if reason is not None:
            raise StoreError(reason)

    def save_state(self, block: int, done: int, arrays: dict[str, np.ndarray]) -> None:
        """Persist the solver state after `done` snapshots of `block`, then mark progress."""
        group = self.root.require_group(f"solver_state/b{block}/t{done}")
        for key, value in arrays.items():
            value = np.ascontiguousarray(value)
            arr = group.create_array(key, shape=value.shape, dtype=value.dtype, overwrite=True)
            arr[...] = value
        self.root["progress"][block] = done
        for old in list(self.root[f"solver_state/b{block}"].group_keys()):
            if old != f"t{done}":
                del self.root[f"solver_state/b{block}/{old}"]

    def load_state(self, block: int) -> dict[str, np.ndarray]:
        done = self.progress(block)
        group = self.root[f"solver_state/b{block}/t{done}"]
        return {key: arr[...] for key, arr in group.arrays()}

    def write(self, block: int, start: int, snapshots: np.ndarray) -> None:
        """Write snapshots (B, T, C, H, W) of `block` at time index `start`."""
        members = self.spec.block_members(block)
        self.fields[members.start:members.stop, start:start + snapshots.shape[1]] = snapshots

    def finalise(self, progress: Callable[[], None] | None = None) -> None:
        """Compute per-channel normalisation (streaming, one trajectory at a time), drop solver states."""
        n, c = self.spec.trajectories, self.spec.channels
        total = np.zeros(c)
        total_sq = np.zeros(c)
        for i in range(n):
            x = np.asarray(self.fields[i], dtype=np.float64)
            if not np.isfinite(x).all():
                raise StoreError(f"{self.path}: trajectory {i} holds NaN/Inf; regenerate it")
            total += x.sum(axis=(0, 2, 3))
            total_sq += (x**2).sum(axis=(0, 2, 3))
        count = n * self.spec.snapshots * self.spec.grid**2
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        if "solver_state" in self.root:
            del self.root["solver_state"]
        self.update_attrs(normalisation={"mean": mean.tolist(), "std": std.tolist()}, failed=None)

    @property
    def normalisation(self) -> dict[str, list[float]]:
        self.check_complete()
        return self.root.attrs["normalisation"]


def _now() -> str:
    """The time now, UTC, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _consolidate(path: Path) -> None:
    """Write the store's consolidated metadata (xarray opens it from one file, without warning)."""
    with warnings.catch_warnings():  # that zarr format 3 has no consolidated metadata spec yet
        warnings.filterwarnings("ignore", "Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(path))


def _check_same_spec(path: Path, old: StoreSpec, new: StoreSpec) -> None:
    for key in old.__dataclass_fields__:
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            raise StoreError(f"{path} was made with {key}={a!r}, not {b!r}; pass overwrite=True "
                             "to replace it or choose another out=")
