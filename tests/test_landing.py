"""Metrics against a reference posterior, on hand-built draws with known answers: one labelling
for every fit, modes told apart by log density, health flags, PSIS-LOO."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from backends.base import Fit, canonical_datatree
from bench.reference.posterior import Reference, canonical_relabel
from bench.score.columns import ROW_FIELDS
from bench.score.metrics import evaluate
from bench.score.problem import Problem
from bench.score.settings import MetricSettings
from models import Dataset, MixtureSpec, get_scenario, log_density
from models.scenarios import Scenario

FORUM = get_scenario("forum-small")  # K = 2, D = 1, no intercepts, shared sigma: slopes 3 / -1
SPEC = FORUM.spec


@pytest.fixture(scope="module")
def data():
    return Dataset(x=FORUM.simulate(0, N=300).x, y=FORUM.simulate(0, N=300).y)  # no truth


@pytest.fixture(scope="module")
def problem(data):
    return Problem.make(SPEC, data)


def scattered(centre, chains, draws, sd, seed, swap=()):
    rng = np.random.default_rng(seed)
    post = {k: np.asarray(v, float)[None, None] + sd[k] * rng.standard_normal((chains, draws) + np.shape(v))
            for k, v in centre.items()}
    post["pi"] = np.clip(post["pi"], 1e-6, None)
    post["pi"] /= post["pi"].sum(-1, keepdims=True)
    for c in swap:
        for name in ("w", "pi"):
            post[name][c] = post[name][c][:, ::-1]
    return post


# Where LOO is not the point, Pareto-smooth a subsample of 50 observations only (fast).
FAST = MetricSettings(loo_max_obs=50)

# Posterior sds of the forum posterior at N = 300 (about what NUTS gives).
SD = {"w": 0.01, "sigma": 0.004, "pi": 0.03}


@pytest.fixture(scope="module")
def reference(problem):
    post = scattered(FORUM.truth, 4, 500, SD, seed=1, swap=(2,))
    draws = canonical_datatree(SPEC, post)
    lp, _ = problem.draw_log_densities(draws, per_chain=500)
    relabelled, _ = canonical_relabel(draws, lp, SPEC)
    stats_ = {"lp": (("chain", "draw"), lp)}
    import xarray as xr

    tree = xr.DataTree.from_dict({"posterior": relabelled["posterior"].to_dataset(),
                                  "sample_stats": xr.Dataset(stats_)})
    return Reference(tree, {"name": "hand-built", "accepted": True})


def nuts(post, **kw):
    kw.setdefault("timings", {"sampling": 1.0})
    return Fit(backend="t", method="nuts", status="ok", draws=canonical_datatree(SPEC, post, kw.pop("stats", None)), **kw)


def vi(post, **kw):
    return Fit(backend="t", method="advi-fullrank", status="ok", draws=canonical_datatree(SPEC, post), **kw)


def oracle_mean(data, post, chain, keep):
    return np.mean([log_density(SPEC, data.x, data.y, {k: v[chain, d] for k, v in post.items()}) for d in keep])


def test_fits_in_any_labelling_share_the_references(problem, reference):
    """Every fit is relabelled to the reference's canonical labelling (slopes sorted: -1, 3), so
    each row's components line up whatever labels the fit used."""
    rows = []
    for seed, swap in ((2, ()), (3, (0,)), (4, (0, 1))):
        fit = nuts(scattered(FORUM.truth, 2, 300, SD, seed, swap=swap))
        rows.append(evaluate(fit, reference=reference, problem=problem, settings=FAST))
    assert {r["reference_source"] for r in rows} == {"reference"}
    assert [r["permutation"] for r in rows] == ["1,0", "0,1", "0,1"]
    assert all(r["mode"] == "reference" and r["chains_disagree"] is (i == 1) for i, r in enumerate(rows))
    # Without a reference or truth each fit picks its own pivot.
    alone = evaluate(nuts(scattered(FORUM.truth, 2, 300, SD, 3, swap=(0,))), problem=problem, settings=FAST)
    assert alone["reference_source"] in ("map", "chain0") and math.isnan(alone["lp_gap"])


def test_agreeing_single_chain_fits_are_all_in_the_references_mode(data, problem, reference):
    """Six one-chain fits that agree with one another and with the reference: all 'reference',
    gaps near zero (the chain's mean log density against the reference's)."""
    for seed in range(6):
        post = scattered(FORUM.truth, 1, 200, SD, seed + 10)
        row = evaluate(vi(post), reference=reference, problem=problem, settings=FAST)
        assert row["mode"] == "reference" and row["chains_on_target"] == 1
        assert row["ref_distance_sd"] < 1.0
        ref_mean = float(reference.lp.mean())
        assert row["lp_gap"] == pytest.approx(ref_mean - oracle_mean(data, post, 0, range(200)), rel=1e-9, abs=1e-9)
        assert abs(row["lp_gap"]) < row["lp_gap_tol"] and "poor-mode" not in row["flags"]


def test_a_chain_in_another_mode_is_told_apart_by_its_log_density(data, problem, reference):
    """Chain 1 sits where both lines have slope about 1 with a wide sigma: another mode, hundreds of
    nats below; the row says so and flags it, the first chain is fine."""
    good = scattered(FORUM.truth, 1, 200, SD, 20)
    poor = scattered({"w": np.array([[0.9], [1.1]]), "sigma": np.array(0.6), "pi": np.array([0.5, 0.5])},
                     1, 200, SD, 21)
    post = {k: np.concatenate([good[k], poor[k]]) for k in good}
    row = evaluate(nuts(post), reference=reference, problem=problem, settings=FAST)
    expected = float(reference.lp.mean()) - oracle_mean(data, post, 1, range(200))
    assert expected > 100
    assert row["lp_gap"] == pytest.approx(expected, rel=1e-9)
    gaps = [float(g) for g in row["lp_gap_chains"].split(";")]
    assert gaps[1] == pytest.approx(expected, rel=1e-3) and abs(gaps[0]) < 10
    assert row["mode"] == "mixed" and row["chains_below"] == 1
    assert {"poor-mode", "mixed-modes"} <= set(row["flags"].split(","))
    assert row["ref_distance_sd"] > 50


def test_map_points_are_placed_against_the_references_highest_draw(data, problem, reference):
    # A point at the best optimum known: the reference's highest draw. (The truth is not the
    # posterior's mode: on 300 points it lies about 2 nats below it, and a point judged as a
    # point must be within point_lp_gap_nats of the best optimum.)
    ds = reference.draws["posterior"]
    chain, draw = np.unravel_index(int(np.argmax(reference.lp)), np.shape(reference.lp))
    best = {n: np.asarray(ds[n].values[chain, draw], float) for n in ds.data_vars}
    at_mode = evaluate(Fit(backend="t", method="map", status="ok", point=best), reference=reference, problem=problem, settings=FAST)
    expected = float(reference.lp.max()) - log_density(SPEC, data.x, data.y, best)
    assert at_mode["lp_gap"] == pytest.approx(expected, rel=1e-9)
    assert at_mode["mode"] == "reference" and at_mode["flags"] == ""
    lower = {**best, "w": np.array([[2.0], [-1.0]])}
    row = evaluate(Fit(backend="t", method="map", status="ok", point=lower), reference=reference, problem=problem, settings=FAST)
    assert row["lp_gap"] == pytest.approx(float(reference.lp.max()) - log_density(SPEC, data.x, data.y, lower), rel=1e-9)
    assert row["mode"] == "other" and "poor-mode" in row["flags"].split(",")


def test_with_a_truth_the_truth_labels_and_the_reference_places(problem, reference):
    fit = nuts(scattered(FORUM.truth, 2, 300, SD, 30, swap=(1,)))
    row = evaluate(fit, truth=FORUM.truth, reference=reference, problem=problem, settings=FAST)
    assert row["reference_source"] == "truth" and row["w_err_max"] < 0.01
    assert row["mode"] == "reference" and row["w_w1_max"] < 0.01 and np.isfinite(row["lp_gap"])


# --------------------------------------------------------------------------------------------
# Health flags


def test_a_chain_that_never_moved_is_flagged_stuck(problem):
    post = scattered(FORUM.truth, 2, 300, SD, 40)
    for name in post:
        post[name][1] = post[name][1][:1]  # chain 1 repeats its first draw
    diverging = np.zeros((2, 300), bool)
    diverging[1] = True
    row = evaluate(nuts(post, stats={"diverging": diverging}), problem=problem, settings=FAST)
    assert row["chains_stuck"] == 1
    assert {"stuck", "divergences", "rhat", "ess"} <= set(row["flags"].split(","))
    fine = evaluate(nuts(scattered(FORUM.truth, 2, 1000, SD, 41)), problem=problem, settings=FAST)
    assert fine["flags"] == "" and fine["chains_stuck"] == 0


def test_sigma_piling_at_its_uniform_bound_is_flagged():
    """Uniform(0, 1) on sigma, data whose noise is far larger: the draws pile at 1."""
    spec = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component")
    truth = {"w": np.zeros((2, 0)), "b": np.array([-1.0, 1.0]), "sigma": np.array([0.999, 0.9995]),
             "pi": np.array([0.5, 0.5])}
    problem = Problem.make(spec, Scenario("s", "", 50, spec, {**truth, "sigma": np.array([5.0, 5.0])}).simulate(0))
    rng = np.random.default_rng(0)
    post = {k: np.broadcast_to(v, (1, 200) + v.shape).copy() for k, v in truth.items()}
    post["sigma"] = 1 - rng.exponential(0.001, (1, 200, 2))
    post["b"] = post["b"] + 0.3 * rng.standard_normal((1, 200, 2))
    row = evaluate(Fit(backend="t", method="advi-meanfield", status="ok", draws=canonical_datatree(spec, post)),
                   problem=problem, settings=FAST)
    assert "sigma-at-bound" in row["flags"] and row["bound_params"] == "sigma[0] upper, sigma[1] upper"
    point = {k: v[0, 0] for k, v in post.items()}
    map_row = evaluate(Fit(backend="t", method="map", status="ok", point=point), problem=problem, settings=FAST)
    assert "map-at-bound" in map_row["flags"]
    # Away from the bound: nothing.
    post["sigma"] = post["sigma"] * 0.5
    row = evaluate(Fit(backend="t", method="advi-meanfield", status="ok", draws=canonical_datatree(spec, post)),
                   problem=problem, settings=FAST)
    assert row["bound_params"] == "" and "sigma-at-bound" not in row["flags"]


def test_engine_flags_and_khat_reach_the_flags(problem):
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 0.2, 300)
    fit = vi(scattered(FORUM.truth, 1, 300, SD, 50), converged=False,
             log_p=stats.norm.logpdf(x), log_q=stats.norm.logpdf(x, 0.0, 0.2))
    flags = evaluate(fit, problem=problem, settings=FAST)["flags"].split(",")
    assert "khat" in flags and "not-converged" in flags


def test_every_row_key_is_documented(problem, reference):
    row = evaluate(nuts(scattered(FORUM.truth, 2, 100, SD, 60)), reference=reference, problem=problem, settings=FAST)
    assert list(row) == list(ROW_FIELDS)
    assert all(isinstance(v, (str, int, float, bool)) for v in row.values())


# --------------------------------------------------------------------------------------------
# PSIS-LOO


def test_elpd_loo_agrees_with_plain_importance_sampling_and_counts_the_parameters():
    """K = 1 regression with intercept, posterior draws from its normal approximation at N = 400:
    plain importance-sampling LOO (the harmonic mean of p(y_i | theta_s), unsmoothed, computed
    here) agrees with PSIS-LOO when the weights are tame, and p_loo, the lpd minus elpd_loo, is
    about the number of parameters (intercept, slope, sigma: 3)."""
    spec = MixtureSpec(K=1, D=1, intercept=True, sigma_prior=__import__("models").SigmaPrior("halfnormal", 5.0))
    rng = np.random.default_rng(7)
    n = 400
    x = rng.uniform(-1, 1, (n, 1))
    y = 0.5 + 2.0 * x[:, 0] + rng.normal(0, 0.7, n)
    problem = Problem.make(spec, Dataset(x=x, y=y))
    X = np.column_stack([np.ones(n), x])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    s = np.sqrt(np.mean((y - X @ beta) ** 2))
    cov = s**2 * np.linalg.inv(X.T @ X)
    S = 4000
    coef = rng.multivariate_normal(beta, cov, S)
    sig = s * np.exp(rng.normal(0, 1 / np.sqrt(2 * n), S))
    post = {"w": coef[:, 1].reshape(1, S, 1, 1), "b": coef[:, 0].reshape(1, S, 1), "sigma": sig.reshape(1, S),
            "pi": np.ones((1, S, 1))}
    fit = Fit(backend="t", method="advi-fullrank", status="ok", draws=canonical_datatree(spec, post))
    row = evaluate(fit, problem=problem, settings=MetricSettings(loo_max_obs=n))  # every observation
    assert row["loo_method"] == "psis-loo" and row["loo_draws"] == 1000 and row["loo_obs"] == n
    kept = np.unique(np.linspace(0, S - 1, 1000).round().astype(int))
    ll = stats.norm.logpdf(y[None], coef[kept, :1] + coef[kept, 1:] * x[None, :, 0], sig[kept, None])
    is_loo = float(np.sum(-special.logsumexp(-ll, axis=0) + np.log(ll.shape[0])))
    lpd = float(np.sum(special.logsumexp(ll, axis=0) - np.log(ll.shape[0])))
    assert row["elpd_loo"] == pytest.approx(is_loo, abs=0.05)
    assert row["p_loo"] == pytest.approx(lpd - row["elpd_loo"], rel=1e-9)
    assert 2.4 < row["p_loo"] < 3.6
    assert row["loo_khat_max"] < 0.5


def test_approximate_posterior_loo_with_q_equal_to_p_is_plain_loo(problem):
    post = scattered(FORUM.truth, 1, 400, SD, 70)
    plain = evaluate(vi(post), problem=problem)
    const = np.full(400, -3.0)
    weighted = evaluate(vi(post, log_p=const, log_q=const + 1.0), problem=problem)
    assert weighted["loo_method"] == "psis-loo-approximate"
    assert weighted["elpd_loo"] == pytest.approx(plain["elpd_loo"], rel=1e-6)


def test_map_has_no_loo():
    point = {k: np.asarray(v, float) for k, v in FORUM.truth.items()}
    problem = Problem.make(SPEC, FORUM.simulate(1, N=100))
    row = evaluate(Fit(backend="t", method="map", status="ok", point=point), problem=problem)
    assert math.isnan(row["elpd_loo"]) and math.isnan(row["loo_draws"])


def test_large_data_loo_subsamples_observations_and_agrees_with_the_full_estimate():
    """Above loo_max_obs observations elpd_loo comes from a subsample (arviz-stats'
    loo_subsample); on 3000 points it agrees with the full PSIS-LOO within its subsampling se."""
    data = FORUM.simulate(2, N=3000)
    problem = Problem.make(SPEC, Dataset(x=data.x, y=data.y))
    fit = vi(scattered(FORUM.truth, 1, 300, {"w": 0.003, "sigma": 0.0015, "pi": 0.01}, 80))
    full = evaluate(fit, problem=problem, settings=MetricSettings(loo_max_obs=5000))
    sub = evaluate(fit, problem=problem, settings=MetricSettings(loo_max_obs=500))
    assert (full["loo_obs"], sub["loo_obs"]) == (3000, 500)
    assert full["elpd_loo_subsample_se"] == 0.0 and sub["elpd_loo_subsample_se"] > 0
    assert abs(sub["elpd_loo"] - full["elpd_loo"]) < 4 * sub["elpd_loo_subsample_se"] + 1.0


def test_a_map_8_nats_below_the_best_optimum_has_not_reached_the_mode(problem, reference):
    """A point on the reference's mode passes; the same point with one slope moved until its log
    density is 8 nats lower, still well within the chains' 5-sd and 10-nat tolerances, is in
    the right mode but off: biased, not reference, and not another (poorer) mode either."""
    from scipy.optimize import brentq

    ds = reference.draws["posterior"]
    best = int(np.argmax(reference.lp))
    chain, draw = np.unravel_index(best, np.shape(reference.lp))
    top = {n: np.asarray(ds[n].values[chain, draw], float) for n in ds.data_vars}
    on = evaluate(Fit(backend="t", method="map", status="ok", point=top), reference=reference, problem=problem,
                  settings=FAST)
    assert on["mode"] == "reference" and on["chains_biased"] == 0

    top_lp = problem.log_density(top)
    def shifted(delta):
        return {**top, "w": top["w"] + np.array([[delta], [0.0]])}

    low = shifted(brentq(lambda d: problem.log_density(shifted(d)) - (top_lp - 8.0), 0.0, 0.5))
    row = evaluate(Fit(backend="t", method="map", status="ok", point=low), reference=reference, problem=problem,
                   settings=FAST)
    assert row["lp_gap"] == pytest.approx(reference.lp.max() - top_lp + 8.0, abs=1e-6)
    assert row["ref_distance_sd"] < MetricSettings().mode_distance_sd  # the chains' rule would pass it
    assert row["mode"] == "biased" and row["chains_biased"] == 1 and row["chains_below"] == 0
    flags = row["flags"].split(",")
    assert "biased" in flags and "poor-mode" not in flags


def _top_and_8_nats_below(problem, reference):
    """The reference's highest draw, and it with one slope moved until 8 nats lower."""
    from scipy.optimize import brentq

    ds = reference.draws["posterior"]
    chain, draw = np.unravel_index(int(np.argmax(reference.lp)), np.shape(reference.lp))
    top = {n: np.asarray(ds[n].values[chain, draw], float) for n in ds.data_vars}
    top_lp = problem.log_density(top)

    def shifted(delta):
        return {**top, "w": top["w"] + np.array([[delta], [0.0]])}

    return top, shifted(brentq(lambda d: problem.log_density(shifted(d)) - (top_lp - 8.0), 0.0, 0.5))


def test_a_laplace_mode_is_judged_as_a_point_beside_its_draws(problem, reference):
    """Laplace draws around the reference's mode land there as draws; their mode is judged as MAP
    is: at the reference's highest draw it is reference, 8 nats below it is biased (flagged), while
    the draws stay in the reference's mode."""
    top, low = _top_and_8_nats_below(problem, reference)
    draws = scattered(FORUM.truth, 1, 400, SD, seed=7)
    rows = {name: evaluate(Fit(backend="t", method="laplace", status="ok", draws=canonical_datatree(SPEC, draws),
                               point=point, point_log_density=problem.log_density(point)),
                           reference=reference, problem=problem, settings=FAST)
            for name, point in (("top", top), ("low", low))}
    for row in rows.values():
        assert row["mode"] == "reference" and row["chains_biased"] == 0
    assert rows["top"]["point_mode"] == "reference" and "biased" not in rows["top"]["flags"].split(",")
    assert rows["low"]["point_mode"] == "biased" and "biased" in rows["low"]["flags"].split(",")
    assert rows["low"]["point_lp_gap"] == pytest.approx(reference.lp.max() - problem.log_density(low), abs=1e-6)
    assert rows["low"]["point_lp"] == pytest.approx(problem.log_density(top) - 8.0, abs=1e-6)


def test_a_map_8_nats_below_another_fits_optimum_has_not_reached_the_mode(problem, reference):
    """Against the reference's highest draw both MAPs pass (a reference three times too wide, its
    draws above the lower point left out: as a poor reference would); in the report, the one 8 nats
    below the other backend's optimum is biased. A degenerate fit's higher optimum and another data
    set's rows do not count."""
    import pandas as pd
    import xarray as xr

    from bench.report.findings import setup_findings
    from bench.report.tables import assign_fit_ids, fit_summary
    from bench.score.landing import points_against_best_optimum

    top, low = _top_and_8_nats_below(problem, reference)
    post = scattered(FORUM.truth, 1, 4000, {k: 3 * v for k, v in SD.items()}, seed=5)
    lp, _ = problem.draw_log_densities(canonical_datatree(SPEC, post), per_chain=4000)
    keep = lp[0] <= problem.log_density(low)
    flat = {n: v[:, keep] for n, v in post.items()}
    lower = Reference(xr.DataTree.from_dict({"posterior": canonical_datatree(SPEC, flat)["posterior"].to_dataset(),
                                             "sample_stats": xr.Dataset({"lp": (("chain", "draw"), lp[:, keep])})}),
                      {"name": "wide", "accepted": True})
    rows = [{**evaluate(Fit(backend=b, method="map", status="ok", point=p, point_log_density=problem.log_density(p)),
                        reference=lower, problem=problem, settings=FAST),
             "scenario": "forum", "setup": "default", "backend": b, "method": "map", "seed": 0, "status": "ok"}
            for b, p in (("a", top), ("b", low))]
    assert rows[0]["mode"] == rows[1]["mode"] == "reference"  # per fit: within 2 nats and 2 sds of it
    spike = {**rows[0], "backend": "c", "point_lp": rows[0]["point_lp"] + 50.0, "flags": "degenerate-component"}
    elsewhere = {**rows[1], "setup": "other data"}
    frame = points_against_best_optimum(pd.DataFrame(rows + [spike, elsewhere]), MetricSettings().point_lp_gap_nats)
    a, b, c, other = (frame.iloc[i] for i in range(4))
    assert a["mode"] == "reference" and a["point_gap_best"] == 0.0
    assert b["point_gap_best"] == pytest.approx(8.0, abs=1e-6) and b["point_best"] == "a / map seed 0"
    assert b["mode"] == "biased" and b["point_mode"] == "biased" and "biased" in b["flags"].split(",")
    assert (b["chains_on_target"], b["chains_biased"]) == (0, 1)
    assert c["point_gap_best"] == pytest.approx(-50.0)  # higher, but not the best optimum
    assert other["mode"] == "reference" and other["point_gap_best"] == 0.0  # alone on its data
    fits = fit_summary(assign_fit_ids(frame[frame["setup"] == "default"]))
    text = " ".join(s.text for s in setup_findings(fits).sentences)
    assert "Reached the reference posterior's mode on every seed: a / map" in text
    assert "b / map (1 of 1 seeds; its point up to 8 nats below the best optimum any fit of these data found " \
           "(a / map seed 0))" in text
