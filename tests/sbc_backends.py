"""Backends for the SBC tests: the exact posterior of a conjugate case, and the same posterior
made too narrow or shifted by a known amount.

The case: K = 1 regression y = x . w (+ b) + sigma eps with sigma known (the simulated truth's,
which the data set carries), w (and b) ~ Normal(mu, s^2) independently. Its posterior is normal
with precision P = I / s^2 + X'X / sigma^2 and mean P^-1 (mu / s^2 + X'y / sigma^2) (Gelman et
al., BDA3, section 14.2, with a known variance). Draws are independent (ESS = draws).
"""

from __future__ import annotations

import numpy as np

from backends.base import Backend, Fit, canonical_datatree


class ExactConjugateBackend(Backend):
    name = "exact-conjugate"
    methods = {"nuts": "_sample"}
    scale = 1.0  # posterior sd multiplied by this
    shift = 0.0  # posterior mean moved by this many posterior sds (of each coefficient)

    def versions(self):
        return {"exact-conjugate": "1.0"}

    def log_density(self, spec, dataset, params):
        from models.oracle import log_density

        return log_density(spec, dataset.x, dataset.y, params)

    def _sample(self, spec, dataset, method, settings, seed):
        if spec.K != 1:
            return Fit(backend=self.name, method=method, status="unsupported", reason="K = 1 only")
        sigma = float(np.asarray(dataset.truth["sigma"]).reshape(-1)[0])
        X = np.column_stack([dataset.x, np.ones(dataset.N)]) if spec.intercept else dataset.x
        mu = np.r_[np.full(spec.D, spec.slope_prior.mu), [spec.intercept_prior.mu] if spec.intercept else []]
        s = np.r_[np.full(spec.D, spec.slope_prior.sigma), [spec.intercept_prior.sigma] if spec.intercept else []]
        precision = np.diag(1 / s**2) + X.T @ X / sigma**2
        cov = np.linalg.inv(precision)
        mean = cov @ (mu / s**2 + X.T @ dataset.y / sigma**2) + self.shift * np.sqrt(np.diag(cov))
        rng = np.random.default_rng(seed)
        chains, draws = settings.chains, settings.draws
        z = rng.multivariate_normal(np.zeros(len(mean)), cov, size=(chains, draws))
        coef = mean + self.scale * z
        posterior = {"w": coef[..., None, :spec.D], "sigma": np.full((chains, draws), sigma),
                     "pi": np.ones((chains, draws, 1))}
        if spec.intercept:
            posterior["b"] = coef[..., spec.D:]
        stats = {"diverging": np.zeros((chains, draws), bool), "n_steps": np.full((chains, draws), 1)}
        return Fit(backend=self.name, method=method, status="ok", engine="exact", draws=canonical_datatree(spec, posterior, stats),
                   timings={"sampling": 0.0}, divergences=0)


class NarrowBackend(ExactConjugateBackend):
    """The exact posterior with its sd halved: over-confident."""

    name = "narrow"
    scale = 0.5


class ShiftedBackend(ExactConjugateBackend):
    """The exact posterior moved up by one posterior sd: biased."""

    name = "shifted"
    shift = 1.0
