"""The PyMC backend's ADVI and Pathfinder set-up: the VI methods and optimisers, the convergence
check, and what it keeps on disk per exact cell beyond the model's functions: the prepared
ADVI (its approximation and compiled step) and pymc-extras' single-path Pathfinder function, so
that a later identical run compiles nothing (docs/performance.md, section 5).
"""

from __future__ import annotations

from contextlib import contextmanager
from weakref import WeakKeyDictionary

import pymc as pm
import pytensor
import pymc.variational as pmvi

from backends.fit import OPTIMIZERS, FitSettings
from models.data import Dataset
from models.errors import MixbenchError
from models.pymc_model import build_model
from backends.pymc.vi_store import advi as stored_advi
from backends.pymc.vi_store import single_path
from backends.pymc.model import _Compiled

VI_METHODS = {
    "advi-meanfield": ("advi", False),
    "advi-fullrank": ("fullrank_advi", False),
    "advi-minibatch-meanfield": ("advi", True),
    "advi-minibatch-fullrank": ("fullrank_advi", True),
}
OPTIMIZERS = OPTIMIZERS["pymc"]
PATHFINDER_MAXITER = 1000


# --------------------------------------------------------------------------------------------
# Compiled once, kept on disk: PyMC's own NUTS set-up, ADVI, pymc-extras' Pathfinder
# --------------------------------------------------------------------------------------------

def _prepared_advi(entry: _Compiled, dataset: Dataset, method: str, settings: FitSettings, seed: int):
    """PyMC's ADVI (``pm.fit(method=...)`` is these classes) after ``fit(0)``, which builds the
    approximation and compiles its step function; ``refine()`` then runs the iterations, so the
    two are timed apart.

    The prepared object is stored whole (backends/pytensor_store.py) under spec, data, method and
    VI settings, not the seed, and kept in the process (backends/pymc/vi_store.py): every fit
    resets its parameters and gives its random streams those PyMC seeds from ``seed``.
    """
    pm_method, minibatch = VI_METHODS[method]

    def build(build_seed: int):
        model = entry.model
        if minibatch:
            # The step function draws a fresh batch of rows each iteration; each batch's log
            # likelihood is scaled by N / batch_size unless minibatch_total_size is False.
            model = build_model(entry.spec, dataset.x, dataset.y, batch_size=settings.batch_size,
                                total_size=settings.minibatch_total_size)
        inference_cls = pm.ADVI if pm_method == "advi" else pm.FullRankADVI
        with model:
            inference = inference_cls(random_seed=build_seed)
            inference.fit(0, obj_optimizer=_optimizer(settings), progressbar=False)
        return inference

    description = entry.description(function="advi", method=method, data=dataset.digest(),
                                    optimizer=settings.optimizer, learning_rate=settings.learning_rate,
                                    batch_size=settings.batch_size if minibatch else None,
                                    total_size=settings.minibatch_total_size if minibatch else None)
    return stored_advi(description, build, seed)


_DRAW_FUNCTIONS: WeakKeyDictionary = WeakKeyDictionary()


def _draw_function(inference):
    """f(standard normal noise, shape (draws, ddim)) -> (unconstrained draws, shape (draws, ddim),
    their log q without the minibatch scaling, shape (draws,)) of the inference's approximation,
    built once per prepared inference: its parameters are shared variables, read at each call,
    so one function serves every seed ``_prepared_advi`` resets it for."""
    if inference not in _DRAW_FUNCTIONS:
        group = inference.approx.groups[0]
        _DRAW_FUNCTIONS[inference] = pytensor.function([group.symbolic_initial],
                                                       [group.symbolic_random, group.symbolic_logq_not_scaled])
    return _DRAW_FUNCTIONS[inference]


@contextmanager
def _stored_single_pathfinder(entry: _Compiled, dataset: Dataset):
    """pymc-extras' Pathfinder with its compiled single-path function stored on disk.

    ``multipath_pathfinder`` builds (and times as its compile) one seedable single-path function
    per call, from ``make_single_pathfinder_fn``, and offers no way to pass one in; for this block
    its module's reference is swapped for a version that keeps the function (cloudpickle) under
    the data and every argument, so an identical run loads it instead of compiling, and keeps it
    in the process for later seeds (backends/pymc/vi_store.py). The paths
    themselves are pymc-extras' own, seeded per call as before. Its graphs are keyed differently
    by Numba once unpickled, hence the warm-up path (backends/pytensor_store.py).
    """
    from pymc_extras.inference.pathfinder import multipath

    original = multipath.make_single_pathfinder_fn

    def stored(model, **kwargs):
        description = entry.description(function="single_pathfinder", data=dataset.digest(),
                                        arguments={name: repr(value) for name, value in sorted(kwargs.items())})
        return single_path(description, lambda: original(model, **kwargs))

    multipath.make_single_pathfinder_fn = stored
    try:
        yield
    finally:
        multipath.make_single_pathfinder_fn = original


def _optimizer(settings: FitSettings):
    if settings.optimizer not in OPTIMIZERS:
        raise MixbenchError(
            f"settings.optimizer: unknown {settings.optimizer!r}; PyMC has {', '.join(OPTIMIZERS)}"
        )
    return getattr(pmvi, settings.optimizer)(learning_rate=settings.learning_rate)


class _ConvergenceCheck:
    """The thread's CheckParametersConvergence callback, remembering whether it stopped the fit."""

    def __init__(self, tolerance: float):
        self.check = pmvi.callbacks.CheckParametersConvergence(tolerance=tolerance)
        self.stopped_at: int | None = None

    def __call__(self, approx, loss, i):
        try:
            self.check(approx, loss, i)
        except StopIteration:
            self.stopped_at = i
            raise
