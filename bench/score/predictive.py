"""Predictive accuracy of a fit: leave-one-out expected log predictive density (PSIS-LOO).

elpd_loo = sum_i log p(y_i | y_-i), estimated from the fit's draws by Pareto-smoothed importance
sampling (Vehtari, Gelman & Gabry 2017) with arviz-stats' ``loo``. It needs no truth and no
labelling (each term averages the mixture density over draws), so it compares any two fits of
the same data, as PPL Bench compares PPLs by held-out predictive log likelihood.

- MCMC draws: ``azs.loo`` (relative efficiency from the chains).
- An approximation's own draws (ADVI, Pathfinder without resampling), with log p and log q per
  draw: ``azs.loo_approximate_posterior``, whose weights p/q correct for sampling from q
  (Magnusson et al. 2019).
- Draws importance-resampled towards the posterior (Pathfinder's default): never from the
  resampled draws themselves, whose repeats make the Pareto tail fit fail ("All tail values are
  the same") and count one proposal draw as many. With the proposal kept (group
  ``importance_proposal``, backends.importance), ``azs.loo_approximate_posterior`` on the
  proposal draws with their log p and log q: the weighted form, each LOO weight being
  (p/q)(theta_s) / p(y_i | theta_s). Without it, the distinct resampled draws weighted by how
  often each was chosen (the resampled draws' own weighted form, log p - log q = log count).
- A single point (MAP): no posterior to leave a point out of; NaN.

The pointwise log likelihood is the oracle's (bench.score.problem), on the data's scale. Its size is
draws x N, so the draws are thinned evenly to at most ``max_values / N`` (within
[min_draws, max_draws]); ``loo_draws`` records how many were used. Pareto smoothing runs once per
observation (about 0.3 ms of CPU each in arviz-stats at 1000 draws), so above ``max_obs`` observations elpd_loo is
estimated from a seeded simple random subsample of ``max_obs`` of them as arviz-stats'
``loo_subsample(method="lpd")`` estimates it (the same subsample, PSIS and estimators;
tests/test_predictive.py): the lpd of every observation as the cheap approximation and the
difference estimator of Magnusson, Andersen, Jonasson & Vehtari (2020); its subsampling standard
error is ``elpd_loo_subsample_se``. The subsample is seeded by the data's digest
(``subsample_seed``), so every fit of one data set leaves out the same observations and their
pointwise values pair up. Only the lpd of all N observations is computed here, accumulated while
the draws are evaluated (``Problem.draw_terms`` with the subsample: the draws x N matrix is never
held; arviz-stats' xarray log-sum-exp of it took seconds at N = 1e5).

The pointwise log likelihood of the posterior draws is computed once per fit
(``Problem.draw_terms``) and read by the landing too (its log densities are their sums plus the
log prior).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any

import arviz_stats as azs
import numpy as np
import xarray as xr

from backends.base import Fit
from backends.importance import GROUP as IMPORTANCE_GROUP
from backends.importance import PROPOSAL_GROUP
from bench.score.problem import DrawTerms, Problem, subsample_indices, thin_indices
from bench.score.relabel import posterior_dataset

NAN = float("nan")

LOO_FIELDS: dict[str, str] = {
    "elpd_loo": "PSIS-LOO expected log pointwise predictive density of y, summed over observations "
                "(nats; data scale; label-invariant; NaN for a single point); where loo_obs < N, estimated from "
                "a subsample of loo_obs observations, with subsampling se elpd_loo_subsample_se",
    "elpd_loo_se": "standard error of elpd_loo",
    "p_loo": "effective number of parameters from PSIS-LOO",
    "loo_khat_max": "largest Pareto k-hat over observations (above about 0.7 the estimate is unreliable)",
    "loo_n_bad": "observations whose Pareto k-hat exceeds arviz-stats' threshold min(1 - 1/log10(S), 0.7)",
    "loo_method": "psis-loo (MCMC draws, or an approximation's own draws without log q), psis-loo-approximate "
                  "(an approximation's own draws, weighted by p/q), stacking (a stacked row: log sum_c w_c p_c(y_i | y_-i) of its "
                  "components' PSIS-LOO, bench.stacked_rows), psis-loo-proposal (importance-resampled "
                  "draws: their proposal, weighted by p/q) or psis-loo-resampled (importance-resampled draws "
                  "without their proposal: distinct draws weighted by how often each was chosen)",
    "loo_draws": "draws the PSIS-LOO estimate used (thinned evenly)",
    "loo_obs": "observations Pareto-smoothed: all of them, or a seeded random subsample (loo_subsample)",
    "elpd_loo_pointwise": "the pointwise elpd_loo of every observation, ';'-separated, for paired differences "
                          "between fits (Vehtari, Gelman & Gabry 2017); when observations were subsampled, of "
                          "the subsampled ones in index order (the same for every fit of the data set)",
    "elpd_loo_subsample_se": "standard error of elpd_loo due to subsampling observations (0 without subsampling)",
    "loo_approx_pointwise": "where observations were subsampled: the difference estimator's approximation of each "
                            "subsampled observation's elpd_loo, ';'-separated in index order (Magnusson et al. 2020: "
                            "its lpd; 0 for a stacked row, a simple random sampling estimate), for the subsampling "
                            "se of paired differences between fits; empty without subsampling",
}


def _draw_budget(n_obs: int, max_values: float, min_draws: int, max_draws: int) -> int:
    return int(min(max_draws, max(min_draws, max_values // max(n_obs, 1))))


def _weighting(fit: Fit, draws: xr.DataTree, mcmc: bool) -> tuple[xr.Dataset, np.ndarray | None, np.ndarray | None, str]:
    """(posterior draws the estimate uses, log p, log q per draw or None, loo_method)."""
    ds = posterior_dataset(draws)
    if PROPOSAL_GROUP in draws.children and IMPORTANCE_GROUP in draws.children:
        group = draws[IMPORTANCE_GROUP]
        proposal = draws[PROPOSAL_GROUP].to_dataset().transpose("chain", "draw", ...)
        return (proposal, np.asarray(group["log_p"].values, dtype=float),
                np.asarray(group["log_q"].values, dtype=float), "psis-loo-proposal")
    if IMPORTANCE_GROUP in draws.children:
        distinct, counts = _distinct_draws(ds)
        return distinct, np.log(counts), np.zeros(counts.size), "psis-loo-resampled"
    chains, n_draws = ds.sizes["chain"], ds.sizes["draw"]
    if (not mcmc and fit.log_p is not None and fit.log_q is not None and np.size(fit.log_p) == n_draws
            and chains == 1):
        return ds, np.asarray(fit.log_p, dtype=float), np.asarray(fit.log_q, dtype=float), "psis-loo-approximate"
    return ds, None, None, "psis-loo"


def loo_reads_posterior(draws: xr.DataTree) -> bool:
    """Whether PSIS-LOO reads the fit's posterior draws (``_weighting``: psis-loo or
    psis-loo-approximate), rather than an importance-resampled fit's proposal or distinct draws."""
    return IMPORTANCE_GROUP not in draws.children


def _distinct_draws(ds: xr.Dataset) -> tuple[xr.Dataset, np.ndarray]:
    """The distinct draws of a one-chain posterior as one chain, and how often each occurs."""
    flat = np.concatenate([np.asarray(ds[n].values, dtype=float).reshape(ds.sizes["chain"] * ds.sizes["draw"], -1)
                           for n in ds.data_vars], axis=1)
    _, first, counts = np.unique(flat, axis=0, return_index=True, return_counts=True)
    stacked = ds.stack(sample=("chain", "draw")).isel(sample=first).drop_vars(["sample", "chain", "draw"])
    out = stacked.rename({"sample": "draw"}).expand_dims(chain=[0]).assign_coords(draw=np.arange(first.size))
    return out.transpose("chain", "draw", ...), counts.astype(float)


def subsample_seed(x: np.ndarray, y: np.ndarray) -> int:
    """The seed of the observations LOO subsamples: from the SHA-256 of the data, so that every
    fit of one data set (and only of it) subsamples the same observations."""
    digest = hashlib.sha256(np.ascontiguousarray(x, dtype=float).tobytes()
                            + np.ascontiguousarray(y, dtype=float).tobytes()).hexdigest()
    return int(digest[:8], 16)


def loo_keep(n_obs: int, n_draws: int, chains: int, max_values: float = 2e7, min_draws: int = 100,
             max_draws: int = 1000) -> np.ndarray:
    """The draw indices (the same in every chain) PSIS-LOO evaluates: evenly thinned to the budget."""
    return thin_indices(n_draws, max(_draw_budget(n_obs, max_values, min_draws, max_draws) // chains, 1))


def _same_observations(held: np.ndarray | None, wanted: np.ndarray | None) -> bool:
    """Whether terms held at observations ``held`` (ascending, None: all) are those at ``wanted``."""
    if held is None or wanted is None:
        return held is None and wanted is None
    return np.array_equal(held, np.sort(wanted))


def _psis_loo(tree: xr.DataTree, weights: dict, mcmc: bool):
    """arviz-stats' PSIS-LOO of every observation in ``tree``: weighted by p/q when given."""
    if weights:
        return azs.loo_approximate_posterior(tree, pointwise=True, **weights)
    return azs.loo(tree, pointwise=True, reff=None if mcmc else 1.0)


def loo_metrics(fit: Fit, draws: xr.DataTree, problem: Problem, *, mcmc: bool,
                max_values: float = 2e7, min_draws: int = 100, max_draws: int = 1000,
                max_obs: int = 1000, seed: int = 0, terms: DrawTerms | None = None) -> dict[str, Any]:
    """The LOO_FIELDS of one fit (NaN where they cannot be computed).

    ``terms``: the fit's draws already evaluated (``Problem.draw_terms``), reused when they are
    the draws this estimate reads (its own thinning of the posterior draws).
    """
    out: dict[str, Any] = dict.fromkeys(LOO_FIELDS, NAN)
    raw = posterior_dataset(draws)
    if raw.sizes["chain"] * raw.sizes["draw"] < 2 or problem.spec.likelihood != "mixture":
        # One point has no posterior to leave an observation out of; the forum thread's batch
        # likelihoods have no per-observation terms.
        return out
    ds, log_p, log_q, method = _weighting(fit, draws, mcmc)
    chains, n_draws = ds.sizes["chain"], ds.sizes["draw"]
    keep = loo_keep(problem.dataset.N, n_draws, chains, max_values, min_draws, max_draws)
    n_obs = problem.dataset.N
    # arviz-stats' simple random sample without replacement (loo_subsample's, same seed).
    obs = subsample_indices(n_obs, max_obs, seed)
    subsample = obs is not None
    posterior = xr.DataTree.from_dict({"posterior": ds})
    if (terms is None or method not in ("psis-loo", "psis-loo-approximate") or not np.array_equal(terms.keep, keep)
            or not _same_observations(terms.obs, obs)):
        terms = problem.draw_terms(posterior, keep, obs)
    if not terms.finite.all():
        # A draw with a non-finite parameter or density: leave it out of the estimate (of every
        # chain, and of the lpd of every observation).
        cols = terms.finite.all(axis=0)
        if not cols.any():
            return out
        keep = keep[cols]
        terms = problem.draw_terms(posterior, keep, obs)
    log_lik = terms.terms[:, :, np.searchsorted(terms.obs, obs)] if subsample else terms.terms
    coords = {"chain": ds["chain"].values, "draw": ds["draw"].values[keep]}
    tree = xr.DataTree.from_dict({
        "posterior": ds.isel(draw=keep),
        "log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik)}, coords=coords),
    })
    weights = {}
    if log_p is not None:
        weights = {name: xr.DataArray(values[keep][None], dims=("chain", "draw"), coords=coords)
                   for name, values in (("log_p", log_p), ("log_q", log_q))}
    with warnings.catch_warnings():
        # arviz-stats warns about high Pareto k; the row carries k-hat itself.
        warnings.simplefilter("ignore")
        result = _psis_loo(tree, weights, mcmc)
    elpd, se, p_loo, sub_se = float(result.elpd), float(result.se), float(result.p), 0.0
    if subsample:
        # The difference estimator with the lpd of every observation as its cheap approximation
        # (Magnusson et al. 2020), as arviz-stats' loo_subsample(method="lpd") computes it, with
        # its estimators; only the lpd is computed here, from the one evaluation of the draws.
        lpd_all = xr.DataArray(terms.lpd, dims="obs")
        lpd_sample = lpd_all.isel(obs=obs)
        elpd_i = result.elpd_i
        elpd, sub_se, se = (float(v) for v in elpd_i.azstats.diff_srs_estimator(
            lpd_approx_sample=lpd_sample, lpd_approx_all=lpd_all, n_data_points=n_obs))
        p_loo = float((lpd_sample - elpd_i).azstats.srs_estimator(n_data_points=n_obs)[0])
    out["loo_method"] = method
    pareto_k = np.asarray(result.pareto_k.values, dtype=float)
    out.update({
        "elpd_loo": elpd,
        "elpd_loo_se": se,
        "p_loo": p_loo,
        "loo_khat_max": float(np.nanmax(pareto_k)) if np.isfinite(pareto_k).any() else NAN,
        "loo_n_bad": int(np.sum(pareto_k > float(result.good_k))),
        "loo_draws": int(log_lik.shape[0] * log_lik.shape[1]),
        "loo_obs": int(max_obs) if subsample else int(n_obs),
        "elpd_loo_subsample_se": sub_se,
        # Subsampled: the values in the order of the observations' indices, so that two fits of
        # one data set (the same subsample: subsample_seed) pair up value by value.
        "elpd_loo_pointwise": ";".join(repr(float(v)) for v in (
            np.ravel(result.elpd_i.values)[np.argsort(obs)] if subsample else np.ravel(result.elpd_i.values))),
        "loo_approx_pointwise": ";".join(repr(float(v)) for v in np.ravel(lpd_sample.values)[np.argsort(obs)])
                                if subsample else "",
    })
    if not math.isfinite(out["elpd_loo"]):
        out["elpd_loo"] = NAN
    return out
