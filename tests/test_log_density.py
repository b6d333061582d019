"""Every backend's log density equals the NumPy oracle at random points, for many specs."""

import numpy as np
import pytest

from backends import BACKENDS, get_backend
from models import Dataset, log_density, random_point
from tests.conftest import make_data

N_POINTS = 20


# Generated from the registry: a backend registered in backends.BACKENDS is checked unedited.
@pytest.mark.parametrize("backend_name", [
    pytest.param(name, marks=[pytest.mark.stan] if name == "stan" else []) for name in BACKENDS
])
def test_backend_log_density_matches_oracle(backend_name, model_spec):
    backend = get_backend(backend_name)
    x, y = make_data(model_spec)
    dataset = Dataset(x=x, y=y)
    rng = np.random.default_rng(42)
    for _ in range(N_POINTS):
        point = random_point(model_spec, rng)
        expected = log_density(model_spec, x, y, point)
        got = backend.log_density(model_spec, dataset, point)
        assert np.isfinite(expected)
        assert got == pytest.approx(expected, rel=1e-8), point
