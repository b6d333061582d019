"""What a cell fits and what its draws are scored with: the spec, the data, and the scale.

A ``Problem`` pairs the data set as given (data scale, with its truth when known) with the model
as fitted: the same data, or standardised (``models.standardize``) when asked. Backends fit
``fit_spec`` to ``fit_dataset``; ``to_data_scale`` brings their draws back, and every metric reads
draws on the data's scale. Log densities are the oracle's (models/oracle.py) of the fitted model,
evaluated at a data-scale point mapped to the fitted scale: the same function for a fit and for
the reference posterior, so gaps between them are exact (standardising shifts them all by one
constant).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import xarray as xr
from scipy import special

from backends.base import Fit
from backends.importance import PROPOSAL_GROUP
from bench.score.relabel import posterior_dataset
from models.data import Dataset
from models.oracle import (error_log_density, gamma_log_prior, intercepts_log_prior, log_density,
                           log_likelihood_terms, nu_log_prior, sigma_log_prior, slopes_log_prior)
from models.spec import MixtureSpec
from models.standardize import Standardization


def batch_log_prior(spec: MixtureSpec, params: dict) -> np.ndarray:
    """The oracle's log prior (models/oracle.py) of S points at once, shape (S,); -inf outside
    the support. ``params`` holds the canonical arrays with one leading axis of S points."""
    p = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    S = p["sigma"].shape[0]
    alpha = spec.alpha
    with np.errstate(divide="ignore", invalid="ignore"):
        if spec.softmax_weights:
            lp = gamma_log_prior(spec, p["gamma"])
        else:
            pi = p["pi"]
            lp = special.gammaln(alpha.sum()) - special.gammaln(alpha).sum() + ((alpha - 1) * np.log(pi)).sum(axis=1)
            lp[np.any(pi < 0, axis=1) | ~np.isclose(pi.sum(axis=1), 1.0, rtol=0, atol=1e-10)] = -np.inf
        lp += slopes_log_prior(spec, p["w"])
        if spec.nu_is_parameter:
            lp += nu_log_prior(spec.nu, p["nu"])
        if spec.intercept:
            lp += intercepts_log_prior(spec, p["b"])
        lp += sigma_log_prior(spec.sigma_prior, p["sigma"].reshape(S, -1)).sum(axis=1)
        if spec.ordering != "none":
            ordered = p["b"] if spec.ordering == "intercept" else p["w"][:, :, 0]
            lp = np.where(np.any(np.diff(ordered, axis=1) <= 0, axis=1), -np.inf, lp + spec.log_order_constant)
    return lp


_FLOOR = -60.0


def _logaddexp(a: np.ndarray, b: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``np.logaddexp(a, b)`` into ``out`` (which may be ``a``), by numpy's own formula
    max(a, b) + log1p(exp(-|a - b|)) written with the ufuncs numpy vectorises: np.logaddexp runs a
    scalar loop (18 ns a value on the project's machine, against 0.6 for np.exp), and was most of
    the log likelihood's cost. Where a - b is NaN (a NaN, or one infinity twice) np.logaddexp
    gives the answer itself. ``scratch``: a buffer of the same shape, overwritten.

    -|a - b| is floored at -60 (``_FLOOR``) before exp: far below it exp and log1p leave their
    vectorised fast paths (components 200 nats apart, most observations of separated lines: 5.6
    against 2.8 ns a value for the whole function), and the floor changes nothing representable:
    log1p(exp(-60)) = 8.8e-27 is under half an ulp of max(a, b) wherever |max(a, b)| > 2e-10, so
    max + it rounds to max exactly as the unfloored value does (checked equal on 2e6 values of a
    real fit's components)."""
    np.subtract(a, b, out=scratch)
    bad = np.isnan(scratch)
    fix = np.logaddexp(a[bad], b[bad]) if bad.any() else None
    np.maximum(a, b, out=out)
    np.abs(scratch, out=scratch)
    np.negative(scratch, out=scratch)
    np.maximum(scratch, _FLOOR, out=scratch)
    np.exp(scratch, out=scratch)
    np.log1p(scratch, out=scratch)
    out += scratch
    if fix is not None:
        out[bad] = fix
    return out


def _means(w: np.ndarray, xt: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """x . w of every point and observation into ``out`` (s, N), from ``w`` (s, D) and ``xt`` (D, N):
    a broadcast product per covariate, summed in covariate order (with D = 1 the product itself,
    bit for bit). np.matmul's BLAS call costs 1 ns a value here, the product 0.13."""
    if w.shape[1] == 0:
        out.fill(0.0)
        return out
    np.multiply(w[:, :1], xt[:1], out=out)
    for d in range(1, w.shape[1]):
        out += np.multiply(w[:, d:d + 1], xt[d:d + 1], out=scratch)
    return out


def _log_likelihood_chunks(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, p: dict, chunk_values: float,
                           out: np.ndarray | None = None):
    """(slice of points, their per-observation mixture log likelihood (s, N)) chunk by chunk.

    log sum_k pi_k f(y_n | b_k + x_n . w_k, sigma_k) (f: the spec's error density,
    ``models.oracle.error_log_density``; Normal written inline, the common case), accumulated one
    component at a time with ``_logaddexp`` (exact and stable: log(e^a + e^b) = max +
    log1p(e^-|a-b|)); the means are one matrix product per component. float64 throughout.
    Softmax weights add log softmax_k(eta) per observation, eta_k = gamma_k0 + x . gamma_k[1:],
    its normaliser accumulated the same way first.

    Each chunk is computed in place in three (s, N) buffers of about ``chunk_values`` doubles,
    reused from chunk to chunk (small enough to stay in cache: at N = 1e5 the values pass through
    memory once instead of once per operation). The yielded array is a buffer the next chunk
    overwrites, or, with ``out`` ((S, N)), the rows of ``out`` themselves.
    """
    S, K, N = p["sigma"].shape[0], spec.K, y.shape[0]
    sigma = np.broadcast_to(p["sigma"].reshape(S, -1), (S, K))
    step = max(1, int(chunk_values // max(N, 1)))
    xt = np.ascontiguousarray(x.T)
    buffers = np.empty((3, min(step, S), N))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_pi = np.zeros((S, K)) if spec.softmax_weights else np.log(p["pi"])
        const = log_pi - 0.5 * np.log(2 * np.pi) - np.log(sigma)  # (S, K)
        for start in range(0, S, step):
            sl = slice(start, min(S, start + step))
            rows = sl.stop - sl.start
            ll = out[sl] if out is not None else buffers[0, :rows]
            comp, scratch = buffers[1, :rows], buffers[2, :rows]
            if spec.softmax_weights:
                gamma = p["gamma"][sl]
                eta = [gamma[:, k, :1] + gamma[:, k, 1:] @ x.T for k in range(K)]  # K of (s, N)
                log_norm = eta[0].copy()
                for k in range(1, K):
                    _logaddexp(log_norm, eta[k], log_norm, scratch)
            for k in range(K):
                target = ll if k == 0 else comp
                _means(p["w"][sl, k], xt, target, scratch)
                if spec.intercept:
                    target += p["b"][sl, k][:, None]
                if spec.errors == "normal":
                    # const - 0.5 z^2, z = (y - mu) / sigma; halving is exact, so bit for bit
                    # the oracle's const - 0.5 * z * z.
                    np.subtract(y, target, out=target)
                    target /= sigma[sl, k][:, None]
                    np.square(target, out=target)
                    target *= -0.5
                    target += const[sl, k][:, None]
                else:
                    nu = p["nu"][sl][:, None] if spec.nu_is_parameter else spec.nu
                    np.add(log_pi[sl, k][:, None],
                           error_log_density(spec, y[None, :], target.copy(), sigma[sl, k][:, None], nu), out=target)
                if spec.softmax_weights:
                    target += eta[k]
                    target -= log_norm
                if k > 0:
                    _logaddexp(ll, comp, ll, scratch)
            yield sl, ll


def batch_log_density(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict,
                      pointwise: bool = False, chunk_values: int = 1 << 16) -> np.ndarray:
    """The oracle's log density (models/oracle.py) of S points at once, shape (S,); with
    ``pointwise``, the per-observation log likelihood, shape (S, N).

    ``params`` holds the canonical arrays with one leading axis of S points. The same formulas as
    the oracle, vectorised over points (tests/test_problem.py checks they agree); the forum
    likelihoods fall back to the oracle point by point. Points outside the prior's support give
    -inf. Memory stays at three buffers of max(``chunk_values``, N) doubles (points x N per chunk,
    small enough to stay in cache) besides the (S, N) result of ``pointwise``.
    """
    p = {k: np.asarray(v, dtype=float) for k, v in params.items()}
    S = p["sigma"].shape[0]
    if spec.likelihood != "mixture":
        if pointwise:
            raise ValueError("pointwise log likelihood: only for the mixture likelihood")
        return np.array([log_density(spec, x, y, {k: v[i] for k, v in p.items()}) for i in range(S)])
    if pointwise:
        terms = np.empty((S, y.shape[0]))
        for _ in _log_likelihood_chunks(spec, x, y, p, chunk_values, out=terms):
            pass
        return terms
    lp = batch_log_prior(spec, p)
    for sl, ll in _log_likelihood_chunks(spec, x, y, p, chunk_values):
        lp[sl] = lp[sl] + ll.sum(axis=1)
    return np.where(np.isnan(lp), -np.inf, lp)


def allocate(mass: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``mass`` (largest remainders)."""
    raw = np.asarray(mass, dtype=float) / np.sum(mass) * total
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts))[: total - counts.sum()]] += 1
    return counts


def thin_indices(n: int, most: int) -> np.ndarray:
    """At most ``most`` indices of 0..n-1, evenly spaced (all of them when n <= most)."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(int))


def subsample_indices(n: int, most: int, seed: int) -> np.ndarray | None:
    """``most`` of the indices 0..n-1 drawn without replacement by NumPy's default generator seeded
    with ``seed``, in the order drawn (arviz-stats' ``loo_subsample`` simple random sample, the
    same seed, the same sample); None when n <= most (every index is kept)."""
    if n <= most:
        return None
    return np.random.default_rng(seed).choice(n, size=most, replace=False)


class _LogMeanExp:
    """lpd_n = log mean_s exp(l[s, n]) over rows l[s] given a block of rows at a time, so that the
    (draws, N) matrix is never held: each block is shifted by a per-observation reference (the
    first block's largest value; raised where a later block comes within 600 nats of overflowing
    exp) and its exponentials summed, in one buffer of the block's size (3 passes a value, as the
    two-pass log-sum-exp over the whole matrix; values agree with it to rounding)."""

    def __init__(self) -> None:
        self.shift: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.rows = 0
        self.buffer: np.ndarray | None = None

    def add(self, block: np.ndarray) -> None:
        if self.shift is None:
            self.shift = block.max(axis=0)
            self.total = np.zeros(block.shape[1])
        if self.buffer is None or self.buffer.shape[0] < block.shape[0]:
            self.buffer = np.empty_like(block)
        work = self.buffer[:block.shape[0]]
        np.subtract(block, self.shift, out=work)
        if work.max() > 600.0:
            shift = np.maximum(self.shift, block.max(axis=0))
            self.total *= np.exp(self.shift - shift)
            self.shift = shift
            np.subtract(block, shift, out=work)
        np.exp(work, out=work)
        self.total += work.sum(axis=0) if work.shape[0] > 1 else work[0]
        self.rows += block.shape[0]

    def result(self) -> np.ndarray:
        return self.shift + np.log(self.total / self.rows)


@dataclass(frozen=True, eq=False)
class DrawTerms:
    """Evenly thinned draws of a fit, evaluated once: the landing's log densities and PSIS-LOO's
    pointwise log likelihood both read them (``Problem.draw_terms``)."""

    keep: np.ndarray
    """(kept,) the draw indices evaluated, the same in every chain."""
    terms: np.ndarray
    """(chain, kept, n) log p(y_n | theta), data scale (bench.score.problem.Problem.pointwise_log_likelihood),
    at the observations ``obs`` (all N when ``obs`` is None)."""
    log_density: np.ndarray
    """(chain, kept) the fitted model's log density (oracle convention); -inf where not finite."""
    finite: np.ndarray
    """(chain, kept) whether the draw's term is finite at every one of the N observations."""
    obs: np.ndarray | None = None
    """(n,) the observations ``terms`` holds, ascending; None: all N."""
    lpd: np.ndarray | None = None
    """(N,) log mean exp of every observation's terms over all the evaluated draws (the lpd of
    loo_subsample's difference estimator), where ``obs`` was given and every draw is finite."""


@dataclass(eq=False)
class Problem:
    """The model as fitted (``spec``: priors on the fitted scale) and the data as given."""

    spec: MixtureSpec
    dataset: Dataset
    standardization: Standardization | None = None
    name: str = field(default="")

    @classmethod
    def make(cls, spec: MixtureSpec, dataset: Dataset, standardize: bool = False) -> "Problem":
        dataset.check_against(spec)
        scaling = Standardization.of(dataset, spec) if standardize else None
        return cls(spec, dataset, scaling, dataset.name)

    @cached_property
    def fit_dataset(self) -> Dataset:
        """What backends fit: the data, standardised when asked (without the truth then)."""
        if self.standardization is None:
            return self.dataset
        return self.standardization.dataset(self.dataset)

    def identity(self) -> dict:
        """What makes two problems the same posterior: data digest, spec, standardisation."""
        return {"data_digest": self.dataset.digest(), "spec": self.spec.to_dict(),
                "standardization": self.standardization.to_dict() if self.standardization else None}

    # -- scales --------------------------------------------------------------------------------

    def to_fit_scale(self, point: dict) -> dict[str, np.ndarray]:
        if self.standardization is None:
            return {k: np.asarray(v, dtype=float) for k, v in point.items()}
        return self.standardization.to_fit(point)

    def to_data_scale_point(self, point: dict) -> dict[str, np.ndarray]:
        if self.standardization is None:
            return {k: np.asarray(v, dtype=float) for k, v in point.items()}
        return self.standardization.to_data(point)

    def to_data_scale_draws(self, draws: xr.DataTree) -> xr.DataTree:
        """A copy of ``draws`` with its parameter groups mapped to the data scale: the posterior,
        and an importance-resampled fit's proposal (``backends.importance.PROPOSAL_GROUP``),
        which PSIS-LOO and stacking read as they read the posterior."""
        if self.standardization is None:
            return draws
        out = draws.copy()
        for group in ("posterior", PROPOSAL_GROUP):
            if group not in draws.children:
                continue
            ds = draws[group].to_dataset()
            mapped = self.standardization.to_data({name: ds[name].values for name in ds.data_vars})
            new = ds.assign({name: (ds[name].dims, mapped[name]) for name in ds.data_vars})
            new.attrs = {**ds.attrs, "standardized": "mapped back to the data scale (models/standardize.py)"}
            out[group] = xr.DataTree(new)
        return out

    def to_data_scale(self, fit: Fit) -> Fit:
        """The fit with its draws and point on the data scale (the same fit without standardising)."""
        if self.standardization is None or not fit.ok:
            return fit
        changes = {}
        if fit.draws is not None:
            changes["draws"] = self.to_data_scale_draws(fit.draws)
        if fit.point is not None:
            changes["point"] = self.to_data_scale_point(fit.point)
        return dataclasses.replace(fit, **changes)

    def sigma_bounds(self) -> tuple[float, float]:
        """Support of sigma's prior on the data scale: (0, upper), upper = inf for HalfNormal."""
        scale = self.standardization.y_scale if self.standardization else 1.0
        return 0.0, self.spec.sigma_prior.upper * scale

    def sigma_prior_scale(self) -> float:
        """The sigma prior's scale parameter on the data scale."""
        scale = self.standardization.y_scale if self.standardization else 1.0
        return self.spec.sigma_prior.scale * scale

    # -- log densities -------------------------------------------------------------------------

    def log_density(self, point: dict) -> float:
        """The fitted model's log density (oracle convention) at a data-scale point."""
        fit = self.fit_dataset
        return float(log_density(self.spec, fit.x, fit.y, self.to_fit_scale(point)))

    def pointwise_log_likelihood(self, point: dict) -> np.ndarray:
        """log p(y_i | theta) for every observation on the data scale, shape (N,).

        On standardised data each term is the fitted model's minus log s_y (the Jacobian of
        y -> y'), so predictive densities are densities of y as given.
        """
        fit = self.fit_dataset
        terms = log_likelihood_terms(self.spec, fit.x, fit.y, self.to_fit_scale(point))
        if self.standardization is not None:
            terms = terms - math.log(self.standardization.y_scale)
        return terms

    def _points(self, draws: xr.DataTree, index: list[tuple[int, int]]) -> dict[str, np.ndarray]:
        """The draws at (chain, draw) pairs, on the fitted scale, one leading axis of points."""
        ds = posterior_dataset(draws)
        chains = np.array([c for c, _ in index], dtype=int)
        picks = np.array([d for _, d in index], dtype=int)
        points = {n: np.asarray(ds[n].values, dtype=float)[chains, picks] for n in ds.data_vars}
        return self.to_fit_scale(points)

    def draw_log_densities(self, draws: xr.DataTree, per_chain: int) -> tuple[np.ndarray, np.ndarray]:
        """Log density of at most ``per_chain`` evenly spaced draws of each chain.

        Returns (values (chain, kept), kept draw indices). Non-finite draws give -inf.
        """
        ds = posterior_dataset(draws)
        keep = thin_indices(ds.sizes["draw"], per_chain)
        index = [(c, int(d)) for c in range(ds.sizes["chain"]) for d in keep]
        fit = self.fit_dataset
        values = batch_log_density(self.spec, fit.x, fit.y, self._points(draws, index))
        return np.where(np.isfinite(values), values, -np.inf).reshape(ds.sizes["chain"], keep.size), keep

    def draw_terms(self, draws: xr.DataTree, keep: np.ndarray, obs: np.ndarray | None = None,
                   lpd: bool = True) -> "DrawTerms":
        """The pointwise log likelihood and log density of the draws ``keep`` of every chain,
        computed once (one pass over N per draw) for every metric that reads them.

        ``obs`` (indices): keep the pointwise terms of these observations only, and the lpd of all
        N (``DrawTerms.lpd``, unless ``lpd`` is False); the (draws, N) matrix is then never held
        (at N = 1e5, 200 draws: 160 MB whose first touch after a fit cost 0.1-0.3 s of page
        faults). The log densities and the kept terms are the same values either way.
        """
        ds = posterior_dataset(draws)
        chains = ds.sizes["chain"]
        index = [(c, int(d)) for c in range(chains) for d in keep]
        points = self._points(draws, index)
        fit = self.fit_dataset
        jacobian = math.log(self.standardization.y_scale) if self.standardization is not None else 0.0
        S = len(index)
        cols = None if obs is None else np.sort(np.asarray(obs, dtype=int))
        terms = np.empty((S, fit.N if cols is None else cols.size))
        sums, finite = np.empty(S), np.empty(S, dtype=bool)
        mean_exp = _LogMeanExp() if cols is not None and lpd else None
        p = {k: np.asarray(v, dtype=float) for k, v in points.items()}
        with np.errstate(invalid="ignore", over="ignore"):
            for sl, ll in _log_likelihood_chunks(self.spec, fit.x, fit.y, p, 1 << 16,
                                                 out=terms if cols is None else None):
                sums[sl] = ll.sum(axis=1)
                finite[sl] = np.isfinite(ll).all(axis=1)
                if jacobian:
                    ll -= jacobian
                if cols is not None:
                    terms[sl] = ll[:, cols]
                    if mean_exp is not None:
                        mean_exp.add(ll)
            lp = batch_log_prior(self.spec, points) + sums
        lp = np.where(np.isfinite(lp), lp, -np.inf)
        shape = (chains, len(keep))
        return DrawTerms(np.asarray(keep), terms.reshape(*shape, -1), lp.reshape(shape), finite.reshape(shape), cols,
                         mean_exp.result() if mean_exp is not None and finite.all() else None)

    def pointwise_draws(self, draws: xr.DataTree, index: list[tuple[int, int]], obs=slice(None)) -> np.ndarray:
        """Pointwise log likelihood (data scale) at the given (chain, draw) pairs, shape (len(index), N),
        or (len(index), len(obs)) for the observations ``obs`` (indices) only."""
        fit = self.fit_dataset
        out = batch_log_density(self.spec, fit.x[obs], fit.y[obs], self._points(draws, index), pointwise=True)
        if self.standardization is not None:
            out = out - math.log(self.standardization.y_scale)
        return out

