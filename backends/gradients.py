"""What ``Backend.gradient_function`` returns, and the point it is evaluated at."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.data import Dataset
from models.spec import MixtureSpec, random_point

# theta (the engine's unconstrained coordinates) -> (log density, gradient), both float64 NumPy.
GradientFunction = Callable[[np.ndarray], tuple[float, np.ndarray]]
POINT_SEED = 0


def fixed_point(spec: MixtureSpec, dataset: Dataset) -> dict[str, np.ndarray]:
    """The constrained point a gradient function starts from: the truth when the data set has one,
    else a random point of the prior's support drawn with a fixed seed (the same every run)."""
    if dataset.truth is not None:
        return spec.check_params(dataset.truth)
    return random_point(spec, np.random.default_rng(POINT_SEED))
