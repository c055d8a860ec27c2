"""Two-layer quasi-geostrophic jet: pyqg `QGModel`, one model per trajectory (the papers' setup).

The jet configuration of Ross et al. (2023): QGModel(nx=64, dt=3600, rek=7e-8, delta=0.1,
beta=1e-11), other parameters pyqg's defaults. Snapshots are the PV anomaly q of both layers
(channels upper, lower), float32, on the model grid, laid out (y, x) as pyqg stores them.

pyqg draws its initial condition from the global numpy RNG; each trajectory seeds it with its own
seed (and the caller's global RNG state is put back). The state is, per trajectory, everything the
Adams–Bashforth stepper reads: q, qh, the tendencies dqhdt, dqhdt_p, dqhdt_pp and the order
ablevel, plus the step count. pyqg exposes ablevel, t and tc read-only, so a model is rebuilt by
stepping a fresh one `ablevel` times and then overwriting its arrays in place; t and tc do not
enter the dynamics (no time-dependent forcing), the step count is ours. Every advance rebuilds
its models this way, so a restored state advances exactly like the original.

pyqg's Cython kernel is built with OpenMP. Threads gain nothing on a 64² grid and have been seen
to slow it down badly on busy cores, so this module sets OMP_NUM_THREADS=1 when unset and its
workers always run with 1; parallelism comes from `workers` processes, one trajectory each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import multiprocessing
import os
import warnings
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from sns_engine.systems import (
    SolverDivergedError,
    System,
    check_finite,
    check_seeds,
    check_sizes,
    check_state_arrays,
    require_positive,
)

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before pyqg's OpenMP runtime starts
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "No pyfftw detected. Using numpy.fft"
    import pyqg

_COMPLEX = ("qh", "dqhdt", "dqhdt_p", "dqhdt_pp")  # per-trajectory complex arrays of the stepper
_COUNTERS = ("ablevel", "steps")  # Adams–Bashforth order reached, solver steps taken


@dataclasses.dataclass(frozen=True)
class QGParams:
    """Every parameter of the QG jet; the physical ones carry pyqg's names and units (SI)."""

    nx: int = 64                 # grid points per side (the output grid too)
    L: float = 1e6               # domain side [m]
    dt: float = 3600.0           # time step [s]
    rek: float = 7e-8            # bottom drag [1/s]
    beta: float = 1e-11          # gradient of the Coriolis parameter [1/(m s)]
    delta: float = 0.1           # layer thickness ratio H1/H2
    rd: float = 15_000.0         # deformation radius [m]
    H1: float = 500.0            # upper layer depth [m]
    U1: float = 0.025            # upper layer mean flow [m/s]
    U2: float = 0.0              # lower layer mean flow [m/s]
    filterfac: float = 23.6      # exponential filter factor
    spinup_steps: int = 56_000   # solver steps from pyqg's random initial PV to the first state
    steps_per_snapshot: int = 10
    workers: int = 1             # processes running trajectories in parallel (1: in-process)

    def __post_init__(self):
        check_sizes(self, ("nx", "L", "dt", "delta", "rd", "H1", "filterfac",
                           "steps_per_snapshot", "workers"), ("spinup_steps", "rek"))


PRESETS = {
    # Ross et al. 2023 / the paper: ≈ 6.4 years of spin-up.
    "paper": QGParams(),
    # The baroclinic instability grows from pyqg's ~1e-7 initial PV and saturates (the jets form)
    # at ≈ 36–40 k steps (seeds 0, 1, 2 measured); the overshoot has relaxed by ≈ 44–48 k, when the
    # upper-layer PV std sits at its equilibrium ≈ 6–7.5e-6. Most of the spin-up is that
    # growth, so it cannot shrink much without another initial condition: 48 k steps, ≈ 23 s
    # per trajectory on one core.
    "cpu": QGParams(spinup_steps=48_000),
}


def qg_layer_parameters(params: QGParams) -> dict[str, float]:
    """The constants of PV inversion per layer (pyqg's formulas): domain length and width [m],
    F1 = 1/(rd²(1 + δ)), F2 = δ F1 [1/m²], layer depths h1, h2 = h1/δ [m], rd [m] and δ."""
    f1 = params.rd ** -2 / (1 + params.delta)
    return {"length": params.L, "width": params.L, "f1": f1, "f2": params.delta * f1,
            "h1": params.H1, "h2": params.H1 / params.delta, "rd": params.rd,
            "delta": params.delta}


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG (pyqg draws from it), restoring the caller's state afterwards."""
    saved = np.random.get_state()  # noqa: NPY002 (pyqg reads the legacy global RNG)
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(saved)  # noqa: NPY002


def _model(params: QGParams, seed: int = 0) -> pyqg.QGModel:
    """A fresh pyqg model; `seed` drives its random initial PV. Quiet: no logging, and the
    diagnostics' start time is pushed to infinity (pyqg's 'none' option is broken in 0.7.2)."""
    with _seeded_global_rng(seed), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pyqg's own set_q1q2 call
        return pyqg.QGModel(nx=params.nx, L=params.L, dt=params.dt, rek=params.rek,
                            beta=params.beta, delta=params.delta, rd=params.rd, H1=params.H1,
                            U1=params.U1, U2=params.U2, filterfac=params.filterfac,
                            log_level=0, tavestart=math.inf)


def _model_state(model: pyqg.QGModel, steps: int) -> dict[str, np.ndarray]:
    """One trajectory's state (the layout of state_to_arrays, without the batch axis)."""
    out = {"q": np.array(model.q), "ablevel": np.array(model.ablevel, dtype=np.int64),
           "steps": np.array(steps, dtype=np.int64)}
    for key in _COMPLEX:
        value = np.asarray(getattr(model, key))
        out[f"{key}_real"], out[f"{key}_imag"] = value.real.copy(), value.imag.copy()
    return out


def _restore(params: QGParams, state: dict[str, np.ndarray]) -> pyqg.QGModel:
    """A model that steps exactly like the one `state` was taken from."""
    model = _model(params)
    for _ in range(int(state["ablevel"])):  # ablevel is read-only: reach it by stepping
        model._step_forward()
    np.asarray(model.q)[...] = state["q"]
    for key in _COMPLEX:
        target = np.asarray(getattr(model, key))
        target.real, target.imag = state[f"{key}_real"], state[f"{key}_imag"]
    return model


def _run(params: QGParams, state: dict[str, np.ndarray], n_snapshots: int, index: int,
         ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Advance one trajectory (number `index` of its batch): its new state and (T, 2, ny, nx)."""
    model = _restore(params, state)
    snaps = np.empty((n_snapshots, 2, params.nx, params.nx), dtype=np.float32)
    for t in range(n_snapshots):
        for _ in range(params.steps_per_snapshot):
            model._step_forward()  # pyqg's own run loop calls this; there is no public step
        snaps[t] = model.q
        check_finite(QGJet.name, snaps[None, t], "", first=index)  # QGJet adds the fix
    return _model_state(model, int(state["steps"]) + n_snapshots * params.steps_per_snapshot), snaps


def _start(params: QGParams, seed: int, index: int) -> dict[str, np.ndarray]:
    """Trajectory `index`'s spun-up state from its seed."""
    model = _model(params, seed)
    for _ in range(params.spinup_steps):
        model._step_forward()
    check_finite(QGJet.name, np.asarray(model.q)[None], "", first=index)  # QGJet adds the fix
    return _model_state(model, params.spinup_steps)


@contextlib.contextmanager
def _single_threaded_env() -> Iterator[None]:
    """OMP_NUM_THREADS=1 in the environment that spawned workers inherit."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if saved is not None:
            os.environ["OMP_NUM_THREADS"] = saved


class QGJet(System):
    """The QG jet; the state is a dict of per-trajectory arrays stacked on a batch axis."""

    name = "qg"
    channel_names = ("q_upper", "q_lower")
    presets = PRESETS
    execution_fields = ("workers",)

    def __init__(self, preset: str, params: QGParams):
        super().__init__(preset, params)
        self._pool: ProcessPoolExecutor | None = None  # started on first use, kept for reuse
        self._closer: weakref.finalize | None = None

    def close(self) -> None:
        """Stop the worker processes, if any (the next call starts them again). Also runs when
        the system is collected or the interpreter exits."""
        if self._closer is not None:
            self._closer()
        self._pool = self._closer = None

    @property
    def grid(self) -> int:
        return self.params.nx

    @property
    def domain_length(self) -> float:
        return self.params.L

    def metadata(self) -> dict[str, Any]:
        """Parameters plus, under "inversion", the constants of `qg_layer_parameters`."""
        return {**super().metadata(), "inversion": qg_layer_parameters(self.params)}

    def initial_states(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        with self._fixing():
            return _stack(self._map(_start, [int(s) for s in check_seeds(seeds)]))

    def advance(self, state: dict[str, np.ndarray], n_snapshots: int,
                ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        require_positive("n_snapshots", n_snapshots)
        trajectories = _unstack(state)
        with self._fixing():
            results = self._map(_run, trajectories, [n_snapshots] * len(trajectories))
        return _stack([r[0] for r in results]), np.stack([r[1] for r in results])

    @contextlib.contextmanager
    def _fixing(self) -> Iterator[None]:
        """A divergence in a worker (which knows no preset) gets this system's `divergence_fix`."""
        try:
            yield
        except SolverDivergedError as err:
            err.fix = self.divergence_fix()
            raise

    def state_to_arrays(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {key: value.copy() for key, value in state.items()}

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_state_arrays(self.name, arrays, _state_shapes(self.params.nx),
                           "was it saved with another nx?")
        return {key: np.array(arrays[key], dtype=np.int64 if key in _COUNTERS else np.float64)
                for key in _state_shapes(self.params.nx)}

    def _map(self, fn: Any, *args: Sequence[Any]) -> list[Any]:
        """[fn(params, *a, i) for i, a in enumerate(zip(*args))], over `params.workers` processes
        (spawned: call from under `if __name__ == "__main__":` in a script)."""
        jobs = list(zip(*args, strict=True))
        if self.params.workers == 1 or len(jobs) == 1:
            return [fn(self.params, *job, i) for i, job in enumerate(jobs)]
        with _single_threaded_env():  # workers start during submit and inherit the environment
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.params.workers,
                                                 mp_context=multiprocessing.get_context("spawn"))
                # An executor left to the garbage collector breaks at interpreter exit.
                self._closer = weakref.finalize(self, self._pool.shutdown)
            futures = [self._pool.submit(fn, self.params, *job, i) for i, job in enumerate(jobs)]
        return [f.result() for f in futures]


def _state_shapes(n: int) -> dict[str, tuple[int, ...]]:
    """Per-trajectory shapes of the state arrays (the batch axis comes first)."""
    shapes = {"q": (2, n, n), **dict.fromkeys(_COUNTERS, ())}
    for key in _COMPLEX:
        shapes[f"{key}_real"] = shapes[f"{key}_imag"] = (2, n, n // 2 + 1)
    return shapes


def _stack(states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.stack([s[key] for s in states]) for key in states[0]}


def _unstack(state: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{key: value[i] for key, value in state.items()} for i in range(len(state["steps"]))]
