"""PSIS-LOO's subsampled estimate, assembled from the one evaluation of the draws, against
arviz-stats' own loo_subsample on the same pointwise log likelihood."""

from __future__ import annotations

import warnings

import arviz_stats as azs
import numpy as np
import pytest
import xarray as xr

from backends.base import Fit, canonical_datatree
from bench.score.predictive import loo_keep, loo_metrics
from bench.score.problem import Problem, subsample_indices
from models import Dataset, get_scenario


@pytest.mark.parametrize("share", [False, True])
def test_subsampled_loo_is_arviz_stats_loo_subsample(share):
    scenario = get_scenario("forum-small")
    data = scenario.simulate(0, N=600)
    problem = Problem.make(scenario.spec, Dataset(x=data.x, y=data.y))
    rng = np.random.default_rng(0)
    post = {k: np.asarray(v, float)[None, None] + 0.01 * rng.standard_normal((2, 300) + np.shape(v))
            for k, v in scenario.truth.items()}
    post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
    draws = canonical_datatree(scenario.spec, post)
    fit = Fit(backend="t", method="nuts", status="ok", draws=draws, timings={"sampling": 1.0})
    keep = loo_keep(600, 300, 2)
    # Shared: the scoring's evaluation at loo_metrics' own subsample (bench.score.metrics.Scoring.terms).
    terms = problem.draw_terms(draws, keep, subsample_indices(600, 100, 7)) if share else None
    row = loo_metrics(fit, draws, problem, mcmc=True, max_obs=100, seed=7, terms=terms)

    index = [(c, int(d)) for c in range(2) for d in keep]
    log_lik = problem.pointwise_draws(draws, index).reshape(2, keep.size, -1)
    tree = xr.DataTree.from_dict({
        "posterior": draws["posterior"].to_dataset().isel(draw=keep),
        "log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik)}),
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = azs.loo_subsample(tree, observations=100, pointwise=True, seed=7, method="lpd")
    assert row["loo_obs"] == 100 and row["loo_draws"] == log_lik.shape[0] * log_lik.shape[1]
    assert row["elpd_loo"] == pytest.approx(float(expected.elpd), rel=1e-10)
    assert row["elpd_loo_se"] == pytest.approx(float(expected.se), rel=1e-8)
    assert row["p_loo"] == pytest.approx(float(expected.p), rel=1e-8)
    assert row["elpd_loo_subsample_se"] == pytest.approx(float(expected.subsampling_se), rel=1e-8)
    assert row["loo_khat_max"] == pytest.approx(float(np.nanmax(expected.pareto_k.values)), rel=1e-10)


def _forum_fit_at_1000():
    """A synthetic fit of forum-small at N = 1000 (2 x 400 draws near the truth), its problem, and
    arviz-stats' ``loo`` of all 1000 observations on the same pointwise log likelihood."""
    scenario = get_scenario("forum-small")
    data = scenario.simulate(1, N=1000)
    problem = Problem.make(scenario.spec, Dataset(x=data.x, y=data.y))
    rng = np.random.default_rng(2)
    sd = {"w": 0.17 / np.sqrt(1000), "sigma": 0.07 / np.sqrt(1000), "pi": 0.5 / np.sqrt(1000)}
    post = {k: np.asarray(v, float)[None, None] + sd[k] * rng.standard_normal((2, 400) + np.shape(v))
            for k, v in scenario.truth.items()}
    post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
    draws = canonical_datatree(scenario.spec, post)
    fit = Fit(backend="t", method="nuts", status="ok", draws=draws, timings={"sampling": 1.0})
    keep = loo_keep(1000, 400, 2)
    log_lik = problem.pointwise_draws(draws, [(c, int(d)) for c in range(2) for d in keep]).reshape(2, keep.size, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = float(azs.loo(xr.DataTree.from_dict({
            "posterior": draws["posterior"].to_dataset().isel(draw=keep),
            "log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik)})}), pointwise=True).elpd)
    return fit, draws, problem, full


def test_subsample_estimates_the_full_psis_loo_within_its_se():
    """At N = 1000 with loo_max_obs = 100, elpd_loo is a subsample's estimate: for several
    subsample seeds the full PSIS-LOO of all 1000 observations (arviz-stats' ``loo`` on the same
    pointwise log likelihood) lies within 3 of the estimate's stated subsampling se, and well
    within its total se."""
    fit, draws, problem, full = _forum_fit_at_1000()
    max_obs = 100
    for seed in range(5):
        row = loo_metrics(fit, draws, problem, mcmc=True, max_obs=max_obs, seed=seed)
        assert row["loo_obs"] == max_obs and row["elpd_loo_subsample_se"] > 0
        assert abs(row["elpd_loo"] - full) < 3 * row["elpd_loo_subsample_se"], (seed, row["elpd_loo"], full)
        assert abs(row["elpd_loo"] - full) < 0.1 * row["elpd_loo_se"]


def test_default_settings_pareto_smooth_every_observation_up_to_1000():
    """With the default settings a fit of 1000 observations is scored by PSIS-LOO of every one
    (a 100-observation subsample proved too inaccurate at small N): the row's elpd_loo is
    arviz-stats' ``loo`` of all of them, with no subsampling error."""
    from bench.score.metrics import evaluate

    fit, _, problem, full = _forum_fit_at_1000()
    row = evaluate(fit, problem=problem)
    assert row["loo_obs"] == 1000 and row["elpd_loo_subsample_se"] == 0.0
    assert row["elpd_loo"] == pytest.approx(full, rel=1e-10)
