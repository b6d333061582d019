"""One-pass scoring: each fit relabelled once, every judgment on that relabelling, metrics
isolated from each other. Hand-built draws with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bench.metrics as metrics
from backends.base import Fit, canonical_datatree
from bench.metrics import MetricSettings, evaluate, score_fit
from bench.problem import Problem
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
