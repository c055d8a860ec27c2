"""Figures of `sns-engine plot` and of studies: labels, units, colour bars, member caps, counts
that all show, styles that keep coinciding curves visible, and all-or-nothing writes."""

import dataclasses
import importlib

import numpy as np
import pytest

from sns_engine import plots
from sns_engine.data import TrajectoryStore
from sns_engine.data.cf import UNITS
from sns_engine.data.store import StoreError, StoreSpec
from sns_engine.systems import _CLASSES, SYSTEMS

QG_INVERSION = {"length": 1e6, "f1": 4e-9, "f2": 4e-10}


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """A real 2-member, 4-step ensemble of the embedded default bundle (Kolmogorov 64²)."""
    from sns_engine.api import rollout

    out = tmp_path_factory.mktemp("ensemble") / "e.zarr"
    rollout(batch=2, steps=4, out=out, quiet=True)
    return out


def _store(path, spec: StoreSpec, seed: int = 0):
    """A store of `spec` filled with random fields of a typical size per system."""
    store = TrajectoryStore.create(path, spec)
    scale = 1e-5 if spec.system == "qg" else 4.0
    rng = np.random.default_rng(seed)
    store.fields[:] = (scale * rng.standard_normal(store.fields.shape)).astype(np.float32)
    return TrajectoryStore(path)


def _qg(path, trajectories: int = 20, snapshots: int = 6):
    spec = StoreSpec(system="qg", preset="cpu", params={"inversion": QG_INVERSION}, channels=2,
                     channel_names=("q_upper", "q_lower"), grid=16, snapshot_dt=36_000.0,
                     domain_length=1e6, trajectories=trajectories, snapshots=snapshots, seed=0,
                     trajectory_batch=trajectories, time_chunk=snapshots)
    return _store(path, spec)


def _solver_copy(ensemble, path):
    """Solver data on the ensemble's grid and system (a compatible reference)."""
    spec = dataclasses.replace(TrajectoryStore(ensemble).spec, trajectories=3, snapshots=8,
                               trajectory_batch=3, time_chunk=8)
    _store(path, spec, seed=1)
    return path


def _texts(fig):
    """Every title, super-title and label text of a figure and its sub-figures."""
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    for sub in fig.subfigs:
        out += _texts(sub)
    return [t for t in out if t]


def _colourbars(fig):
    """Labels of the colour bars of a figure (their axes carry a `_colorbar`)."""
    return [ax.get_ylabel() for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def _images(fig):
    return [ax for ax in fig.axes if ax.images]


def _legends(fig):
    return [[legend.get_title().get_text()] + [t.get_text() for t in legend.get_texts()]
            for legend in (ax.get_legend() for ax in fig.axes) if legend is not None]


def test_units_name_every_channel_of_every_system():
    for name in SYSTEMS:
        module, cls = _CLASSES[name]
        channels = getattr(importlib.import_module(module), cls).channel_names
        assert tuple(UNITS[name].channels) == channels
        assert all(c.units for c in UNITS[name].channels.values())


def test_kolmogorov_snapshots_show_every_member_with_time_name_units_and_colour_bar(ensemble):
    fig = plots.snapshot_figure(TrajectoryStore(ensemble))
    texts = _texts(fig)
    assert len(_images(fig)) == 2 * 3  # both members at the first, middle and last saved step
    assert [t for t in texts if "t = " in t] == ["ω, t = 0.005", "ω, t = 0.015", "ω, t = 0.02"]
    assert "kolmogorov ensemble snapshots: all 2 members" in texts
    assert _colourbars(fig) == ["ω vorticity (1/time unit)"]
    assert {"x", "y", "member 0", "member 1"} <= set(texts)
    ticks = [t.get_text() for t in _images(fig)[-1].get_xticklabels()]
    assert ticks == ["0", "3.142", "6.283"]  # readable ticks at 0, L/2, L
    assert min(t.get_fontsize() for t in _images(fig)[-1].get_xticklabels()) >= 7
    image = _images(fig)[0].images[0]
    assert image.get_extent() == pytest.approx([0, 2 * np.pi, 0, 2 * np.pi])
    low, high = image.get_clim()
    assert low == -high > -np.inf and image.get_cmap().name.startswith("RdBu")


def test_qg_snapshots_cap_members_and_label_each_layer(tmp_path):
    fig = plots.snapshot_figure(_qg(tmp_path / "qg.zarr"))
    texts = _texts(fig)
    assert len(_images(fig)) == 16 * 3 * 2
    assert "qg solver data snapshots: 16 of 20 trajectories (0–15)" in texts
    assert _colourbars(fig) == ["q₁ upper-layer PV anomaly (1/s)", "q₂ lower-layer PV anomaly (1/s)"]
    assert "q₁, t = 0.4167 days" in texts and "q₂, t = 2.5 days" in texts
    assert {"x (km)", "y (km)"} <= set(texts)


def test_snapshots_mark_diverged_members(tmp_path):
    store = _qg(tmp_path / "qg.zarr", trajectories=3)
    TrajectoryStore(store.path, mode="r+").fields[1, -1] = np.nan
    fig = plots.snapshot_figure(store)
    assert fig.texts[0].get_text() == "qg solver data snapshots: all 3 trajectories; grey: NaN/Inf"
    assert all(np.isfinite(ax.images[0].get_clim()).all() for ax in _images(fig))


def test_spectrum_figure_labels_axes_and_legends_by_field(ensemble, tmp_path):
    reference = TrajectoryStore(_solver_copy(ensemble, tmp_path / "ref.zarr"))
    fig = plots.spectrum_figure(TrajectoryStore(ensemble), reference, windows=2)
    (ax,) = fig.axes
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_xlabel() == "wavenumber k"
    assert ax.get_ylabel() == "energy spectrum E(k) (nondimensional)"
    assert ax.get_title() == "kinetic energy spectrum"
    assert _legends(fig) == [["computed from ω vorticity (1/time unit)",
                              "ensemble, t ∈ [0.005, 0.01]", "ensemble, t ∈ [0.015, 0.02]",
                              "solver reference (all times)"]]
    assert fig.texts[0].get_text() == "kolmogorov energy spectra, mean of 2 members, t ∈ [0.005, 0.02]"


def test_qg_spectrum_has_one_panel_per_layer_in_si_units(tmp_path):
    fig = plots.spectrum_figure(_qg(tmp_path / "qg.zarr", trajectories=2))
    assert [ax.get_title() for ax in fig.axes] == ["upper-layer kinetic energy spectrum",
                                                   "lower-layer kinetic energy spectrum"]
    assert {ax.get_xlabel() for ax in fig.axes} == {"wavenumber k (rad/m)"}
    assert {ax.get_ylabel() for ax in fig.axes} == {"energy spectrum E(k) (m³/s²)"}
    assert [legend[0] for legend in _legends(fig)] == [
        "computed from q₁ upper-layer PV anomaly (1/s)", "computed from q₂ lower-layer PV anomaly (1/s)"]
    assert "t ∈ [0.4167, 2.5] days" in fig.texts[0].get_text()
    assert "(no solver reference given: plot with --reference STORE)" in fig.texts[0].get_text()


def test_plot_all_writes_the_complete_labelled_set(ensemble, tmp_path):
    reference = _solver_copy(ensemble, tmp_path / "ref.zarr")
    folder = tmp_path / "figures"
    written = plots.plot_command("all", ensemble, folder, reference)
    names = ["autocorrelation_stability.png", "error_over_time.png", "levels.png", "snapshots.png",
             "spectra.png"]
    assert sorted(p.name for p in written) == names
    assert sorted(p.name for p in folder.iterdir()) == names  # no temporary files left
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_report_figures_name_fields_and_units(ensemble, tmp_path):
    from sns_engine.diagnostics.evaluate import evaluate

    reference = _solver_copy(ensemble, tmp_path / "ref.zarr")
    report = evaluate(ensemble, reference, windows=2)
    figures = plots.report_figure_set(report, plots.store_units(TrajectoryStore(ensemble)))
    (ax,) = figures["spectra.png"].axes
    assert ax.get_ylabel() and ax.get_xlabel() and ax.get_yscale() == "log"
    assert any("computed from ω vorticity" in text for legend in _legends(figures["spectra.png"])
               for text in legend)
    assert "t ∈ [0, 0.02]" in figures["spectra.png"].texts[0].get_text()
    w1 = figures["error_over_time.png"].axes[1]
    legend = [t.get_text() for t in w1.get_legend().get_texts()]
    assert legend == ["ω vorticity (1/time unit)"]
    acf, survival = figures["autocorrelation_stability.png"].axes
    assert acf.get_xlabel() == "lag (time units)" and survival.get_xlabel() == "time (time units)"
    assert any(t.startswith("1/e") for t in _legends(figures["autocorrelation_stability.png"])[0])
    survival_x = survival.get_lines()[0].get_xdata()
    assert len(survival_x) == 4 + 1  # every saved state and 0
    for ax in figures["levels.png"].axes:  # every count shows: log counts, a dot per value
        assert ax.get_yscale() == "log" and len(ax.get_lines()[0].get_xdata()) >= 1
    none = {"value": [], "count": []}  # the bare emulator estimates no levels: no empty figure
    assert "levels.png" not in plots.report_figure_set({**report, "levels": {"n_x": none, "n_y": none}})


@pytest.mark.parametrize("kind", ["all", "spectrum", "snapshots"])
def test_plot_with_an_incompatible_reference_writes_nothing(ensemble, tiny_kolmogorov, tmp_path, kind):
    out = tmp_path / "figures" / ("" if kind == "all" else f"{kind}.png")
    with pytest.raises(StoreError, match="grid=64 but the reference .* has 32"):
        plots.plot_command(kind, ensemble, out, tiny_kolmogorov)
    assert not (tmp_path / "figures").exists()


def test_plot_all_on_a_bad_store_writes_nothing(ensemble, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a sns_engine store"):
        plots.plot_command("all", ensemble, tmp_path / "figures", tmp_path / "empty")
    assert not (tmp_path / "figures").exists()


def test_write_figures_is_all_or_nothing(ensemble, tmp_path):
    store = TrajectoryStore(ensemble)
    old = tmp_path / "spectrum.png"
    old.write_bytes(b"earlier figure")
    (tmp_path / "file").write_text("not a folder")
    figures = {old: plots.spectrum_figure(store),
               tmp_path / "file" / "snapshots.png": plots.snapshot_figure(store)}
    with pytest.raises(OSError):
        plots.write_figures(figures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "spectrum.png"]
    assert old.read_bytes() == b"earlier figure"

    class Broken:
        def get_layout_engine(self):
            return None

        def set_layout_engine(self, _):
            pass

        def savefig(self, *args, **kwargs):
            raise RuntimeError("rendering failed")

    with pytest.raises(RuntimeError, match="rendering failed"):
        plots.write_figures({tmp_path / "a.png": plots.spectrum_figure(store), tmp_path / "b.png": Broken()})
    assert not (tmp_path / "a.png").exists()


def test_count_histogram_shows_every_count_on_a_log_axis():
    from matplotlib.figure import Figure

    from sns_engine.plots.common import count_histogram

    ax = Figure().subplots()
    hist = {"value": [0, 1, 2, 19, 900], "count": [30_000, 5_000, 200, 7, 1]}
    count_histogram(ax, hist, "estimated level n̂_x")
    assert list(ax.get_lines()[0].get_ydata()) == hist["count"]  # a dot for each, however small
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 1
    assert ax.get_xscale() == "symlog" and "symlog axis" in ax.get_xlabel()
    narrow = Figure().subplots()
    count_histogram(narrow, {"value": [0, 3], "count": [5, 2]}, "moves")
    assert narrow.get_xscale() == "linear" and narrow.get_xlabel() == "moves"


@pytest.fixture(scope="module")
def study_inputs(ensemble, tmp_path_factory):
    """Reports and stores of a small study: the ensemble twice (identical curves), a copy of it
    whose member 0 was flagged (frozen) at step 1, and a solver copy as the floor."""
    import shutil

    import zarr

    from sns_engine.diagnostics.evaluate import evaluate
    from sns_engine.study.outcomes import survival

    folder = tmp_path_factory.mktemp("study")
    reference = _solver_copy(ensemble, folder / "ref.zarr")
    control = folder / "control.zarr"  # the members' initial states, then one per saved state
    spec = TrajectoryStore(ensemble).spec
    _store(control, dataclasses.replace(spec, trajectories=2, snapshots=spec.snapshots + 1,
                                        trajectory_batch=2, time_chunk=spec.snapshots + 1), seed=2)
    frozen = folder / "frozen.zarr"
    shutil.copytree(ensemble, frozen)
    zarr.open_group(frozen, mode="r+")["flagged_at"][0] = 0.01  # step 1 ends at (1 + 1) · 0.005
    report = evaluate(ensemble, reference, windows=2)
    reports = {"solver": evaluate(control, reference, windows=2, start=1), "emulator": report,
               "copy": report, "thermalizer": evaluate(frozen, reference, windows=2)}
    # against random reference fields every member is unstable at once; let the flag come first
    stability = reports["thermalizer"]["stability"]
    stability["times"][0], stability["rule"][0] = 0.01, "flag"
    stores = {"solver": (TrajectoryStore(control), 1), "emulator": (TrajectoryStore(ensemble), 0),
              "copy": (TrajectoryStore(ensemble), 0), "thermalizer": (TrajectoryStore(frozen), 0)}
    return reports, {m: survival(r) for m, r in reports.items()}, stores


def test_study_figures_keep_every_method_visible_and_labelled(study_inputs):
    reports, survival, stores = study_inputs
    u = plots.store_units(stores["emulator"][0])
    figures = plots.study_figure_set(reports, u, survival, stores)
    assert sorted(figures) == ["autocorrelation.png", "band_errors.png", "error_over_time.png",
                               "refinement_steps.png", "snapshots.png", "survival.png"]
    errors = figures["error_over_time.png"]
    assert len(errors.legends) == 1 and not _legends(errors)  # one legend below, none over a panel
    lines = {line.get_label(): line for line in errors.axes[0].get_lines()}
    assert lines["emulator"].get_marker() != lines["copy"].get_marker()
    assert lines["emulator"].get_linestyle() != lines["copy"].get_linestyle()
    assert lines["emulator"].get_linewidth() > lines["copy"].get_linewidth()  # drawn under it
    assert max(len(line) for ax in errors.axes for line in ax.get_ylabel().split("\n")) < 40
    assert [ax.get_title().split(":")[0] for ax in figures["band_errors.png"].axes] == [
        "low k", "mid k", "high k"]

    ax = figures["survival.png"].axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "copy (same curve as emulator)" in labels
    curve = next(line for line in ax.get_lines() if line.get_label() == "emulator")
    assert len(curve.get_xdata()) == reports["emulator"]["snapshots"] + 1  # every saved state
    assert any(line.get_marker() == "|" for line in ax.get_lines())  # the frozen member's tick
    assert "censored" in ax.get_title()

    acf = figures["autocorrelation.png"].axes[0]
    assert acf.get_xlabel() == "lag (time units)"
    assert any(t.get_text().startswith("1/e") for t in acf.get_legend().get_texts())
    refining = figures["refinement_steps.png"].axes
    assert [a.get_title().split("\n")[0] for a in refining] == [
        m for m in reports if (reports[m].get("moves") or {}).get("mean")]
    assert all(a.get_yscale() == "log" for a in refining)

    texts = [t.get_text() for ax in figures["snapshots.png"].axes for t in ax.texts]
    assert "thermalizer\nflagged and frozen\nat t = 0.01" in texts
    assert any(t == "frozen since t = 0.01" for t in texts)
    assert not any("frozen" in t for t in texts if t.startswith(("emulator", "copy")))
