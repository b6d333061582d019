"""EM for a mixture of linear regressions, from several starts: an independent right answer.

Dempster, Laird & Rubin (1977); for mixtures of regressions, e.g. McLachlan & Peel (2000),
section 5.13. E-step: responsibilities r_nk proportional to pi_k N(y_n | b_k + x_n . w_k,
sigma_k). M-step: weighted least squares per component, sigma from the weighted residuals
(pooled when shared), pi_k = mean_n r_nk. Maximum likelihood (no priors); each start begins from
random responsibilities. Starts whose sigma shrinks onto a few points (a degenerate optimum of an
unbounded likelihood) are discarded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats


@dataclass
class EMResult:
    params: dict[str, np.ndarray]  # canonical names: w (K, D), b (K,) with intercepts, sigma, pi
    log_likelihood: float
    optima: list[float]  # every start's final log likelihood, sorted, best first


def em_mixture(x: np.ndarray, y: np.ndarray, K: int, intercept: bool, shared_sigma: bool,
               starts: int = 20, iterations: int = 1000, seed: int = 0, tol: float = 1e-10,
               sigma_floor: float = 1e-3) -> EMResult:
    rng = np.random.default_rng(seed)
    N, D = x.shape
    X = np.column_stack([np.ones(N), x]) if intercept else x
    best, optima = None, []
    for _ in range(starts):
        r = rng.dirichlet(np.ones(K), size=N)
        previous = -np.inf
        ok = True
        for _ in range(iterations):
            coef = np.empty((K, X.shape[1]))
            var = np.empty(K)
            for k in range(K):
                weight = r[:, k]
                A = X.T @ (X * weight[:, None])
                coef[k] = np.linalg.solve(A + 1e-12 * np.eye(X.shape[1]), X.T @ (weight * y))
                var[k] = weight @ (y - X @ coef[k]) ** 2 / max(weight.sum(), 1e-300)
            if shared_sigma:
                var[:] = sum(r[:, k] @ (y - X @ coef[k]) ** 2 for k in range(K)) / N
            sigma = np.sqrt(var)
            if np.any(sigma < sigma_floor):
                ok = False
                break
            pi = r.mean(axis=0)
            log_comp = np.log(pi)[None] + stats.norm.logpdf(y[:, None], X @ coef.T, sigma[None])
            ll = float(special.logsumexp(log_comp, axis=1).sum())
            r = np.exp(log_comp - special.logsumexp(log_comp, axis=1, keepdims=True))
            if abs(ll - previous) < tol * max(1.0, abs(ll)):
                break
            previous = ll
        if not ok:
            continue
        optima.append(ll)
        if best is None or ll > best.log_likelihood:
            params = {"w": coef[:, 1:] if intercept else coef, "sigma": sigma[0] if shared_sigma else sigma, "pi": pi}
            if intercept:
                params["b"] = coef[:, 0]
            best = EMResult({k: np.asarray(v, dtype=float) for k, v in params.items()}, ll, [])
    if best is None:
        raise RuntimeError("every EM start degenerated")
    best.optima = sorted(optima, reverse=True)
    return best
