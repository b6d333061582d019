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
    has intercepts, sigma scalar or (K,), pi (K,)), on the data's scale.
    """
    resolution = data_resolution(y) if resolution is None else resolution
    pi = np.asarray(point["pi"], dtype=float)
    K = pi.size
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
