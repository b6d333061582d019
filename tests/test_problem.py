"""The evaluation problem: vectorised log densities against the oracle, and --standardize."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from backends.base import Fit, canonical_datatree
from bench.score.problem import Problem, _logaddexp, batch_log_density
from models import Dataset, MixtureSpec, log_density, random_point
from models.oracle import log_likelihood_terms
from models.standardize import Standardization
from tests.conftest import AGREEMENT_SPECS, make_data


@pytest.mark.parametrize("name", list(AGREEMENT_SPECS))
def test_batch_log_density_is_the_oracle(name):
    spec = AGREEMENT_SPECS[name]
    x, y = make_data(spec, n=150, seed=3)
    rng = np.random.default_rng(5)
    points = [random_point(spec, rng) for _ in range(12)]
    if spec.ordering == "none" and spec.K > 1:
        points[0]["pi"] = np.r_[1.2, -0.2, np.zeros(spec.K - 2)]  # off the simplex: -inf
    batch = {k: np.stack([p[k] for p in points]) for k in points[0]}
    values = batch_log_density(spec, x, y, batch, chunk_values=2000)  # several chunks
    expected = np.array([log_density(spec, x, y, p) for p in points])
    np.testing.assert_array_equal(np.isfinite(values), np.isfinite(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(values[finite], expected[finite], rtol=1e-12)
    pointwise = batch_log_density(spec, x, y, batch, pointwise=True, chunk_values=500)  # 3 points a chunk
    for i in range(1, len(points)):
        np.testing.assert_allclose(pointwise[i], log_likelihood_terms(spec, x, y, points[i]), rtol=1e-12)


def test_logaddexp_is_numpys():
    """The in-place log(e^a + e^b) of the log likelihood's inner loop is np.logaddexp, to rounding,
    infinities and NaN included."""
    rng = np.random.default_rng(0)
    special = [0.0, 3.0, -800.0, 700.0, np.inf, -np.inf, np.nan]
    a = np.r_[rng.normal(0, 30, 200), np.repeat(special, len(special))]
    b = np.r_[rng.normal(0, 30, 200), np.tile(special, len(special))]
    a[:20] = b[:20]  # ties: log 2 above
    with np.errstate(invalid="ignore"):  # inf - inf, NaN: as np.logaddexp itself
        expected = np.logaddexp(a, b)
        got = _logaddexp(a.copy(), b, np.empty_like(a), np.empty_like(a))
        into_a = a.copy()
        _logaddexp(into_a, b, into_a, np.empty_like(a))  # out may be a
    np.testing.assert_allclose(got, expected, rtol=1e-15, atol=1e-26)  # atol: max(a, b) = 0 exactly, below
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_array_equal(into_a, got)


def test_logaddexp_floor_changes_no_value_beyond_2e_10():
    """Flooring -|a - b| at -60 before exp changes nothing where |max(a, b)| > 2e-10: there
    log1p(exp(-|a - b|)) <= 8.8e-27 is under half an ulp of the max, so the sum rounds as without
    the floor, bit for bit; nearer zero it moves the value by at most 8.8e-27."""
    rng = np.random.default_rng(1)
    top = rng.choice([-1.0, 1.0], 20000) * 10.0 ** rng.uniform(np.log10(2e-10), 3, 20000)
    gap = 10.0 ** rng.uniform(1.5, 3.5, 20000)  # 32 to 3000 nats apart: both sides of the floor
    a, b = top, top - gap
    swap = rng.random(20000) < 0.5
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    unfloored = np.maximum(a, b) + np.log1p(np.exp(-np.abs(a - b)))
    np.testing.assert_array_equal(_logaddexp(a, b, np.empty_like(a), np.empty_like(a)), unfloored)
    near = np.array([0.0, 1e-30, -5e-12])
    got = _logaddexp(near, near - 100.0, np.empty(3), np.empty(3))
    np.testing.assert_allclose(got, np.logaddexp(near, near - 100.0), rtol=0, atol=1e-26)


SPEC = MixtureSpec(K=2, D=2, intercept=True, sigma="per-component")


def scaled_data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.normal(50.0, 10.0, n), rng.normal(-3.0, 0.2, n)])
    z = rng.random(n) < 0.4
    y = np.where(z, 100 + 2.0 * x[:, 0] - 30 * x[:, 1], -20 + 0.5 * x[:, 0] + 10 * x[:, 1]) + rng.normal(0, 4.0, n)
    return Dataset(x=x, y=y)


def test_standardized_data_are_centred_and_scaled():
    data = scaled_data()
    problem = Problem.make(SPEC, data, standardize=True)
    fit = problem.fit_dataset
    np.testing.assert_allclose(fit.x.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(fit.x.std(axis=0), 1.0)
    assert fit.y.mean() == pytest.approx(0.0, abs=1e-12) and fit.y.std() == pytest.approx(1.0)
    assert fit.truth is None


def test_a_standardized_point_predicts_the_same_lines_on_the_data_scale():
    data = scaled_data()
    scaling = Standardization.of(data, SPEC)
    rng = np.random.default_rng(1)
    fitted = {"w": rng.normal(size=(2, 2)), "b": rng.normal(size=2), "sigma": np.array([0.1, 0.3]),
              "pi": np.array([0.4, 0.6])}
    back = scaling.to_data(fitted)
    xs = scaling.dataset(data).x
    for k in range(2):
        on_fit_scale = fitted["b"][k] + xs @ fitted["w"][k]
        np.testing.assert_allclose(back["b"][k] + data.x @ back["w"][k],
                                   scaling.y_mean + scaling.y_scale * on_fit_scale, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(back["sigma"], scaling.y_scale * fitted["sigma"])
    for name, value in scaling.to_fit(back).items():
        np.testing.assert_allclose(value, fitted[name], rtol=1e-12, atol=1e-12)


def test_without_intercepts_nothing_is_centred():
    spec = MixtureSpec(K=2, D=1)
    data = Dataset(x=np.linspace(1, 3, 50)[:, None], y=np.linspace(10, 30, 50))
    scaling = Standardization.of(data, spec)
    assert not scaling.centred and scaling.y_mean == 0.0 and scaling.x_mean == (0.0,)
    back = scaling.to_data({"w": np.array([[1.0], [2.0]]), "sigma": np.array(0.5), "pi": np.array([0.5, 0.5])})
    np.testing.assert_allclose(back["w"][:, 0], np.array([1.0, 2.0]) * scaling.y_scale / scaling.x_scale[0])


def test_problem_log_density_is_the_fitted_models_and_gaps_carry_over():
    """On the data scale, a point's log density is the standardised model's at its image: the
    difference between two points is the same as between their images."""
    data = scaled_data()
    problem = Problem.make(SPEC, data, standardize=True)
    rng = np.random.default_rng(2)
    a, b = random_point(SPEC, rng), random_point(SPEC, rng)
    da, db = problem.to_data_scale_point(a), problem.to_data_scale_point(b)
    fit = problem.fit_dataset
    assert problem.log_density(da) == pytest.approx(log_density(SPEC, fit.x, fit.y, a), rel=1e-10)
    assert problem.log_density(da) - problem.log_density(db) == pytest.approx(
        log_density(SPEC, fit.x, fit.y, a) - log_density(SPEC, fit.x, fit.y, b), rel=1e-9)
    # Pointwise terms are densities of y as given: the fitted scale's minus log s_y.
    terms = problem.pointwise_log_likelihood(da)
    sigma_k = problem.standardization.y_scale * a["sigma"]
    mu = da["b"][None] + data.x @ da["w"].T
    direct = np.log((a["pi"] * stats.norm.pdf(data.y[:, None], mu, sigma_k)).sum(axis=1))
    np.testing.assert_allclose(terms, direct, rtol=1e-10)


def test_fit_draws_come_back_on_the_data_scale():
    data = scaled_data()
    problem = Problem.make(SPEC, data, standardize=True)
    rng = np.random.default_rng(3)
    pts = [random_point(SPEC, rng) for _ in range(4)]
    post = {k: np.stack([p[k] for p in pts])[None] for k in pts[0]}
    fit = Fit(backend="t", method="nuts", status="ok", draws=canonical_datatree(SPEC, post))
    back = problem.to_data_scale(fit).draws["posterior"]
    expected = problem.to_data_scale_point(pts[2])
    for name in ("w", "b", "sigma", "pi"):
        np.testing.assert_allclose(back[name].values[0, 2], expected[name], rtol=1e-12)
    assert problem.sigma_bounds() == (0.0, problem.standardization.y_scale * 1.0)


def test_constant_response_cannot_be_standardized():
    from models import MixbenchError

    with pytest.raises(MixbenchError, match="--standardize: the response is constant"):
        Problem.make(SPEC, Dataset(x=np.ones((5, 2)), y=np.full(5, 3.0)), standardize=True)


def test_draw_terms_are_the_oracles_log_densities_and_pointwise_terms():
    """One pass gives each kept draw's log density (the standardised model's, as
    Problem.log_density) and its data-scale pointwise log likelihood (as
    Problem.pointwise_log_likelihood): the landing and PSIS-LOO read the same evaluation."""
    data = scaled_data()
    problem = Problem.make(SPEC, data, standardize=True)
    rng = np.random.default_rng(4)
    pts = [[problem.to_data_scale_point(random_point(SPEC, rng)) for _ in range(5)] for _ in range(2)]
    post = {k: np.stack([np.stack([p[k] for p in chain]) for chain in pts]) for k in pts[0][0]}
    draws = canonical_datatree(SPEC, post)
    keep = np.array([0, 2, 4])
    out = problem.draw_terms(draws, keep)
    assert out.terms.shape == (2, 3, data.N) and out.log_density.shape == (2, 3)
    for c in range(2):
        for j, d in enumerate(keep):
            assert out.log_density[c, j] == pytest.approx(problem.log_density(pts[c][d]), rel=1e-10)
            np.testing.assert_allclose(out.terms[c, j], problem.pointwise_log_likelihood(pts[c][d]), rtol=1e-10)


@pytest.mark.parametrize("standardize", [False, True])
def test_draw_terms_at_a_subsample_hold_the_same_terms_and_the_lpd_of_every_observation(standardize):
    """With ``obs``, draw_terms keeps those observations' terms (the full evaluation's values, bit
    for bit), the same log densities, and the lpd of all N: log mean_s exp over every evaluated
    draw, as SciPy's logsumexp of the full matrix minus log S computes it."""
    from scipy.special import logsumexp

    data = scaled_data(n=3000)  # 3000 observations: several blocks of draws per chunk, and chunks
    problem = Problem.make(SPEC, data, standardize=standardize)
    rng = np.random.default_rng(5)
    pts = [[problem.to_data_scale_point(random_point(SPEC, rng)) for _ in range(40)] for _ in range(2)]
    post = {k: np.stack([np.stack([p[k] for p in chain]) for chain in pts]) for k in pts[0][0]}
    draws = canonical_datatree(SPEC, post)
    keep = np.arange(0, 40, 2)
    full = problem.draw_terms(draws, keep)
    obs = np.array([2999, 5, 1200, 17])
    part = problem.draw_terms(draws, keep, obs)
    assert full.obs is None and full.lpd is None and full.finite.all()
    np.testing.assert_array_equal(part.obs, np.sort(obs))
    np.testing.assert_array_equal(part.terms, full.terms[:, :, np.sort(obs)])
    np.testing.assert_array_equal(part.log_density, full.log_density)
    expected = logsumexp(full.terms.reshape(-1, data.N), axis=0) - np.log(keep.size * 2)
    np.testing.assert_allclose(part.lpd, expected, rtol=1e-13, atol=1e-13)
    assert problem.draw_terms(draws, keep, obs, lpd=False).lpd is None


def test_lpd_blocks_far_above_the_first_are_rescaled_not_overflowed():
    """_LogMeanExp raises its reference where a later block would overflow exp (here 2000 nats
    above the first row): the result is still SciPy's log-sum-exp minus log S."""
    from scipy.special import logsumexp

    from bench.score.problem import _LogMeanExp

    rng = np.random.default_rng(6)
    rows = rng.normal(0.0, 3.0, (7, 50))
    rows[3, :25] += 2000.0
    rows[5, 10:] -= 3000.0
    acc = _LogMeanExp()
    for block in (rows[:1], rows[1:4], rows[4:]):
        acc.add(block)
    np.testing.assert_allclose(acc.result(), logsumexp(rows, axis=0) - np.log(7), rtol=1e-14)


def test_an_importance_proposal_comes_back_on_the_data_scale_with_the_posterior():
    """A standardised Pathfinder fit keeps its proposal's draws beside the resampled ones; PSIS-LOO
    and stacking read them as data-scale draws, so they are mapped back as the posterior is."""
    import xarray as xr

    from backends.importance import PROPOSAL_GROUP

    data = scaled_data()
    problem = Problem.make(SPEC, data, standardize=True)
    rng = np.random.default_rng(4)
    pts = [random_point(SPEC, rng) for _ in range(5)]
    post = {k: np.stack([p[k] for p in pts])[None] for k in pts[0]}
    draws = canonical_datatree(SPEC, post)
    draws[PROPOSAL_GROUP] = xr.DataTree(draws["posterior"].to_dataset())
    back = problem.to_data_scale(Fit(backend="t", method="pathfinder", status="ok", draws=draws)).draws
    for i, point in enumerate(pts):
        expected = problem.to_data_scale_point(point)
        for name in ("w", "b", "sigma", "pi"):
            np.testing.assert_allclose(back[PROPOSAL_GROUP][name].values[0, i], expected[name], rtol=1e-12)
            assert back[PROPOSAL_GROUP][name].values[0, i] == pytest.approx(back["posterior"][name].values[0, i])
