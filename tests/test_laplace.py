"""The Laplace approximation (method "laplace") in every backend that has it.

Its Gaussian lives on each engine's unconstrained space, centred at the mode of the log density
with the Jacobian, covariance the inverse negative Hessian there. On a spec whose unconstrained
space is the same in every engine (one line, intercept, sigma ~ Uniform(0, u): sigma =
u sigmoid(z)) both are checked against the oracle composed with that transform, maximised by
SciPy and differentiated by finite differences here.
"""

import math

import numpy as np
import pytest
from scipy import optimize, special, stats

from backends import get_backend
from backends.base import FitSettings
from bench.score.metrics import psis_khat
from models import Dataset, MixtureSpec, SigmaPrior, get_scenario, log_density

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::RuntimeWarning")

BACKENDS = ["pymc", "numpyro"]

UPPER = 2.0
LINE = MixtureSpec(K=1, D=1, intercept=True, sigma_prior=SigmaPrior("uniform", UPPER))
SEPARATED = get_scenario("separated")
SETTINGS = FitSettings(vi_draws=1000, map_starts=4)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return get_backend(request.param)


@pytest.fixture(scope="module")
def line_data():
    """200 points from y = 1 + 2 x + 0.5 eps, x ~ U(-1, 1)."""
    rng = np.random.default_rng(11)
    x = rng.uniform(-1.0, 1.0, size=(200, 1))
    return Dataset(x, 1.0 + 2.0 * x[:, 0] + 0.5 * rng.standard_normal(200))


def line_log_density(theta: np.ndarray, data: Dataset) -> float:
    """The oracle at sigma = u sigmoid(z), plus the log Jacobian log(u s (1 - s)); theta = (w, b, z)."""
    w, b, z = theta
    s = special.expit(z)
    point = {"w": np.array([[w]]), "b": np.array([b]), "sigma": np.array(UPPER * s), "pi": np.array([1.0])}
    return log_density(LINE, data.x, data.y, point) + math.log(UPPER * s * (1.0 - s))


def finite_difference_hessian(f, theta: np.ndarray, h: float = 1e-4) -> np.ndarray:
    """Central differences: H_ij = [f(+i+j) - f(+i-j) - f(-i+j) + f(-i-j)] / (4 h^2)."""
    d = theta.size
    hessian = np.empty((d, d))
    steps = h * np.eye(d)
    for i in range(d):
        for j in range(d):
            hessian[i, j] = (f(theta + steps[i] + steps[j]) - f(theta + steps[i] - steps[j])
                             - f(theta - steps[i] + steps[j]) + f(theta - steps[i] - steps[j])) / (4 * h * h)
    return 0.5 * (hessian + hessian.T)


@pytest.fixture(scope="module")
def line_reference(line_data):
    """The mode by SciPy (Nelder-Mead, tight tolerances, from least squares) and the inverse
    negative finite-difference Hessian there."""
    def f(theta):
        return line_log_density(theta, line_data)

    slope, intercept = np.polyfit(line_data.x[:, 0], line_data.y, 1)
    start = np.array([slope, intercept, special.logit(0.4 / UPPER)])
    result = optimize.minimize(lambda t: -f(t), start, method="Nelder-Mead",
                               options={"xatol": 1e-11, "fatol": 1e-13, "maxiter": 20_000, "maxfev": 40_000})
    assert result.success, result.message
    return result.x, np.linalg.inv(-finite_difference_hessian(f, result.x))


def gaussian(fit):
    """The fit's mean and covariance, with the labels of their unconstrained coordinates."""
    approximation = fit.draws["approximation"]
    labels = [str(label) for label in approximation["mean"].coords["unconstrained"].values]
    return approximation["mean"].values, approximation["cov"].values, labels


def line_order(labels: list[str]) -> list[int]:
    """Indices of the (w, b, z) coordinates among an engine's labelled unconstrained ones."""
    kinds = [label.split("[")[0] for label in labels]
    found = {kind: [i for i, k in enumerate(kinds) if k.startswith(kind)] for kind in ("w", "b", "sigma")}
    assert all(len(v) == 1 for v in found.values()) and len(labels) == 3, labels
    return [found["w"][0], found["b"][0], found["sigma"][0]]


def test_gaussian_is_the_mode_and_inverse_hessian_of_the_oracle(backend, line_data, line_reference):
    fit = backend.fit(LINE, line_data, "laplace", FitSettings(vi_draws=100), seed=0)
    assert fit.ok, fit.reason
    assert fit.method == "laplace" and fit.converged
    mean, cov, labels = gaussian(fit)
    order = line_order(labels)
    mean, cov = mean[order], cov[np.ix_(order, order)]
    mode, reference_cov = line_reference
    np.testing.assert_allclose(mean, mode, rtol=1e-4)
    np.testing.assert_allclose(cov, reference_cov, rtol=1e-4)
    # The canonical point is the mode mapped to the constrained space.
    assert fit.point["w"][0, 0] == pytest.approx(mode[0], rel=1e-4)
    assert fit.point["b"][0] == pytest.approx(mode[1], rel=1e-4)
    assert float(fit.point["sigma"]) == pytest.approx(UPPER * special.expit(mode[2]), rel=1e-4)


@pytest.fixture(scope="module")
def separated(backend):
    data = SEPARATED.simulate(seed=0, N=500)
    return data, backend.fit(SEPARATED.spec, data, "laplace", SETTINGS, seed=1)


def test_separated_recovers_the_truth(separated):
    data, fit = separated
    assert fit.ok, fit.reason
    assert fit.converged and fit.at_bound == []
    assert set(fit.timings) >= {"compile", "optimisation", "extraction"}
    post = fit.draws.posterior
    assert post["w"].shape == (1, SETTINGS.vi_draws, 2, 1)
    truth = SEPARATED.truth
    np.testing.assert_allclose(post["w"].mean(("chain", "draw")).values, truth["w"], atol=0.1)
    np.testing.assert_allclose(post["sigma"].mean(("chain", "draw")).values, truth["sigma"], rtol=0.2)
    assert math.isfinite(psis_khat(fit.log_p, fit.log_q))


def test_separated_densities_are_exact(separated):
    data, fit = separated
    post = fit.draws.posterior
    for i in range(0, SETTINGS.vi_draws, 25):
        point = {name: post[name].values[0, i] for name in post.data_vars}
        expected = log_density(SEPARATED.spec, data.x, data.y, point)
        assert fit.log_p[i] - fit.log_jacobian[i] == pytest.approx(expected, rel=1e-7)
    mean, cov, labels = gaussian(fit)
    z = fit.draws["unconstrained_posterior"]["z"]
    assert [str(v) for v in z.coords["unconstrained"].values] == labels
    expected_q = stats.multivariate_normal(mean, cov).logpdf(z.values[0])
    np.testing.assert_allclose(fit.log_q, expected_q, rtol=1e-9)
    # The draws come from that Gaussian: their covariance within 0.2 sd_i sd_j of it (some 4.5
    # standard errors at 1000 draws).
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    assert np.all(np.abs(np.cov(z.values[0].T) - cov) <= 0.2 * scale)


def test_separated_mode_is_the_best_start(separated):
    data, fit = separated
    assert len(fit.start_log_densities) == SETTINGS.map_starts
    best = max(fit.start_log_densities)
    # The mean is the highest point of the log density with the Jacobian: no draw lies above it.
    assert np.max(fit.log_p) <= best + 1e-9
    assert fit.point_log_density == pytest.approx(log_density(SEPARATED.spec, data.x, data.y, fit.point), rel=1e-8)
    np.testing.assert_allclose(fit.point["b"], SEPARATED.truth["b"], atol=0.1)


def test_same_seed_same_draws(backend, line_data):
    settings = FitSettings(vi_draws=50, map_starts=2)
    first, again, other = (backend.fit(LINE, line_data, "laplace", settings, seed=s) for s in (4, 4, 5))
    for name in ("w", "b", "sigma"):
        np.testing.assert_array_equal(first.draws.posterior[name].values, again.draws.posterior[name].values)
    np.testing.assert_array_equal(first.log_q, again.log_q)
    assert first.start_log_densities == again.start_log_densities
    assert not np.array_equal(first.draws.posterior["w"].values, other.draws.posterior["w"].values)


@pytest.mark.slow
def test_float32_lands_on_the_float64_gaussian(backend, line_data):
    fits = {p: backend.fit(LINE, line_data, "laplace", FitSettings(vi_draws=100, precision=p), seed=0)
            for p in ("float64", "float32")}
    assert fits["float32"].ok, fits["float32"].reason
    assert fits["float32"].precision == "float32"
    mean64, cov64, _ = gaussian(fits["float64"])
    mean32, cov32, _ = gaussian(fits["float32"])
    # float32 rounding stops the search within a Newton decrement of 1e-2 (backends/laplace.py):
    # the mode within 0.01 posterior standard deviations of the float64 one.
    assert np.all(np.abs(mean32 - mean64) <= 1e-2 * np.sqrt(np.diag(cov64)))
    np.testing.assert_allclose(cov32, cov64, rtol=1e-2, atol=1e-2 * np.abs(cov64).max())


@pytest.mark.slow
def test_every_seed_reaches_the_same_mode(backend):
    """The `separated` scenario at its own N: seeds 0-9 all keep the same best mode, none on a bound."""
    data = SEPARATED.simulate(seed=0)
    fits = [backend.fit(SEPARATED.spec, data, "laplace", FitSettings(vi_draws=10), seed=s) for s in range(10)]
    assert all(fit.ok and fit.converged and fit.at_bound == [] for fit in fits)
    best = [max(fit.start_log_densities) for fit in fits]
    assert max(best) - min(best) < 1e-6
    means = np.array([gaussian(fit)[0] for fit in fits])
    np.testing.assert_allclose(means, np.broadcast_to(means[0], means.shape), atol=1e-6)


def test_numpyro_laplace_keeps_the_best_mode_without_a_degenerate_component(monkeypatch):
    """Tied data (8 readings of exactly 6.0) under Uniform(0, 10) on sigma: the density is
    unbounded on a component at 6.0 whose sigma shrinks. Start 0's mode is moved onto that spike
    (b[0] = 6, sigma[0] = 1e-6) and given the highest density: the fit records it and keeps the
    best of the other modes, as multi-start MAP does."""
    from backends import laplace
    from backends.numpyro.model import _unconstrained_labels

    rng = np.random.default_rng(5)
    y = np.concatenate([rng.normal(0.0, 1.0, 50), rng.normal(6.0, 1.0, 30), np.full(8, 6.0)])
    data = Dataset(np.zeros((y.size, 0)), y)
    spec = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component", sigma_prior=SigmaPrior("uniform", 10.0))
    labels = _unconstrained_labels(spec)
    real = laplace.search_modes
    searched = {}

    def with_a_spike(objective, starts, maxiter):
        search = real(objective, starts, maxiter)
        spike = search.modes[1].copy()
        spike[labels.index("b[0]")] = 6.0
        spike[labels.index("sigma[0]")] = special.logit(1e-6 / 10.0)  # sigma = 10 sigmoid(z)
        search.modes[0], search.log_densities[0] = spike, max(search.log_densities) + 1000.0
        searched["log_densities"] = list(search.log_densities)
        return search

    monkeypatch.setattr(laplace, "search_modes", with_a_spike)
    fit = get_backend("numpyro").fit(spec, data, "laplace", FitSettings(map_starts=4, vi_draws=100), seed=0)
    assert fit.ok
    assert fit.degenerate_starts == ["start 0: sigma[0] = 1e-06 on 8 points"]
    kept = fit.draws.attrs["laplace_best_start"]
    assert kept != 0 and searched["log_densities"][kept] == max(searched["log_densities"][1:])
    assert np.min(fit.point["sigma"]) > 0.3  # both components hold real spread (sd 1 clusters)
