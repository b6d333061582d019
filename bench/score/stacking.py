"""Stacking of non-mixing computations: a fit's chains (or Pathfinder paths) weighted by their
leave-one-out predictive performance, and the stacked mixture scored as a fit of its own.

Yao, Vehtari & Gelman (2022), "Stacking for non-mixing Bayesian computations: the curse and
blessing of multimodal posteriors" (JMLR 23): where chains stay in different modes, each chain
c is its own approximation p_c(theta | y); its pointwise PSIS-LOO predictive densities
p_c(y_i | y_-i) (Vehtari, Gelman & Gabry 2017) are stacked by maximising the log score

    sum_i log sum_c w_c p_c(y_i | y_-i)   over the simplex w_c >= 0, sum_c w_c = 1

(Yao, Vehtari, Simpson & Gelman 2018, eq. 4), which arviz-stats' ``compare(method="stacking")``
solves (SciPy's SLSQP on the same objective and its gradient). The stacked posterior is the
mixture sum_c w_c p_c. Components: the chains of an MCMC or SMC fit (each SMC run's particle
population is one), or the paths of a multi-path Pathfinder fit (its proposal pool, by path).
A MAP or Laplace fit keeps only its best start's point, so its starts cannot be stacked.

Only computations that do not mix are stacked: MCMC chains that land in different places
(``non_mixing``), and Pathfinder paths or SMC runs that disagree (``component_agreement``: their
relabelled draws have an R-hat across components above ``NON_MIXING_RHAT``, or they land in
different reference modes). The weights of components that agree carry no information (their
stacked mixture is the fit itself) and would cost a PSIS-LOO pass per component.

The pointwise log likelihood of a fit's chains is the one its scoring evaluated once
(``bench.score.metrics.Scoring.terms``); observations beyond ``max_obs`` are subsampled with the
seed PSIS-LOO uses (``bench.score.predictive.subsample_seed``): the log score of a simple random
sample of observations is an unbiased estimate of the whole one, up to the factor N / max_obs.
"""

from __future__ import annotations

import warnings
from typing import Any

import arviz_stats as azs
import numpy as np
import xarray as xr

from backends.base import Fit
from backends.importance import GROUP as IMPORTANCE_GROUP, PROPOSAL_GROUP
from bench.score.modes import land
from bench.score.problem import Problem, allocate, subsample_indices, thin_indices
from bench.score.relabel import DEFAULT_MAX_ITER, DEFAULT_SCALE_FLOOR, chain_mean_pivot, posterior_dataset, relabel

NAN = float("nan")
SUFFIX = "+stacked"  # a stacked row's method: the fit's method with this suffix
MAX_DRAWS_PER_COMPONENT = 400  # draws per component whose pointwise log likelihood a path's LOO reads
AGREEMENT_DRAWS = 200  # draws per component (evenly thinned) their agreement reads

STACKING_FIELDS: dict[str, str] = {
    "stacking_components": "what was stacked: chains (an MCMC or SMC fit's chains or particle populations) or "
                           "paths (a multi-path Pathfinder's paths); empty where fewer than two",
    "stacking_weights": "stacking weights of the components, 'w0;w1;...' in component order (Yao, Vehtari & "
                        "Gelman 2022: the log score of their PSIS-LOO predictive densities maximised over the simplex)",
    "stacking_elpd": "the stacked mixture's log score sum_i log sum_c w_c p_c(y_i | y_-i) (nats; over the "
                     "observations PSIS-LOO read: all, or the subsample of loo_obs)",
    "stacking_elpd_best": "the best single component's elpd_loo over the same observations (nats)",
    "stacking_elpd_pointwise": "log sum_c w_c p_c(y_i | y_-i) of every observation stacking read, ';'-separated, "
                               "in index order (the stacked row's elpd_loo_pointwise)",
    "stacking_mode_weights": "the stacking weight on each reference mode, 'A:0.62;B:0.38' (components landed by "
                             "bench.score.modes.land; '-': in none), beside the reference's masses (ref_mode_masses)",
    "stacking_rhat": "a multi-path Pathfinder or SMC fit: the largest R-hat across its paths or runs (arviz-stats' "
                     "rank-normalised split R-hat of their draws relabelled to the fit's target, at most "
                     f"{AGREEMENT_DRAWS} per component evenly thinned; Pathfinder: its proposal draws); above 1.1, "
                     "or components in different reference modes, they disagree and are stacked, else not (no "
                     "other stacking columns)",
    "stacked_from": "a stacked row: the cell_id of the fit whose components it stacks",
}


# Chains this far apart do not mix (Gelman et al. 2013, BDA3 sec. 11.4, the classic 1.1 limit):
# not the health flag's 1.01 (Vehtari et al. 2021), which 100 iid draws per chain can exceed.
NON_MIXING_RHAT = 1.1


def non_mixing(row: dict[str, Any]) -> bool:
    """Whether a scored row's components landed in different places: its chains' landing is
    ``mixed``, their R-hat (or its paths' or runs', ``stacking_rhat``) exceeds
    ``NON_MIXING_RHAT``, or they (or its paths) are in different reference modes."""
    if row.get("mode") == "mixed":
        return True
    for name in ("rhat_max", "stacking_rhat"):
        rhat = row.get(name)
        if isinstance(rhat, (int, float)) and rhat > NON_MIXING_RHAT:
            return True
    chains = row.get("ref_mode_chains")
    if isinstance(chains, str) and len(set(chains.split(";"))) > 1:
        return True
    weights = row.get("stacking_mode_weights")
    if isinstance(weights, str) and weights:
        return sum(float(item.rsplit(":", 1)[1]) > 0 for item in weights.split(";")) > 1
    return False


def components(fit: Fit, draws: xr.DataTree) -> tuple[str, xr.Dataset] | None:
    """The components a fit's stacking weights: (``"chains"`` or ``"paths"``, their posterior with
    one component per ``chain`` and the same number of draws each), or None for fewer than two.

    Parameters
    ----------
    fit : Fit
    draws : xarray.DataTree
        The fit's canonical draws (a Pathfinder fit's with group ``importance_proposal``).
    """
    if PROPOSAL_GROUP in draws.children and IMPORTANCE_GROUP in draws.children:
        path = np.asarray(draws[IMPORTANCE_GROUP]["path"].values, dtype=int)
        pool = draws[PROPOSAL_GROUP].to_dataset().isel(chain=0)
        labels = np.unique(path)
        if labels.size < 2:
            return None
        size = min(int(np.sum(path == p)) for p in labels)
        pieces = [pool.isel(draw=np.flatnonzero(path == p)[:size]).assign_coords(draw=np.arange(size))
                  for p in labels]
        return "paths", xr.concat(pieces, dim="chain").assign_coords(chain=np.arange(labels.size))
    ds = posterior_dataset(draws)
    if ds.sizes["chain"] < 2 or ds.sizes["draw"] < 2:
        return None
    return "chains", ds


def component_agreement(comps: xr.Dataset, target: dict | None, modes: list | None,
                        scale_floor: float = DEFAULT_SCALE_FLOOR,
                        max_iter: int = DEFAULT_MAX_ITER) -> tuple[float, list[str] | None]:
    """Whether a fit's components (Pathfinder paths, SMC runs) agree, from their label-invariant draws.

    Parameters
    ----------
    comps : xarray.Dataset
        The components' draws, one component per ``chain`` (``components``; a Pathfinder's
        proposal draws by path).
    target : dict or None
        The point the fit was relabelled to (bench.score.relabel); None: component 0's mean.
    modes : list of dict or None
        The reference's modes (bench.reference.modes), to land each component's relabelled mean in.
    scale_floor, max_iter
        The relabelling's settings (bench.score.metrics.MetricSettings).

    Returns
    -------
    rhat : float
        The largest R-hat across components over every scalar (arviz-stats' ``rhat``,
        rank-normalised split R-hat, Vehtari et al. 2021) of at most ``AGREEMENT_DRAWS`` draws
        per component, evenly thinned and relabelled to ``target`` by the fit's own rule:
        components in one mode under different labellings agree. NaN where no scalar has one.
    names : list of str or None
        Each component's reference mode (``bench.score.modes.land`` of its relabelled mean;
        "-": none), None without ``modes``.

    The components disagree where ``rhat`` exceeds ``NON_MIXING_RHAT`` (chains that far apart
    do not mix, Gelman et al. 2013) or they land in different modes: Yao, Vehtari & Gelman
    (2022) stack computations that do not mix.
    """
    thinned = comps.isel(draw=thin_indices(comps.sizes["draw"], AGREEMENT_DRAWS))
    tree = xr.DataTree.from_dict({"posterior": thinned})
    point = chain_mean_pivot(tree, 0) if target is None else target
    ds = posterior_dataset(relabel(tree, point, scale_floor, max_iter).draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a constant scalar's R-hat is NaN, skipped
        rhat = azs.rhat(ds[[n for n in ds.data_vars if ds[n].size]])
    values = np.concatenate([np.ravel(rhat[n].values) for n in rhat.data_vars]) if rhat.data_vars else np.zeros(0)
    worst = float(np.nanmax(values)) if np.isfinite(values).any() else NAN
    if not modes:
        return worst, None
    K = int(ds.sizes["component"])
    names = [land({n: ds[n].isel(chain=c).mean("draw").values for n in ds.data_vars}, modes, K) or "-"
             for c in range(ds.sizes["chain"])]
    return worst, names


def pointwise_loo(log_lik: np.ndarray, reff: float = 1.0) -> list:
    """PSIS-LOO of each component (arviz-stats' ``loo``, pointwise).

    Parameters
    ----------
    log_lik : ndarray, shape (components, draws, observations)
        log p(y_i | theta_s) of each component's draws.
    reff : float
        Relative efficiency of the draws; it sets only the length of the Pareto tail PSIS fits
        (Vehtari et al. 2024), so 1.0 serves chains too.

    Returns
    -------
    list of arviz_stats ELPDData, one per component
        Their ``elpd_i`` are log p_c(y_i | y_-i).
    """
    out = []
    for values in log_lik:
        tree = xr.DataTree.from_dict({"log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), values[None])})})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # high Pareto k: the pooled row's loo_khat_max says it
            out.append(azs.loo(tree, pointwise=True, reff=reff))
    return out


def elpd_matrix(loos: list) -> np.ndarray:
    """(components, observations) pointwise elpd of ``pointwise_loo``'s results."""
    return np.stack([np.ravel(loo.elpd_i.values) for loo in loos])


def stacking_weights(loos: list) -> np.ndarray:
    """Stacking weights of components from their PSIS-LOO results.

    Parameters
    ----------
    loos : list of arviz_stats ELPDData, one per component, over the same observations

    Returns
    -------
    ndarray, shape (components,)
        The weights maximising sum_i log sum_c w_c p_c(y_i | y_-i) on the simplex: arviz-stats'
        ``compare(method="stacking")`` (Yao et al. 2018, eq. 4; SciPy's SLSQP), in component order.
        arviz-stats exponentiates the pointwise values as they are: an observation more than
        about 745 nats below zero under every component would make the objective infinite.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = azs.compare({f"c{c}": loo for c, loo in enumerate(loos)}, method="stacking")
    weights = np.clip([float(table.loc[f"c{c}", "weight"]) for c in range(len(loos))], 0.0, None)
    return weights / weights.sum()


def stacked_pointwise(elpd_i: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log sum_c w_c exp(elpd_i[c, i]) per observation: the stacked mixture's LOO predictive
    density, whose sum is the stacking objective at ``weights`` (nats)."""
    top = elpd_i.max(axis=0)
    with np.errstate(divide="ignore"):
        return top + np.log(weights @ np.exp(elpd_i - top))


def _component_log_lik(kind: str, comps: xr.Dataset, problem: Problem, terms, obs) -> np.ndarray:
    if kind == "chains" and terms is not None:
        if terms.obs is None:
            return terms.terms[:, :, obs]
        if isinstance(obs, np.ndarray) and np.array_equal(terms.obs, obs):
            return terms.terms  # the scoring kept the same subsample's terms (bench.score.metrics.Scoring.terms)
    keep = thin_indices(comps.sizes["draw"], MAX_DRAWS_PER_COMPONENT)
    tree = xr.DataTree.from_dict({"posterior": comps})
    index = [(c, int(d)) for c in range(comps.sizes["chain"]) for d in keep]
    # Only the observations stacking reads (a path's draws are evaluated here, not by the scoring).
    return problem.pointwise_draws(tree, index, obs).reshape(comps.sizes["chain"], keep.size, -1)


def stacking_columns(fit: Fit, draws: xr.DataTree, problem: Problem | None, *, terms=None,
                     chain_modes: str | None = None, modes: list | None = None, max_obs: int = 1000,
                     seed: int = 0, target: dict | None = None, scale_floor: float = DEFAULT_SCALE_FLOOR,
                     max_iter: int = DEFAULT_MAX_ITER, check_agreement: bool = False) -> dict[str, Any]:
    """The STACKING_FIELDS of one fit (without ``stacked_from``); empty where there is nothing to
    stack (fewer than two components, no data, a likelihood without pointwise terms), and only
    ``stacking_rhat`` where a Pathfinder fit's paths (or, with ``check_agreement``, its
    chains: SMC runs) agree (``component_agreement``).

    Parameters
    ----------
    fit : Fit
    draws : xarray.DataTree
        The fit's raw draws.
    problem : bench.score.problem.Problem or None
    terms : bench.score.problem.DrawTerms, optional
        The chains' pointwise log likelihood, evaluated once by the scoring.
    chain_modes : str, optional
        The row's ``ref_mode_chains`` (each chain's reference mode, from its relabelled draws).
    modes : list of dict, optional
        The reference's modes (bench.reference.modes), to land Pathfinder paths in.
    max_obs : int
        Observations beyond this are subsampled (seeded by ``seed``).
    target, scale_floor, max_iter
        The fit's relabelling target and settings, for ``component_agreement`` (target None:
        component 0's mean).
    check_agreement : bool
        Stack chains only where they disagree (SMC runs; a Pathfinder's paths always are checked).
    """
    found = components(fit, draws)
    if found is None:
        return {}
    kind, comps = found
    out: dict[str, Any] = {}
    names = None
    if kind == "paths" or check_agreement:
        rhat, names = component_agreement(comps, target, modes, scale_floor, max_iter)
        out["stacking_rhat"] = rhat
        if not rhat > NON_MIXING_RHAT and len(set(names or ())) < 2:
            return out  # they agree: nothing to stack (a NaN R-hat: nothing says they disagree)
    if problem is None or problem.spec.likelihood != "mixture":
        return out
    n_obs = problem.dataset.N
    chosen = subsample_indices(n_obs, max_obs, seed)
    obs = np.sort(chosen) if chosen is not None else slice(None)
    log_lik = _component_log_lik(kind, comps, problem, terms, obs)
    good = np.isfinite(log_lik).all(axis=(0, 2))
    if not good.any():
        return out
    loos = pointwise_loo(log_lik[:, good])
    elpd_i = elpd_matrix(loos)
    weights = stacking_weights(loos)
    out.update({
        "stacking_components": kind,
        "stacking_weights": ";".join(f"{w:.4g}" for w in weights),
        "stacking_elpd": float(stacked_pointwise(elpd_i, weights).sum()),
        "stacking_elpd_pointwise": ";".join(repr(float(v)) for v in stacked_pointwise(elpd_i, weights)),
        "stacking_elpd_best": float(elpd_i.sum(axis=1).max()),
    })
    if kind == "chains" and isinstance(chain_modes, str) and chain_modes:
        names = chain_modes.split(";")
    if names is not None:
        totals: dict[str, float] = {}
        for name, w in zip(names, weights):
            totals[name] = totals.get(name, 0.0) + float(w)
        out["stacking_mode_weights"] = ";".join(f"{n}:{w:.3g}" for n, w in sorted(totals.items()))
    return out



def parse_weights(text: Any) -> np.ndarray | None:
    """A row's ``stacking_weights`` as an array, None where the row has none."""
    if not isinstance(text, str) or not text:
        return None
    return np.array([float(v) for v in text.split(";")])


def stacked_fit(fit: Fit, draws: xr.DataTree, weights: np.ndarray) -> Fit:
    """The stacked mixture as a Fit of one chain: from each component c an evenly thinned share
    w_c of the draws (largest remainders; no draw repeated), method ``fit.method + SUFFIX``.

    Parameters
    ----------
    fit : Fit
        An ok fit with at least two components (``components``).
    draws : xarray.DataTree
        Its raw draws.
    weights : ndarray, shape (components,)

    Returns
    -------
    Fit
        Status ok, the fit's identity, timings and settings (stacking adds no engine time), draws
        one chain of as many draws as a component holds.

    Raises
    ------
    ValueError
        The fit has fewer than two components, or as many weights as it has not.
    """
    found = components(fit, draws)
    if found is None or found[1].sizes["chain"] != weights.size:
        raise ValueError(f"stacked_fit: {weights.size} weights for "
                         f"{0 if found is None else found[1].sizes['chain']} components")
    comps = found[1]
    n = comps.sizes["draw"]
    counts = allocate(weights, n)
    pieces = [comps.isel(chain=c, draw=thin_indices(n, int(k))).drop_vars(["chain", "draw"], errors="ignore")
              for c, k in enumerate(counts) if k > 0]
    mixed = xr.concat(pieces, dim="draw", coords="minimal").assign_coords(draw=np.arange(n)).expand_dims(chain=[0])
    tree = xr.DataTree.from_dict({"posterior": mixed.transpose("chain", "draw", ...)})
    tree.attrs.update({"stacking_weights": ";".join(f"{w:.4g}" for w in weights), "stacked_components": found[0]})
    return Fit(backend=fit.backend, method=f"{fit.method}{SUFFIX}", status="ok", engine=fit.engine, draws=tree,
               timings=dict(fit.timings), versions=dict(fit.versions), settings=dict(fit.settings), seed=fit.seed,
               precision=fit.precision)
