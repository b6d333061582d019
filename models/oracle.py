"""The reference log density in NumPy/SciPy: the oracle every backend is tested against.

Convention (ARCHITECTURE.md): log prior + log likelihood of the constrained parameters, no
Jacobian, every normalising constant included.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from models.spec import MixtureSpec


def component_means(spec: MixtureSpec, x: np.ndarray, params: dict) -> np.ndarray:
    """Mean of every observation under every component, shape (N, K)."""
    mu = x @ np.asarray(params["w"]).T
    if spec.intercept:
        mu = mu + np.asarray(params["b"])[None, :]
    return mu


def log_prior(spec: MixtureSpec, params: dict) -> float:
    params = spec.check_params(params)
    pi = params["pi"]
    if np.any(pi < 0) or not np.isclose(pi.sum(), 1.0, rtol=0, atol=1e-10):
        return -np.inf
    lp = stats.dirichlet.logpdf(np.clip(pi, 1e-300, None) / pi.sum(), spec.alpha)
    lp += stats.norm.logpdf(params["w"], spec.slope_prior.mu, spec.slope_prior.sigma).sum()
    if spec.intercept:
        lp += stats.norm.logpdf(params["b"], spec.intercept_prior.mu, spec.intercept_prior.sigma).sum()
    sigma = params["sigma"]
    if spec.sigma_prior.family == "uniform":
        lp += stats.uniform.logpdf(sigma, 0.0, spec.sigma_prior.scale).sum()
    else:
        lp += stats.halfnorm.logpdf(sigma, scale=spec.sigma_prior.scale).sum()
    if spec.ordering != "none":
        ordered = params["b"] if spec.ordering == "intercept" else params["w"][:, 0]
        if np.any(np.diff(ordered) <= 0):
            return -np.inf
        lp += spec.log_order_constant
    return float(lp)


def log_likelihood_terms(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> np.ndarray:
    """Per-observation mixture log likelihood, shape (N,): log sum_k pi_k N(y | mu_k, sigma_k)."""
    params = spec.check_params(params)
    mu = component_means(spec, x, params)
    sigma = np.broadcast_to(params["sigma"], (spec.K,))
    with np.errstate(divide="ignore"):
        log_pi = np.log(params["pi"])
    return special.logsumexp(log_pi[None, :] + stats.norm.logpdf(y[:, None], mu, sigma[None, :]), axis=1)


def forum_original_log_likelihood(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> float:
    """The thread's likelihood as posted, over one batch (the whole of ``y``).

    Its two bugs are kept on purpose: each component's normal log density is summed over the
    whole batch *before* the log-sum-exp (every point of the batch forced into one component),
    and it uses log(sigma) where the normal density needs 2 log(sigma).
    """
    params = spec.check_params(params)
    mu = component_means(spec, x, params)
    sigma = np.broadcast_to(params["sigma"], (spec.K,))
    n = y.shape[0]
    batch_logp = -0.5 * (
        n * np.log(2 * np.pi) + np.log(sigma) + ((y[:, None] - mu) ** 2).sum(axis=0) / sigma**2
    )
    with np.errstate(divide="ignore"):
        return float(special.logsumexp(np.log(params["pi"]) + batch_logp))


def log_likelihood(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> float:
    if spec.likelihood == "forum-original":
        return forum_original_log_likelihood(spec, x, y, params)
    return float(log_likelihood_terms(spec, x, y, params).sum())


def log_density(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> float:
    """Log prior + log likelihood at a constrained point (no Jacobian)."""
    lp = log_prior(spec, params)
    if not np.isfinite(lp):
        return lp
    return lp + log_likelihood(spec, x, y, params)
