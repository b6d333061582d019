"""The posterior mass of each mode, by two independent estimators of its normalising constant.

A mode's mass is its share of the posterior, Z_m / sum_j Z_j, where Z_m is the integral of the
unnormalised density over the mode's region (in the unconstrained space, the log density there
including the Jacobian of the transform). Two estimators of log Z_m, from different draws:

- bridge sampling (Meng & Wong 1996; the iterative scheme and its error as Gronau et al. 2017,
  "A tutorial on bridge sampling", eqs. 4-8 and 15-17, compute them in the R package
  bridgesampling): posterior draws of the mode against draws of a multivariate normal fitted to
  the mode's draws, with the optimal bridge function; its relative mean-squared error is
  Fruehwirth-Schnatter's (2004) approximation, with the posterior draws' autocorrelation entering
  through their effective sample size (arviz-stats) as bridgesampling's spectral density does;
- importance sampling from a multivariate Student-t (5 degrees of freedom: heavier tails than the
  mode) fitted to the same draws: Z = mean(p / q) over draws of q alone, its standard error the
  sd of the weights over sqrt(n) (Owen 2013, "Monte Carlo theory, methods and examples", 9.1),
  with the PSIS k-hat (Vehtari et al. 2024) saying whether that error can be trusted (k-hat
  above 0.7: it cannot).

A region made of several lobes that chains cross between (bench.reference.modes: sampled as one)
is fitted lobe by lobe: each proposal is then the mixture of per-lobe normals (Student-t's),
weighted by the lobes' shares of the draws, and its density the mixture's; one normal fitted to two
lobes would put its mass on the barrier between them and little in either.

Masses from either set of log Z's, with standard errors by the delta method (the modes' errors
independent): var(m_k) = m_k^2 ((1 - m_k)^2 s_k^2 + sum_{j != k} m_j^2 s_j^2), s = se(log Z).
"""

from __future__ import annotations

import math

import arviz_stats as azs
import numpy as np
from scipy import special, stats

from backends.importance import psis_log_weights

STUDENT_T_DF = 5.0
KHAT_MAX = 0.7


def bridge_log_z(log_p_post: np.ndarray, log_q_post: np.ndarray, log_p_prop: np.ndarray, log_q_prop: np.ndarray,
                 ess_post: float, tol: float = 1e-10, max_iter: int = 1000) -> tuple[float, float]:
    """(log Z, its standard error) by the iterative bridge sampler with the optimal bridge.

    log_p_post, log_q_post: (N1,) unnormalised log posterior and log proposal density at the
    posterior draws; log_p_prop, log_q_prop: (N2,) the same at the proposal's draws; ess_post:
    the posterior draws' effective sample size, which replaces N1 in the weights s1, s2
    (bridgesampling's use_neff). Gronau et al. 2017, eq. 8 (iteration) and eq. 17 (error).
    """
    l1 = np.asarray(log_p_post, dtype=float) - np.asarray(log_q_post, dtype=float)
    l2 = np.asarray(log_p_prop, dtype=float) - np.asarray(log_q_prop, dtype=float)
    l2 = np.where(np.isfinite(l2), l2, -np.inf)
    n1, n2 = float(ess_post), float(l2.size)
    s1, s2 = n1 / (n1 + n2), n2 / (n1 + n2)
    shift = float(np.median(l1))  # keeps exp() in range, as bridgesampling's lstar
    e1, e2 = np.exp(l1 - shift), np.exp(l2 - shift)
    r = 1.0
    for _ in range(max_iter):
        new = np.mean(e2 / (s1 * e2 + s2 * r)) / np.mean(1.0 / (s1 * e1 + s2 * r))
        done = abs(math.log(new) - math.log(r)) < tol
        r = new
        if done:
            break
    log_z = math.log(r) + shift
    # Fruehwirth-Schnatter's f1 (at the proposal's draws) and f2 (at the posterior's), written
    # with the normalised posterior p / Z so that both stay within [0, 1 / s].
    with np.errstate(over="ignore"):
        f1 = 1.0 / (s1 + s2 * np.exp(-(l2 - log_z)))
        f2 = 1.0 / (s1 * np.exp(l1 - log_z) + s2)
    re2 = np.var(f1, ddof=1) / np.mean(f1) ** 2 / n2 + np.var(f2, ddof=1) / np.mean(f2) ** 2 / n1
    return log_z, float(math.sqrt(re2))


def importance_log_z(log_p: np.ndarray, log_q: np.ndarray) -> tuple[float, float, float]:
    """(log Z, its standard error, PSIS k-hat) from draws of q: log Z = log mean(p / q)."""
    lw = np.asarray(log_p, dtype=float) - np.asarray(log_q, dtype=float)
    lw = np.where(np.isfinite(lw), lw, -np.inf)
    n = lw.size
    log_z = float(special.logsumexp(lw) - math.log(n))
    w = np.exp(lw - lw.max())
    se = float(np.std(w, ddof=1) / np.mean(w) / math.sqrt(n))
    _, khat = psis_log_weights(log_p, log_q)
    return log_z, se, float(khat)


def masses(log_z: np.ndarray, se_log_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masses Z_k / sum Z and their delta-method standard errors (module docstring)."""
    log_z, s = np.asarray(log_z, dtype=float), np.asarray(se_log_z, dtype=float)
    m = np.exp(log_z - special.logsumexp(log_z))
    total = (m**2 * s**2).sum()
    var = m**2 * ((1 - m) ** 2 * s**2 + (total - m**2 * s**2))
    return m, np.sqrt(var)


class _Mixture:
    """A mixture of frozen scipy multivariate distributions with weights: rvs and logpdf."""

    def __init__(self, parts: list, weights: np.ndarray):
        self.parts, self.weights = parts, np.asarray(weights, dtype=float) / np.sum(weights)

    def rvs(self, size: int, random_state: np.random.Generator) -> np.ndarray:
        counts = random_state.multinomial(size, self.weights)
        out = np.concatenate([p.rvs(size=n, random_state=random_state).reshape(n, -1)
                              for p, n in zip(self.parts, counts) if n])
        return out[random_state.permutation(size)]

    def logpdf(self, x: np.ndarray) -> np.ndarray:
        return special.logsumexp([np.log(w) + np.reshape(p.logpdf(x), -1) for p, w in zip(self.parts, self.weights)],
                                 axis=0)


def _proposal(draws: np.ndarray, labels: np.ndarray, make) -> _Mixture:
    """``make(mean, cov)`` fitted to the draws (n, dim) of each lobe (labels (n,)) holding more than
    dim of them (all draws as one lobe when none does), mixed by the lobes' shares; the covariance
    nudged positive definite."""
    dim = draws.shape[1]
    parts, weights = [], []
    kept = [lobe for lobe in np.unique(labels) if (labels == lobe).sum() > dim]
    for lobe in kept or [None]:
        part = draws[labels == lobe] if kept else draws
        cov = np.cov(part, rowvar=False).reshape(dim, dim)
        cov += 1e-9 * np.eye(dim) * max(np.trace(cov) / dim, 1e-12)
        parts.append(make(part.mean(axis=0), cov))
        weights.append(part.shape[0])
    return _Mixture(parts, np.array(weights))


def mode_log_z(log_density, z_draws: np.ndarray, n_proposal: int, seed: int,
               lobes: np.ndarray | None = None) -> dict[str, float]:
    """Both estimators for one mode, or for one region of several lobes.

    log_density: (S, dim) unconstrained points -> (S,) log density with the Jacobian;
    z_draws: (chain, draw, dim) posterior draws of the mode; lobes: (chain, draw) the lobe of
    each draw when the region has several (the proposals are then per-lobe mixtures: module
    docstring), None for one. The normal for bridge sampling is
    fitted to the first half of each chain and bridged with the second half (Overstall & Forster
    2010's split, as bridgesampling does); the Student-t for importance sampling to all draws.
    """
    rng = np.random.default_rng(seed)
    chains, draws, dim = z_draws.shape
    lobes = np.zeros((chains, draws), dtype=int) if lobes is None else np.asarray(lobes)
    half = draws // 2
    post = z_draws[:, half:]
    normal = _proposal(z_draws[:, :half].reshape(-1, dim), lobes[:, :half].ravel(), stats.multivariate_normal)
    proposal = normal.rvs(size=n_proposal, random_state=rng).reshape(n_proposal, dim)
    post_flat = post.reshape(-1, dim)
    lp_post = log_density(post_flat)
    lq_post = normal.logpdf(post_flat).reshape(-1)
    ess = float(azs.ess((lp_post - lq_post).reshape(chains, -1), method="bulk"))
    ess = min(max(ess, 2.0), float(post_flat.shape[0])) if math.isfinite(ess) else float(post_flat.shape[0])
    log_z_b, se_b = bridge_log_z(lp_post, lq_post, log_density(proposal), normal.logpdf(proposal).reshape(-1), ess)
    # The t's scale matrix is the covariance times (df - 2) / df, so that its covariance is the draws'.
    student = _proposal(z_draws.reshape(-1, dim), lobes.ravel(), lambda mean, cov: stats.multivariate_t(
        mean, cov * (STUDENT_T_DF - 2) / STUDENT_T_DF, df=STUDENT_T_DF))
    t_draws = student.rvs(size=n_proposal, random_state=rng).reshape(n_proposal, dim)
    log_z_i, se_i, khat = importance_log_z(log_density(t_draws), student.logpdf(t_draws).reshape(-1))
    return {"log_z_bridge": log_z_b, "log_z_bridge_se": se_b, "log_z_is": log_z_i, "log_z_is_se": se_i,
            "is_khat": khat, "bridge_ess": ess}
