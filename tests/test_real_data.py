"""The issue's cases on real fits, each against a right value computed independently (EM from
several starts for the maximum likelihood estimate, the oracle's log density at it).

Fast by default (small N, short runs); the long ones are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends import get_backend
from backends.base import FitSettings
from bench.reference.posterior import (ReferenceSettings)
from bench.reference.make import make_reference
from bench.score.metrics import evaluate
from bench.score.problem import Problem
from bench.score.relabel import posterior_dataset, relabel
from bench.score.settings import MetricSettings
from models import Dataset, MixtureSpec, NormalPrior, SigmaPrior, get_scenario, log_density
from models.scenarios import Scenario
from tests.em import em_mixture

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::RuntimeWarning")

# Pareto-smooth a subsample of observations only: LOO is not what these tests are about.
FAST = MetricSettings(loo_max_obs=50)


def relabelled_means(fit, target) -> dict[str, np.ndarray]:
    ds = posterior_dataset(relabel(fit.draws, target).draws)
    return {n: np.asarray(ds[n].mean(("chain", "draw")).values) for n in ds.data_vars}


@pytest.fixture(scope="module")
def numpyro():
    return get_backend("numpyro")


# --------------------------------------------------------------------------------------------
# Fixed priors, blind to scale: an intercept-only K = 2 mixture with means near 120 and 200,
# sds near 25 and 15 (N = 300).

SCALED_SPEC = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component")
SCALED_TRUTH = {"w": np.zeros((2, 0)), "b": np.array([120.0, 200.0]), "sigma": np.array([25.0, 15.0]),
                "pi": np.array([0.45, 0.55])}
SHORT = FitSettings(chains=2, warmup=400, draws=400)


@pytest.fixture(scope="module")
def scaled():
    data = Scenario("scaled", "", 300, SCALED_SPEC, SCALED_TRUTH).simulate(3)
    data = Dataset(x=data.x, y=data.y, name="scaled")  # a data file: no truth
    em = em_mixture(data.x, data.y, K=2, intercept=True, shared_sigma=False, starts=20)
    order = np.argsort(em.params["b"])
    mle = {k: (v[order] if np.ndim(v) else v) for k, v in em.params.items()}
    return data, mle


def _fit(backend, spec, data, standardize=False, method="nuts", settings=SHORT, seed=0):
    problem = Problem.make(spec, data, standardize=standardize)
    fit = problem.to_data_scale(backend.fit(spec, problem.fit_dataset, method, settings, seed=seed))
    assert fit.ok, fit.reason
    return fit, problem


def test_default_priors_pin_the_sigmas_at_their_bound_and_are_flagged(numpyro, scaled):
    data, mle = scaled
    assert 20 < mle["sigma"][0] < 30 and 11 < mle["sigma"][1] < 19
    fit, problem = _fit(numpyro, SCALED_SPEC, data)
    row = evaluate(fit, problem=problem, settings=FAST)
    assert "sigma-at-bound" in row["flags"].split(",")
    assert row["bound_params"] == "sigma[0] upper, sigma[1] upper"
    assert np.all(fit.draws["posterior"]["sigma"].values > 0.95)
    # MAP empties one component (intercepts cannot reach 120 under Normal(0, 2)) and drives the
    # other's sigma to the bound.
    map_fit, _ = _fit(numpyro, SCALED_SPEC, data, method="map", settings=FitSettings())
    map_row = evaluate(map_fit, problem=problem, settings=FAST)
    assert {"map-at-bound", "collapsed"} <= set(map_row["flags"].split(","))
    assert "upper" in map_row["bound_params"]


@pytest.mark.parametrize("how", ["widened priors", "standardize"])
def test_widened_priors_or_standardizing_recover_the_mle_sigmas(numpyro, scaled, how):
    data, mle = scaled
    if how == "widened priors":
        spec = SCALED_SPEC.with_(intercept_prior=NormalPrior(0.0, 500.0), sigma_prior=SigmaPrior("uniform", 200.0))
        fit, problem = _fit(numpyro, spec, data)
    else:
        fit, problem = _fit(numpyro, SCALED_SPEC, data, standardize=True)
    means = relabelled_means(fit, mle)
    sds = {n: posterior_dataset(relabel(fit.draws, mle).draws)[n].std(("chain", "draw")).values for n in ("b", "sigma")}
    # Within three posterior sds of the MLE (priors this weak move the mean far less).
    np.testing.assert_array_less(np.abs(means["sigma"] - mle["sigma"]), 3 * sds["sigma"])
    np.testing.assert_array_less(np.abs(means["b"] - mle["b"]), 3 * sds["b"])
    row = evaluate(fit, problem=problem, settings=FAST)
    assert row["bound_params"] == "" and "sigma-at-bound" not in row["flags"]


# --------------------------------------------------------------------------------------------
# Pathfinder pools a lost path: three lines, K = 3, N = 1000. Right value: the MLE by EM.

LINES = get_scenario("three-lines")


@pytest.fixture(scope="module")
def lines():
    data = LINES.simulate(0, N=1000)
    em = em_mixture(data.x, data.y, K=3, intercept=True, shared_sigma=False, starts=20)
    return data, em


def _pathfinder_case(backend_name, seed, lines):
    data, em = lines
    backend = get_backend(backend_name)
    fits = {mode: backend.fit(LINES.spec, data, "pathfinder", FitSettings(pathfinder_resampling=mode), seed=seed)
            for mode in ("psis", "none")}
    assert all(f.ok for f in fits.values())
    err = {mode: float(np.max(np.abs(relabelled_means(f, em.params)["w"] - em.params["w"])))
           for mode, f in fits.items()}
    # Pooled, the lost path's draws pull the means off; resampled, the truth's MLE comes back.
    assert err["none"] > 0.3
    assert err["psis"] < 0.02
    pool = fits["psis"].draws["importance_sampling"]
    path_lp = {int(p): float(pool["log_p"].values[pool["path"].values == p].mean()) for p in np.unique(pool["path"])}
    lost = min(path_lp, key=path_lp.get)
    assert max(path_lp.values()) - path_lp[lost] > 100
    assert int(pool["times_chosen"].values[pool["path"].values == lost].sum()) == 0
    assert fits["psis"].settings["pathfinder_resampling"] == "psis"
    assert "importance_sampling" not in fits["none"].draws.children
    row = evaluate(fits["psis"], truth=LINES.truth, settings=FAST)
    assert row["khat"] == pytest.approx(float(pool.attrs["pareto_k"]), rel=1e-9)


def test_numpyro_pathfinder_resamples_a_lost_path_away(lines):
    _pathfinder_case("numpyro", 4, lines)


@pytest.mark.slow
def test_pymc_pathfinder_resamples_a_lost_path_away(lines):
    _pathfinder_case("pymc", 2, lines)


# --------------------------------------------------------------------------------------------
# A run whose chains never moved: one value of 1e300 in y.


def test_chains_that_never_moved_are_flagged(numpyro):
    data = get_scenario("forum-small").simulate(0, N=60)
    y = data.y.copy()
    y[7] = 1e300
    bad = Dataset(x=data.x, y=y)
    spec = get_scenario("forum-small").spec
    fit = numpyro.fit(spec, bad, "nuts", FitSettings(chains=2, warmup=100, draws=100), seed=0)
    row = evaluate(fit, problem=Problem.make(spec, bad), settings=FAST)
    assert row["status"] == "ok" and row["chains_stuck"] == 2
    assert {"stuck", "ess"} <= set(row["flags"].split(","))


# --------------------------------------------------------------------------------------------
# MAP seeds of a small K = 3 intercept-only mixture, told apart by log density.

K3_SPEC = MixtureSpec(K=3, D=0, intercept=True, sigma="per-component", intercept_prior=NormalPrior(0.0, 5.0),
                      sigma_prior=SigmaPrior("halfnormal", 5.0))
K3_TRUTH = {"w": np.zeros((3, 0)), "b": np.array([-6.0, 0.0, 6.0]), "sigma": np.array([0.5, 0.5, 0.5]),
            "pi": np.array([0.3, 0.3, 0.4])}


def test_map_seeds_in_poorer_modes_are_told_apart_by_log_density(numpyro):
    """Eight MAP seeds on 60 points: some reach the best mode, some stop where one component
    covers two clusters. The best log density is the oracle's at EM's MLE (the priors move it by
    less than a nat); seeds that reach it are in the reference's mode, the others are flagged
    with their gap."""
    data = Scenario("k3", "", 60, K3_SPEC, K3_TRUTH).simulate(0)
    data = Dataset(x=data.x, y=data.y)
    problem = Problem.make(K3_SPEC, data)
    em = em_mixture(data.x, data.y, K=3, intercept=True, shared_sigma=False, starts=30)
    best = log_density(K3_SPEC, data.x, data.y, em.params)
    ref = make_reference(problem, ReferenceSettings(chains=2, warmup=300, draws=500, ess_min=100))
    assert ref.accepted, ref.info["rejected_because"]
    rows = []
    for seed in range(8):
        fit = numpyro.fit(K3_SPEC, data, "map", FitSettings(map_starts=1), seed=seed)
        rows.append((log_density(K3_SPEC, data.x, data.y, fit.point),
                     evaluate(fit, reference=ref, problem=problem, settings=FAST)))
    good = [row for lp, row in rows if lp > best - 1.0]
    poor = [(lp, row) for lp, row in rows if lp < best - 20.0]
    assert len(good) + len(poor) == 8 and good and poor
    for row in good:
        assert row["mode"] == "reference" and "poor-mode" not in row["flags"]
        assert row["lp_gap"] < 1.0  # at the mode: no lower than the reference's highest draw
    for lp, row in poor:
        assert row["mode"] in ("other", "collapsed") and "poor-mode" in row["flags"].split(",")
        assert row["lp_mean"] == pytest.approx(lp, rel=1e-10)
        assert row["lp_gap"] == pytest.approx(float(ref.lp.max()) - lp, rel=1e-10)
        assert row["lp_gap"] > best - lp - 5.0  # the reference's best draw is within nats of the mode


# --------------------------------------------------------------------------------------------
# A fit stuck in a poor mode looks healthy: two lines (75% / 25%), sigma 0.1, N = 1000, ordered by
# intercept; some seeds end about 1400 nats below the best with R-hat and divergences clean.

ORDERED_SPEC = MixtureSpec(K=2, D=1, intercept=True, sigma="shared", ordering="intercept")
ORDERED_TRUTH = {"w": np.array([[2.0], [-1.0]]), "b": np.array([-1.0, 1.0]), "sigma": np.array(0.1),
                 "pi": np.array([0.75, 0.25])}


@pytest.mark.slow
def test_ordered_two_lines_flag_the_seed_in_a_poor_mode(numpyro):
    data = Scenario("two-lines", "", 1000, ORDERED_SPEC, ORDERED_TRUTH).simulate(0)
    data = Dataset(x=data.x, y=data.y)
    problem = Problem.make(ORDERED_SPEC, data)
    em = em_mixture(data.x, data.y, K=2, intercept=True, shared_sigma=True, starts=20)
    best = log_density(ORDERED_SPEC, data.x, data.y, {**em.params, **_sorted_by_b(em.params)})
    ref = make_reference(problem, ReferenceSettings(warmup=500, draws=500))
    assert ref.accepted, ref.info["rejected_because"]
    one_chain = FitSettings(chains=1, warmup=300, draws=200)
    good = evaluate(numpyro.fit(ORDERED_SPEC, data, "nuts", one_chain, seed=5), reference=ref, problem=problem,
                    settings=FAST)
    poor_fit = numpyro.fit(ORDERED_SPEC, data, "nuts", one_chain, seed=6)
    poor = evaluate(poor_fit, reference=ref, problem=problem, settings=FAST)
    assert good["mode"] == "reference" and "poor-mode" not in good["flags"]
    assert poor["mode"] == "other" and "poor-mode" in poor["flags"].split(",")
    assert poor["divergences"] == 0
    ds = posterior_dataset(poor_fit.draws)
    at_poor = log_density(ORDERED_SPEC, data.x, data.y, {n: ds[n].mean(("chain", "draw")).values for n in ds.data_vars})
    # Gap of hundreds of nats, matching the oracle's between EM's best and the poor mode's mean.
    assert poor["lp_gap"] > 500
    assert poor["lp_gap"] == pytest.approx(best - at_poor, rel=0.02)


def _sorted_by_b(params):
    order = np.argsort(params["b"])
    return {k: v[order] for k, v in params.items() if np.ndim(v)}
