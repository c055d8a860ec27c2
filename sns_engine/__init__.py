"""sns_engine: self-refining neural surrogates (SNS) of chaotic dynamical systems.

The public API is six functions, defined in `sns_engine.api`:

    rollout(bundle=None, *, batch, steps, path="left_down", out=None, ...)   ensemble rollout
    load_bundle(path, device="cpu")                                          models + schedule
    generate_data(system, out, trajectories, snapshots, ...)                 solver data → store
    train(model, data, out, *, steps, batch_size, lr, ...)                   train into a bundle
    evaluate(ensemble, reference, *, windows, ...)                           metrics (dict)
    calibrate(bundle, data, *, samples, ...)                                 level-head calibration

and `import_authors(refiner, *, system, out, ...)` (sns_engine.authors): a bundle from checkpoints
trained with the authors' code.
"""

from __future__ import annotations

import importlib

# The subpackage sns_engine.train is imported first, so that the function `train` imported below
# is `sns_engine.train` for good: importing the subpackage later would rebind the name.
importlib.import_module("sns_engine.train")

from sns_engine._version import __version__  # noqa: E402
from sns_engine.api import calibrate, evaluate, generate_data, load_bundle, rollout, train  # noqa: E402

__all__ = ["__version__", "calibrate", "evaluate", "generate_data", "import_authors", "load_bundle",
           "rollout", "train"]


def __getattr__(name: str):
    """`sns_engine.import_authors`, imported on first use (it needs torch; `import sns_engine` stays
    cheap)."""
    if name == "import_authors":
        from sns_engine.authors import import_authors

        return import_authors
    raise AttributeError(f"module 'sns_engine' has no attribute {name!r}")
