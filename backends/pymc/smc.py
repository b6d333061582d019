"""Sequential Monte Carlo in the PyMC backend: PyMC's ``pm.sample_smc`` on the mixture model.

``pm.sample_smc`` runs adaptive tempered SMC (backends/smc.py) with its default kernel, the
independent Metropolis-Hastings mutation of Minson, Simons & Beck (2013) as PyMC implements it
(proposals from a Gaussian fitted to the particles, steps until their correlation falls below
``correlation_threshold``), ``FitSettings.chains`` runs of ``FitSettings.draws`` particles each, one
after another in this process. Its log marginal likelihood is the product of the mean incremental
weights (PyMC's ``log_marginal_likelihood``, the last stage's).
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm

from backends.base import Fit, FitSettings, canonical_datatree, stopwatch
from backends.methods import SMC_GROUP
from backends.smc import TARGET_ESS, smc_group
from models.data import Dataset
from models.pymc_model import build_model, canonical_values
from models.spec import MixtureSpec

ENGINE = "pymc+smc"
_OUTPUTS = ("w", "b", "sigma", "nu", "pi")


def fit_smc(backend, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
    """Fit ``spec`` to ``dataset`` by ``pm.sample_smc``: the PyMC backend's ``smc`` runner.

    Parameters
    ----------
    backend : backends.base.Backend
        The PyMC backend (its name goes on the Fit); called as its method-table runner.
    spec, dataset, method, settings, seed
        As ``Backend.fit`` passes them: ``settings.chains`` runs of ``settings.draws`` particles.

    Returns
    -------
    Fit
        Status ok; draws (chain, draw) = (runs, particles) with group ``SMC_GROUP``
        (backends.smc.smc_group); timings ``sampling`` (PyMC compiles its functions inside
        ``pm.sample_smc``, so compile is part of it) and ``extraction``.
    """
    timings: dict[str, float] = {}
    with stopwatch(timings, "compile"):
        model = build_model(spec, dataset.x, dataset.y)
    start = time.perf_counter()
    with model:
        trace = pm.sample_smc(draws=settings.draws, chains=settings.chains, cores=1, random_seed=seed,
                              threshold=TARGET_ESS, progressbar=False, compute_convergence_checks=False)
    timings["sampling"] = time.perf_counter() - start
    with stopwatch(timings, "extraction"):
        post = trace.posterior
        lead = (settings.chains, settings.draws)
        posterior = canonical_values(spec, {n: post[n].values for n in _OUTPUTS if n in post}, lead)
        stats = trace.sample_stats
        # Per run, its stages' values (the evidence NaN until the last stage, then the estimate).
        betas = _per_run(stats["beta"].values)
        log_z = [float(v[-1]) for v in _per_run(stats["log_marginal_likelihood"].values)]
        draws = canonical_datatree(spec, posterior, attrs={"/": {"backend": backend.name, "engine": ENGINE}})
        draws[SMC_GROUP] = smc_group(settings.draws, betas, log_z, ENGINE)
    return Fit(backend=backend.name, method=method, status="ok", engine=ENGINE, draws=draws, timings=timings,
               precision=settings.precision)


def _per_run(values: np.ndarray) -> list[np.ndarray]:
    """A sample statistic of ``pm.sample_smc`` as one float array per run, over its stages.

    PyMC keeps one list of per-stage values per run: an object array of lists (runs of different
    lengths), a (runs, stages) array (runs of one length), or one run's (stages,) array.
    """
    arr = np.asarray(values)
    if arr.dtype == object and np.ndim(arr.flat[0]) > 0:
        return [np.asarray(v, dtype=float).ravel() for v in arr.ravel()]
    arr = arr.astype(float)
    return [row for row in (arr if arr.ndim == 2 else arr[None])]
