"""Softmax mixing weights (a mixture of experts) and shared intercepts: the oracle by hand, the
reference category under relabelling, the family axes (outliers, gate) and the sweep's
overrides; the prior check and the Stan formulations under the variants. The three backends' densities against the oracle are tests/test_models.py and
tests/test_log_density.py over conftest's VARIANT_SPECS."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from models import MixbenchError, MixtureSpec, NormalPrior, SigmaPrior, get_scenario, log_likelihood, log_prior
from models.families import FamilyPoint, parse_point


def test_two_component_softmax_weights_are_a_logistic_regression():
    """K = 2: pi_0(x) = expit(gamma_00 + x . gamma_0[1:]), the reference row 0; the prior counts
    only the free row, Normal(0, 2.5) by default."""
    spec = MixtureSpec(K=2, D=2, intercept=True, sigma="per-component", weights="softmax")
    assert spec.gamma_prior == NormalPrior(0.0, 2.5) and "pi" not in spec.param_shapes()
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(25, 2))
    y = rng.normal(size=25)
    gamma = np.array([[0.4, -1.5, 2.0], [0.0, 0.0, 0.0]])
    params = {"w": np.array([[1.0, 0.5], [-1.0, 0.2]]), "b": np.array([0.3, -0.2]), "sigma": np.array([0.5, 0.9]),
              "gamma": gamma}
    p0 = special.expit(gamma[0, 0] + x @ gamma[0, 1:])
    mu = x @ params["w"].T + params["b"]
    dens = p0 * stats.norm.pdf(y, mu[:, 0], 0.5) + (1 - p0) * stats.norm.pdf(y, mu[:, 1], 0.9)
    assert log_likelihood(spec, x, y, params) == pytest.approx(np.log(dens).sum(), rel=1e-12)
    expected_prior = (stats.norm.logpdf(gamma[0], 0, 2.5).sum() + stats.norm.logpdf(params["w"], 0, 2).sum()
                      + stats.norm.logpdf(params["b"], 0, 2).sum() + stats.uniform.logpdf(params["sigma"]).sum())
    assert log_prior(spec, params) == pytest.approx(expected_prior, rel=1e-12)
    off_reference = {**params, "gamma": gamma + np.array([[0.0], [0.1]])}
    assert log_prior(spec, off_reference) == -np.inf


def test_softmax_likelihood_is_unchanged_by_a_shift_of_every_row():
    """Why a reference row is needed: adding one vector to every row leaves pi(x) unchanged."""
    spec = MixtureSpec(K=3, D=1, weights="softmax")
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-1, 1, size=(20, 1)), rng.normal(size=20)
    gamma = np.vstack([rng.normal(size=(2, 2)), np.zeros((1, 2))])
    point = {"w": rng.normal(size=(3, 1)), "sigma": np.array(0.7), "gamma": gamma}
    from models.oracle import log_likelihood_terms

    shifted = {**point, "gamma": gamma + np.array([0.8, -0.3])}
    np.testing.assert_allclose(log_likelihood_terms(spec, x, y, shifted), log_likelihood_terms(spec, x, y, point),
                               rtol=1e-12)


def test_shared_intercepts_count_their_prior_once_and_need_equal_entries():
    spec = MixtureSpec(K=3, D=1, intercept=True, shared="intercepts")
    params = {"w": np.array([[1.0], [-1.0], [0.5]]), "b": np.full(3, 0.4), "sigma": np.array(0.6),
              "pi": np.array([0.2, 0.3, 0.5])}
    expected = (stats.dirichlet.logpdf(params["pi"], np.ones(3)) + stats.norm.logpdf(params["w"], 0, 2).sum()
                + stats.norm.logpdf(0.4, 0, 2) + stats.uniform.logpdf(0.6))
    assert log_prior(spec, params) == pytest.approx(expected, rel=1e-12)
    params["b"][2] += 1e-3
    assert log_prior(spec, params) == -np.inf


@pytest.mark.parametrize("fields, message", [
    ({"weights": "logistic"}, "weights: must be one of dirichlet, softmax"),
    ({"shared": "intercepts"}, "shared: 'intercepts' needs intercepts: --intercept, or intercept = true in a spec file"),
    ({"shared": "intercepts", "intercept": True, "ordering": "intercept"}, "cannot order components"),
    ({"weights": "softmax", "likelihood": "forum-original"}, "replays the forum's normal mixture"),
    ({"weights": "softmax", "gamma_prior": {"mu": 0.0, "sigma": -1.0}}, "Normal prior sigma"),
    ({"weights": "softmax", "gamma_prior": {"mu": 0.0, "sd": 1.0}}, "gamma_prior: unknown key"),
])
def test_bad_variant_fields_are_refused_in_one_line(fields, message):
    with pytest.raises(MixbenchError, match=message):
        MixtureSpec.from_dict({"K": 2, "D": 1, **fields})


def test_spec_file_fields_round_trip_and_old_specs_keep_their_identity():
    spec = MixtureSpec(K=2, D=1, intercept=True, weights="softmax", shared="intercepts",
                       gamma_prior=NormalPrior(0.5, 1.0))
    assert MixtureSpec.from_dict(spec.to_dict()) == spec
    assert "weights" not in MixtureSpec(K=2, D=1).to_dict() and "gamma_prior" not in MixtureSpec().to_dict()


def test_relabelling_softmax_weights_re_references_gamma():
    """Half the draws carry the swapped labelling, whose gamma is the truth's rows swapped and
    re-referenced (gamma'_k = gamma_p(k) - gamma_p(K)): relabelling finds the permutation from
    the centred rows and returns the truth's gamma, reference row 0."""
    from backends.base import canonical_datatree
    from bench.score.relabel import relabel

    spec = MixtureSpec(K=2, D=1, intercept=True, sigma="per-component", weights="softmax")
    truth = {"w": np.array([[3.0], [-1.0]]), "b": np.array([0.0, 0.5]), "sigma": np.array([0.1, 0.3]),
             "gamma": np.array([[0.5, 2.0], [0.0, 0.0]])}
    rng = np.random.default_rng(2)
    n = 200
    post = {name: np.broadcast_to(value, (1, n, *value.shape)).copy() for name, value in truth.items()}
    post["w"] += rng.normal(0, 0.02, size=(1, n, 2, 1))
    post["gamma"][:, :, 0] += rng.normal(0, 0.1, size=(1, n, 2))
    swapped = rng.random(n) < 0.5
    for name in ("w", "b", "sigma", "gamma"):
        post[name][0, swapped] = post[name][0, swapped][:, ::-1]
    post["gamma"] -= post["gamma"][:, :, -1:]  # every draw in the reference-last form
    assert np.all(post["gamma"][0, swapped, 0] < 0)
    result = relabel(canonical_datatree(spec, post), truth)
    assert np.all(result.permutations[0, swapped] == [1, 0])
    assert np.all(result.permutations[0, ~swapped] == [0, 1])
    gamma = result.draws["posterior"]["gamma"].values
    assert np.all(gamma[0, :, 1] == 0)
    np.testing.assert_allclose(gamma[0, :, 0].mean(axis=0), truth["gamma"][0], atol=0.03)


def test_family_axes_outliers_and_gate_spell_their_names_and_truth():
    old = parse_point("lines-K2-D1-sep2-wmin0.5-sr1")
    assert old.outliers == 0 and old.gate == 0 and old.name == "lines-K2-D1-sep2-wmin0.5-sr1"
    point = FamilyPoint(K=3, sep=4, w_min=0.2, outliers=0.1, gate=2.0)
    assert point.name == "lines-K3-D1-sep4-wmin0.2-sr1-out0.1-gate2"
    assert parse_point(point.name) == point and point.spec.weights == "softmax"
    gamma = point.truth["gamma"]
    np.testing.assert_allclose(gamma[:, 1], [2.0, 1.0, 0.0])
    np.testing.assert_allclose(special.softmax(gamma[:, 0]), point.weights)  # the weights at x = 0
    data = get_scenario(point.name).simulate(0, N=2000)
    assert np.sum(data.y >= 8) == 200  # the outliers, y ~ U(8, 12)
    with pytest.raises(MixbenchError, match="outliers: must lie in"):
        FamilyPoint(outliers=0.7)


def test_gated_family_data_follow_the_softmax_weights():
    """Simulated labels against pi_0(x) = expit(gamma_00 + gate x): the share of component 0
    among points with x > 0 and x < 0 matches the weights' averages to 3 binomial sds."""
    point = FamilyPoint(K=2, sep=8, gate=3.0)
    data = get_scenario(point.name).simulate(1, N=4000)
    x = data.x[:, 0]
    near_0 = np.abs(data.y - point.truth["w"][0, 0] * x) < np.abs(data.y - point.truth["w"][1, 0] * x)
    for side in (x > 0, x < 0):
        expected = special.expit(3.0 * x[side]).mean()
        sd = np.sqrt(expected * (1 - expected) / side.sum())
        assert abs(near_0[side].mean() - expected) < 3 * sd + 0.01


def test_sweep_lines_override_errors_nu_and_weights():
    from bench.run.sweep import parse_method_line, sweep_points

    line = parse_method_line("nuts:errors=student-t;nu=gamma:2,0.1", ("nuts",))
    assert line.spec == {"errors": "student-t", "nu": {"shape": 2.0, "rate": 0.1}}
    points = sweep_points({"outliers": [0.0, 0.05]})
    assert [p.outliers for p, _ in points] == [0.0, 0.05]
    spec = points[1][0].spec.overridden(line.spec)
    assert spec.errors == "student-t" and spec.nu_is_parameter


def test_prior_check_reads_t_error_data_robustly():
    """Ten gross outliers in 200 points inflate sd(y) past 5 prior-predictive sds of tight
    priors: flagged under normal errors, not under Student-t errors (median and MAD), whose
    noise reach is widened by t_nu's 95% quantile over the normal's."""
    from models import Dataset
    from models.prior_check import error_widening, prior_scale_problems

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(200, 1))
    y = 0.3 * x[:, 0] + 0.05 * rng.standard_normal(200)
    y[:10] = rng.uniform(8, 12, size=10)
    tight = MixtureSpec(K=2, D=1, intercept=True, slope_prior=NormalPrior(0, 0.3), intercept_prior=NormalPrior(0, 0.1),
                        sigma_prior=SigmaPrior("halfnormal", 0.1))
    data = Dataset(x=x, y=y)
    assert any("sd" in p for p in prior_scale_problems(tight, data))
    robust = tight.with_(errors="student-t", nu=4.0)
    assert prior_scale_problems(robust, data) == []
    assert error_widening(robust) == pytest.approx(stats.t.ppf(0.95, 4) / stats.norm.ppf(0.95))
    assert error_widening(robust.with_(nu=None)) == pytest.approx(
        stats.t.ppf(0.95, stats.gamma.ppf(0.1, 2, scale=10)) / stats.norm.ppf(0.95))


def test_stan_formulations_refuse_what_they_cannot_state():
    from bench.experiments.stan_formulations import check_formulation_spec

    check_formulation_spec(MixtureSpec(K=2, D=1, sigma_prior=SigmaPrior("halfnormal", 1.0)))
    with pytest.raises(MixbenchError, match="this spec has sigma prior gamma, errors student-t, weights softmax"):
        check_formulation_spec(MixtureSpec(K=2, D=1, sigma_prior=SigmaPrior("gamma", 1.0), errors="student-t",
                                           weights="softmax"))


def test_a_student_t_line_on_normal_error_data_keeps_the_truth_without_nu():
    """A sweep line errors=student-t (nu a parameter) on the outliers axis: the cell's data keep
    the simulated truth, with no nu to score, so the fit can land on the truth's lines."""
    from bench.run.harness import Cell, load_cell_data

    spec, data = load_cell_data(Cell(scenario="lines-K2-D1-sep6-wmin0.5-sr1-out0.05", backend="numpyro",
                                     method="nuts", spec={"errors": "student-t"}, n=200))
    assert spec.nu_is_parameter and set(data.truth) == {"w", "sigma", "pi"}
    data.check_against(spec)
    with pytest.raises(MixbenchError, match="do not match"):
        type(data)(x=data.x, y=data.y, truth={"w": data.truth["w"], "sigma": data.truth["sigma"]}).check_against(spec)
