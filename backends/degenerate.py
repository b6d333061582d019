"""Degenerate mixture components: a component whose sigma collapsed onto a few tied points.

With m >= 1 observations at one value (tied measurements: a duration recorded to the minute, a
device's resolution), a component centred on them has likelihood growing like sigma^-m as
sigma -> 0: the likelihood is unbounded there, and under a sigma prior with positive density
at 0 (half-normal, uniform, exponential, Gamma(shape <= 1)) so is the posterior, which is then
improper. Optimisers and samplers find this spike and report it as the best fit. The fix is a
prior that vanishes fast enough at 0 (InverseGamma or LogNormal on sigma), or removing the ties
(jitter within the recording step).

Rule: a component is degenerate when either

- its sigma is below ``frac`` (0.1) times the data's resolution, the smallest positive gap
  between distinct y values: no real noise scale is far below the step at which y was
  recorded; or
- it holds at least two points (within 3 sigma of its regression line) and every one of them
  lies within ``frac`` sigma of the line: the points are tied at its centre, so their spread
  did not set sigma; only the unbounded likelihood did. Points drawn from a normal all land
  that close with probability about 0.08^n.

The count of points it holds is reported with it.
"""

from __future__ import annotations

import numpy as np

DEGENERATE_FRAC = 0.1


def data_resolution(y: np.ndarray) -> float:
    """Smallest positive gap between distinct values of y (inf with fewer than two)."""
    values = np.unique(np.asarray(y, dtype=float)[np.isfinite(y)])
    return float(np.min(np.diff(values))) if values.size > 1 else float("inf")


def degenerate_components(x: np.ndarray, y: np.ndarray, point: dict, frac: float = DEGENERATE_FRAC,
                          resolution: float | None = None) -> list[tuple[int, float, int]]:
    """[(component, its sigma, points it holds)] for every degenerate component of ``point``.

    x: (N, D) covariates, y: (N,), point: canonical parameters (w (K, D), b (K,) when the spec
    has intercepts, sigma scalar or (K,), pi (K,) or softmax weights' gamma (K, D + 1): at least
    one of pi, gamma, b, w gives K), on the data's scale.
    """
    resolution = data_resolution(y) if resolution is None else resolution
    K = next(np.shape(point[name])[0] for name in ("pi", "gamma", "b", "w") if name in point)
    sigma = np.broadcast_to(np.asarray(point["sigma"], dtype=float), (K,))
    w = np.asarray(point.get("w", np.zeros((K, 0))), dtype=float).reshape(K, -1)
    b = np.asarray(point.get("b", np.zeros(K)), dtype=float).reshape(K)
    x = np.asarray(x, dtype=float).reshape(len(y), -1)
    out = []
    y = np.asarray(y, dtype=float)
    for k in range(K):
        if np.isnan(sigma[k]):
            continue
        residual = np.abs(y - b[k] - (x @ w[k] if w.shape[1] else 0.0))
        held = residual <= 3 * max(sigma[k], 0.0)
        n_held = int(np.count_nonzero(held))
        tied = n_held >= 2 and bool(np.all(residual[held] <= frac * max(sigma[k], 0.0)))
        if sigma[k] < frac * resolution or tied:
            out.append((k, float(sigma[k]), n_held))
    return out


def best_start(log_densities: list[float], points: list[dict | None], x: np.ndarray,
               y: np.ndarray) -> tuple[int | None, list[str]]:
    """The multi-start rule of MAP and Laplace: (index of the start kept, the degenerate starts).

    ``log_densities``: each start's final log density (-inf for a failed start); ``points``: each
    start's optimum, canonical parameters on the data's scale (None for a failed start, {} for one
    that gave no point: judged on its density alone). A start
    whose optimum holds a degenerate component has the highest density only because the
    likelihood is unbounded there: it is kept out of the choice while any other start succeeded,
    and described, e.g. "start 3: sigma[1] = 0.0047 on 8 points". The highest finite density
    wins among the rest (the first of them when none is finite: every start on a bound of the
    support); None when every start failed.
    """
    ok = [i for i, p in enumerate(points) if p is not None]
    if not ok:
        return None, []
    resolution = data_resolution(y)
    degenerate = {}
    for i in ok:
        hits = degenerate_components(x, y, points[i], resolution=resolution) if points[i] else []
        if hits:
            degenerate[i] = "; ".join(f"start {i}: sigma[{k}] = {s:.3g} on {n} points" for k, s, n in hits)
    eligible = [i for i in ok if i not in degenerate] or ok
    finite = [i for i in eligible if np.isfinite(log_densities[i])]
    best = max(finite, key=lambda i: log_densities[i]) if finite else eligible[0]
    return best, list(degenerate.values())
