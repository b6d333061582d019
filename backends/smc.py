"""What every backend's sequential Monte Carlo shares: the record of its runs, in the DataTree
group ``backends.methods.SMC_GROUP``.

Adaptive tempered SMC (Del Moral, Doucet & Jasra 2006; Jasra et al. 2011) moves ``draws``
particles from the prior to the posterior through the tempered densities
p(theta) L(theta)^beta, 0 = beta_0 < ... < beta_T = 1, each next beta chosen so that the
importance weights' effective sample size stays at a target share of the particles; after each
reweighting the particles are resampled and moved by MCMC steps that leave the tempered density
invariant. The product of the mean incremental weights estimates the marginal likelihood
p(y) = integral p(theta) L(theta) dtheta (Del Moral et al. 2006, section 3.2). A fit runs
``FitSettings.chains`` independent runs; each is one chain of the canonical DataTree.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr


TARGET_ESS = 0.5  # the share of particles the weights' ESS is held at between stages (PyMC's and BlackJAX's usual)


def smc_group(particles: int, betas: list[np.ndarray], log_evidence: list[float], engine: str) -> xr.DataTree:
    """The record of ``len(betas)`` independent SMC runs, as group ``SMC_GROUP``.

    Parameters
    ----------
    particles : int
        Particles per run.
    betas : list of array_like, one per run
        The run's tempering exponents, from its first stage to its last (1.0).
    log_evidence : list of float, one per run
        The run's estimate of log p(y) (nats, the oracle's convention: every normalising
        constant included).
    engine : str
        What ran it, e.g. ``"pymc+smc"``.

    Returns
    -------
    xarray.DataTree
        Variables ``log_marginal_likelihood`` and ``stages`` (tempering stages after the prior)
        over dim ``chain``; attributes ``particles``, ``engine`` and ``betas`` (JSON, one list per
        run).

    Raises
    ------
    ValueError
        ``betas`` and ``log_evidence`` of different lengths, or a run whose last beta is not 1.
    """
    if len(betas) != len(log_evidence):
        raise ValueError(f"smc_group: {len(betas)} tempering paths for {len(log_evidence)} evidence estimates")
    paths = [np.asarray(b, dtype=float).ravel() for b in betas]
    for c, path in enumerate(paths):
        if path.size == 0 or not np.isclose(path[-1], 1.0):
            raise ValueError(f"smc_group: run {c} ended at beta = {path[-1] if path.size else 'none'}, not 1")
    data = {"log_marginal_likelihood": (("chain",), np.asarray(log_evidence, dtype=float)),
            "stages": (("chain",), np.asarray([p.size for p in paths], dtype=np.int64))}
    attrs = {"particles": int(particles), "engine": engine,
             "betas": json.dumps([[float(v) for v in p] for p in paths])}
    return xr.DataTree(xr.Dataset(data, coords={"chain": np.arange(len(paths))}, attrs=attrs))

