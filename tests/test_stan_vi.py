"""Stan's variational methods and MAP (CmdStan only), and what pystan answers instead."""

import math

import numpy as np
import pytest

from backends import METHODS, FitSettings
from backends.methods import Kind
from backends.stan import (
    NO_CMDSTAN,
    StanBackend,
    advi_log_densities,
    advi_progress,
    cmdstan_path,
    pathfinder_log_densities,
    pathfinder_progress,
    read_elbo_trace,
)
from models.stan_model import n_unconstrained, stan_parameters
from models import Dataset, MixtureSpec, get_scenario, log_density, random_point
from tests.conftest import AGREEMENT_SPECS, make_data

BACKEND = "stan"  # read by the shared `backend` fixture (tests/conftest.py)

pytestmark = pytest.mark.stan

needs_cmdstan = pytest.mark.skipif("cmdstan_path() is None", reason=NO_CMDSTAN)  # asked at set-up: cmdstanpy is an engine
# The methods of Stan's table other than NUTS (a method outside the table, as SMC, has its own
# answer: tests/test_contract.py's support matrix).
NOT_NUTS = [m for m in METHODS if m.kind is not Kind.MCMC and not m.minibatch and m in StanBackend.methods]


@pytest.fixture(scope="module")
def small_data():
    scenario = get_scenario("forum-small")
    return scenario.spec, scenario.simulate(0, N=50)


# --- what is not supported, and why (testable without CmdStan) ------------------------------------

@pytest.mark.parametrize("method", NOT_NUTS)
def test_pystan_answers_only_nuts(backend, small_data, method):
    spec, data = small_data
    fit = backend.fit(spec, data, method, FitSettings(sampler="pystan"))
    assert fit.status == "unsupported"
    assert "pystan 3 runs NUTS only" in fit.reason and method in fit.reason
    if cmdstan_path() is None:
        assert NO_CMDSTAN in fit.reason
        auto = backend.fit(spec, data, method)
        assert auto.status == "unsupported" and NO_CMDSTAN in auto.reason


# Minibatch methods and the forum replay likelihoods are outside Stan's tables: the support matrix
# of tests/test_contract.py asserts their "unsupported" answers, generated from the registry.


# --- the pieces VI results are built from -----------------------------------------------------------

@pytest.mark.parametrize("name", list(AGREEMENT_SPECS))
def test_unconstrained_dimension_matches_stan(backend, name):
    spec = AGREEMENT_SPECS[name]
    x, y = make_data(spec, n=20)
    model, _ = backend.pystan_model(spec, Dataset(x=x, y=y))
    point = {k: v.tolist() for k, v in stan_parameters(spec, random_point(spec, np.random.default_rng(0))).items()}
    assert len(model.unconstrain_pars(point)) == n_unconstrained(spec)


def test_jacobian_does_not_depend_on_data(backend):
    """The premise of computing log |J| on a one-observation data set."""
    spec = AGREEMENT_SPECS["K3-D1-order-slope"]
    x, y = make_data(spec, n=200)
    full, _ = backend.pystan_model(spec, Dataset(x=x, y=y))
    tiny, _ = backend.pystan_model(spec, Dataset(x=np.zeros((1, spec.D)), y=np.zeros(1)))
    rng = np.random.default_rng(3)
    for _ in range(3):
        point = {k: v.tolist() for k, v in stan_parameters(spec, random_point(spec, rng)).items()}
        u = full.unconstrain_pars(point)
        assert tiny.unconstrain_pars(point) == pytest.approx(u, abs=1e-12)
        jac_full = full.log_prob(u, adjust_transform=True) - full.log_prob(u, adjust_transform=False)
        jac_tiny = tiny.log_prob(u, adjust_transform=True) - tiny.log_prob(u, adjust_transform=False)
        assert jac_tiny == pytest.approx(jac_full, abs=1e-9)
        assert jac_full != 0


def test_advi_columns_map_to_log_p_and_log_q():
    spec = MixtureSpec(K=2, D=1)  # 1 + 2 + 1 = 4 unconstrained coordinates
    columns = ["lp__", "log_p__", "log_g__", "theta[1]", "theta[2]", "w[1,1]", "w[2,1]", "sigma[1]"]
    values = np.array([[0.0, -10.5, -1.25, 0.4, 0.6, 1.0, -1.0, 0.2],
                       [0.0, -12.0, -3.00, 0.5, 0.5, 2.0, -2.0, 0.3]])
    log_p, log_q = advi_log_densities(spec, columns, values)
    np.testing.assert_array_equal(log_p, [-10.5, -12.0])
    np.testing.assert_allclose(log_q, np.array([-1.25, -3.0]) - 2 * math.log(2 * math.pi))


def test_pathfinder_columns_map_to_log_p_and_log_q():
    columns = ["lp_approx__", "lp__", "theta[1]", "theta[2]"]
    values = np.array([[-3.5, -20.0, 0.3, 0.7], [-4.0, -21.5, 0.2, 0.8]])
    log_p, log_q = pathfinder_log_densities(columns, values)
    np.testing.assert_array_equal(log_p, [-20.0, -21.5])
    np.testing.assert_array_equal(log_q, [-3.5, -4.0])


def test_advi_trace_and_progress(tmp_path):
    # The diagnostic file and console lines as Stan's advi.hpp writes them.
    diagnostics = tmp_path / "advi-diagnostic.csv"
    diagnostics.write_text("iter,time_in_seconds,ELBO\n100,0.05,-1520.5\n200,0.1,-1402.25\n300,0.16,-1401.75\n")
    trace = read_elbo_trace(str(diagnostics))
    np.testing.assert_array_equal(trace, [[100, -1520.5], [200, -1402.25], [300, -1401.75]])
    converged = ("  iter             ELBO   delta_ELBO_mean   delta_ELBO_med   notes \n"
                 "   300        -1401.750             0.030            0.000   MEDIAN ELBO CONVERGED\n")
    assert advi_progress(converged, trace, 10_000) == (True, 300)
    capped = ("   300        -1401.750             0.030            0.020\n"
              "Informational Message: The maximum number of iterations is reached! "
              "The algorithm may not have converged.\n")
    assert advi_progress(capped, trace, 300) == (False, 300)
    empty = tmp_path / "empty-diagnostic.csv"
    empty.write_text("iter,time_in_seconds,ELBO\n")
    assert read_elbo_trace(str(empty)) is None


def test_pathfinder_progress():
    ok = "Path [1] :Initial log joint density = -1000.5\nPath [1] :Best Iter: [37] ELBO (-410.2) evaluations: (52)\n"
    assert pathfinder_progress(ok) == (True, 37, 52)
    failed = ok + "Optimization terminated with error: Line search failed to achieve a sufficient decrease\n"
    assert pathfinder_progress(failed)[0] is False


def test_optimize_progress_reads_the_last_row_of_cmdstans_lbfgs_table():
    from backends.stan.parsers import optimize_progress

    # CmdStan 2.36's transcript (refresh 100): a row every 100 iterations and one at termination.
    transcript = """Initial log joint probability = -1106.2
    Iter      log prob        ||dx||      ||grad||       alpha      alpha0  # evals  Notes 
      99      -151.379   0.000765308      0.634331           1           1      122   
    Iter      log prob        ||dx||      ||grad||       alpha      alpha0  # evals  Notes 
     109      -151.379   2.38333e-05     0.0481636      0.6714      0.6714      132   
Optimization terminated normally: 
  Convergence detected: relative gradient magnitude is below tolerance
"""
    assert optimize_progress(transcript) == (109, 132)
    noted = transcript.replace("0.6714      132   ", "0.6714      132   LS failed, Hessian reset ")
    assert optimize_progress(noted) == (109, 132)
    assert optimize_progress("Initial log joint probability = -1106.2\n") == (None, None)


# --- real runs (CmdStan) ------------------------------------------------------------------------------

def _separated():
    scenario = get_scenario("separated")
    return scenario, scenario.simulate(11, N=1000)


# Recovery, exact log p / log q and same-seed draws of every method: tests/test_stan_cmdstan.py.


@pytest.mark.cmdstan
@needs_cmdstan
def test_map_finds_the_mode_in_the_oracle_convention(backend):
    scenario, data = _separated()
    fit = backend.fit(scenario.spec, data, "map", FitSettings(), seed=2)
    assert fit.status == "ok", fit.reason
    assert fit.converged
    assert fit.draws["posterior"]["w"].shape == (1, 1, 2, 1)
    np.testing.assert_allclose(fit.point["w"], data.truth["w"], atol=0.1)
    np.testing.assert_allclose(fit.point["sigma"], data.truth["sigma"], rtol=0.2)
    assert fit.point_log_density == pytest.approx(
        log_density(scenario.spec, data.x, data.y, fit.point), rel=1e-8)
    # A mode: nudging any slope lowers the oracle's density.
    for k in range(scenario.spec.K):
        nudged = {**fit.point, "w": fit.point["w"].copy()}
        nudged["w"][k, 0] += 1e-3
        assert log_density(scenario.spec, data.x, data.y, nudged) < fit.point_log_density
    assert fit.loss is not None and fit.loss[-1] <= fit.loss[0]
