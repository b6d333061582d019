"""Why a reference NUTS run failed its checks, and what would fix it.

A reference that fails R-hat, ESS, divergence or chain-count checks (bench.reference.posterior) is kept as
provisional. "More draws" fixes only one of the ways it can fail; this module reads the run for
the others and names each cause found with its evidence and the advice that matches it:

- ``modes``: chains in different real modes: their mean log densities differ by more than
  ``max(LP_GAP_NATS, LP_GAP_SD x the median within-chain sd of the log density)``, or the chains'
  relabelled means of some scalar lie more than ``MEAN_GAP_SD`` pooled within-chain sds apart.
  More draws do not merge modes (Yao, Vehtari & Gelman 2022, "Stacking for non-mixing Bayesian
  computations").
- ``prior_scale``: the data sit far from the priors: a posterior mean of a slope or intercept
  more than ``PRIOR_SDS`` prior sds from the prior mean, or sigma pressed against its Uniform
  upper bound. Chains then start far down in log density and some never climb.
- ``degenerate``: a chain's median point has a degenerate component (``backends.degenerate``, the
  rule of every fit's flag), where the likelihood is unbounded on tied points: the posterior is
  improper there.
- ``empty_component``: a component holding fewer than ``EMPTY_POINTS`` points on average (an
  over-fitted K): its parameters follow the prior and mix slowly.
- ``divergences``: transitions NUTS could not follow (Betancourt 2017, section 6.2).
- ``few_draws``: only the ESS checks failed: more draws fix it; the advice says how many, scaling
  the draws by ess_min / ESS (ESS grows linearly in draws for a mixing chain).
- ``slow_mixing``: R-hat failed with none of the above.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from backends.degenerate import degenerate_components
from bench.score.relabel import posterior_dataset
from models.spec import MixtureSpec

LP_GAP_NATS = 10.0
LP_GAP_SD = 4.0
MEAN_GAP_SD = 4.0
PRIOR_SDS = 3.0
SIGMA_BOUND_FRAC = 0.95
EMPTY_POINTS = 3.0
DRAWS_ROUND = 500


def _cause(cause: str, evidence: str, advice: str) -> dict[str, str]:
    return {"cause": cause, "evidence": evidence, "advice": advice}


def _per_chain_means(ds: xr.Dataset) -> tuple[str, float]:
    """The scalar whose chain means lie furthest apart, in pooled within-chain sds, and that spread."""
    worst, spread = "", 0.0
    for name in ("w", "b"):
        if name not in ds.data_vars or not ds[name].size:
            continue
        arr = np.asarray(ds[name].transpose("chain", "draw", ...).values, dtype=float)
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
        means = arr.mean(axis=1)
        sd = np.sqrt(arr.var(axis=1).mean(axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = (means.max(axis=0) - means.min(axis=0)) / sd
        gap = np.where(np.isfinite(gap), gap, 0.0)
        i = int(np.argmax(gap))
        if gap[i] > spread:
            index = np.unravel_index(i, ds[name].shape[2:])
            worst, spread = f"{name}[{','.join(map(str, index))}]", float(gap[i])
    return worst, spread


def _far_from_prior(ds: xr.Dataset, spec: MixtureSpec) -> list[str]:
    found = []
    for name, prior, what in (("w", spec.slope_prior, "slope"), ("b", spec.intercept_prior, "intercept")):
        if name in ds.data_vars and ds[name].size:
            mean = np.asarray(ds[name].mean(("chain", "draw")).values, dtype=float)
            far = np.abs(mean - prior.mu) / prior.sigma
            if np.nanmax(far) > PRIOR_SDS:
                found.append(f"a posterior mean {what} {np.ravel(mean)[np.nanargmax(far)]:.3g} lies "
                             f"{np.nanmax(far):.1f} prior sds from the prior mean {prior.mu:g}")
    if spec.sigma_prior.family == "uniform" and "sigma" in ds.data_vars:
        top = float(np.nanmax(np.quantile(np.asarray(ds["sigma"].values, dtype=float), 0.975)))
        if top > SIGMA_BOUND_FRAC * spec.sigma_prior.scale:
            found.append(f"sigma is pressed against its Uniform(0, {spec.sigma_prior.scale:g}) upper bound "
                         f"(97.5% quantile {top:.3g})")
    return found


def _tied_points(x: np.ndarray, y: np.ndarray) -> int:
    rows = np.column_stack([np.asarray(x, float).reshape(len(y), -1), np.asarray(y, float)])
    _, counts = np.unique(rows, axis=0, return_counts=True)
    return int(counts[counts > 1].sum())


def diagnose(draws: xr.DataTree, lp: np.ndarray, kept: xr.DataTree, checks: dict[str, bool],
             diag: dict, divergences: int, spec: MixtureSpec, x: np.ndarray, y: np.ndarray,
             standardized: bool, draws_per_chain: int, ess_min: float) -> list[dict[str, str]]:
    """The causes of a failed reference run, each ``{"cause", "evidence", "advice"}``.

    draws: every chain of the run (data scale, as sampled); lp: their (chain, draw) log densities;
    kept: the chains kept, relabelled (bench.reference.posterior.canonical_relabel); checks, diag,
    divergences: what bench.reference.posterior measured; x (N, D), y (N,): the data. Empty when every
    check passed.
    """
    if all(checks.values()):
        return []
    ds, rel = posterior_dataset(draws), posterior_dataset(kept)
    causes = []
    finite = [row[np.isfinite(row)] for row in lp]
    chain_lp = np.array([r.mean() if r.size else -np.inf for r in finite])
    within = np.median([r.std() for r in finite if r.size > 1] or [0.0])
    lp_gap = float(np.max(chain_lp) - np.min(chain_lp))
    lp_tol = max(LP_GAP_NATS, LP_GAP_SD * within)
    far = [] if standardized else _far_from_prior(ds, spec)
    if far:
        down = (f"; chains' mean log densities differ by {lp_gap:.1f} nats" if lp_gap > lp_tol else "")
        causes.append(_cause("prior_scale", "the data sit far from the priors: " + "; ".join(far) + down,
                             "fit on the standardised scale (--standardize), or give priors on the data's scale "
                             "(--intercept-prior MU,SD, --slope-prior MU,SD, --sigma-prior FAMILY:SCALE)"))
    scalar, spread = _per_chain_means(rel) if rel.sizes["chain"] > 1 else ("", 0.0)
    mode_evidence = []
    if lp_gap > lp_tol and not far:
        mode_evidence.append(f"chains' mean log densities differ by {lp_gap:.1f} nats (tolerance {lp_tol:.1f})")
    if spread > MEAN_GAP_SD:
        mode_evidence.append(f"chains' relabelled means of {scalar} lie {spread:.1f} posterior sds apart")
    if mode_evidence:
        causes.append(_cause("modes", "chains sit in several real modes: " + "; ".join(mode_evidence),
                             "more draws will not merge modes: fit fewer components (--K) if one group is split, "
                             "or an ordering constraint (--ordering); the reference then describes one mode only"))
    # The same rule as every fit's degenerate-component flag (backends.degenerate), on each
    # chain's median point (a chain keeps its labels).
    found = []
    for c in range(ds.sizes["chain"]):
        point = {name: np.nanmedian(np.asarray(ds[name].isel(chain=c).values, dtype=float), axis=0)
                 for name in ("w", "b", "sigma", "pi", "gamma") if name in ds.data_vars}
        found += degenerate_components(x, y, point)
    if found:
        k, sigma, held = min(found, key=lambda item: item[1])
        tied = _tied_points(x, y)
        causes.append(_cause("degenerate", f"a component's sigma collapses towards 0 (sigma[{k}] chain median "
                                           f"{sigma:.3g}, holding {held} points); the data have {tied} tied points",
                             "the likelihood is unbounded there and the posterior improper: remove or jitter "
                             "tied points, use one shared sigma (--sigma shared), a zero-avoiding sigma prior "
                             "(--sigma-prior invgamma:A,B or lognormal:MU,S), or fewer components (--K)"))
    if "pi" in rel.data_vars and spec.K > 1:
        pi = np.asarray(rel["pi"].mean(("chain", "draw")).values, dtype=float)
        points = float(pi.min() * len(y))
        if points < EMPTY_POINTS:
            causes.append(_cause("empty_component",
                                 f"component {int(pi.argmin())} holds about {points:.1f} of {len(y)} points "
                                 f"(mean weight {pi.min():.3f}): its parameters follow the prior and mix slowly",
                                 f"K = {spec.K} is more components than the data hold: fit --K {spec.K - 1}"))
    if not checks.get("divergences", True):
        causes.append(_cause("divergences", f"{divergences} divergent transitions",
                             "NUTS cannot follow the posterior's geometry there (often a component near sigma 0 "
                             "or with almost no points, see the other causes); more draws do not remove them"))
    ess_only = all(checks.get(name, True) for name in ("rhat", "divergences", "chains"))
    ess = float(np.nanmin([diag.get("ess_bulk_min", math.nan), diag.get("ess_tail_min", math.nan), math.inf]))
    if not causes and ess_only and math.isfinite(ess) and ess > 0:
        needed = int(math.ceil(draws_per_chain * ess_min / ess * 1.2 / DRAWS_ROUND) * DRAWS_ROUND)
        causes.append(_cause("few_draws", f"only the effective sample size is short (min ESS {ess:.0f} of "
                                          f"{ess_min:g} needed from {draws_per_chain} draws per chain)",
                             f"more draws: --reference-draws {needed} (mixbench reference: --draws {needed})"))
    if not causes:
        causes.append(_cause("slow_mixing", "the chains agree in mode and log density but mix slowly",
                             "more warm-up and draws (--reference-warmup, --reference-draws) or more chains "
                             "(--reference-chains)"))
    return causes
