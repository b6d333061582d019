"""The model variants of models/spec.py fitted: Student-t errors recover two lines that gross
outliers pull apart under normal errors (the ``forum-outliers`` scenario), judged against an
independent estimate, a direct multi-start maximisation of the oracle's log density with SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special

from models import get_scenario, log_density
from tests.conftest import VARIANT_SPECS, make_data

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


def _scipy_shared_map(spec, x, y, starts: int = 6) -> dict[str, np.ndarray]:
    """The posterior mode of a K = 2, D = 1 shared-slopes spec with per-component sigma, by
    L-BFGS-B on (w, b, log sigma, logit pi) from ``starts`` random starts."""
    def unpack(t):
        p1 = special.expit(t[5])
        return {"w": np.full((2, 1), t[0]), "b": t[1:3], "sigma": np.exp(t[3:5]), "pi": np.array([p1, 1 - p1])}

    def loss(t):
        value = log_density(spec, x, y, unpack(t))
        return -value if np.isfinite(value) else 1e300

    results = [optimize.minimize(loss, np.r_[rng.normal(0, 2), rng.normal(0, 1, 2), np.log(rng.uniform(0.1, 2, 2)), 0.0],
                                 method="L-BFGS-B")
               for rng in (np.random.default_rng(seed) for seed in range(starts))]
    return unpack(min(results, key=lambda r: r.fun).x)


def test_shared_slopes_mode_recovers_the_one_slope():
    scenario = get_scenario("shared-slopes")
    data = scenario.simulate(0)
    mode = _scipy_shared_map(scenario.spec, data.x, data.y)
    order = np.argsort(mode["b"])
    assert mode["w"][0, 0] == pytest.approx(1.5, abs=0.05)
    np.testing.assert_allclose(mode["b"][order], [-1.0, 1.0], atol=0.1)
    np.testing.assert_allclose(mode["sigma"][order], [0.3, 0.6], rtol=0.2)


def test_relabelling_shared_slopes_restores_labels_and_keeps_the_rows_equal():
    """w keeps its component axis with K equal rows: a permutation leaves it unchanged, so the
    relabelling is decided by the intercepts, scales and weights alone, as without sharing."""
    from backends.base import canonical_datatree
    from bench.score.relabel import relabel

    spec = get_scenario("shared-slopes").spec
    truth = {"w": np.full((2, 1), 1.5), "b": np.array([-1.0, 1.0]), "sigma": np.array([0.3, 0.6]),
             "pi": np.array([0.4, 0.6])}
    rng = np.random.default_rng(1)
    n = 200
    post = {name: np.broadcast_to(value, (1, n, *value.shape)).copy() for name, value in truth.items()}
    post["w"] += rng.normal(0, 0.02, size=(1, n, 1, 1))  # one slope per draw, shared by both rows
    post["b"] += rng.normal(0, 0.05, size=(1, n, 2))
    swapped = rng.random(n) < 0.5
    for name in ("w", "b", "sigma", "pi"):
        post[name][0, swapped] = post[name][0, swapped][:, ::-1]
    result = relabel(canonical_datatree(spec, post), truth)
    relabelled = result.draws["posterior"]
    assert np.all(result.permutations[0, swapped] == [1, 0])
    assert np.all(result.permutations[0, ~swapped] == [0, 1])
    assert np.all(relabelled["b"].values[0, :, 0] < 0)
    w = relabelled["w"].values
    assert np.array_equal(w[:, :, 0], w[:, :, 1])


@pytest.mark.slow
def test_numpyro_nuts_on_shared_slopes_draws_one_slope_near_the_mode():
    from backends import get_backend
    from backends.base import FitSettings

    scenario = get_scenario("shared-slopes")
    data = scenario.simulate(0)
    fit = get_backend("numpyro").fit(scenario.spec, data, "nuts", FitSettings(chains=1, warmup=300, draws=300), seed=0)
    assert fit.ok, fit.reason
    w = fit.draws["posterior"]["w"].values
    assert np.array_equal(w[..., 0, :], w[..., 1, :])
    mode = _scipy_shared_map(scenario.spec, data.x, data.y)
    sd = float(w[..., 0, 0].std())
    assert abs(float(w[..., 0, 0].mean()) - mode["w"][0, 0]) < 3 * sd


@pytest.mark.parametrize("name", list(VARIANT_SPECS))
def test_scoring_log_density_of_many_points_is_the_oracle(name):
    """bench.score.problem.batch_log_density (what W1, elpd and the reference score with) on the
    variants, against the oracle point by point, log density and pointwise log likelihood."""
    from bench.score.problem import batch_log_density
    from models import random_point
    from models.oracle import log_likelihood_terms

    spec = VARIANT_SPECS[name]
    x, y = make_data(spec, n=40)
    rng = np.random.default_rng(7)
    points = [random_point(spec, rng) for _ in range(6)]
    stacked = {k: np.stack([np.asarray(p[k], float) for p in points]) for k in points[0]}
    expected = [log_density(spec, x, y, p) for p in points]
    np.testing.assert_allclose(batch_log_density(spec, x, y, stacked), expected, rtol=1e-10)
    pointwise = np.array([log_likelihood_terms(spec, x, y, p) for p in points])
    np.testing.assert_allclose(batch_log_density(spec, x, y, stacked, pointwise=True), pointwise, rtol=1e-10)
