"""The engine-neutral parts of the Laplace approximation: the multi-start mode search on an
engine's compiled (loss, gradient, Hessian), the covariance, and the check that the search ended
at the mode.

The approximation is the Gaussian on the engine's unconstrained space centred at the mode of the
log density *with* the Jacobian of the constraining transforms, covariance the inverse of the
negative Hessian there (Bishop 2006, Pattern Recognition and Machine Learning, section 4.4; as
Stan's ``laplace_sample`` with jacobian=True). The PyMC and NumPyro backends search for that mode
the same way, SciPy's trust-region Newton method with the exact Hessian (``trust-exact``, which
copes with the indefinite Hessians met away from the mode), so that the two differ only in the
engines' densities and derivatives. The flow itself (starts, search, best mode, Gaussian, draws,
the Fit) is written once here (``fit``); each engine supplies a ``LaplaceEngine``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import linalg, optimize

from backends.degenerate import best_start
from backends.fit import Fit, FitSettings
from backends.multistart import bound_hits, start_seeds
from models.data import Dataset
from models.spec import MixtureSpec

# trust-exact stops when the gradient's norm is below GTOL, or earlier when rounding leaves no
# predicted improvement (large N, float32): either way at the mode as far as the precision
# resolves it. Whether it got there is judged scale-free by the Newton decrement
# sqrt(g' H^-1 g): the distance from the Newton step's target in posterior standard deviations
# (Boyd & Vandenberghe 2004, Convex Optimization, section 9.5.1); converged below DECREMENT.
GTOL = 1e-8
DECREMENT = 1e-2


class Objective:
    """A compiled f(z) -> (-log density with Jacobian, gradient, Hessian) for SciPy, evaluated
    once per point (SciPy asks for the loss with its gradient and for the Hessian apart, at the
    same points). ``cast`` turns SciPy's float64 point into what f takes; f's outputs come back
    as float64 NumPy."""

    def __init__(self, function: Callable, cast: Callable[[np.ndarray], object] = np.asarray):
        self.function, self.cast = function, cast
        self.x: np.ndarray | None = None
        self.value: tuple[float, np.ndarray, np.ndarray] | None = None

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        if self.x is None or not np.array_equal(x, self.x):
            loss, grad, hess = self.function(self.cast(x))
            self.x = np.array(x, dtype=np.float64, copy=True)
            self.value = (float(loss), np.asarray(grad, np.float64), np.asarray(hess, np.float64))
        return self.value

    def loss_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        return self(x)[:2]

    def hessian(self, x: np.ndarray) -> np.ndarray:
        return self(x)[2]


@dataclass
class ModeSearch:
    """Every start's outcome. ``modes``: each start's optimum (None for a start that failed);
    ``log_densities``: each start's final log density with the Jacobian (-inf for a start that
    failed), in start order. Which start is kept is backends.degenerate.best_start's rule."""

    modes: list[np.ndarray | None]
    log_densities: list[float]
    iterations: int
    grad_evals: int


def search_modes(objective: Objective, starts: list[np.ndarray], maxiter: int) -> ModeSearch:
    """trust-exact from each start (at most ``maxiter`` iterations each). A start fails when the
    optimiser raises on a non-finite value or ends at a non-finite point or loss. Iterations and
    gradient evaluations are summed over starts."""
    modes, log_densities, iterations, grad_evals = [], [], 0, 0
    for x0 in starts:
        try:
            with np.errstate(all="ignore"):
                result = optimize.minimize(objective.loss_and_gradient, np.asarray(x0, np.float64), jac=True,
                                           hess=objective.hessian, method="trust-exact",
                                           options={"gtol": GTOL, "maxiter": maxiter})
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            modes.append(None)
            log_densities.append(-math.inf)
            continue
        iterations += int(result.nit)
        grad_evals += int(result.njev)
        ok = bool(np.all(np.isfinite(result.x)) and np.isfinite(result.fun))
        modes.append(np.asarray(result.x, np.float64) if ok else None)
        log_densities.append(-float(result.fun) if ok else -math.inf)
    return ModeSearch(modes, log_densities, iterations, grad_evals)


def not_positive_definite(matrix: np.ndarray) -> str | None:
    """Why ``matrix`` (a negative Hessian of the log density, or its inverse) cannot be a
    Gaussian's precision or covariance; None when it can (a Cholesky factor exists)."""
    if not np.all(np.isfinite(matrix)):
        return "the Hessian of the log density at the mode is not finite"
    try:
        np.linalg.cholesky(0.5 * (matrix + matrix.T))
    except np.linalg.LinAlgError:
        smallest = float(np.linalg.eigvalsh(0.5 * (matrix + matrix.T))[0])
        return (f"the negative Hessian of the log density at the mode is not positive definite "
                f"(smallest eigenvalue of the matrix {smallest:.3g}): no Gaussian approximation exists there")
    return None


def inverse_hessian(hessian: np.ndarray) -> np.ndarray:
    """The covariance: the inverse of a positive-definite Hessian of -log p, by Cholesky solve,
    symmetrised. Check ``not_positive_definite(hessian)`` first."""
    factor = linalg.cho_factor(0.5 * (hessian + hessian.T), lower=True)
    cov = linalg.cho_solve(factor, np.eye(hessian.shape[0]))
    return 0.5 * (cov + cov.T)


def newton_decrement(gradient: np.ndarray, cov: np.ndarray) -> float:
    """sqrt(g' H^-1 g) at a point with gradient g and inverse Hessian ``cov``."""
    return float(np.sqrt(max(float(gradient @ cov @ gradient), 0.0)))


def gaussian_draws(mean: np.ndarray, cov: np.ndarray, n: int, seed: int,
                   dtype: str = "float64") -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of N(mean, cov), shape (n, d), rounded to ``dtype``, and the Gaussian's exact
    log density at each, shape (n,), in float64: draws mean + L eps with cov = L L^T and
    eps ~ N(0, I) from NumPy's generator seeded ``seed``; at a draw z,
    log q = -0.5 |L^-1 (z - mean)|^2 - sum(log diag L) - d/2 log(2 pi)."""
    factor = np.linalg.cholesky(cov)
    eps = np.random.default_rng(seed).standard_normal((n, mean.size))
    z = (mean + eps @ factor.T).astype(dtype)
    white = linalg.solve_triangular(factor, (z.astype(np.float64) - mean).T, lower=True)
    log_q = (-0.5 * np.sum(white**2, axis=0) - np.sum(np.log(np.diag(factor)))
             - 0.5 * mean.size * math.log(2.0 * math.pi))
    return z, log_q


@dataclass
class LaplaceEngine:
    """What an engine supplies to ``fit``, the Laplace flow written once; every array is NumPy.

    objective
        -log density with the Jacobian, its gradient and Hessian on the engine's unconstrained
        space (``Objective``).
    starts
        The start seeds -> one unconstrained start each (the engine's own initial points).
    point
        An unconstrained mode -> the canonical constrained point.
    covariance
        (mode, Hessian of -log p there) -> (covariance, None), or (None, why no Gaussian exists).
    draws
        (mean, covariance) -> (DataTree, log_p, log_jacobian, log_q) of ``vi_draws`` draws: the
        canonical tree of the draws with their unconstrained values and the approximation's
        parameters (``backends.canonical.unconstrained_groups``), its own extraction timed.
    log_density
        A canonical point -> its log density, oracle convention.
    phase
        (timings, phase) -> a context manager timing a block into that phase (the engine's clock:
        JAX's moves compile time out of it) at the engine's precision for the phase.
    """

    objective: Objective
    starts: Callable[[list[int]], list[np.ndarray]]
    point: Callable[[np.ndarray], dict]
    covariance: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray | None, str | None]]
    draws: Callable[[np.ndarray, np.ndarray], tuple]
    log_density: Callable[[dict], float]
    phase: Callable


def covariance_from_hessian(mode: np.ndarray, hessian: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """``LaplaceEngine.covariance`` from the objective's own Hessian: its inverse when positive
    definite, else None and why not."""
    reason = not_positive_definite(hessian)
    return (inverse_hessian(hessian) if reason is None else None), reason


def fit(plan: LaplaceEngine, spec: MixtureSpec, dataset: Dataset, settings: FitSettings, seed: int,
        timings: dict[str, float], **fields) -> Fit:
    """The Laplace approximation around the best of ``settings.map_starts`` modes, the same flow
    for every engine that supplies a ``LaplaceEngine``.

    Starts seeded by ``start_seeds(seed, map_starts)``; the trust-region search of each
    (``search_modes``, at most ``vi_iterations`` iterations); the highest log density wins among
    the modes without a degenerate component (backends.degenerate.best_start, MAP's rule; the
    others are recorded in ``degenerate_starts``); the Gaussian there (``plan.covariance``)
    and ``vi_draws`` draws of it with their exact log q (``plan.draws``). Phases: the search
    and the covariance are optimisation, the draws and the point extraction.

    Parameters
    ----------
    plan : LaplaceEngine
        What the engine supplies.
    spec, dataset
        The model and its data.
    settings : FitSettings
        ``map_starts``, ``vi_iterations``, ``vi_draws`` and ``precision`` are read.
    seed : int
    timings : dict of str to float
        Filled in place (it may already hold the engine's compile).
    **fields
        Fit fields of the engine: ``backend``, ``method``, ``engine`` (its name); ``attrs`` (dict) are
        added to the draws' root attributes.

    Returns
    -------
    Fit
        ok: draws, log_p, log_jacobian, log_q, point and its log density, ``converged`` when the
        Newton decrement at the mode is below ``DECREMENT`` posterior standard deviations,
        ``start_log_densities`` (each start's final log density with the Jacobian, -inf for a
        start that failed), iterations and gradient evaluations summed over starts. Failed when
        every start fails or no Gaussian exists at the best mode.
    """
    attrs = fields.pop("attrs", {})
    seeds = start_seeds(seed, settings.map_starts)
    with plan.phase(timings, "optimisation"):
        search = search_modes(plan.objective, plan.starts(seeds), settings.vi_iterations)
        best, degenerate = best_start(search.log_densities,
                                      [None if m is None else plan.point(m) for m in search.modes],
                                      dataset.x, dataset.y)
        if best is not None:
            mean = search.modes[best]
            _, gradient, hessian = plan.objective(mean)
            cov, reason = plan.covariance(mean, hessian)
    common = dict(timings=timings, precision=settings.precision, iterations=search.iterations,
                  grad_evals=search.grad_evals, start_log_densities=search.log_densities,
                  degenerate_starts=degenerate, **fields)
    if best is None:
        return Fit(status="failed", reason="every start of the mode search failed", **common)
    if cov is None:
        return Fit(status="failed", reason=reason, converged=False, **common)
    decrement = newton_decrement(gradient, cov)
    draws, log_p, log_jacobian, log_q = plan.draws(mean, cov)
    draws.attrs.update({**attrs, "optimizer": "scipy trust-exact", "laplace_starts": len(seeds),
                        "laplace_best_start": best, "laplace_start_seeds": seeds, "newton_decrement": decrement})
    with plan.phase(timings, "extraction"):
        point = plan.point(mean)
        point_log_density = plan.log_density(point)
    return Fit(status="ok", draws=draws, converged=decrement < DECREMENT, log_p=log_p, log_jacobian=log_jacobian,
               log_q=np.asarray(log_q, np.float64), point=point, point_log_density=point_log_density,
               at_bound=bound_hits(spec, point), **common)
