"""The model variants of models/spec.py fitted: Student-t errors recover two lines that gross
outliers pull apart under normal errors (the ``forum-outliers`` scenario), judged against an
independent estimate, a direct multi-start maximisation of the oracle's log density with SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special

from models import get_scenario, log_density

TRUE_SLOPES = np.array([3.0, -1.0])


def _scipy_map(spec, x, y, starts: int = 10) -> dict[str, np.ndarray]:
    """The posterior mode of a K = 2, D = 1, per-component-sigma spec (no Jacobian: the oracle's
    density), by L-BFGS-B from ``starts`` random starts on (w, b, log sigma, logit pi)."""
    def unpack(t):
        p1 = special.expit(t[6])
        return {"w": t[0:2].reshape(2, 1), "b": t[2:4], "sigma": np.exp(t[4:6]), "pi": np.array([p1, 1 - p1])}

    def loss(t):
        value = log_density(spec, x, y, unpack(t))
        return -value if np.isfinite(value) else 1e300

    best = None
    for seed in range(starts):
        rng = np.random.default_rng(seed)
        t0 = np.r_[rng.normal(0, 2, 2), rng.normal(0, 1, 2), np.log(rng.uniform(0.1, 2, 2)), 0.0]
        result = optimize.minimize(loss, t0, method="L-BFGS-B")
        if best is None or result.fun < best.fun:
            best = result
    return unpack(best.x)


def _sorted(point):
    order = np.argsort(-point["w"][:, 0])
    return {k: (v[order] if np.ndim(v) else v) for k, v in point.items()}


@pytest.fixture(scope="module")
def outliers():
    scenario = get_scenario("forum-outliers")
    data = scenario.simulate(0)
    assert np.sum(data.y > 7) == 10  # the 10 gross outliers, y in [8, 12]
    return scenario, data


def test_t_errors_recover_both_lines_where_normal_errors_do_not(outliers):
    scenario, data = outliers
    t_mode = _sorted(_scipy_map(scenario.spec, data.x, data.y))
    np.testing.assert_allclose(t_mode["w"][:, 0], TRUE_SLOPES, atol=0.05)
    np.testing.assert_allclose(t_mode["b"], 0.0, atol=0.1)
    assert np.all(t_mode["sigma"] < 0.2)

    normal_mode = _sorted(_scipy_map(scenario.spec.overridden({"errors": "normal"}), data.x, data.y))
    # One component stretches over a line and the outliers: its sd and intercept are far off.
    assert normal_mode["sigma"].max() > 1.0
    assert np.abs(normal_mode["b"]).max() > 0.5
    assert np.abs(normal_mode["w"][:, 0] - TRUE_SLOPES).max() > 0.2


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["numpyro", "pymc"])
def test_backend_map_under_t_errors_is_the_independent_mode(outliers, backend_name):
    from backends import get_backend

    scenario, data = outliers
    fit = get_backend(backend_name).fit(scenario.spec, data, "map", seed=0)
    assert fit.ok, fit.reason
    got = _sorted(fit.point)
    expected = _sorted(_scipy_map(scenario.spec, data.x, data.y))
    np.testing.assert_allclose(got["w"][:, 0], expected["w"][:, 0], atol=2e-3)
    np.testing.assert_allclose(got["b"], expected["b"], atol=2e-3)
    np.testing.assert_allclose(got["w"][:, 0], TRUE_SLOPES, atol=0.05)
