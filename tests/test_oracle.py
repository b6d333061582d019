"""The oracle against hand computations: it is what every backend is judged by."""

import math

import numpy as np
import pytest
from scipy import stats

from models import MixtureSpec, NormalPrior, SigmaPrior, log_density, log_prior, random_point
from models.oracle import forum_log_likelihood, log_likelihood


def test_single_component_is_a_plain_regression():
    spec = MixtureSpec(K=1, D=1)
    x = np.array([[0.5], [-1.0], [0.0]])
    y = np.array([1.0, -2.0, 0.3])
    params = {"w": np.array([[2.0]]), "sigma": np.array(0.5), "pi": np.array([1.0])}
    expected_lik = stats.norm.logpdf(y, 2.0 * x[:, 0], 0.5).sum()
    assert log_likelihood(spec, x, y, params) == pytest.approx(expected_lik, rel=1e-12)
    # Dirichlet(1) on one component has density 1; Normal(0, 2) slope; Uniform(0, 1) sigma.
    expected_prior = stats.norm.logpdf(2.0, 0, 2) + 0.0
    assert log_prior(spec, params) == pytest.approx(expected_prior, rel=1e-12)


def test_two_component_mixture_by_hand():
    spec = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component",
                       sigma_prior=SigmaPrior("halfnormal", 1.0), intercept_prior=NormalPrior(0, 5))
    x = np.zeros((2, 0))
    y = np.array([0.1, 2.9])
    params = {"w": np.zeros((2, 0)), "b": np.array([0.0, 3.0]), "sigma": np.array([0.5, 1.0]),
              "pi": np.array([0.3, 0.7])}
    lik = sum(math.log(0.3 * stats.norm.pdf(v, 0, 0.5) + 0.7 * stats.norm.pdf(v, 3, 1.0)) for v in y)
    prior = (math.log(math.gamma(2.0))  # Dirichlet(1, 1) density on the simplex is Gamma(2) = 1
             + stats.norm.logpdf([0.0, 3.0], 0, 5).sum()
             + stats.halfnorm.logpdf([0.5, 1.0]).sum())
    assert log_density(spec, x, y, params) == pytest.approx(lik + prior, rel=1e-12)


def test_ordering_adds_log_k_factorial_and_excludes_unordered_points():
    base = MixtureSpec(K=3, D=0, intercept=True)
    ordered = base.with_(ordering="intercept")
    point = random_point(ordered, np.random.default_rng(1))
    assert log_prior(ordered, point) == pytest.approx(log_prior(base, point) + math.log(6), rel=1e-12)
    swapped = dict(point, b=point["b"][::-1].copy())
    assert log_prior(ordered, swapped) == -np.inf


def test_sigma_outside_uniform_support_is_impossible():
    spec = MixtureSpec(K=2, D=1)
    point = random_point(spec, np.random.default_rng(0))
    assert log_prior(spec, dict(point, sigma=np.array(1.5))) == -np.inf


def test_forum_original_likelihood_keeps_both_bugs():
    spec = MixtureSpec(K=2, D=1, likelihood="forum-original")
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (5, 1))
    y = rng.normal(size=5)
    params = {"w": np.array([[3.0], [-1.0]]), "sigma": np.array(0.4), "pi": np.array([0.5, 0.5])}
    per_component = []
    for k in range(2):
        delta = y - params["w"][k, 0] * x[:, 0]
        per_component.append(math.log(0.5) - 0.5 * (5 * math.log(2 * math.pi) + math.log(0.4)
                                                       + (delta**2).sum() / 0.4**2))
    expected = np.logaddexp(*per_component)
    assert forum_log_likelihood(spec, x, y, params) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("likelihood", ["forum-batch-lse", "forum-log-sigma"])
def test_removing_one_forum_bug(likelihood):
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (6, 1))
    y = rng.normal(size=6)
    params = {"w": np.array([[3.0], [-1.0]]), "sigma": np.array(0.4), "pi": np.array([0.3, 0.7])}
    spec = MixtureSpec(K=2, D=1, likelihood=likelihood)
    dens = np.stack([stats.norm.logpdf(y, params["w"][k, 0] * x[:, 0], 0.4) for k in range(2)])
    if likelihood == "forum-batch-lse":
        expected = np.logaddexp(math.log(0.3) + dens[0].sum(), math.log(0.7) + dens[1].sum())
    else:
        buggy = dens + 0.5 * math.log(0.4)  # log(sigma) once instead of twice, per observation
        expected = np.logaddexp(math.log(0.3) + buggy[0], math.log(0.7) + buggy[1]).sum()
    assert forum_log_likelihood(spec, x, y, params) == pytest.approx(expected, rel=1e-12)
    correct = MixtureSpec(K=2, D=1)
    assert log_likelihood(correct, x, y, params) != pytest.approx(expected, rel=1e-6)


def test_student_t_errors_against_scipy_t():
    """The oracle's written-out Student-t mixture density against scipy.stats.t, nu fixed and
    with its Gamma(2, 0.1) prior (Juárez & Steel 2010) counted in the log prior."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, size=(30, 2))
    y = rng.standard_t(3, size=30) * 2.0
    params = {"w": np.array([[1.0, -0.5], [0.2, 2.0]]), "b": np.array([0.3, -1.0]),
              "sigma": np.array([0.4, 1.3]), "pi": np.array([0.35, 0.65])}
    mu = x @ params["w"].T + params["b"]
    fixed = MixtureSpec(K=2, D=2, intercept=True, sigma="per-component", errors="student-t", nu=3.5)
    dens = params["pi"] * stats.t.pdf(y[:, None], 3.5, mu, params["sigma"])
    assert log_likelihood(fixed, x, y, params) == pytest.approx(np.log(dens.sum(axis=1)).sum(), rel=1e-12)

    free = fixed.with_(nu=None)
    assert free.nu.shape == 2.0 and free.nu.rate == 0.1 and free.param_shapes()["nu"] == ()
    point = {**params, "nu": np.array(7.0)}
    dens = params["pi"] * stats.t.pdf(y[:, None], 7.0, mu, params["sigma"])
    base_prior = log_prior(fixed, params)
    assert log_prior(free, point) == pytest.approx(base_prior + stats.gamma.logpdf(7.0, 2.0, scale=10.0), rel=1e-12)
    assert log_likelihood(free, x, y, point) == pytest.approx(np.log(dens.sum(axis=1)).sum(), rel=1e-12)
    # A large nu is the normal mixture in the limit.
    normal = fixed.with_(errors="normal", nu=None)
    assert log_likelihood(fixed.with_(nu=1e8), x, y, params) == pytest.approx(
        log_likelihood(normal, x, y, params), rel=1e-6)


def test_shared_slopes_count_the_slope_prior_once_and_need_equal_rows():
    spec = MixtureSpec(K=3, D=2, intercept=True, shared="slopes")
    x = np.array([[0.5, 1.0], [-1.0, 0.2]])
    y = np.array([1.0, -0.5])
    w = np.array([0.7, -1.2])
    params = {"w": np.tile(w, (3, 1)), "b": np.array([-1.0, 0.0, 2.0]), "sigma": np.array(0.6),
              "pi": np.array([0.2, 0.3, 0.5])}
    expected = (stats.dirichlet.logpdf(params["pi"], np.ones(3)) + stats.norm.logpdf(w, 0, 2).sum()
                + stats.norm.logpdf(params["b"], 0, 2).sum() + stats.uniform.logpdf(0.6))
    assert log_prior(spec, params) == pytest.approx(expected, rel=1e-12)
    lik = np.log((params["pi"] * stats.norm.pdf(y[:, None], (x @ w)[:, None] + params["b"], 0.6)).sum(axis=1)).sum()
    assert log_likelihood(spec, x, y, params) == pytest.approx(lik, rel=1e-12)
    params["w"][1, 0] += 1e-3
    assert log_prior(spec, params) == -np.inf
