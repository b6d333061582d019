"""Label-invariant metrics of one fit, flattened into one row of plain numbers.

Every fit is first relabelled draw by draw against a target point (``bench.score.relabel``): the truth
when it is known, otherwise a pivot. Recovery, mode, efficiency and distances are then computed on
the relabelled draws, with the raw (as-sampled) versions beside them where the difference is the
point (recovery, R-hat, ESS).

The families of parameters are the canonical names: ``w`` slopes, ``b`` intercepts, ``sigma`` noise
scale(s), ``pi`` weights. A family the spec lacks (``b`` without intercepts, ``w`` with D = 0)
gives NaN in its columns.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import arviz_stats as azs
import numpy as np
import xarray as xr
from scipy.stats import wasserstein_distance

from backends.base import TIMING_PHASES, Fit
from backends.degenerate import degenerate_components
from backends.methods import Kind, kind_of
from bench.score.columns import FAMILIES, ROW_FIELDS
from bench.score.health import health
from bench.score.landing import ReferenceSummary, landing_summary, place_chains
from bench.score.lazy_jax import keep_jax_unloaded
from bench.score.modes import fit_landing, mode_columns, own_mode_draws, parse_shares
from bench.score.particles import smc_columns
from bench.score.predictive import loo_keep, loo_metrics, loo_reads_posterior, subsample_seed
from bench.score.problem import subsample_indices, thin_indices
from bench.score.relabel import (
    SAMPLE_DIMS,
    Relabelling,
    chain_mean_pivot,
    conform_point,
    decode_perm,
    map_pivot,
    perm_codes,
    perm_label,
    posterior_dataset,
    relabel,
)
from bench.score.settings import MetricSettings
from bench.score.stacking import non_mixing, stacking_columns

NAN = float("nan")

# Canonical dims of a parameter point, used to turn a MAP point into a one-draw DataTree.
_POINT_DIMS = {"w": ("component", "covariate"), "b": ("component",), "pi": ("component",)}


# ---------------------------------------------------------------------------------------------
# Small helpers


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    """(chain, draw, component?, covariate?) in canonical order."""
    da = ds[name]
    order = [d for d in (*SAMPLE_DIMS, "component", "covariate") if d in da.dims]
    order += [d for d in da.dims if d not in order]
    return np.asarray(da.transpose(*order).values, dtype=float)


def _samples(ds: xr.Dataset, name: str) -> np.ndarray:
    """Draws pooled over chains: shape (samples, scalars)."""
    arr = _values(ds, name)
    return arr.reshape(arr.shape[0] * arr.shape[1], -1)


def _present(ds: xr.Dataset, name: str) -> bool:
    return name in ds.data_vars and ds[name].size > 0


def _nanmin(values) -> float:
    arr = np.asarray(values, dtype=float).ravel()
    return float(np.nanmin(arr)) if arr.size and not np.isnan(arr).all() else NAN


def _nanmax(values) -> float:
    arr = np.asarray(values, dtype=float).ravel()
    return float(np.nanmax(arr)) if arr.size and not np.isnan(arr).all() else NAN


def _ratio(num: float, den: float | int | None) -> float:
    if den is None or not np.isfinite(num) or not (isinstance(den, (int, float, np.number)) and den > 0):
        return NAN
    return float(num) / float(den)


def is_mcmc(fit: Fit) -> bool:
    """Whether the fit's draws are a Markov chain: switching, ESS and R-hat only mean something there."""
    return kind_of(fit.method) is Kind.MCMC


def point_tree(point: dict) -> xr.DataTree:
    """A point (e.g. a MAP estimate) as one chain of one draw."""
    data = {}
    for name, value in point.items():
        value = np.asarray(value, dtype=float)
        # sigma is the one name whose dims depend on the spec: scalar when shared.
        dims = _POINT_DIMS.get(name, ("component",) if value.ndim == 1 else ())
        data[name] = (SAMPLE_DIMS + dims, value[None, None])
    return xr.DataTree.from_dict({"posterior": xr.Dataset(data)})


def fit_draws(fit: Fit) -> xr.DataTree | None:
    """The fit's draws; a MAP fit without draws is its point as a one-draw tree."""
    if fit.draws is not None:
        return fit.draws
    if fit.point is not None:
        return point_tree(fit.point)
    return None


# ---------------------------------------------------------------------------------------------
# Target point


def resolve_target(
    truth: dict | None,
    pivot: dict | str | None,
    draws: xr.DataTree,
    reference: xr.DataTree | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """The point draws are relabelled against, and a short name for where it came from.

    The truth when given. Else ``pivot``: a point (dict), or "map" (the draw with the highest
    sample_stats.lp, falling back to "chain0" where there is none) or "chain0" (chain 0's mean),
    taken from the reference posterior when one is given, else from ``draws``. Default "map".
    """
    if truth is not None:
        return {k: np.asarray(v, dtype=float) for k, v in truth.items()}, "truth"
    if isinstance(pivot, dict):
        return {k: np.asarray(v, dtype=float) for k, v in pivot.items()}, "pivot"
    kind = "map" if pivot is None else pivot
    if kind not in ("map", "chain0"):
        raise ValueError(f"pivot: must be a point, 'map' or 'chain0', got {pivot!r}")
    source, prefix = (reference, "reference-") if reference is not None else (draws, "")
    if kind == "map":
        point = map_pivot(source)
        if point is not None:
            return point, prefix + "map"
    return chain_mean_pivot(source, 0), prefix + "chain0"


# ---------------------------------------------------------------------------------------------
# Recovery


def recovery(draws: xr.DataTree, truth: dict, interval_prob: float = 0.9,
             suffix: str = "") -> dict[str, float]:
    """Per family: max |posterior mean - truth|, RMSE over draws, coverage of the central interval.

    Keys ``{family}_err_max{suffix}``, ``{family}_rmse{suffix}``, ``{family}_coverage{suffix}``.
    """
    ds = posterior_dataset(draws)
    truth = conform_point(truth, ds)
    lo_q, hi_q = (1 - interval_prob) / 2, 1 - (1 - interval_prob) / 2
    out = {}
    for f in FAMILIES:
        err = rmse = cover = NAN
        if _present(ds, f) and f in truth:
            x = _samples(ds, f)
            t = np.asarray(truth[f], dtype=float).ravel()
            if t.size != x.shape[1]:
                raise ValueError(f"truth: {f} has {t.size} values, the draws have {x.shape[1]}")
            err = float(np.max(np.abs(x.mean(axis=0) - t)))
            rmse = float(np.sqrt(np.mean((x - t) ** 2)))
            if x.shape[0] > 1:
                lo, hi = np.quantile(x, [lo_q, hi_q], axis=0)
                cover = float(np.mean((lo <= t) & (t <= hi)))
        out[f"{f}_err_max{suffix}"] = err
        out[f"{f}_rmse{suffix}"] = rmse
        out[f"{f}_coverage{suffix}"] = cover
    return out


# ---------------------------------------------------------------------------------------------
# Modes


@dataclass(frozen=True)
class ChainMode:
    """Where one chain (or one VI fit) landed."""

    chain: int
    mode: str  # "truth" / "reference" (matches the target), "collapsed" or "other"
    permutation: str  # the chain's majority labelling, see bench.score.relabel
    majority_frac: float  # fraction of the chain's draws in that labelling


def _component_summary(ds: xr.Dataset) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Posterior mean and sd of every parameter, (component, ...) without chain/draw."""
    mean, sd = {}, {}
    for name in ds.data_vars:
        arr = _values(ds, name)
        mean[name] = arr.mean(axis=(0, 1))
        sd[name] = arr.std(axis=(0, 1))
    return mean, sd


def is_collapsed(mean: dict, sd: dict, settings: MetricSettings) -> bool:
    """Components coincide (in every slope, intercept and per-component sigma) or one emptied out."""
    # Softmax weights have no pi (models/spec.py): only the locations and sigmas can coincide.
    if "pi" in mean and np.any(np.asarray(mean["pi"], dtype=float) < settings.collapse_weight_min):
        return True
    K = np.asarray(mean["w"]).shape[0]
    z = settings.collapse_sd_multiple
    for j in range(K):
        for k in range(j + 1, K):
            close = True
            for name in ("w", "b"):
                if name not in mean or np.asarray(mean[name]).size == 0:
                    continue
                m, s = np.asarray(mean[name]), np.asarray(sd[name])
                gap = np.abs(m[j] - m[k])
                tol = np.maximum(settings.collapse_location_atol, z * np.sqrt((s[j] ** 2 + s[k] ** 2) / 2))
                close &= bool(np.all(gap <= tol))
            sig = np.asarray(mean.get("sigma", []))
            if sig.ndim == 1 and sig.shape[0] == K:
                s = np.asarray(sd["sigma"])
                tol = max(settings.collapse_sigma_rtol * max(sig[j], sig[k]),
                          z * math.sqrt((s[j] ** 2 + s[k] ** 2) / 2))
                close &= bool(abs(sig[j] - sig[k]) <= tol)
            if close:
                return True
    return False


def matches_target(mean: dict, target: dict, settings: MetricSettings) -> bool:
    """Every relabelled mean within the truth tolerances of the target point."""
    for name in ("w", "b"):
        if name in target and np.asarray(target[name]).size:
            if np.any(np.abs(np.asarray(mean[name]) - target[name]) > settings.truth_location_atol):
                return False
    t_sigma = np.asarray(target["sigma"], dtype=float)
    if np.any(np.abs(np.asarray(mean["sigma"]) - t_sigma) > settings.truth_sigma_rtol * t_sigma):
        return False
    if "pi" not in target or "pi" not in mean:  # softmax weights: judged by lines and sigmas
        return True
    return not np.any(np.abs(np.asarray(mean["pi"]) - target["pi"]) > settings.truth_weight_atol)


def chain_modes(relabelled: xr.DataTree, permutations: np.ndarray, target: dict, target_name: str,
                settings: MetricSettings = MetricSettings()) -> list[ChainMode]:
    """Classify each chain's relabelled draws: ``target_name`` (matches the target), collapsed, other.

    Collapse is checked first: a fit with coinciding components is collapsed whatever else. This is
    the rule without a reference and for ``truth_mode``; against a reference the reference decides
    first (bench.score.landing.place_chains).
    """
    ds = posterior_dataset(relabelled)
    codes = perm_codes(permutations)
    K = permutations.shape[-1]
    out = []
    for c in range(ds.sizes["chain"]):
        mean, sd = _component_summary(ds.isel(chain=[c]))
        if not all(np.all(np.isfinite(v)) for v in mean.values()):
            mode = "other"
        elif is_collapsed(mean, sd, settings):
            mode = "collapsed"
        elif matches_target(mean, target, settings):
            mode = target_name
        else:
            mode = "other"
        values, counts = np.unique(codes[c], return_counts=True)
        top = int(np.argmax(counts))
        out.append(ChainMode(chain=c, mode=mode, permutation=perm_label(decode_perm(values[top], K)),
                             majority_frac=float(counts[top] / codes.shape[1])))
    return out


def mode_summary(modes: list[ChainMode], target_name: str) -> dict[str, Any]:
    kinds = {m.mode for m in modes}
    return {
        "mode": kinds.pop() if len(kinds) == 1 else "mixed",
        "chains_on_target": sum(m.mode == target_name for m in modes),
        "chains_collapsed": sum(m.mode == "collapsed" for m in modes),
        "chains_other": sum(m.mode == "other" for m in modes),
    }


# ---------------------------------------------------------------------------------------------
# Label switching


def count_switches(codes: np.ndarray, min_draws: int) -> int:
    """Changes of labelling between runs that each last at least ``min_draws`` draws.

    Shorter runs are dropped first, so a blip (A A A B A A A) leaves A ... A: no switch.
    """
    codes = np.asarray(codes)
    if codes.size == 0:
        return 0
    starts = np.r_[0, np.flatnonzero(codes[1:] != codes[:-1]) + 1]
    lengths = np.diff(np.r_[starts, codes.size])
    kept = codes[starts][lengths >= min_draws]
    return int(np.count_nonzero(kept[1:] != kept[:-1]))


@dataclass(frozen=True)
class Switching:
    """Label switching within and between chains, from per-draw permutations."""

    switches: np.ndarray  # per chain
    chain_majority: list[str]  # per chain, its majority labelling
    off_majority_frac: float  # pooled over chains
    overall_majority: str
    chains_off_majority: int

    @property
    def chains_disagree(self) -> bool:
        return len(set(self.chain_majority)) > 1


def label_switching(permutations: np.ndarray, min_draws: int) -> Switching:
    """Within-chain switches, draws off their chain's majority, chains off the overall majority.

    The overall majority labelling is the one most chains hold as their majority; ties go to the
    labelling with more draws in total, then to the lexicographically first.
    """
    perms = np.asarray(permutations)
    K = perms.shape[-1]
    codes = perm_codes(perms)
    switches, majority, off = [], [], 0
    for chain_codes in codes:
        values, counts = np.unique(chain_codes, return_counts=True)
        top = values[int(np.argmax(counts))]
        majority.append(int(top))
        off += int(np.count_nonzero(chain_codes != top))
        switches.append(count_switches(chain_codes, min_draws))
    total = Counter(codes.ravel().tolist())
    by_chains = Counter(majority)
    overall = min(by_chains, key=lambda code: (-by_chains[code], -total[code], code))
    return Switching(
        switches=np.array(switches, dtype=int),
        chain_majority=[perm_label(decode_perm(m, K)) for m in majority],
        off_majority_frac=off / codes.size,
        overall_majority=perm_label(decode_perm(overall, K)),
        chains_off_majority=sum(m != overall for m in majority),
    )


# ---------------------------------------------------------------------------------------------
# Efficiency


def _diagnostic_dataset(draws: xr.DataTree) -> xr.Dataset:
    ds = posterior_dataset(draws)
    return ds[[name for name in FAMILIES if _present(ds, name)]]


# Tail ESS is the smaller ESS of the indicators I(theta <= q05) and I(theta <= q95) (Vehtari et
# al. 2021, as R's posterior::ess_tail). Without ``prob`` arviz-stats uses its rcParams interval
# (0.89), i.e. the 5.5% / 94.5% quantiles instead.
TAIL_ESS_PROB = (0.05, 0.95)


def _ess_by_family(ds: xr.Dataset, method: str) -> dict[str, float]:
    with warnings.catch_warnings():
        # Constant scalars (weights pinned by a one-component fit) make arviz warn; their NaN is
        # the honest answer and is skipped by the minimum.
        warnings.simplefilter("ignore", RuntimeWarning)
        prob = TAIL_ESS_PROB if method == "tail" else None
        result = azs.ess(ds, method=method, prob=prob)
    return {name: _nanmin(result[name].values) for name in result.data_vars}


def efficiency(relabelled: xr.DataTree, raw: xr.DataTree, sampling_s: float | None = None,
               grad_evals: int | None = None) -> dict[str, float]:
    """ESS (bulk, tail; min overall and per family) per second and per gradient, and R-hat max."""
    ds = _diagnostic_dataset(relabelled)
    raw_ds = _diagnostic_dataset(raw)
    bulk = _ess_by_family(ds, "bulk")
    tail = _ess_by_family(ds, "tail")
    bulk_min, tail_min = _nanmin(list(bulk.values())), _nanmin(list(tail.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = azs.rhat(ds)
        rhat_raw = azs.rhat(raw_ds)
    out = {
        "ess_bulk_min": bulk_min,
        "ess_tail_min": tail_min,
        "ess_bulk_min_raw": _nanmin(list(_ess_by_family(raw_ds, "bulk").values())),
        "ess_bulk_per_s": _ratio(bulk_min, sampling_s),
        "ess_tail_per_s": _ratio(tail_min, sampling_s),
        "ess_bulk_per_grad": _ratio(bulk_min, grad_evals),
        "ess_tail_per_grad": _ratio(tail_min, grad_evals),
        "rhat_max": _nanmax([_nanmax(rhat[n].values) for n in rhat.data_vars]),
        "rhat_max_raw": _nanmax([_nanmax(rhat_raw[n].values) for n in rhat_raw.data_vars]),
    }
    for f in FAMILIES:
        out[f"{f}_ess_bulk"] = bulk.get(f, NAN)
        out[f"{f}_ess_tail"] = tail.get(f, NAN)
        out[f"{f}_ess_bulk_per_s"] = _ratio(bulk.get(f, NAN), sampling_s)
        out[f"{f}_ess_tail_per_s"] = _ratio(tail.get(f, NAN), sampling_s)
    return out


# ---------------------------------------------------------------------------------------------
# Approximation quality


def psis_khat(log_p, log_q, constant_tol: float = MetricSettings.khat_constant_tol) -> float:
    """Pareto k-hat of the importance ratios p/q over draws from q (Yao et al. 2018).

    Uses arviz-stats' psislw, which smooths the weights exp(-x) of what it is given (its LOO
    convention, x being a log likelihood), so it is given -(log p - log q).
    """
    log_ratio = np.asarray(log_p, dtype=float).ravel() - np.asarray(log_q, dtype=float).ravel()
    if log_ratio.size == 0 or np.isnan(log_ratio).any():
        return NAN
    if np.isposinf(log_ratio).any():
        # q puts no density where p does: the weights are unbounded.
        return math.inf
    finite = log_ratio[np.isfinite(log_ratio)]
    if finite.size == 0:
        return NAN
    if np.ptp(finite) < constant_tol:
        return -math.inf
    try:
        _, khat = xr.DataArray(-log_ratio, dims=["draw"]).azstats.psislw(dim="draw", r_eff=1.0)
    except ValueError as err:
        if "tail values are the same" in str(err):
            return -math.inf
        raise
    if math.isnan(float(khat)):
        # Ratios spread over hundreds of nats: all but the largest weights underflow to zero in
        # the tail fit, so psislw gives NaN. One draw carries all the weight: k-hat is unbounded.
        return math.inf
    return float(khat)


def khat_label(khat: float, settings: MetricSettings = MetricSettings()) -> str | float:
    if not isinstance(khat, (int, float)) or math.isnan(khat):
        return NAN
    if khat < settings.khat_good:
        return "good"
    return "ok" if khat < settings.khat_bad else "bad"


def wasserstein_marginals(draws: xr.DataTree, reference: xr.DataTree, seed: int = 0) -> dict[str, float]:
    """Per family: max and mean over its scalars of W1(fit marginal, reference marginal), and the
    noise floor beside them (``w1_floor``).

    Both trees should be relabelled against the same point before this is called.
    """
    ds, ref = posterior_dataset(draws), posterior_dataset(reference)
    out = {}
    n_fit = ds.sizes["chain"] * ds.sizes["draw"]
    for f in FAMILIES:
        dist, floor = [], []
        if _present(ds, f) and _present(ref, f):
            x, y = _samples(ds, f), _samples(ref, f)
            if x.shape[1] != y.shape[1]:
                raise ValueError(f"reference: {f} has {y.shape[1]} scalars, the fit {x.shape[1]}")
            for i in range(x.shape[1]):
                u, v = x[:, i], y[:, i]
                ok = np.isfinite(u).all() and np.isfinite(v).all()
                dist.append(float(wasserstein_distance(u, v)) if ok else NAN)
            floor = w1_floor(y, n_fit, seed) if n_fit > 1 else []
        out[f"{f}_w1_max"] = float(np.max(dist)) if dist else NAN
        out[f"{f}_w1_mean"] = float(np.mean(dist)) if dist else NAN
        out[f"{f}_w1_floor"] = _nanmax(floor) if len(floor) else NAN
    return out


def w1_floor(samples: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Per column of ``samples`` (draws, scalars): W1 between two disjoint random subsets of its
    draws, each of size min(n, draws // 2): the W1 that two exact samples of that size from the
    same distribution have, the floor under which a fit's W1 says nothing (Agrawal & Domke 2024)."""
    samples = np.asarray(samples, dtype=float)
    size = min(int(n), samples.shape[0] // 2)
    if size < 1:
        return np.full(samples.shape[1], NAN)
    order = np.random.default_rng(seed).permutation(samples.shape[0])
    a, b = samples[order[:size]], samples[order[size:2 * size]]
    return np.array([float(wasserstein_distance(a[:, i], b[:, i])) if np.isfinite(a[:, i]).all()
                     and np.isfinite(b[:, i]).all() else NAN for i in range(samples.shape[1])])


# ---------------------------------------------------------------------------------------------
# The row


def _plain(value):
    """numpy scalars -> Python scalars; None -> NaN, so the row is pandas- and JSON-ready."""
    if value is None:
        return NAN
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return value


def _identity(fit: Fit) -> dict[str, Any]:
    row = {
        "status": fit.status,
        "reason": fit.reason,
        "traceback": fit.traceback,
        "backend": fit.backend,
        "engine": fit.engine,
        "method": fit.method,
        "seed": fit.seed,
        "precision": fit.precision,
        "grad_evals": fit.grad_evals,
        "divergences": fit.divergences,
        "converged": fit.converged,
        "iterations": fit.iterations,
        "map_starts": len(fit.start_log_densities) if fit.start_log_densities else None,
        "map_starts_at_best": _starts_at_best(fit.start_log_densities),
        "at_bound": "; ".join(fit.at_bound) if fit.at_bound else None,
    }
    for phase in TIMING_PHASES:
        row[f"t_{phase}"] = fit.timings.get(phase)
    return row


def _starts_at_best(log_densities: list[float] | None, tol: float = 0.01) -> int | None:
    """How many optimisation starts ended within ``tol`` nats of the best one."""
    if not log_densities:
        return None
    values = np.asarray(log_densities, dtype=float)
    best = np.max(values)
    return int(np.sum(values >= best - tol)) if np.isfinite(best) else 0


def _divergences(fit: Fit, draws: xr.DataTree) -> int | None:
    if fit.divergences is not None:
        return fit.divergences
    if "sample_stats" in draws.children and "diverging" in draws["sample_stats"].data_vars:
        return int(np.asarray(draws["sample_stats"]["diverging"].values).sum())
    return None


def evaluate(
    fit: Fit,
    truth: dict | None = None,
    reference=None,
    pivot: dict | str | None = None,
    settings: MetricSettings = MetricSettings(),
    problem=None,
) -> dict[str, Any]:
    """Every metric of one fit as a flat row whose keys are exactly ``ROW_FIELDS``.

    truth: the true parameters (canonical names, no chain/draw), when known: the recovery target,
    and the labelling target.
    reference: the reference posterior (bench.reference.posterior.Reference): without a truth the labelling
    target (its mean, in its canonical labelling, shared by every fit of the data set), and with
    or without one what modes, log-density gaps and W1 are measured against. Draws alone (an
    ArviZ DataTree) serve W1 and, without a truth, a pivot.
    pivot: the point to relabel against when there is neither truth nor reference ("map",
    "chain0" or a point; see ``resolve_target``): each fit then has its own labelling.
    problem: the spec and data the fit belongs to (bench.score.problem.Problem); needed for log
    densities (modes by log density), PSIS-LOO and the prior-bound flags, which are NaN without it.
    A fit that is not ok gives its identity and status with NaN everywhere else.
    """
    return score_fit(fit, truth, reference, pivot, settings, problem)[0]


def score_fit(fit: Fit, truth: dict | None = None, reference=None, pivot: dict | str | None = None,
              settings: MetricSettings = MetricSettings(), problem=None) -> tuple[dict[str, Any], dict[str, float]]:
    """(the ``evaluate`` row, the relabelled posterior means) from one relabelling of the fit.

    The means are flat columns ``mean.w[0,0]``, ``truth.w[0,0]``, ... for the run's summary
    table; empty for a fit that is not ok.
    """
    keep_jax_unloaded()  # a PyMC or Stan worker's first scoring would load JAX: bench.score.lazy_jax
    row: dict[str, Any] = dict.fromkeys(ROW_FIELDS, NAN)
    row.update(_identity(fit))
    means: dict[str, float] = {}
    if fit.ok:
        draws = fit_draws(fit)
        if draws is None:
            raise ValueError(f"fit {fit.backend}/{fit.method}: status ok but neither draws nor a point")
        scoring = prepare(fit, draws, truth, reference, pivot, settings, problem)
        row.update(scoring.sizes())
        errors = []
        for name, metric in METRICS:
            # One metric that raises must not throw the finished fit away: its columns stay NaN
            # and the row says which metric failed and why.
            try:
                row.update(metric(scoring, row))
            except Exception as exc:  # noqa: BLE001  (any failure of a metric is recorded, not raised)
                errors.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        row["metric_errors"] = "; ".join(errors)
        means = posterior_means(scoring)
    row = {key: _plain(row[key]) for key in ROW_FIELDS}
    return row, means


def _reference_parts(reference) -> tuple[xr.DataTree | None, np.ndarray | None, dict | None]:
    """(draws, lp per draw or None, labelling point or None) of a Reference or bare draws."""
    if reference is None:
        return None, None, None
    if isinstance(reference, xr.DataTree):
        return reference, None, None
    return reference.draws, reference.lp, reference.point


def labelling_target(truth: dict | None, reference, pivot, draws: xr.DataTree) -> tuple[dict, str]:
    """The point a fit is relabelled to and its name (``reference_source``): the truth, else the
    reference posterior's mean (canonical labelling), else a pivot (``resolve_target``)."""
    ref_draws, _, ref_point = _reference_parts(reference)
    if truth is None and ref_point is not None and not isinstance(pivot, dict):
        return ref_point, "reference"
    return resolve_target(truth, pivot, draws, ref_draws)


@dataclass(frozen=True)
class Scoring:
    """One fit relabelled once against its data set's one target: what every metric reads.

    ``rel`` is the fit's single relabelling; ``ref_draws`` the reference posterior's draws in
    the same labelling (None without a reference). Raw draws are kept only for what is
    label-invariant or about the labelling itself (log densities, PSIS-LOO, stuck chains, the
    ``*_raw`` columns).
    """

    fit: Fit
    raw: xr.DataTree
    rel: Relabelling
    target: dict[str, np.ndarray]
    source: str
    truth: dict | None
    ref_draws: xr.DataTree | None
    ref_lp: np.ndarray | None
    problem: Any
    settings: MetricSettings
    mcmc: bool
    single_point: bool
    ref_modes: list | None = None  # the reference's modes table (bench.reference.modes), when it has one
    ref_draw_modes: np.ndarray | None = None  # (chain, draw) mode of each reference draw, when it keeps them

    @property
    def target_name(self) -> str:
        return "truth" if self.truth is not None else "reference"

    @cached_property
    def degenerate(self) -> dict[int, list[tuple[int, float, int]]]:
        """Per chain, its degenerate components (backends.degenerate) at the chain's relabelled
        medians (the point itself for MAP); empty without the data."""
        if self.problem is None:
            return {}
        ds = posterior_dataset(self.rel.draws)
        data = self.problem.dataset
        out = {}
        for c in range(ds.sizes["chain"]):
            point = {n: np.asarray(ds[n].isel(chain=c).median("draw").values, dtype=float) for n in ds.data_vars}
            hits = degenerate_components(data.x, data.y, point)
            if hits:
                out[c] = hits
        return out

    @cached_property
    def terms(self):
        """The posterior draws PSIS-LOO reads, evaluated once (bench.score.problem.DrawTerms): the
        landing's log densities come from the same pass. Where PSIS-LOO reads the importance
        proposal instead (Pathfinder; bench.score.predictive), only the landing's draws
        (``lp_draws_per_chain`` per chain, evenly thinned). None where there are none to share
        (no data, a single point, the forum's batch likelihoods)."""
        ds = posterior_dataset(self.raw)
        if self.problem is None or self.single_point or self.problem.spec.likelihood != "mixture":
            return None
        st = self.settings
        data = self.problem.dataset
        if loo_reads_posterior(self.raw):
            keep = loo_keep(data.N, ds.sizes["draw"], ds.sizes["chain"], st.loo_max_values,
                            max_draws=st.loo_max_draws)
            # Above loo_max_obs only PSIS-LOO's (and stacking's) subsample of the terms is kept.
            return self.problem.draw_terms(self.raw, keep, subsample_indices(
                data.N, st.loo_max_obs, subsample_seed(data.x, data.y)))
        # The landing's draws only: their log densities, no pointwise terms.
        return self.problem.draw_terms(self.raw, thin_indices(ds.sizes["draw"], st.lp_draws_per_chain),
                                       np.empty(0, dtype=int), lpd=False)

    def landing_log_densities(self):
        """(chain, draws) log densities for the landing: the shared evaluation thinned evenly to
        at most ``lp_draws_per_chain`` draws per chain (all it holds when fewer: at N = 1e5,
        100 per chain for 2 chains), else None (the landing evaluates its own)."""
        if self.terms is None:
            return None
        lp = self.terms.log_density
        return lp[:, thin_indices(lp.shape[1], self.settings.lp_draws_per_chain)]

    def sizes(self) -> dict[str, Any]:
        ds = posterior_dataset(self.raw)
        return {"n_chains": ds.sizes["chain"], "n_draws": ds.sizes["draw"],
                "nonfinite_draws": self.rel.nonfinite_draws, "relabel_converged": self.rel.converged,
                "reference_source": self.source, "divergences": _divergences(self.fit, self.raw)}


def prepare(fit: Fit, draws: xr.DataTree, truth, reference, pivot, settings: MetricSettings, problem) -> Scoring:
    """Relabel the fit once, and put the reference's draws in the same labelling."""
    ref_draws, ref_lp, _ = _reference_parts(reference)
    target, source = labelling_target(truth, reference, pivot, draws)
    rel = relabel(draws, target, settings.relabel_scale_floor, settings.relabel_max_iter)
    if ref_draws is not None:
        ref_draws = _reference_in_target_labelling(ref_draws, source, rel.reference, settings)
    ds = posterior_dataset(draws)
    return Scoring(fit=fit, raw=draws, rel=rel, target=rel.reference, source=source, truth=truth,
                   ref_draws=ref_draws, ref_lp=ref_lp, problem=problem, settings=settings, mcmc=is_mcmc(fit),
                   single_point=ds.sizes["chain"] * ds.sizes["draw"] == 1,
                   ref_modes=getattr(reference, "modes", None), ref_draw_modes=getattr(reference, "draw_modes", None))


def _reference_in_target_labelling(ref_draws: xr.DataTree, source: str, target: dict,
                                   settings: MetricSettings) -> xr.DataTree:
    """The reference's draws in the fit's labelling: every metric that compares the two (W1, the
    landing's distance and mode, the W1 to the fit's own mode) reads them.

    A Reference is stored in its canonical labelling (bench.reference.posterior.canonical_relabel),
    relabelled against its own highest-lp draw. Where that draw is nearly collapsed (components
    barely apart: a poorly separated posterior) it labels the draws differently from the truth
    draw by draw, so no one permutation of all draws maps it to the truth's labelling. Against any
    target but the reference's own point, its draws are therefore relabelled draw by draw with the
    rule the fit's draws were (bench.score.relabel): fit and reference are then each relabelled
    once, to the same point.
    """
    if source == "reference":
        return ref_draws
    return relabel(ref_draws, target, settings.relabel_scale_floor, settings.relabel_max_iter).draws


def posterior_means(scoring: Scoring) -> dict[str, float]:
    """Relabelled posterior mean of every scalar parameter, plus the truth, as flat columns
    (``mean.w[0,0]``, ``truth.w[0,0]``, ...) for the run's summary table."""
    ds = posterior_dataset(scoring.rel.draws)
    means = ds.mean(dim=SAMPLE_DIMS)
    truth = conform_point(scoring.truth, ds) if scoring.truth is not None else None
    out = {}
    for name in FAMILIES:
        if name not in means:
            continue
        values = np.asarray(means[name].values)
        for index in np.ndindex(values.shape):
            label = f"{name}[{','.join(map(str, index))}]" if index else name
            out[f"mean.{label}"] = float(values[index])
            if truth is not None and name in truth:  # a truth may lack nu (models/data.py)
                out[f"truth.{label}"] = float(np.asarray(truth[name])[index])
    return out


# ---------------------------------------------------------------------------------------------
# The metrics: each reads the one Scoring (and the row so far) and returns its columns.


def _landing_metric(s: Scoring, row: dict) -> dict[str, Any]:
    if s.ref_draws is not None and s.ref_lp is not None and s.problem is not None:
        summary = ReferenceSummary.of(s.ref_draws, s.ref_lp)
        landings = place_chains(s.rel.draws, s.rel.permutations, s.raw, s.problem, summary, s.settings,
                                lambda mean, sd: is_collapsed(mean, sd, s.settings), s.landing_log_densities())
        # A degenerate chain's density is high only because the likelihood is unbounded at tied
        # points: it is never the reference missing a better mode.
        out = landing_summary(landings, summary, s.settings, excluded=set(s.degenerate))
        if s.fit.point is not None:
            # A point (MAP; Laplace's mode beside its draws) is judged as a point.
            point = landings[0] if s.single_point else _place_point(s, summary)
            # point_lp from the same evaluation as the gap (the oracle's, as every fit's), not the
            # engine's: CmdStan's density is -inf at a point on the support's bound.
            out.update({"point_mode": point.mode, "point_lp_gap": point.lp_gap,
                        "point_distance_sd": point.distance_sd, "point_lp": point.lp_mean})
        return out
    modes = chain_modes(s.rel.draws, s.rel.permutations, s.target, s.target_name, s.settings)
    out = mode_summary(modes, s.target_name)
    if s.fit.point is not None and s.problem is not None:
        out["point_lp"] = s.problem.log_density(s.fit.point)
    return out


def _place_point(s: Scoring, summary: ReferenceSummary):
    """Where the fit's point (a Laplace mode) landed, relabelled to the fit's target."""
    tree = point_tree(s.fit.point)
    rel = relabel(tree, s.target, s.settings.relabel_scale_floor, s.settings.relabel_max_iter)
    return place_chains(rel.draws, rel.permutations, tree, s.problem, summary, s.settings,
                        lambda mean, sd: is_collapsed(mean, sd, s.settings))[0]


def _modes_metric(s: Scoring, row: dict) -> dict[str, Any]:
    """Where the fit's chains and draws are among the reference's modes, the W1 to its own mode,
    and, with a landing against the reference and no collapsed chain, its ``mode`` from them
    (bench.score.modes.fit_landing): the distance to the pooled reference mean cannot tell modes
    far apart. A single point's W1 is its spread-free distance, judged by the point rules instead."""
    out = mode_columns(s.rel.draws, s.ref_modes or [], ordered=s.mcmc)
    if not out:
        return out
    out.update(_w1_mode(s, out["ref_mode_chains"]))
    landed = isinstance(row.get("mode"), str) and math.isfinite(float(row.get("lp_gap_tol", NAN)))
    if landed and row["mode"] != "collapsed" and not row.get("chains_collapsed"):
        out.update(fit_landing(out["ref_mode_chains"].split(";"), parse_shares(out["ref_mode_shares"]), s.ref_modes,
                               row["lp_gap"], row["lp_gap_tol"], NAN if s.single_point else out.get("w1_mode_sd", NAN)))
    return out


def _truth_metric(s: Scoring, row: dict) -> dict[str, Any]:
    """The fit's landing against the truth (``truth_mode``) beside its landing against the
    reference (``mode``), and the reference's own (``ref_truth_mass``), from the one relabelling
    to the truth: a sweep tells "the posterior no longer identifies the truth" from "the method
    misses the posterior" with them (bench.report.frequencies)."""
    if s.source != "truth":
        return {}
    if s.ref_draws is None or s.ref_lp is None or s.problem is None:
        return {"truth_mode": row["mode"]}  # the landing metric placed the chains against the truth
    modes = chain_modes(s.rel.draws, s.rel.permutations, s.target, "truth", s.settings)
    return {"truth_mode": mode_summary(modes, "truth")["mode"],
            "ref_truth_mass": reference_truth_mass(s.ref_draws, s.target, s.ref_draw_modes, s.settings)}


def reference_truth_mass(ref_draws: xr.DataTree, truth: dict, draw_modes: np.ndarray | None,
                         settings: MetricSettings = MetricSettings()) -> float:
    """The share of the reference posterior's draws in the truth's mode, in [0, 1].

    The draws are grouped by the reference mode each came from (``draw_modes``, (chain, draw); a
    modes reference mixes its modes' draws by their bridge-sampling masses, so a group's share of
    draws is its mode's mass: bench.reference.modes), else by chain (one NUTS run). A group is in
    the truth's mode when its draws, relabelled to the truth, are classified ``truth`` by
    ``chain_modes``: not collapsed, and every relabelled mean within the truth tolerances of
    ``settings`` (``matches_target``), the rule every fit is held to without a reference.
    Raises ValueError when the draws and ``truth`` do not have the same parameters.
    """
    ds = posterior_dataset(ref_draws)
    C, S = ds.sizes["chain"], ds.sizes["draw"]
    groups = np.asarray(draw_modes) if draw_modes is not None else np.repeat(np.arange(C)[:, None], S, axis=1)
    flat = {name: (ds[name].dims, ds[name].values.reshape(C * S, *ds[name].shape[2:])) for name in ds.data_vars}
    in_truth = 0
    for label in np.unique(groups):
        take = np.flatnonzero(groups.ravel() == label)
        part = xr.DataTree.from_dict({"posterior": xr.Dataset(
            {name: (dims, values[take][None]) for name, (dims, values) in flat.items()})})
        rel = relabel(part, truth, settings.relabel_scale_floor, settings.relabel_max_iter)
        if chain_modes(rel.draws, rel.permutations, truth, "truth", settings)[0].mode == "truth":
            in_truth += take.size
    return in_truth / (C * S)


def _degenerate_metric(s: Scoring, row: dict) -> dict[str, Any]:
    single = s.single_point
    text = "; ".join(("" if single else f"chain {c}: ") + f"sigma[{k}] = {sigma:.3g} on {n} points"
                     for c, hits in s.degenerate.items() for k, sigma, n in hits)
    return {"degenerate": text, "chains_degenerate": len(s.degenerate) if s.problem is not None else NAN,
            "map_starts_degenerate": "; ".join(s.fit.degenerate_starts or [])}


def _switching_metric(s: Scoring, row: dict) -> dict[str, Any]:
    sw = label_switching(s.rel.permutations, s.settings.switch_min_draws)
    return {
        "permutation": sw.overall_majority,
        "label_switches": int(sw.switches.sum()) if s.mcmc else NAN,
        "chains_switching": int(np.count_nonzero(sw.switches)) if s.mcmc else NAN,
        "off_majority_frac": sw.off_majority_frac,
        "chains_off_majority": sw.chains_off_majority,
        "chains_disagree": sw.chains_disagree,
    }


def _recovery_metric(s: Scoring, row: dict) -> dict[str, Any]:
    if s.truth is None:
        return {}
    return {**recovery(s.rel.draws, s.truth, s.settings.interval_prob),
            **recovery(s.raw, s.truth, s.settings.interval_prob, suffix="_raw")}


def _efficiency_metric(s: Scoring, row: dict) -> dict[str, Any]:
    if not s.mcmc:
        return {}
    return efficiency(s.rel.draws, s.raw, s.fit.timings.get("sampling"), s.fit.grad_evals)


def _khat_metric(s: Scoring, row: dict) -> dict[str, Any]:
    proposal = importance_proposal(s.raw)
    if proposal is None and (s.fit.log_p is None or s.fit.log_q is None):
        return {}
    khat = psis_khat(*(proposal or (s.fit.log_p, s.fit.log_q)), s.settings.khat_constant_tol)
    return {"khat": khat, "khat_label": khat_label(khat, s.settings)}


def _w1_metric(s: Scoring, row: dict) -> dict[str, Any]:
    return {} if s.ref_draws is None else wasserstein_marginals(s.rel.draws, s.ref_draws)


def _w1_mode(s: Scoring, labels: str) -> dict[str, Any]:
    """W1 to the draws of the reference mode each chain landed in (bench.score.modes.own_mode_draws),
    per family, and ``w1_mode_sd``: the largest over every scalar in that mode's draws' sds."""
    if s.ref_draws is None or s.ref_draw_modes is None:
        return {}
    pair = own_mode_draws(s.rel.draws, s.ref_draws, s.ref_draw_modes, labels.split(";"))
    w1 = wasserstein_marginals(*pair) if pair is not None else {}
    out = {f"{f}_w1_mode{end}": w1.get(f"{f}_w1_{key}", NAN) for f in FAMILIES
           for end, key in (("", "max"), ("_floor", "floor"))}
    out["w1_mode_sd"] = _w1_in_sds(*pair) if pair is not None else NAN
    return out


def _w1_in_sds(draws: xr.DataTree, reference: xr.DataTree) -> float:
    """max over every scalar of W1(fit marginal, reference marginal) / reference sd (sd floored at 1e-12)."""
    ds, ref = posterior_dataset(draws), posterior_dataset(reference)
    worst = 0.0
    for f in FAMILIES:
        if _present(ds, f) and _present(ref, f):
            x, y = _samples(ds, f), _samples(ref, f)
            for i in range(x.shape[1]):
                if np.isfinite(x[:, i]).all() and np.isfinite(y[:, i]).all():
                    worst = max(worst, wasserstein_distance(x[:, i], y[:, i]) / max(float(y[:, i].std()), 1e-12))
    return float(worst)


def _loo_metric(s: Scoring, row: dict) -> dict[str, Any]:
    if s.problem is None:
        return {}
    st = s.settings
    data = s.problem.dataset
    return loo_metrics(s.fit, s.raw, s.problem, mcmc=s.mcmc, max_values=st.loo_max_values,
                       max_draws=st.loo_max_draws, max_obs=st.loo_max_obs, terms=s.terms,
                       seed=subsample_seed(data.x, data.y))


def _stacking_metric(s: Scoring, row: dict) -> dict[str, Any]:
    if s.mcmc and not non_mixing(row):
        # Stacking is for chains that do not mix (Yao, Vehtari & Gelman 2022): the weights of
        # chains that agree carry no information and cost a PSIS pass per chain. Paths and SMC
        # runs are checked the same way in stacking_columns (component_agreement).
        return {}
    data = s.problem.dataset if s.problem is not None else None
    return stacking_columns(s.fit, s.raw, s.problem, terms=s.terms, chain_modes=row.get("ref_mode_chains"),
                            modes=s.ref_modes, max_obs=s.settings.loo_max_obs,
                            seed=subsample_seed(data.x, data.y) if data is not None else 0, target=s.target,
                            scale_floor=s.settings.relabel_scale_floor, max_iter=s.settings.relabel_max_iter,
                            check_agreement=not s.mcmc)


def _health_metric(s: Scoring, row: dict) -> dict[str, Any]:
    return health(row, s.raw, s.rel.draws, s.problem, mcmc=s.mcmc, single_point=s.single_point,
                  converged=s.fit.converged, settings=s.settings)


# Every per-fit judgment, in the order they run; health reads the columns of the others.
METRICS: list[tuple[str, Any]] = [
    ("degenerate", _degenerate_metric),
    ("landing", _landing_metric),
    ("truth", _truth_metric),
    ("reference_modes", _modes_metric),
    ("switching", _switching_metric),
    ("recovery", _recovery_metric),
    ("efficiency", _efficiency_metric),
    ("khat", _khat_metric),
    ("w1", _w1_metric),
    ("loo", _loo_metric),
    ("particles", lambda s, row: smc_columns(s.raw)),
    ("stacking", _stacking_metric),
    ("health", _health_metric),
]


def importance_proposal(draws: xr.DataTree) -> tuple[np.ndarray, np.ndarray] | None:
    """(log p, log q) of the proposal draws an importance-resampled fit was resampled from.

    Backends that resample (Pathfinder, by default) keep the whole proposal in the group
    ``importance_sampling`` (variables log_p, log_q over dim ``proposal``): its PSIS k-hat says
    how far the resampled draws can be trusted. None when the fit did not resample.
    """
    if "importance_sampling" not in draws.children:
        return None
    group = draws["importance_sampling"]
    return np.asarray(group["log_p"].values, dtype=float), np.asarray(group["log_q"].values, dtype=float)

