"""Names and units of every stored quantity, in one table: figures label their axes with it and
stores write it as CF attributes (`units`, `long_name` on every variable), so a store opened with
`xarray.open_zarr` says what it holds.

Stores hold time and length in the solver's units, which the attributes name as UDUNITS strings
(`cf_time`, `cf_length`, a channel's `cf_units`; "1" is nondimensional). Figures divide them by
`time_scale` / `length_scale` to show `time_unit` / `length_unit`; an empty display unit means
nondimensional. Grid point j of a side lies at x_j = (j + `grid_offset`)·L/n.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Channel:
    """One stored channel: symbol and description (its CF long_name), the unit figures show
    (`units`) and the unit the store's attributes give (`cf_units`, UDUNITS)."""

    symbol: str
    description: str
    units: str
    cf_units: str = ""

    @property
    def label(self) -> str:
        """E.g. 'q₁ upper-layer PV anomaly (1/s)'."""
        name = " ".join(part for part in (self.symbol, self.description) if part)
        return f"{name} ({self.units})" if self.units else name


@dataclasses.dataclass(frozen=True)
class Units:
    """Names and units of a system's stored quantities (see the module docstring)."""

    channels: dict[str, Channel]
    time_unit: str = ""
    time_scale: float = 1.0
    length_unit: str = ""
    length_scale: float = 1.0
    wavenumber_unit: str = ""  # of the solver's wavenumbers (not scaled)
    energy_spectrum_unit: str = ""  # of E(k) per unit solver wavenumber (not scaled)
    cf_time: str = "1"
    cf_length: str = "1"
    grid_offset: float = 0.0


UNITS = {
    # nondimensional: domain [0, 2π)², ν = 1/Re (the time unit is the one of the solver's dt);
    # jax-cfd samples its fields (and its forcing sin(k_f y)) at x_j = j·2π/n
    "kolmogorov": Units({"vorticity": Channel("ω", "vorticity", "1/time unit", "1")}),
    # pyqg: SI units; PV anomaly q = ∇²ψ + F(ψ' − ψ) [1/s], time [s], length [m], cell centres
    "qg": Units({"q_upper": Channel("q₁", "upper-layer PV anomaly", "1/s", "1/s"),
                 "q_lower": Channel("q₂", "lower-layer PV anomaly", "1/s", "1/s")},
                time_unit="days", time_scale=86_400.0, length_unit="km", length_scale=1e3,
                wavenumber_unit="rad/m", energy_spectrum_unit="m³/s²", cf_time="s", cf_length="m",
                grid_offset=0.5),
}

# long_name and units of the other arrays ("time": the store's time unit; "": a label, none)
VARIABLES = {
    "trajectory": ("solver trajectory", "1"),
    "member": ("ensemble member id (its noise and initial perturbation are keyed by it)", "1"),
    "seed": ("seed of the trajectory's random initial condition", "1"),
    "progress": ("states on disk per block of trajectories or members (resume bookkeeping; "
                 "-1: none yet)", "1"),
    "substep": ("physical step within the save interval that ends at time", "1"),
    "estimate": ("which level head: n_x reads the proposed frame, n_y the conditioning frame", ""),
    "levels": ("diffusion level the head estimated before refining (missing: not estimated)", "1"),
    "moves": ("refinement network forwards spent on the step (missing: no step)", "1"),
    "flags": ("divergence flags of the state (0: a true state; else the member is frozen at its "
              "last good state; -1: not written yet)", "1"),
    "flagged_at": ("time at which the member's step was rejected and the member frozen (NaN: "
                   "never)", "time"),
}


def units(system: str, channel_names: Sequence[str]) -> Units:
    """The units of `system`; channels or systems not in UNITS get their stored name and no
    unit."""
    known = UNITS.get(system, Units({}))
    channels = {n: known.channels.get(n, Channel(n, "", "")) for n in channel_names}
    return dataclasses.replace(known, channels=channels)


def attributes(name: str, u: Units, ensemble: bool) -> dict[str, Any]:
    """The CF attributes (long_name, units, …) of the stored variable `name` of a store of `u`'s
    system (an ensemble store's time starts at its initial state, a solver store's after spin-up)."""
    if name == "fields":
        channels = list(u.channels.values())
        found = {c.cf_units for c in channels}
        return {"long_name": ", ".join(c.description or n for n, c in zip(u.channels, channels,
                                                                           strict=True)),
                "units": found.pop() if len(found) == 1 else ""}
    if name == "time":
        origin = "the members' initial state" if ensemble else "the end of the solver's spin-up"
        return {"long_name": f"model time since {origin}", "units": u.cf_time, "axis": "T"}
    if name in ("x", "y"):
        return {"long_name": f"{name} position of the grid point in the periodic domain",
                "units": u.cf_length, "axis": name.upper()}
    if name == "channel":
        return {"long_name": "stored field: " + "; ".join(
            f"{n}: {c.label}" for n, c in u.channels.items())}
    long_name, unit = VARIABLES[name]
    return {"long_name": long_name,
            **({"units": u.cf_time if unit == "time" else unit} if unit else {})}
