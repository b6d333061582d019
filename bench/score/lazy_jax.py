"""Keep scoring from importing JAX, which it never uses.

Where JAX is installed but not imported (a PyMC or Stan worker), arviz_base puts an unloaded
placeholder for it in ``sys.modules`` (lazy_loader). SciPy's array-API helpers, behind the
``scipy.special.logsumexp`` that arviz-stats' PSIS calls, ask whether an array's class is a
``jax.Array`` by reading ``sys.modules["jax"]``, which loads all of JAX: 0.35-1.1 s of CPU in the
first scoring of such a process (measured on the project's machine), more than the rest of
scoring a fit at N = 1e3. SciPy caches that answer per class (``_issubclass_fast`` in its
vendored array_api_compat); asking once for NumPy's classes while the placeholder is out of
``sys.modules`` caches "not a JAX array", which stays true whatever is imported later.
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.special import logsumexp

_done = False


def keep_jax_unloaded() -> None:
    """Have SciPy record, once per process, that NumPy's arrays are not JAX arrays, without
    loading an unloaded JAX placeholder; nothing where JAX is absent or already loaded."""
    global _done
    if _done:
        return
    _done = True
    placeholder = sys.modules.get("jax")
    if type(placeholder).__name__ != "_LazyModule":
        return
    del sys.modules["jax"]
    try:
        # The classes arviz-stats hands SciPy: arrays, and NumPy's scalars (its reductions' results).
        for value in (np.zeros(2), np.float64(0.0)):
            logsumexp(value)
            logsumexp(value, b=0.5)
    finally:
        sys.modules.setdefault("jax", placeholder)
