"""Importance resampling of an approximation's draws, as Stan's multi-path Pathfinder does it.

Zhang, Carpenter, Gelman & Vehtari (2022), "Pathfinder: parallel quasi-Newton variational
inference", Algorithm 5; Stan's ``services/pathfinder/multi.hpp``: the draws of every path are
pooled, each weighted by p/q with q its own path's normal approximation; the log weights are
Pareto-smoothed (PSIS, Vehtari et al. 2024, here by arviz-stats' ``psislw``); the returned draws
are a categorical sample with replacement from the pool under the smoothed weights. A path that
ended in a poor mode has weights e^-(its gap) and drops out.

The pool itself is kept with the fit (``proposal_group``, and its draws with ``keep_proposal``),
so the PSIS k-hat of the proposal, the diagnostic of how far the resampled draws can be trusted,
and PSIS-LOO weighted by p/q can be computed downstream.
"""

from __future__ import annotations

import math

import arviz_stats.accessors  # noqa: F401  (registers the .azstats accessor)
import numpy as np
import xarray as xr
from scipy.special import softmax

GROUP = "importance_sampling"
# The proposal draws themselves (canonical posterior variables, one chain over the pool, in the
# order of GROUP's ``proposal`` dim): PSIS-LOO weighs them by p/q rather than leave out points
# from the resampled draws, whose repeats break the Pareto tail fit.
PROPOSAL_GROUP = "importance_proposal"


def psis_log_weights(log_p: np.ndarray, log_q: np.ndarray) -> tuple[np.ndarray, float]:
    """Pareto-smoothed, normalised log importance weights of p/q, and the PSIS k-hat.

    Draws with a non-finite ratio get weight 0 (log weight -inf) and stay out of the tail fit.
    Raises ValueError when no ratio is finite.
    """
    log_ratio = np.asarray(log_p, dtype=float).ravel() - np.asarray(log_q, dtype=float).ravel()
    finite = np.isfinite(log_ratio)
    if not finite.any():
        raise ValueError("importance resampling: no draw has a finite importance ratio")
    smoothed = np.full(log_ratio.shape, -np.inf)
    values = log_ratio[finite]
    if np.ptp(values) < 1e-8:
        # q equals p up to a constant: equal weights, nothing to smooth (arviz-stats cannot fit
        # a tail to equal values).
        smoothed[finite] = -math.log(values.size)
        return smoothed, -math.inf
    # arviz-stats smooths exp(-x) for the x it is given (its LOO convention), and returns the
    # normalised log of the smoothed weights.
    log_weights, khat = xr.DataArray(-values, dims=["sample"]).azstats.psislw(dim="sample", r_eff=1.0)
    smoothed[finite] = np.asarray(log_weights.values, dtype=float)
    khat = float(khat)
    return smoothed, (math.inf if math.isnan(khat) else khat)


def psis_resample(log_p: np.ndarray, log_q: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, float]:
    """Indices of ``n`` draws taken with replacement from the pool by PSIS weights, and k-hat."""
    log_weights, khat = psis_log_weights(log_p, log_q)
    prob = softmax(log_weights)
    prob = np.where(np.isfinite(prob), prob, 0.0)
    prob = prob / prob.sum()
    rng = np.random.default_rng(seed)
    return rng.choice(prob.size, size=n, replace=True, p=prob), khat


def proposal_group(log_p: np.ndarray, log_q: np.ndarray, path: np.ndarray, chosen: np.ndarray | None,
                   **attrs) -> xr.DataTree:
    """The pool the draws came from, as a DataTree group: log_p, log_q and path per proposal draw,
    and how often each was chosen (absent when the draws were not resampled)."""
    data = {"log_p": ("proposal", np.asarray(log_p, dtype=float)),
            "log_q": ("proposal", np.asarray(log_q, dtype=float)),
            "path": ("proposal", np.asarray(path, dtype=int))}
    if chosen is not None:
        data["times_chosen"] = ("proposal", np.bincount(chosen, minlength=np.size(log_p)))
    return xr.DataTree(xr.Dataset(data, coords={"proposal": np.arange(np.size(log_p))}, attrs=attrs))


def keep_proposal(draws: xr.DataTree, pool: xr.DataTree) -> None:
    """Store the pool's canonical posterior (a DataTree like ``draws``, one chain over the pool)
    in ``draws`` as group PROPOSAL_GROUP."""
    posterior = pool["posterior"].to_dataset()
    draws[PROPOSAL_GROUP] = xr.DataTree(posterior.assign_coords(draw=np.arange(posterior.sizes["draw"])))


def choose_draws(log_p: np.ndarray, log_q: np.ndarray, paths: int, per_path: int, n: int, resample: bool,
                 seed: int) -> tuple[np.ndarray, float | None]:
    """Which draws of a Pathfinder pool (``paths`` paths of ``per_path`` draws, path after path) a
    fit returns, the one rule for every backend whose engine does not resample itself.

    Parameters
    ----------
    log_p, log_q : ndarray, shape (paths * per_path,)
        Each pool draw's log density (unconstrained, Jacobian included) and its own path's log q.
    paths, per_path, n : int
        The pool's shape and the number of draws wanted.
    resample : bool
        True: ``n`` draws with replacement by PSIS weights (``psis_resample``); False: the paths
        interleaved draw by draw, truncated to ``n``, so that every path keeps an equal share.
    seed : int

    Returns
    -------
    chosen : ndarray of int, shape (n,) (at most ``n`` without resampling)
    pareto_k : float or None
        The proposal's PSIS k-hat; None without resampling.
    """
    if resample:
        return psis_resample(log_p, log_q, n, seed)
    return np.arange(paths * per_path).reshape(paths, per_path).T.reshape(-1)[:n], None


def attach_pool(draws: xr.DataTree, pool: xr.DataTree, log_p: np.ndarray, log_q: np.ndarray, path: np.ndarray,
                chosen: np.ndarray, pareto_k: float, paths: int) -> None:
    """Keep the pool PSIS-resampled ``draws`` came from: group GROUP (``proposal_group``, with the
    method, the paths and the k-hat) and group PROPOSAL_GROUP (``keep_proposal``)."""
    draws[GROUP] = proposal_group(log_p, log_q, path, chosen, method="psis", paths=int(paths),
                                  resampled_with_replacement=1, pareto_k=float(pareto_k))
    keep_proposal(draws, pool)
