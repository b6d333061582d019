"""SciPy's ``logsumexp`` without its per-call dispatch, for arviz-stats' PSIS-LOO loop.

arviz-stats (1.3) Pareto-smooths one observation at a time and calls
``scipy.special.logsumexp`` four times per observation (weight normalisation, the GPD fit's
weights, elpd_i and lpd_i). SciPy 1.15+ routes each call through its array-API layer
(namespace lookup, dtype promotion, ``xpx.at`` copies), about 40 us of Python per call on a
few hundred values: at N = 1e3 that was 0.16-0.2 s of the 0.3 s PSIS-LOO took per fit.

``logsumexp`` here performs SciPy 1.18's arithmetic (``scipy/special/_logsumexp.py``: the
maximum's terms counted apart and added through ``log1p``, Blanchard, Higham & Higham 2021)
with plain NumPy calls on the same shapes, so its results are bitwise SciPy's
(tests/test_psis_logsumexp.py); any call outside the case it covers (a real float64 ndarray
of at least one dimension and one element, ``axis`` None, ``b`` None or a real scalar, no
``return_sign``) goes to SciPy itself. ``install`` points arviz-stats' diagnostics module at
it, only under the SciPy versions whose algorithm it copies.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy
from scipy.special import logsumexp as scipy_logsumexp

# SciPy releases whose logsumexp is the algorithm below (checked bitwise by the tests).
SCIPY_VERSIONS = ("1.15", "1.16", "1.17", "1.18")


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """log(sum(b * exp(a))) over all of ``a``, bitwise as ``scipy.special.logsumexp``.

    a: real float64 array, any shape with at least one element; b: None or a real scalar.
    Returns a NumPy float64 scalar (an array of ones' shape with ``keepdims``). Other inputs,
    ``axis`` or ``return_sign`` are passed to SciPy's function unchanged.
    """
    if (axis is not None or return_sign or type(a) is not np.ndarray or a.dtype != np.float64
            or a.ndim == 0 or a.size == 0
            or not (b is None or (isinstance(b, numbers.Real) and not isinstance(b, bool)))):
        return scipy_logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
    a_max = a.max()
    if not np.isfinite(a_max):
        return scipy_logsumexp(a, b=b, keepdims=keepdims)  # infinities and NaN: SciPy's own handling
    at_max = a == a_max
    if b is not None and b == 0:
        return scipy_logsumexp(a, b=b, keepdims=keepdims)
    # SciPy sets the maximum's entries to -inf before subtracting: exp gives 0 there either way.
    shifted = a - a_max
    shifted[at_max] = -np.inf
    terms = np.exp(shifted)
    ties = np.count_nonzero(at_max)
    if b is None:
        m = np.float64(ties)  # a sum of ones: exact
    else:
        terms *= b  # SciPy multiplies by b broadcast to a's shape: the same products
        # SciPy sums b over the maximum's entries; one entry sums to b exactly.
        m = np.float64(b) if ties == 1 else (np.full(a.shape, b, dtype=np.float64) * at_max).sum()
    s = terms.sum()
    if s != 0:
        s = s / m
    sign = np.sign(s + 1) * np.sign(m)
    if s < -1:
        s = -s - 2
    out = np.log1p(s) + np.log(np.abs(m)) + a_max
    if sign < 0 or not np.isfinite(out):
        return scipy_logsumexp(a, b=b, keepdims=keepdims)
    return np.full((1,) * a.ndim, out) if keepdims else out


def install() -> bool:
    """Point arviz-stats' diagnostics (PSIS, LOO, the GPD fit) at ``logsumexp``; True when
    done. Left alone (False) under a SciPy whose algorithm this module does not copy."""
    from arviz_stats.base import diagnostics

    if ".".join(scipy.__version__.split(".")[:2]) not in SCIPY_VERSIONS:
        return False
    if getattr(diagnostics, "logsumexp", None) is scipy_logsumexp:
        diagnostics.logsumexp = logsumexp
    return diagnostics.logsumexp is logsumexp
