"""2D Kolmogorov flow: jax-cfd pseudo-spectral vorticity solver, batched with vmap (the papers' setup).

    ∂ω/∂t + u·∇ω = ν∇²ω − λω + curl f,   f = (sin(k_f y), 0),   ν = 1/Re,   domain [0, 2π)²

This is jax-cfd's `ForcedNavierStokes2D` (drag λ = 0.1, k_f = 4, 2/3-rule dealiasing) built from
`NavierStokes2D` + `kolmogorov_forcing` so drag and forcing wavenumber are parameters too; time
stepping is jax-cfd's `crank_nicolson_rk4`. The state is the rfft2 of the vorticity at solver
resolution, (B, n, n//2 + 1) complex64, indexed [kx, ky] as jax-cfd does; snapshots are the
vorticity truncated spectrally to the output grid and laid out (y, x).

Where jax sees a GPU (`pip install ".[gpu]"` brings jax's CUDA plugin) the solver runs there: the
trajectory batch is one vmapped, jitted call. jax is told not to pre-allocate 75 % of GPU memory
(XLA_PYTHON_CLIENT_PREALLOCATE=false unless set), so torch can train in the same process.
`JAX_PLATFORMS=cpu` forces the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax_cfd.base import forcings, grids
from jax_cfd.spectral import equations, time_stepping
from jax_cfd.spectral.utils import brick_wall_filter_2d

from sns_engine.systems import (
    System,
    check_finite,
    check_seeds,
    check_sizes,
    check_state_arrays,
    require_positive,
)

# read when jax first starts its GPU backend (at the first computation), not at import
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

DOMAIN_LENGTH = 2 * math.pi
_STATE_KEYS = ("vorticity_hat_real", "vorticity_hat_imag")


@dataclasses.dataclass(frozen=True)
class KolmogorovParams:
    """Every physical and numerical parameter of the Kolmogorov flow solver."""

    reynolds: float = 1e4            # viscosity ν = 1/Re
    solver_grid: int = 512           # solver resolution (n × n)
    output_grid: int = 64            # snapshot resolution, spectral truncation of the solver field
    dt: float = 1e-3                 # solver time step
    spinup_steps: int = 10_000       # solver steps from the random initial field to the first state
    steps_per_snapshot: int = 5      # solver steps between stored snapshots
    drag: float = 0.1                # linear drag λ
    forcing_wavenumber: int = 4      # forcing sin(k_f y)
    initial_peak_wavenumber: float = 4.0  # the random initial vorticity's spectrum peaks here
    initial_rms: float = 4.0         # and has this RMS (the Re = 1e4 attractor's std is ≈ 4.4)

    def __post_init__(self):
        check_sizes(self, ("reynolds", "solver_grid", "output_grid", "dt", "steps_per_snapshot",
                           "forcing_wavenumber", "initial_peak_wavenumber"),
                    ("spinup_steps", "drag", "initial_rms"))
        for name in ("solver_grid", "output_grid"):
            if getattr(self, name) % 2:
                raise ValueError(f"KolmogorovParams.{name} must be even, got {getattr(self, name)}")
        if self.output_grid > self.solver_grid:
            raise ValueError(f"KolmogorovParams.output_grid={self.output_grid} exceeds solver_grid="
                             f"{self.solver_grid}; snapshots are truncations, lower output_grid")


PRESETS = {
    # Thermalizer reference: Re = 1e4 on 512², downsampled to 64².
    "paper": KolmogorovParams(),
    # Re = 1e3 on 128². Measured: max |u| ≈ 4, so CFL ≈ 0.1 at dt = 1e-3 (dt stays); the mean
    # enstrophy spectrum matches a 256² run within ~10 % for k < 32 (the 64² output's modes), a
    # pile-up shows only near the 2/3 cutoff (k ≳ 36). From the random field the RMS vorticity
    # settles (≈ 4–5.5) within ~3 time units; 5 000 steps (5 units, ≈ 10 s per trajectory on
    # one core) leave that transient behind.
    "cpu": KolmogorovParams(reynolds=1e3, solver_grid=128, spinup_steps=5_000),
}


def solver_grid(params: KolmogorovParams) -> grids.Grid:
    """The jax-cfd grid of the solver: n × n cells on [0, 2π)²."""
    n = params.solver_grid
    return grids.Grid((n, n), domain=((0, DOMAIN_LENGTH), (0, DOMAIN_LENGTH)))


def equation(params: KolmogorovParams) -> equations.NavierStokes2D:
    """jax-cfd's ForcedNavierStokes2D with `params`' viscosity, drag and forcing wavenumber."""
    def forcing(grid):
        return forcings.kolmogorov_forcing(grid, k=params.forcing_wavenumber,
                                           offsets=((0, 0), (0, 0)))
    return equations.NavierStokes2D(1 / params.reynolds, solver_grid(params), drag=params.drag,
                                    smooth=True, forcing_fn=forcing)


def _wavenumbers(n: int) -> tuple[jax.Array, jax.Array]:
    """Integer wavenumbers (kx, ky) of an (n, n//2 + 1) rfft2 array on a 2π domain."""
    return jnp.meshgrid(jnp.fft.fftfreq(n, 1 / n), jnp.fft.rfftfreq(n, 1 / n), indexing="ij")


def random_vorticity_hat(key: jax.Array, params: KolmogorovParams) -> jax.Array:
    """A band-limited random vorticity, rfft2 (n, n//2 + 1) complex64: white noise filtered by
    (k/k0)² exp(1 − (k/k0)²) (zero mean, peak at k0), dealiased, scaled to RMS `initial_rms`."""
    n = params.solver_grid
    kx, ky = _wavenumbers(n)
    ratio2 = (kx ** 2 + ky ** 2) / params.initial_peak_wavenumber ** 2
    envelope = ratio2 * jnp.exp(1 - ratio2) * brick_wall_filter_2d(solver_grid(params))
    noise = jnp.fft.rfft2(jax.random.normal(key, (n, n), dtype=jnp.float32)) * envelope
    field = jnp.fft.irfft2(noise, s=(n, n))
    scale = params.initial_rms / jnp.maximum(jnp.sqrt(jnp.mean(field ** 2)), 1e-30)
    return (noise * scale).astype(jnp.complex64)


def spectral_downsample(w_hat: jax.Array, m: int) -> jax.Array:
    """The real (m, m) field [x, y] holding the modes |kx|, |ky| < m/2 of the rfft2 `w_hat`
    (n, n//2 + 1) of an n × n field; the m-grid Nyquist modes are dropped. Values keep their
    physical amplitude: a field with only those modes is sampled exactly at every (n/m)-th point."""
    n, h = w_hat.shape[-2], m // 2
    low = jnp.concatenate([w_hat[..., :h, :h + 1], w_hat[..., n - h:, :h + 1]], axis=-2)
    keep = jnp.ones((m, h + 1), dtype=w_hat.real.dtype).at[h, :].set(0).at[:, h].set(0)
    return jnp.fft.irfft2(low * keep, s=(m, m)) * (m / n) ** 2


class KolmogorovFlow(System):
    """Kolmogorov flow; the state is the (B, n, n//2 + 1) complex64 spectral vorticity."""

    name = "kolmogorov"
    channel_names = ("vorticity",)
    presets = PRESETS
    recording_fields = ("spinup_steps", "steps_per_snapshot", "output_grid")

    @property
    def stability_hint(self) -> str:  # type: ignore[override]
        return f" or raise solver_grid (now {self.params.solver_grid})"

    def __init__(self, preset: str, params: KolmogorovParams):
        super().__init__(preset, params)
        step = time_stepping.crank_nicolson_rk4(equation(params), params.dt)

        def steps(w_hat, count):
            return jax.lax.fori_loop(0, count, lambda _, w: step(w), w_hat)

        def snapshot(w_hat):
            w_hat = steps(w_hat, params.steps_per_snapshot)
            return w_hat, spectral_downsample(w_hat, params.output_grid).T  # [x, y] → [y, x]

        def start(seed):
            return steps(random_vorticity_hat(jax.random.PRNGKey(seed), params),
                         params.spinup_steps)

        self._start = jax.jit(jax.vmap(start))
        self._snapshot = jax.jit(jax.vmap(snapshot))

    @property
    def grid(self) -> int:
        return self.params.output_grid

    @property
    def domain_length(self) -> float:
        return DOMAIN_LENGTH

    def initial_states(self, seeds: Sequence[int]) -> jax.Array:
        state = self._start(jnp.asarray(check_seeds(seeds)))
        check_finite(self.name, np.asarray(state), self.divergence_fix())
        return state

    def advance(self, state: jax.Array, n_snapshots: int) -> tuple[jax.Array, np.ndarray]:
        require_positive("n_snapshots", n_snapshots)
        frames = []
        for _ in range(n_snapshots):  # one compiled call per snapshot: no recompile per count
            state, frame = self._snapshot(state)
            frames.append(frame)
        snaps = np.asarray(jnp.stack(frames, axis=1)[:, :, None], dtype=np.float32)
        check_finite(self.name, snaps, self.divergence_fix())
        return state, snaps

    def state_to_arrays(self, state: jax.Array) -> dict[str, np.ndarray]:
        w_hat = np.asarray(state)
        return dict(zip(_STATE_KEYS, (w_hat.real.copy(), w_hat.imag.copy()), strict=True))

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> jax.Array:
        n = self.params.solver_grid
        check_state_arrays(self.name, arrays, dict.fromkeys(_STATE_KEYS, (n, n // 2 + 1)),
                           "was it saved with another solver_grid?")
        real, imag = (np.asarray(arrays[key], dtype=np.float32) for key in _STATE_KEYS)
        w_hat = np.empty(real.shape, dtype=np.complex64)
        w_hat.real, w_hat.imag = real, imag
        return jnp.asarray(w_hat)
