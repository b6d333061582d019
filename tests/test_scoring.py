"""One-pass scoring: each fit relabelled once, every judgment on that relabelling, metrics
isolated from each other. Hand-built draws with known answers."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.score.metrics as metrics
from backends.base import Fit, canonical_datatree
from bench.score.metrics import evaluate, score_fit
from bench.score.problem import Problem
from bench.score.settings import MetricSettings
from models import MixtureSpec
from models.scenarios import Scenario, get_scenario

FAST = MetricSettings(loo_max_obs=50)
FORUM = get_scenario("forum-small")


def _intercepts_at_bound():
    """K = 2 intercept-only, per-component sigma under the default Uniform(0, 1): component A
    (b = -1) piles at sigma = 1, component B (b = +1) sits at 0.3."""
    spec = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component")
    truth = {"w": np.zeros((2, 0)), "b": np.array([-1.0, 1.0]), "sigma": np.array([0.999, 0.3]),
             "pi": np.array([0.5, 0.5])}
    data = Scenario("s", "", 60, spec, truth).simulate(0)
    return spec, truth, Problem.make(spec, data)


def test_bound_names_follow_the_relabelled_component_when_chains_disagree():
    """Chains 0 and 1 store A as component 1, chain 2 stores it as component 0. On the raw draws
    the median of stored sigma[1] is A's (two chains of three): a raw check would name sigma[1];
    relabelled to the truth, A is component 0 in every draw."""
    spec, truth, problem = _intercepts_at_bound()
    rng = np.random.default_rng(0)
    C, S = 3, 300
    post = {k: np.broadcast_to(v, (C, S) + v.shape).copy() for k, v in truth.items()}
    post["b"] = post["b"] + 0.05 * rng.standard_normal((C, S, 2))
    post["sigma"] = np.stack([1 - rng.exponential(0.001, (C, S)), 0.3 + 0.01 * rng.standard_normal((C, S))], -1)
    for c in (0, 1):
        for name in ("b", "sigma", "pi"):
            post[name][c] = post[name][c][:, ::-1]
    raw_median = np.median(post["sigma"].reshape(-1, 2), axis=0)
    assert raw_median[1] > 0.99 > raw_median[0]  # what the raw check saw
    fit = Fit(backend="t", method="nuts", status="ok", draws=canonical_datatree(spec, post),
              timings={"sampling": 1.0})
    row = evaluate(fit, truth=truth, problem=problem, settings=FAST)
    assert row["bound_params"] == "sigma[0] upper"
    assert "sigma-at-bound" in row["flags"].split(",")
    assert row["chains_disagree"] is True


@pytest.mark.slow
def test_bound_names_from_a_real_two_chain_fit_in_opposite_labellings():
    """A real two-chain NUTS fit (NumPyro) where A's noise is far above the prior's bound; chain
    1's stored labels are then swapped (the likelihood is invariant to it), so the chains hold A
    under opposite labels. The flag names A by its relabelled index, 0, either way."""
    pytest.importorskip("numpyro")
    from backends import get_backend
    from backends.base import FitSettings

    spec, truth, _ = _intercepts_at_bound()
    # A's noise (sd 2) far above the prior's bound, B's inside it; far apart so B holds its own.
    truth = {**truth, "b": np.array([-6.0, 6.0])}
    data = Scenario("s", "", 200, spec, {**truth, "sigma": np.array([2.0, 0.3])}).simulate(1)
    problem = Problem.make(spec, data)
    fit = problem.to_data_scale(get_backend("numpyro").fit(
        spec, data, "nuts", FitSettings(chains=2, warmup=300, draws=300), seed=3))
    rows = [evaluate(fit, truth=truth, problem=problem, settings=FAST)]
    post = fit.draws["posterior"].to_dataset()
    swapped = post.copy()
    for name in ("b", "sigma", "pi"):
        values = post[name].values.copy()
        values[1] = values[1][:, ::-1]
        swapped[name] = post[name].copy(data=values)
    fit.draws["posterior"] = swapped
    rows.append(evaluate(fit, truth=truth, problem=problem, settings=FAST))
    assert [row["bound_params"] for row in rows] == ["sigma[0] upper", "sigma[0] upper"]


def test_a_metric_that_raises_leaves_its_columns_empty_and_the_row_ok(monkeypatch):
    data = FORUM.simulate(0, N=100)
    problem = Problem.make(FORUM.spec, data)
    rng = np.random.default_rng(1)
    post = {k: np.asarray(v, float)[None, None] + 0.01 * rng.standard_normal((2, 200) + np.shape(v))
            for k, v in FORUM.truth.items()}
    post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
    fit = Fit(backend="t", method="nuts", status="ok", draws=canonical_datatree(FORUM.spec, post),
              timings={"sampling": 1.0})

    def failing(*args, **kwargs):
        raise ValueError("All tail values are the same")

    monkeypatch.setattr(metrics, "loo_metrics", failing)
    row, means = score_fit(fit, truth=FORUM.truth, problem=problem, settings=FAST)
    assert row["status"] == "ok"
    assert row["metric_errors"] == "loo: ValueError: All tail values are the same"
    assert math.isnan(row["elpd_loo"]) and math.isnan(row["p_loo"])
    # Every other metric ran on the same relabelled draws.
    assert row["w_err_max"] < 0.05 and row["mode"] == "truth" and row["ess_bulk_min"] > 100
    assert means["mean.w[0,0]"] == pytest.approx(post["w"][..., 0, 0].mean(), abs=1e-12)
    monkeypatch.undo()
    clean = evaluate(fit, truth=FORUM.truth, problem=problem, settings=FAST)
    assert clean["metric_errors"] == "" and math.isfinite(clean["elpd_loo"])


def _resampled_fit(n_pool=800, n_draws=400, keep_pool=True):
    """A Pathfinder-like fit of the forum data: a pool of proposal draws from q (normal around
    the truth), log p = log q + a tame perturbation, resampled with replacement by PSIS weights."""
    from backends.importance import GROUP, keep_proposal, proposal_group, psis_resample

    data = FORUM.simulate(0, N=60)
    problem = Problem.make(FORUM.spec, data)
    rng = np.random.default_rng(4)
    sd = {"w": 0.03, "sigma": 0.01, "pi": 0.05}
    pool = {k: np.asarray(v, float)[None, None] + sd[k] * rng.standard_normal((1, n_pool) + np.shape(v))
            for k, v in FORUM.truth.items()}
    pool["pi"] = np.abs(pool["pi"]) / np.abs(pool["pi"]).sum(-1, keepdims=True)
    log_q = rng.normal(0.0, 1.0, n_pool)
    log_p = log_q + 0.3 * rng.standard_normal(n_pool)
    chosen, _ = psis_resample(log_p, log_q, n_draws, seed=0)
    pool_tree = canonical_datatree(FORUM.spec, pool)
    draws = canonical_datatree(FORUM.spec, {k: v[:, chosen] for k, v in pool.items()})
    draws[GROUP] = proposal_group(log_p, log_q, np.zeros(n_pool, int), chosen)
    if keep_pool:
        keep_proposal(draws, pool_tree)
    fit = Fit(backend="t", method="pathfinder", status="ok", draws=draws, log_p=log_p[chosen], log_q=log_q[chosen])
    points = [{k: v[0, s] for k, v in pool.items()} for s in range(n_pool)]
    log_lik = np.array([problem.pointwise_log_likelihood(p) for p in points])  # (pool, obs)
    return fit, problem, log_p - log_q, chosen, log_lik


def _weighted_loo(log_r: np.ndarray, log_lik: np.ndarray) -> float:
    """Importance-sampling LOO, unsmoothed: p(y_i | y_-i) = sum_s r_s / sum_s r_s / p(y_i | theta_s)."""
    from scipy.special import logsumexp

    return float(np.sum(logsumexp(log_r)[None] - logsumexp(log_r[:, None] - log_lik, axis=0)))


def test_loo_of_resampled_draws_is_the_weighted_estimate_from_the_proposal():
    fit, problem, log_r, _, log_lik = _resampled_fit()
    row = evaluate(fit, problem=problem)
    assert row["loo_method"] == "psis-loo-proposal" and row["loo_draws"] == 800
    assert row["metric_errors"] == ""
    # Pareto smoothing changes a few tail weights only when they are this tame.
    assert row["elpd_loo"] == pytest.approx(_weighted_loo(log_r, log_lik), abs=0.05)


def test_loo_of_resampled_draws_without_their_proposal_weighs_distinct_draws_by_their_count():
    fit, problem, _, chosen, log_lik = _resampled_fit(keep_pool=False)
    row = evaluate(fit, problem=problem)
    distinct, counts = np.unique(chosen, return_counts=True)
    assert row["loo_method"] == "psis-loo-resampled" and row["loo_draws"] == distinct.size
    assert row["elpd_loo"] == pytest.approx(_weighted_loo(np.log(counts), log_lik[distinct]), abs=0.05)


# --------------------------------------------------------------------------------------------
# Degenerate components: tied data


def _tied_data():
    """Two clusters (-2 and 2, sd 0.5, 60 points each, recorded to 0.01) and 10 identical
    readings at 2.005 (off the 0.01 grid, so exactly 10 are tied): under the default
    Uniform(0, 1) sigma prior a component on the ties has an unbounded density."""
    from models import Dataset

    rng = np.random.default_rng(0)
    y = np.r_[rng.normal(-2, 0.5, 60).round(2), rng.normal(2, 0.5, 60).round(2), np.full(10, 2.005)]
    spec = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component")
    return spec, Dataset(x=np.zeros((y.size, 0)), y=y)


def test_degenerate_rule_on_tied_points():
    from backends.degenerate import data_resolution, degenerate_components

    _, data = _tied_data()
    assert data_resolution(data.y) == pytest.approx(0.01)  # the recording step (no grid point sits at 2.00 or 2.01)
    spike = {"w": np.zeros((2, 0)), "b": np.array([0.0, 2.005]), "sigma": np.array([0.99, 1e-4]),
             "pi": np.array([0.9, 0.1])}
    assert degenerate_components(data.x, data.y, spike) == [(1, 1e-4, 10)]  # below 0.1 x resolution
    # Above the resolution rule, but every point it holds is tied at its centre.
    assert degenerate_components(data.x[-10:], data.y[-10:], {**spike, "sigma": np.array([0.99, 0.0047])},
                                 resolution=0.01) == [(1, 0.0047, 10)]
    sound = {**spike, "b": np.array([-2.0, 2.0]), "sigma": np.array([0.5, 0.5])}
    assert degenerate_components(data.x, data.y, sound) == []


def test_map_keeps_the_best_non_degenerate_optimum_and_records_the_spike(monkeypatch):
    """One start begins on the ties and shrinks sigma onto them: its log density is the highest
    of all starts, yet the fit keeps the best other optimum, whose log likelihood is EM's (from
    20 starts, EM discarding its own degenerate ones)."""
    from backends import get_backend
    from backends.base import FitSettings
    from models.oracle import log_likelihood
    from tests.em import em_mixture

    spec, data = _tied_data()
    monkeypatch.setenv("MIXBENCH_TEST_SPIKE", "2.005")
    monkeypatch.setenv("MIXBENCH_TEST_SPIKE_SEED", "11")
    fit = get_backend("tests.fake_backends:OptimisingMapBackend").fit(spec, data, "map", FitSettings(map_starts=6),
                                                                       seed=11)
    assert fit.ok
    assert fit.start_log_densities[0] == max(fit.start_log_densities)  # the spike: highest density
    assert len(fit.degenerate_starts) == 1 and fit.degenerate_starts[0].startswith("start 0: sigma[")
    assert fit.degenerate_starts[0].endswith("on 10 points")
    em = em_mixture(data.x, data.y, K=2, intercept=True, shared_sigma=False, starts=20, seed=0)
    assert log_likelihood(spec, data.x, data.y, fit.point) == pytest.approx(em.log_likelihood, abs=0.5)
    row = evaluate(fit, problem=Problem.make(spec, data), settings=FAST)
    assert row["map_starts_degenerate"] == fit.degenerate_starts[0]
    assert row["chains_degenerate"] == 0 and "degenerate-component" not in row["flags"]


def test_a_degenerate_chain_is_flagged_with_its_points_never_above_the_reference_nor_best_by_elpd():
    """NUTS-like draws: chain 0 in the sound mode, chain 1 with sigma[1] at 1e-13 on the ties.
    The flag names the component and its 10 points, the chain is not 'above-reference'."""
    from bench.reference.posterior import Reference
    from bench.report.tables import assign_fit_ids, fit_summary

    spec, data = _tied_data()
    problem = Problem.make(spec, data)
    rng = np.random.default_rng(3)
    S = 300

    def chain(b, sigma, pi, sd):
        return {"w": np.zeros((1, S, 2, 0)), "b": np.array(b)[None, None] + sd * rng.standard_normal((1, S, 2)),
                "sigma": np.abs(np.array(sigma)[None, None] * (1 + 0.01 * rng.standard_normal((1, S, 2)))),
                "pi": np.broadcast_to(np.array(pi), (1, S, 2)).copy()}

    sound = chain([-2.0, 2.0], [0.5, 0.5], [0.46, 0.54], 0.05)
    spike = chain([0.0, 2.005], [0.99, 1e-13], [0.92, 0.08], 1e-15)
    post = {k: np.concatenate([sound[k], spike[k]]) for k in sound}
    ref_post = {k: np.concatenate([chain([-2.0, 2.0], [0.5, 0.5], [0.46, 0.54], 0.05)[k] for _ in range(2)])
                for k in sound}
    ref_draws = canonical_datatree(spec, ref_post)
    lp, _ = problem.draw_log_densities(ref_draws, per_chain=S)
    import xarray as xr
    tree = xr.DataTree.from_dict({"posterior": ref_draws["posterior"].to_dataset(),
                                  "sample_stats": xr.Dataset({"lp": (("chain", "draw"), lp)})})
    reference = Reference(tree, {"name": "hand-built", "accepted": True})
    fit = Fit(backend="t", method="nuts", status="ok", draws=canonical_datatree(spec, post), timings={"sampling": 1.0})
    row = evaluate(fit, reference=reference, problem=problem, settings=FAST)
    assert row["degenerate"] == "chain 1: sigma[1] = 1e-13 on 10 points"
    assert row["chains_degenerate"] == 1 and "degenerate-component" in row["flags"].split(",")
    assert float(row["lp_gap_chains"].split(";")[1]) < -row["lp_gap_tol"]  # far above by density ...
    assert row["chains_above"] == 0 and "above-reference" not in row["flags"]  # ... yet not above
    sound_fit = Fit(backend="u", method="nuts", status="ok", draws=canonical_datatree(spec, sound),
                    timings={"sampling": 1.0})
    sound_row = evaluate(sound_fit, reference=reference, problem=problem, settings=FAST)
    spike_fit = Fit(backend="v", method="nuts", status="ok", draws=canonical_datatree(spec, spike),
                    timings={"sampling": 1.0})
    spike_row = evaluate(spike_fit, reference=reference, problem=problem, settings=FAST)
    assert spike_row["elpd_loo"] > sound_row["elpd_loo"] + 10  # the spike predicts its own ties ...
    rows = [{**r, "scenario": "tied", "setup": "default"} for r in (row, sound_row, spike_row)]
    fits = fit_summary(assign_fit_ids(pd.DataFrame(rows))).set_index("backend")
    assert fits.loc["u", "elpd_loo_diff"] == 0  # ... yet the sound fit is the best
    assert fits.loc["v", "elpd_loo_diff"] == pytest.approx(spike_row["elpd_loo"] - sound_row["elpd_loo"])
    from bench.report.findings import setup_findings

    text = " ".join(s.text for s in setup_findings(fits.reset_index()).sentences)
    assert "the best fit of these data is u / nuts" in text
    assert "collapsed onto tied points" in text and "improper" in text and "InverseGamma" in text


def test_w1_floor_of_a_known_normal_matches_two_exact_samples():
    """200 scalars of N(0, 1) reference draws (4000 each), fit size 250: the floor per scalar is
    one W1 between two exact samples of 250; its mean over scalars matches the expected W1 of two
    such samples, here from 2000 simulated pairs (sd of the 200-scalar mean about 1.5%)."""
    from scipy.stats import wasserstein_distance

    from bench.score.metrics import w1_floor

    rng = np.random.default_rng(0)
    floors = w1_floor(rng.standard_normal((4000, 200)), 250, seed=1)
    sim = rng.standard_normal((2000, 2, 250))
    expected = np.mean([wasserstein_distance(a, b) for a, b in sim])
    assert floors.shape == (200,)
    assert np.mean(floors) == pytest.approx(expected, rel=0.06)
    # It falls as 1/sqrt(n): a fit 4x larger has half the floor.
    assert np.mean(w1_floor(rng.standard_normal((4000, 200)), 1000, seed=2)) == pytest.approx(expected / 2, rel=0.08)


def test_paired_elpd_se_equals_arviz_stats_compare():
    """Two NUTS-like fits of the same 120 points (one with slopes a bit off): the summary's
    difference and its se equal arviz-stats' compare on the same pointwise log likelihoods."""
    import arviz_stats as azs
    import xarray as xr

    from bench.report.findings import setup_findings
    from bench.report.tables import assign_fit_ids, fit_summary

    data = FORUM.simulate(3, N=120)
    problem = Problem.make(FORUM.spec, data)
    rng = np.random.default_rng(9)
    posts, trees = {}, {}
    for name, shift in (("good", 0.0), ("off", 0.08)):
        post = {k: np.asarray(v, float)[None, None] + 0.02 * rng.standard_normal((2, 300) + np.shape(v))
                for k, v in FORUM.truth.items()}
        post["w"] = post["w"] + shift
        post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
        posts[name] = post
        draws = canonical_datatree(FORUM.spec, post)
        index = [(c, d) for c in range(2) for d in range(300)]
        log_lik = problem.pointwise_draws(draws, index).reshape(2, 300, -1)
        trees[name] = xr.DataTree.from_dict({
            "posterior": draws["posterior"].to_dataset(),
            "log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik)})})
    table = azs.compare({name: azs.loo(tree, pointwise=True) for name, tree in trees.items()}, round_to="none")
    rows = []
    for name, post in posts.items():
        fit = Fit(backend=name, method="nuts", status="ok", draws=canonical_datatree(FORUM.spec, post),
                  timings={"sampling": 1.0})
        # Every observation Pareto-smoothed (as by default up to 1000), as compare's.
        rows.append({**evaluate(fit, truth=FORUM.truth, problem=problem, settings=MetricSettings(loo_max_obs=120)),
                     "scenario": "s", "setup": "default"})
    fits = fit_summary(assign_fit_ids(pd.DataFrame(rows))).set_index("backend")
    assert table.index[0] == "good" and fits.loc["good", "elpd_loo_diff"] == 0
    assert fits.loc["off", "elpd_loo_diff"] == pytest.approx(table.loc["off", "elpd_diff"], rel=1e-6)
    assert fits.loc["off", "elpd_loo_diff_se"] == pytest.approx(table.loc["off", "dse"], rel=1e-6)
    # The findings name the best fit and judge the difference against its own se.
    text = " ".join(s.text for s in setup_findings(fits.reset_index()).sentences)
    verdict = "noise" if abs(table.loc["off", "elpd_diff"]) <= 2 * table.loc["off", "dse"] else "real"
    assert "the best fit of these data is good / nuts" in text and f": {verdict})" in text


def test_findings_name_the_largest_gap_in_each_direction():
    """A fit whose chains sit 0.08 nats below and 224 nats above: both extremes are in the sentence."""
    from bench.report.findings import setup_findings
    from bench.report.tables import assign_fit_ids, fit_summary

    row = {"scenario": "s", "setup": "default", "backend": "numpyro", "method": "nuts", "status": "ok",
           "mode": "mixed", "lp_gap": 0.08, "lp_gap_chains": "0.08;-224", "reference_source": "reference",
           "flags": "above-reference,mixed-modes", "chains_disagree": False, "N": 100}
    fits = fit_summary(assign_fit_ids(pd.DataFrame([row])))
    text = " ".join(s.text for s in setup_findings(fits).sentences)
    assert "up to 0.08 nats below and up to 224 nats above the reference posterior" in text


def test_paired_elpd_se_with_subsampled_observations_estimates_the_full_one():
    """N = 3000 above loo_max_obs = 300: every fit of the data subsamples the same observations
    (seeded by the data's digest), so their pointwise values pair, and the paired se estimated
    from them agrees with the full-data one (arviz-stats' compare on all 3000 observations)."""
    from bench.report.tables import assign_fit_ids, fit_summary
    from bench.score.predictive import subsample_seed

    data = FORUM.simulate(4, N=3000)
    problem = Problem.make(FORUM.spec, data)
    rng = np.random.default_rng(10)
    fits = {}
    for name, shift in (("good", 0.0), ("off", 0.03)):
        post = {k: np.asarray(v, float)[None, None] + 0.005 * rng.standard_normal((1, 200) + np.shape(v))
                for k, v in FORUM.truth.items()}
        post["w"] = post["w"] + shift
        post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
        fits[name] = Fit(backend=name, method="advi-fullrank", status="ok", draws=canonical_datatree(FORUM.spec, post))
    fits_by_size = {}
    for max_obs in (300, 5000):
        rows = []
        for fit in fits.values():
            rows.append({**evaluate(fit, truth=FORUM.truth, problem=problem,
                                    settings=MetricSettings(loo_max_obs=max_obs)),
                         "scenario": "s", "setup": "default", "N": 3000})
        if max_obs == 300:
            sampled = [r["elpd_loo_pointwise"].split(";") for r in rows]
            assert [len(p) for p in sampled] == [300, 300] and all(r["loo_obs"] == 300 for r in rows)
        fits_by_size[max_obs] = fit_summary(assign_fit_ids(pd.DataFrame(rows))).set_index("backend")
    sub, full = fits_by_size[300].loc["off"], fits_by_size[5000].loc["off"]
    # The report says which elpd is a subsample's estimate, and its subsampling se.
    assert sub["loo_obs_of"] == "300 of 3000" and sub["elpd_loo_subsample_se"] > 0
    assert full["loo_obs_of"] == "-" and math.isnan(full["elpd_loo_subsample_se"])
    from bench.report.tables import report_tables

    for fits_, shown in ((fits_by_size[300], True), (fits_by_size[5000], False)):
        table = next(t for t in report_tables(fits_.reset_index(), pd.DataFrame()) if t.key == "predictive")
        assert ("LOO observations" in table.frame and "subsampling se" in table.frame) is shown
    assert math.isfinite(sub["elpd_loo_diff_se"]) and full["elpd_loo_diff_se"] > 5
    assert sub["elpd_loo_diff_se"] == pytest.approx(full["elpd_loo_diff_se"], rel=0.25)
    assert abs(sub["elpd_loo_diff"] - full["elpd_loo_diff"]) < 2 * sub["elpd_loo_diff_se"]
    other = FORUM.simulate(5, N=3000)
    assert subsample_seed(other.x, other.y) != subsample_seed(data.x, data.y)


def test_paired_elpd_se_of_subsampled_fits_is_arviz_stats_subsampling_dse():
    """Two fits of N = 600 points, each subsampled at the same 100 observations: the paired
    difference's subsampling variance is the difference estimator's over the paired pointwise
    differences (arviz-stats' compare of two loo_subsample results of one seed: subsampling_dse),
    not the two fits' subsampling se in quadrature, which ignores that they share the subsample."""
    import arviz_stats as azs
    import xarray as xr

    from bench.report.tables import _median_seed_pointwise, paired_elpd_se
    from bench.score.predictive import loo_keep, loo_metrics

    data = FORUM.simulate(5, N=600)
    problem = Problem.make(FORUM.spec, data)
    rng = np.random.default_rng(11)
    keep = loo_keep(600, 300, 2)
    rows, loos = {}, {}
    for name, shift in (("good", 0.0), ("off", 0.05)):
        post = {k: np.asarray(v, float)[None, None] + 0.02 * rng.standard_normal((2, 300) + np.shape(v))
                for k, v in FORUM.truth.items()}
        post["w"] = post["w"] + shift
        post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
        draws = canonical_datatree(FORUM.spec, post)
        fit = Fit(backend=name, method="nuts", status="ok", draws=draws, timings={"sampling": 1.0})
        rows[name] = {**loo_metrics(fit, draws, problem, mcmc=True, max_obs=100, seed=7), "N": 600}
        log_lik = problem.pointwise_draws(draws, [(c, int(d)) for c in range(2) for d in keep])
        tree = xr.DataTree.from_dict({
            "posterior": draws["posterior"].to_dataset().isel(draw=keep),
            "log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik.reshape(2, keep.size, -1))})})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loos[name] = azs.loo_subsample(tree, observations=100, pointwise=True, seed=7, method="lpd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = azs.compare(loos, round_to="none")
    worse = table.index[1]
    a, b = (_median_seed_pointwise(pd.DataFrame([rows[n]])) for n in (worse, table.index[0]))
    d = a[0] - b[0]
    expected = np.sqrt(600 * np.var(d) + table.loc[worse, "subsampling_dse"] ** 2)
    assert paired_elpd_se(a, b) == pytest.approx(expected, rel=1e-8)
    quadrature = np.sqrt(600 * np.var(d) + a[2] ** 2 + b[2] ** 2)
    assert abs(quadrature - expected) > 0.05 * expected
    assert paired_elpd_se(a, a) == 0.0


def test_stacked_rows_stay_out_of_the_elpd_ranking():
    """A +stacked row's elpd is scored by the LOO densities its weights were fitted on (optimistic,
    Yao et al. 2022): even when it is the largest, the best fit named is the best plain fit, and
    the stacked row is listed apart, marked optimistic, with its difference to that fit."""
    from bench.report.findings import setup_findings
    from bench.report.tables import assign_fit_ids, fit_summary

    base = {"scenario": "s", "setup": "default", "status": "ok", "N": 4, "loo_obs": 4}
    points = {"nuts": [-1.0, -1.2, -0.9, -1.1], "advi": [-1.1, -1.3, -1.0, -1.3], "nuts+stacked": [-0.5, -0.6, -0.4, -0.5]}
    rows = [{**base, "backend": "pymc", "method": m, "elpd_loo": sum(v), "elpd_loo_pointwise": ";".join(map(str, v))}
            for m, v in points.items()]
    fits = fit_summary(assign_fit_ids(pd.DataFrame(rows))).set_index("method")
    assert fits.loc["nuts", "elpd_loo_diff"] == 0
    assert fits.loc["advi", "elpd_loo_diff"] == pytest.approx(-0.5)
    assert fits.loc["nuts+stacked", "elpd_loo_diff"] == pytest.approx(2.2)
    text = " ".join(s.text for s in setup_findings(fits.reset_index()).sentences)
    assert "the best fit of these data is pymc / nuts;" in text
    head, apart = text.split("apart, stacked rows, optimistic")
    assert "nuts+stacked" not in head.split("PSIS-LOO elpd")[1] and "pymc / nuts+stacked 2.2" in apart


SCORES_WITHOUT_LOADING_JAX = """
import sys, warnings
warnings.simplefilter("ignore")
from bench.benchmarks.scoring_time import score, setup
from bench.benchmarks.test_scoring_cost import synthetic_fit
args = setup(200)
for method in ("nuts", "advi", "pathfinder", "pathfinder-2modes"):
    score(synthetic_fit(method, 200, args[0], args[2]), *args[1:])
print(type(sys.modules.get("jax")).__name__)
"""


def test_scoring_leaves_an_unloaded_jax_unloaded():
    """arviz_base leaves JAX as an unloaded placeholder; SciPy's logsumexp under arviz-stats'
    PSIS loaded all of it (0.35-1.1 s of CPU) in a process that had not (bench.score.lazy_jax)."""
    done = subprocess.run([sys.executable, "-c", SCORES_WITHOUT_LOADING_JAX], cwd=Path(__file__).parents[1],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # Unloaded: still arviz_base's placeholder, or never imported (an arviz_base without it,
    # where bench/score/lazy_jax.py has nothing left to do).
    assert done.stdout.strip() in ("_LazyModule", "NoneType")
