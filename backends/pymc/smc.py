"""Sequential Monte Carlo in the PyMC backend: PyMC's ``pm.sample_smc`` on the mixture model.

``pm.sample_smc`` runs adaptive tempered SMC (backends/smc.py) with its default kernel, the
independent Metropolis-Hastings mutation of Minson, Simons & Beck (2013) as PyMC implements it
(proposals from a Gaussian fitted to the particles, steps until their correlation falls below
``correlation_threshold``), ``FitSettings.chains`` runs of ``FitSettings.draws`` particles each, one
after another in this process. Its log marginal likelihood is the product of the mean incremental
weights (PyMC's ``log_marginal_likelihood``, the last stage's).

Two things the model (models/pymc_model.py) needs that ``pm.sample_smc`` does not do by itself:

- The initial particles. PyMC draws them from ``make_initial_point_expression``, which takes a
  variable's ``initval`` where it has one (by design since PyMC pull request #7439, "Enforce custom
  initval in SMC"): the ordered intercepts (or first slopes) have one (the ordered transform needs
  an increasing start), so every particle would start at that one point, and the independent
  Metropolis-Hastings proposal, a Gaussian fitted to the particles, has zero variance there: the
  ordered variable never moves. The particles are drawn here from the spec's
  prior instead (``prior_particles``).
- The evidence. ``pm.sample_smc`` tempers ``model.datalogp``, which holds the Potentials as well as
  the likelihood: the ordered prior's normalising constant log K! (a Potential) is counted in the
  likelihood, so PyMC's estimate is log p(y) + log K!; it is taken off.
"""

from __future__ import annotations

import time

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.transforms import Ordered

from backends.base import Fit, FitSettings, canonical_datatree, stopwatch
from backends.methods import SMC_GROUP
from backends.smc import TARGET_ESS, smc_group
from models.data import Dataset
from models.pymc_model import build_model, canonical_values
from models.spec import MixtureSpec

ENGINE = "pymc+smc"
_OUTPUTS = ("w", "b", "sigma", "nu", "pi", "gamma")


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
    pool = prior_particles(model, settings.chains * settings.draws, np.random.default_rng(seed))
    n = settings.draws
    particles = [{name: v[c * n:(c + 1) * n] for name, v in pool.items()} for c in range(settings.chains)]
    with model:
        trace = pm.sample_smc(draws=settings.draws, start=particles, chains=settings.chains, cores=1,
                              random_seed=seed, threshold=TARGET_ESS, progressbar=False,
                              compute_convergence_checks=False)
    timings["sampling"] = time.perf_counter() - start
    with stopwatch(timings, "extraction"):
        post = trace.posterior
        lead = (settings.chains, settings.draws)
        posterior = canonical_values(spec, {n: post[n].values for n in _OUTPUTS if n in post}, lead)
        stats = trace.sample_stats
        # Per run, its stages' values (the evidence NaN until the last stage, then the estimate).
        betas = _per_run(stats["beta"].values)
        log_z = [float(v[-1]) - spec.log_order_constant for v in _per_run(stats["log_marginal_likelihood"].values)]
        draws = canonical_datatree(spec, posterior, attrs={"/": {"backend": backend.name, "engine": ENGINE}})
        draws[SMC_GROUP] = smc_group(settings.draws, betas, log_z, ENGINE)
    return Fit(backend=backend.name, method=method, status="ok", engine=ENGINE, draws=draws, timings=timings,
               precision=settings.precision)


def prior_particles(model: pm.Model, draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``draws`` independent draws of the prior of ``build_model``'s model, on its free (value)
    variables' transformed space: ``pm.sample_smc``'s ``start`` for one run.

    Each free variable is drawn from its distribution, the ordered ones sorted: their components
    are iid (models/spec.py), and sorted iid draws have density K! prod_k phi(x_k) on the ordered
    region, the ordered prior (the model's Normal density there times its Potential K!). Then each
    is mapped by its transform (``Transform.forward``). Returns arrays of shape (draws, *shape)
    keyed by value-variable name (e.g. ``b_ordered__``).

    Source: PyMC's ``Transform.forward``; the ordered prior is models/spec.py's.
    """
    values = pm.draw(model.free_RVs, draws=draws, random_seed=rng)
    out = {}
    for rv, value in zip(model.free_RVs, values, strict=True):
        value = np.asarray(value) if draws > 1 else np.asarray(value)[None]  # pm.draw drops the axis of 1 draw
        transform = model.rvs_to_transforms.get(rv)
        if isinstance(transform, Ordered):
            value = np.sort(value, axis=-1)
        if transform is not None:
            value = transform.forward(pt.as_tensor(value), *rv.owner.inputs).eval()
        out[model.rvs_to_values[rv].name] = np.asarray(value)
    return out


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
