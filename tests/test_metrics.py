"""The metrics layer on hand-built draws with known answers: no backend involved."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from backends.base import Fit, canonical_datatree
from bench.score.columns import ROW_FIELDS
from bench.score.metrics import (
    count_switches,
    evaluate,
    khat_label,
    label_switching,
    psis_khat,
    recovery,
    wasserstein_marginals,
)
from bench.score.relabel import perm_codes, relabel
from bench.score.settings import MetricSettings
from models.scenarios import get_scenario

FORUM = get_scenario("forum-small")  # K = 2, D = 1, shared sigma: slopes 3 / -1, sigma 0.1
LINES = get_scenario("three-lines")  # K = 3, D = 2, intercepts, per-component sigma
COMPONENT_PARAMS = ("w", "b", "pi")  # sigma too when it has a component axis


def noisy(scenario, chains=2, draws=400, sd=0.01, seed=0, **overrides):
    """Draws scattered (iid, sd) around the truth, or around ``overrides`` where given."""
    rng = np.random.default_rng(seed)
    centre = {**scenario.truth, **{k: np.asarray(v, dtype=float) for k, v in overrides.items()}}
    return {k: v[None, None] + sd * rng.standard_normal((chains, draws) + v.shape) for k, v in centre.items()}


def permute(post, chain, draws, perm):
    """Store the components of ``draws`` of ``chain`` in the order ``perm`` (fit j = before perm[j])."""
    perm = np.asarray(perm)
    for name, arr in post.items():
        if name in COMPONENT_PARAMS or (name == "sigma" and arr.ndim == 3):
            arr[chain, draws] = arr[chain, draws][:, perm]
    return post


def tree(scenario, post, **stats_):
    return canonical_datatree(scenario.spec, post, stats_ or None)


def nuts_fit(draws, **kw):
    kw.setdefault("timings", {"compile": 1.0, "warmup": 3.0, "sampling": 2.0, "extraction": 0.1})
    return Fit(backend="test", method="nuts", status="ok", engine="hand", draws=draws, seed=1, **kw)


def vi_fit(draws, **kw):
    kw.setdefault("timings", {"compile": 1.0, "optimisation": 4.0, "extraction": 0.1})
    return Fit(backend="test", method="advi-meanfield", status="ok", engine="hand", draws=draws, **kw)


# --------------------------------------------------------------------------------------------
# Relabelling


def test_relabel_recovers_every_draws_permutation():
    rng = np.random.default_rng(3)
    C, D = 2, 50
    stored = np.array([rng.permutation(3) for _ in range(C * D)]).reshape(C, D, 3)
    post = {k: np.broadcast_to(v, (C, D) + v.shape).copy() for k, v in LINES.truth.items()}
    for c in range(C):
        for d in range(D):
            permute(post, c, [d], stored[c, d])
    rel = relabel(tree(LINES, post), LINES.truth)
    # Fit component j holds truth component stored[j]; truth k is therefore played by argsort.
    np.testing.assert_array_equal(rel.permutations, np.argsort(stored, axis=-1))
    ds = rel.draws["posterior"]
    for name, value in LINES.truth.items():
        np.testing.assert_allclose(ds[name].values, np.broadcast_to(value, ds[name].shape))
    assert rel.nonfinite_draws == 0


def test_relabel_keeps_shared_sigma_and_sample_stats():
    post = permute(noisy(FORUM, chains=1, draws=10), 0, slice(None), [1, 0])
    raw = tree(FORUM, post, lp=np.arange(10.0)[None])
    rel = relabel(raw, FORUM.truth)
    np.testing.assert_array_equal(rel.draws["posterior"]["sigma"].values, raw["posterior"]["sigma"].values)
    np.testing.assert_array_equal(rel.draws["sample_stats"]["lp"].values, np.arange(10.0)[None])
    assert (rel.permutations == [1, 0]).all()


def test_a_shared_sigma_truth_serves_per_component_draws():
    spec = LINES.spec.with_(sigma="per-component")
    truth = {**LINES.truth, "sigma": np.array(0.15)}
    post = {k: np.broadcast_to(v, (1, 5) + v.shape).copy() for k, v in LINES.truth.items()}
    post["sigma"][:] = 0.15
    permute(post, 0, slice(None), [1, 2, 0])
    draws = canonical_datatree(spec, post)
    rel = relabel(draws, truth)
    assert (rel.permutations == [2, 0, 1]).all()
    row = evaluate(nuts_fit(draws), truth=truth)
    assert row["sigma_err_max"] == pytest.approx(0.0) and row["w_err_max"] == pytest.approx(0.0)


def test_draws_with_nan_are_counted_and_left_alone():
    post = noisy(FORUM, chains=1, draws=10)
    post["w"][0, 3, 1, 0] = np.nan
    rel = relabel(tree(FORUM, post), FORUM.truth)
    assert rel.nonfinite_draws == 1
    assert (rel.permutations[0, 3] == [0, 1]).all()


# --------------------------------------------------------------------------------------------
# Label switching


def test_count_switches_on_codes():
    a, b = [0] * 30, [1] * 30
    assert count_switches(np.array(a + b + a + b), 20) == 3
    assert count_switches(np.array(a * 4), 20) == 0
    # A blip shorter than the persistence setting is dropped; the runs around it merge.
    assert count_switches(np.array(a + [1] + a), 20) == 0
    assert count_switches(np.array(a + [1] * 19 + a), 20) == 0
    assert count_switches(np.array(a + [1] * 20 + a), 20) == 2


def test_chain_with_three_switches_reports_three_and_a_steady_chain_none():
    post = noisy(FORUM, chains=2, draws=400)
    for segment in (slice(100, 200), slice(300, 400)):
        permute(post, 0, segment, [1, 0])
    row = evaluate(nuts_fit(tree(FORUM, post)), truth=FORUM.truth)
    assert row["label_switches"] == 3
    assert row["chains_switching"] == 1
    assert row["off_majority_frac"] == pytest.approx(200 / 800)
    assert row["mode"] == "truth"
    # Relabelled, the switching chain recovers the truth; raw, its components are smeared.
    assert row["w_err_max"] < 0.01 and row["w_err_max_raw"] > 1.0

    steady = evaluate(nuts_fit(tree(FORUM, noisy(FORUM))), truth=FORUM.truth)
    assert steady["label_switches"] == 0 and steady["chains_switching"] == 0
    assert steady["off_majority_frac"] == 0.0


def test_one_draw_blip_is_not_a_switch():
    post = permute(noisy(FORUM, chains=1, draws=400), 0, [200], [1, 0])
    row = evaluate(nuts_fit(tree(FORUM, post)), truth=FORUM.truth)
    assert row["label_switches"] == 0
    assert row["off_majority_frac"] == pytest.approx(1 / 400)


def test_persistence_setting_decides_what_counts():
    post = permute(noisy(FORUM, chains=1, draws=400), 0, slice(200, 210), [1, 0])
    fit = nuts_fit(tree(FORUM, post))
    assert evaluate(fit, truth=FORUM.truth)["label_switches"] == 0
    shorter = MetricSettings(switch_min_draws=10)
    assert evaluate(fit, truth=FORUM.truth, settings=shorter)["label_switches"] == 2


def test_chains_in_opposite_labellings_disagree():
    post = permute(noisy(FORUM, chains=3, draws=400), 1, slice(None), [1, 0])
    row = evaluate(nuts_fit(tree(FORUM, post)), truth=FORUM.truth)
    assert row["chains_disagree"] is True
    assert row["chains_off_majority"] == 1
    assert row["permutation"] == "0,1"
    assert row["label_switches"] == 0
    assert row["mode"] == "truth" and row["chains_on_target"] == 3
    # R-hat sees the disagreement on raw draws only.
    assert row["rhat_max_raw"] > 1.5  # rank-normalised R-hat saturates well below the raw ratio
    assert row["rhat_max"] < 1.02

    agree = evaluate(nuts_fit(tree(FORUM, noisy(FORUM, chains=3))), truth=FORUM.truth)
    assert agree["chains_disagree"] is False and agree["chains_off_majority"] == 0


def test_majority_labelling_of_a_three_component_chain():
    post = permute(noisy(LINES, chains=2, draws=100), 1, slice(None), [2, 0, 1])
    sw = label_switching(relabel(tree(LINES, post), LINES.truth).permutations, 20)
    assert sw.chain_majority == ["0,1,2", "1,2,0"]
    assert sw.chains_disagree


# --------------------------------------------------------------------------------------------
# Recovery


def test_draws_equal_to_a_permutation_of_the_truth_recover_it_exactly():
    post = {k: np.broadcast_to(v, (2, 20) + v.shape).copy() for k, v in LINES.truth.items()}
    permute(post, 0, slice(None), [2, 0, 1])
    permute(post, 1, slice(None), [1, 2, 0])
    row = evaluate(nuts_fit(tree(LINES, post)), truth=LINES.truth)
    for f in ("w", "b", "sigma", "pi"):
        assert row[f"{f}_err_max"] == pytest.approx(0.0, abs=1e-12)
        assert row[f"{f}_rmse"] == pytest.approx(0.0, abs=1e-12)
        assert row[f"{f}_coverage"] == 1.0
        assert row[f"{f}_err_max_raw"] > 0.0
    assert row["mode"] == "truth"


def test_recovery_numbers_on_known_draws():
    # Slopes drawn at exactly truth + 0.2 and truth - 0.2 (half each): mean error 0, RMSE 0.2.
    post = {k: np.broadcast_to(v, (1, 100) + v.shape).copy() for k, v in FORUM.truth.items()}
    post["w"][0, :50] += 0.2
    post["w"][0, 50:] -= 0.2
    post["sigma"][0] += 0.05
    out = recovery(tree(FORUM, post), FORUM.truth, interval_prob=0.9)
    assert out["w_err_max"] == pytest.approx(0.0, abs=1e-12)
    assert out["w_rmse"] == pytest.approx(0.2)
    assert out["w_coverage"] == 1.0
    assert out["sigma_err_max"] == pytest.approx(0.05)
    assert out["sigma_coverage"] == 0.0
    assert math.isnan(out["b_err_max"])  # no intercepts in this spec


# --------------------------------------------------------------------------------------------
# Modes


def test_good_fit_in_swapped_labels_is_the_truth_with_its_permutation():
    post = permute(noisy(FORUM, chains=1, draws=300), 0, slice(None), [1, 0])
    row = evaluate(vi_fit(tree(FORUM, post)), truth=FORUM.truth)
    assert row["mode"] == "truth"
    assert row["permutation"] == "1,0"
    assert row["chains_on_target"] == 1


def test_equal_slopes_are_collapsed():
    post = noisy(FORUM, chains=1, draws=300, w=[[1.0], [1.0]], sigma=0.9)
    assert evaluate(vi_fit(tree(FORUM, post)), truth=FORUM.truth)["mode"] == "collapsed"


def test_wide_coinciding_components_are_collapsed():
    # The forum failure: both slopes about 0.6 +- 0.8. Relabelling sorts each draw's slopes and
    # pushes their means apart by about one sd; the sd-scaled tolerance still sees one component.
    post = noisy(FORUM, chains=1, draws=1000, sd=0.8, seed=2, w=[[0.6], [0.6]])
    post["sigma"] = np.full((1, 1000), 0.88)
    post["pi"] = np.broadcast_to([0.5, 0.5], (1, 1000, 2)).copy()
    assert evaluate(vi_fit(tree(FORUM, post)), truth=FORUM.truth)["mode"] == "collapsed"


def test_an_emptied_component_is_collapsed():
    post = noisy(FORUM, chains=1, draws=300, sd=0.001, pi=[0.995, 0.005])
    assert evaluate(vi_fit(tree(FORUM, post)), truth=FORUM.truth)["mode"] == "collapsed"


def test_distinct_components_in_the_wrong_place_are_other():
    post = noisy(FORUM, chains=1, draws=300, w=[[3.0], [1.0]])
    row = evaluate(vi_fit(tree(FORUM, post)), truth=FORUM.truth)
    assert row["mode"] == "other"
    assert row["permutation"] == "0,1"


def test_chains_in_different_modes_are_mixed():
    good = noisy(FORUM, chains=1, draws=300)
    flat = noisy(FORUM, chains=1, draws=300, seed=1, w=[[1.0], [1.0]])
    post = {k: np.concatenate([good[k], flat[k]]) for k in good}
    row = evaluate(nuts_fit(tree(FORUM, post)), truth=FORUM.truth)
    assert row["mode"] == "mixed"
    assert (row["chains_on_target"], row["chains_collapsed"], row["chains_other"]) == (1, 1, 0)


def test_without_truth_chains_are_compared_to_the_map_pivot():
    post = permute(noisy(FORUM, chains=2, draws=300), 1, slice(None), [1, 0])
    lp = np.zeros((2, 300))
    lp[1, 17] = 5.0  # the MAP draw sits in chain 1, whose labels are swapped
    row = evaluate(nuts_fit(tree(FORUM, post, lp=lp)))
    assert row["reference_source"] == "map"
    assert row["mode"] == "reference"
    assert row["chains_disagree"] is True
    assert {row["permutation"]} <= {"0,1", "1,0"}
    # The MAP draw's weights sit off 0.5 by noise; relabelling must still follow the slopes in
    # every draw (a cost on pooled scales alone lets the weights' noise flip about 1 draw in 7).
    assert row["off_majority_frac"] == 0.0
    assert math.isnan(row["w_err_max"])  # no truth, no recovery
    # Without lp the pivot falls back to chain 0's mean.
    assert evaluate(nuts_fit(tree(FORUM, post)))["reference_source"] == "chain0"


# --------------------------------------------------------------------------------------------
# Efficiency


def test_ess_of_independent_draws_is_close_to_their_number():
    n = 4 * 1000
    row = evaluate(nuts_fit(tree(FORUM, noisy(FORUM, chains=4, draws=1000, seed=5)), grad_evals=40_000),
                   truth=FORUM.truth)
    for f in ("w", "sigma", "pi"):
        assert 0.8 * n < row[f"{f}_ess_bulk"] < 1.25 * n
        assert 0.8 * n < row[f"{f}_ess_tail"] < 1.25 * n
    assert 0.8 * n < row["ess_bulk_min"] <= row["w_ess_bulk"]
    assert row["ess_bulk_per_s"] == pytest.approx(row["ess_bulk_min"] / 2.0)
    assert row["ess_tail_per_s"] == pytest.approx(row["ess_tail_min"] / 2.0)
    assert row["ess_bulk_per_grad"] == pytest.approx(row["ess_bulk_min"] / 40_000)
    assert row["w_ess_bulk_per_s"] == pytest.approx(row["w_ess_bulk"] / 2.0)
    assert math.isnan(row["b_ess_bulk"])
    assert row["rhat_max"] < 1.01


def test_rhat_is_large_for_chains_on_different_values():
    a = noisy(FORUM, chains=1, draws=500, seed=1)
    b = noisy(FORUM, chains=1, draws=500, seed=2, w=[[3.5], [-0.5]])
    post = {k: np.concatenate([a[k], b[k]]) for k in a}
    row = evaluate(nuts_fit(tree(FORUM, post)), truth=FORUM.truth)
    assert row["rhat_max"] > 1.5
    assert row["chains_disagree"] is False  # same labelling, different places


def test_efficiency_needs_sampling_time_and_gradients_to_be_known():
    fit = nuts_fit(tree(FORUM, noisy(FORUM)), timings={"compile": 1.0})
    row = evaluate(fit, truth=FORUM.truth)
    assert row["ess_bulk_min"] > 0
    assert math.isnan(row["ess_bulk_per_s"]) and math.isnan(row["ess_bulk_per_grad"])


def test_divergences_come_from_the_fit_or_the_sample_stats():
    diverging = np.zeros((2, 400), bool)
    diverging[0, :7] = True
    draws = tree(FORUM, noisy(FORUM), diverging=diverging)
    assert evaluate(nuts_fit(draws))["divergences"] == 7
    assert evaluate(nuts_fit(draws, divergences=3))["divergences"] == 3


# --------------------------------------------------------------------------------------------
# Approximation quality


def _khat(q_sd, n=2000, seed=0, offset=0.0):
    x = np.random.default_rng(seed).normal(0.0, q_sd, n)
    return psis_khat(stats.norm.logpdf(x) + offset, stats.norm.logpdf(x, 0.0, q_sd))


def test_khat_is_low_when_q_is_p():
    assert _khat(1.0) == -math.inf
    assert _khat(1.0, offset=-12.3) == -math.inf  # an unnormalised log p changes nothing
    assert _khat(1.2) < 0.5  # slightly wider q: bounded weights
    assert khat_label(_khat(1.0)) == "good"


def test_khat_is_high_when_q_is_far_too_narrow():
    # For q = N(0, s^2) against p = N(0, 1) the weights' tail index gives k = 1 - s^2.
    k = _khat(0.2)
    assert k > 0.7
    assert khat_label(k) == "bad"


def test_khat_labels_follow_the_settings():
    settings = MetricSettings(khat_good=0.5, khat_bad=0.7)
    assert [khat_label(k, settings) for k in (0.2, 0.5, 0.69, 0.7, 1.3)] == ["good", "ok", "ok", "bad", "bad"]
    assert math.isnan(khat_label(float("nan"), settings))


def test_khat_reaches_the_row_of_a_vi_fit():
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 0.2, 1000)
    fit = vi_fit(tree(FORUM, noisy(FORUM, chains=1, draws=1000)),
                 log_p=stats.norm.logpdf(x), log_q=stats.norm.logpdf(x, 0.0, 0.2))
    row = evaluate(fit, truth=FORUM.truth)
    assert row["khat"] == pytest.approx(psis_khat(fit.log_p, fit.log_q))
    assert row["khat_label"] == "bad"
    assert math.isnan(row["ess_bulk_min"]) and math.isnan(row["label_switches"])


def test_wasserstein_of_identical_draws_is_zero_and_of_shifted_draws_the_shift():
    post = noisy(FORUM, chains=1, draws=500, sd=0.05)
    ref = tree(FORUM, post)
    same = wasserstein_marginals(ref, ref)
    assert all(v == pytest.approx(0.0, abs=1e-12) for k, v in same.items() if not math.isnan(v) and "floor" not in k)
    shifted = {k: v.copy() for k, v in post.items()}
    shifted["w"] = shifted["w"] + 0.5
    out = wasserstein_marginals(tree(FORUM, shifted), ref)
    assert out["w_w1_max"] == pytest.approx(0.5) and out["w_w1_mean"] == pytest.approx(0.5)
    assert out["sigma_w1_max"] == pytest.approx(0.0, abs=1e-12)


def test_wasserstein_relabels_the_reference_like_the_fit():
    # The reference sits in swapped labels; relabelled, it matches the fit exactly.
    post = noisy(FORUM, chains=1, draws=500, sd=0.05)
    reference = tree(FORUM, permute({k: v.copy() for k, v in post.items()}, 0, slice(None), [1, 0]))
    row = evaluate(vi_fit(tree(FORUM, post)), truth=FORUM.truth, reference=reference)
    assert row["w_w1_max"] == pytest.approx(0.0, abs=1e-12)
    assert row["pi_w1_mean"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------
# The row


PLAIN = (str, int, float, bool)


def _check_row(row):
    assert list(row) == list(ROW_FIELDS)
    assert all(isinstance(v, PLAIN) for v in row.values()), {k: type(v) for k, v in row.items()}


def test_row_has_every_documented_key_and_only_those():
    rows = [
        evaluate(nuts_fit(tree(FORUM, noisy(FORUM))), truth=FORUM.truth),
        evaluate(vi_fit(tree(LINES, noisy(LINES, chains=1))), truth=LINES.truth),
        evaluate(Fit(backend="test", method="map", status="ok", point=FORUM.truth), truth=FORUM.truth),
        evaluate(Fit(backend="test", method="pathfinder", status="unsupported", reason="not here")),
    ]
    for row in rows:
        _check_row(row)
    assert all(isinstance(text, str) and text for text in ROW_FIELDS.values())
    frame = pd.DataFrame(rows)
    assert list(frame.columns) == list(ROW_FIELDS)


def test_an_unsupported_fit_gives_its_status_and_nans():
    row = evaluate(Fit(backend="stan", method="pathfinder", status="unsupported", reason="no pathfinder"),
                   truth=FORUM.truth)
    assert (row["status"], row["reason"], row["backend"], row["method"]) == \
        ("unsupported", "no pathfinder", "stan", "pathfinder")
    identity = {"status", "reason", "backend", "method", "precision"}
    assert all(isinstance(v, float) and math.isnan(v) for k, v in row.items() if k not in identity)


def test_a_map_point_is_evaluated_as_one_draw():
    point = {"w": np.array([[-1.0], [3.0]]), "sigma": np.array(0.1), "pi": np.array([0.5, 0.5])}
    row = evaluate(Fit(backend="test", method="map", status="ok", point=point), truth=FORUM.truth)
    assert (row["mode"], row["permutation"]) == ("truth", "1,0")
    assert row["w_err_max"] == pytest.approx(0.0)
    assert math.isnan(row["w_coverage"])  # one draw has no interval


def test_settings_are_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MetricSettings().switch_min_draws = 3
    with pytest.raises(ValueError, match="interval_prob"):
        MetricSettings(interval_prob=1.5)
    with pytest.raises(ValueError, match="switch_min_draws"):
        MetricSettings(switch_min_draws=0)
    with pytest.raises(ValueError, match="khat_good"):
        MetricSettings(khat_good=0.8, khat_bad=0.7)


def test_perm_codes_order_the_identity_first():
    perms = np.array([[[0, 1, 2], [2, 1, 0], [1, 0, 2]]])
    codes = perm_codes(perms)
    assert codes[0, 0] == codes.min()
    assert len(set(codes.ravel().tolist())) == 3


def test_khat_is_infinite_when_one_draw_carries_all_the_weight():
    from bench.score.metrics import psis_khat

    rng = np.random.default_rng(0)
    log_q = np.zeros(1000)
    log_p = rng.normal(0.0, 20000.0, 1000)  # a full-data posterior against a far too wide q
    assert psis_khat(log_p, log_q) == np.inf
