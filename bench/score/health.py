"""Health flags of one fit: what a reader must see before trusting its row.

Each flag is a short name; a row lists the raised ones comma-separated in ``flags`` (empty when
none). Thresholds live in ``bench.score.settings.MetricSettings``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from bench.score.problem import Problem
from bench.score.relabel import posterior_dataset

FLAGS: dict[str, str] = {
    "stuck": "a chain never moved: at least stuck_repeat_frac of its consecutive draws are identical "
             "(e.g. every transition divergent)",
    "divergences": "divergent transitions after warm-up",
    "rhat": "relabelled rank-normalised split R-hat above rhat_max (arviz-stats)",
    "ess": "relabelled bulk or tail ESS below ess_min_per_chain x chains (arviz-stats)",
    "sigma-at-bound": "a sigma's draws pile at a prior bound: median within bound_rtol of Uniform's upper "
                      "end, or below zero_rtol x the prior's scale (bound_params says which)",
    "map-at-bound": "a MAP point's sigma at a prior bound (as sigma-at-bound, for one point)",
    "degenerate-component": "a component's sigma collapsed onto a few tied points (sigma below 0.1 x the data's "
                            "resolution; see degenerate): the likelihood is unbounded there and, under a sigma "
                            "prior with positive density at 0, the posterior is improper. Fix: a zero-avoiding "
                            "prior on sigma (InverseGamma, LogNormal) or jitter the ties",
    "collapsed": "components coincide or one emptied (mode collapsed)",
    "mixed-modes": "chains landed in different modes",
    "biased": "in the reference's mode but off in location or scale: a chain beyond mode_distance_sd reference "
              "sds, a point (MAP, Laplace's mode) beyond point_lp_gap_nats below the best optimum or "
              "point_distance_sd sds away",
    "poor-mode": "a chain or the fit sits in another mode far below the reference (lp_gap above lp_gap_tol)",
    "above-reference": "a chain sits in another mode far above the reference: the reference missed it",
    "khat": "PSIS k-hat of the approximation at or above khat_bad",
    "not-converged": "the engine's own convergence flag is false (VI, MAP)",
    "nonfinite": "draws with NaN or infinite parameters",
}

HEALTH_FIELDS: dict[str, str] = {
    "flags": "health flags raised, comma-separated, empty when none: " + "; ".join(f"{k}: {v}" for k, v in FLAGS.items()),
    "chains_stuck": "chains that never moved (see flags: stuck; NaN for non-MCMC methods)",
    "bound_params": "parameters piling at a prior bound, e.g. 'sigma[1] upper' (empty when none)",
}


def stuck_chains(draws: xr.DataTree, repeat_frac: float) -> int:
    """Chains where at least ``repeat_frac`` of consecutive draws repeat the previous one exactly."""
    ds = posterior_dataset(draws)
    if ds.sizes["draw"] < 2:
        return 0
    same = None
    for name in ds.data_vars:
        arr = np.asarray(ds[name].values, dtype=float).reshape(ds.sizes["chain"], ds.sizes["draw"], -1)
        equal = np.all(arr[:, 1:] == arr[:, :-1], axis=2)
        same = equal if same is None else same & equal
    return int(np.sum(same.mean(axis=1) >= repeat_frac))


def bound_params(draws: xr.DataTree, problem: Problem, settings) -> list[str]:
    """Sigma scalars whose median sits at a bound of the prior's support (data scale)."""
    ds = posterior_dataset(draws)
    if "sigma" not in ds.data_vars:
        return []
    _, upper = problem.sigma_bounds()
    zero = settings.zero_rtol * problem.sigma_prior_scale()
    values = np.asarray(ds["sigma"].values, dtype=float).reshape(ds.sizes["chain"] * ds.sizes["draw"], -1)
    median = np.nanmedian(values, axis=0)
    out = []
    for k, m in enumerate(median):
        label = "sigma" if values.shape[1] == 1 and ds["sigma"].ndim == 2 else f"sigma[{k}]"
        if math.isfinite(upper) and m >= upper * (1 - settings.bound_rtol):
            out.append(f"{label} upper")
        elif m <= zero:
            out.append(f"{label} zero")
    return out


def health(row: dict[str, Any], raw: xr.DataTree, relabelled: xr.DataTree, problem: Problem | None, *, mcmc: bool,
           single_point: bool, converged: bool | None, settings) -> dict[str, Any]:
    """The HEALTH_FIELDS of a row whose other metrics are filled in.

    Bounds are judged on the relabelled draws: a median over raw labels pools different
    components whenever chains (or draws) hold them under different labels. Stuck chains are
    judged on the raw draws: whether a chain moved is a fact of what was sampled.
    """
    flags = []
    stuck = stuck_chains(raw, settings.stuck_repeat_frac) if mcmc else math.nan
    if mcmc and stuck:
        flags.append("stuck")
    if mcmc and _positive(row.get("divergences")):
        flags.append("divergences")
    if mcmc and _number(row.get("rhat_max")) > settings.rhat_max:
        flags.append("rhat")
    if mcmc:
        need = settings.ess_min_per_chain * int(row.get("n_chains") or 1)
        low = [v for v in (row.get("ess_bulk_min"), row.get("ess_tail_min")) if _number(v) < need]
        nan_ess = all(math.isnan(_number(v)) for v in (row.get("ess_bulk_min"), row.get("ess_tail_min")))
        if low or nan_ess:
            flags.append("ess")
    bounds = bound_params(relabelled, problem, settings) if problem is not None else []
    # The backend names a MAP on any bound of the support (weights at 0 and ordering ties too).
    if bounds or (single_point and row.get("at_bound")):
        flags.append("map-at-bound" if single_point else "sigma-at-bound")
    if _positive(row.get("chains_degenerate")):
        flags.append("degenerate-component")
    if row.get("mode") == "collapsed" or _positive(row.get("chains_collapsed")):
        flags.append("collapsed")
    if row.get("mode") == "mixed":
        flags.append("mixed-modes")
    if _positive(row.get("chains_biased")) or row.get("point_mode") == "biased":
        flags.append("biased")
    if _positive(row.get("chains_below")):
        flags.append("poor-mode")
    if _positive(row.get("chains_above")):
        flags.append("above-reference")
    if _number(row.get("khat")) >= settings.khat_bad:
        flags.append("khat")
    if converged is False:
        flags.append("not-converged")
    if _positive(row.get("nonfinite_draws")):
        flags.append("nonfinite")
    return {"flags": ",".join(flags), "chains_stuck": stuck, "bound_params": ", ".join(bounds)}


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _positive(value) -> bool:
    number = _number(value)
    return math.isfinite(number) and number > 0
