"""Every Stan method through cmdstanpy against a real CmdStan: recovery, exact densities, seeds.

Where the checks need the approximation's unconstrained coordinates they use a spec whose
unconstrained space is known in closed form (K = 1, D = 1, an intercept, sigma ~ Uniform(0, u)):
v = (w, b, logit(sigma / u)), the same in every backend. The oracle composed with that map, plus
its log Jacobian log(u s (1 - s)), is the density each approximation is built on.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from backends import FitSettings
from backends.importance import GROUP as IMPORTANCE_GROUP
from backends.stan import NO_CMDSTAN, cmdstan_path
from bench.score.metrics import psis_khat
from models import Dataset, MixtureSpec, get_scenario, log_density

pytestmark = [pytest.mark.stan, pytest.mark.cmdstan,
              # asked at set-up, not at collection: cmdstanpy is an engine
              pytest.mark.skipif("cmdstan_path() is None", reason=NO_CMDSTAN)]

BACKEND = "stan"  # read by the shared `backend` fixture (tests/conftest.py)
LINE = MixtureSpec(K=1, D=1, intercept=True)  # sigma ~ Uniform(0, 1)
U = LINE.sigma_prior.upper


@pytest.fixture(scope="module")
def line_data():
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, size=(200, 1))
    return Dataset(x=x, y=0.5 * x[:, 0] + 0.3 + rng.normal(0, 0.2, size=200))


@pytest.fixture(scope="module")
def separated():
    scenario = get_scenario("separated")
    return scenario.spec, scenario.simulate(11, N=1000)


# --- the closed-form unconstrained space of LINE ------------------------------------------------

def _to_v(w, b, sigma) -> np.ndarray:
    """Constrained (w, b, sigma) arrays of shape (n,) -> v of shape (n, 3)."""
    s = np.asarray(sigma) / U
    return np.column_stack([w, b, np.log(s) - np.log1p(-s)])


def _draws_v(fit) -> np.ndarray:
    post = fit.draws["posterior"]
    return _to_v(post["w"].values[0, :, 0, 0], post["b"].values[0, :, 0], post["sigma"].values[0].ravel())


def _oracle_v(data: Dataset):
    def f(v):
        s = 1.0 / (1.0 + math.exp(-v[2]))
        point = {"w": np.array([[v[0]]]), "b": np.array([v[1]]), "sigma": np.array(U * s), "pi": np.array([1.0])}
        return log_density(LINE, data.x, data.y, point) + math.log(U * s * (1 - s))
    return f


def _hessian(f, v, h=1e-4) -> np.ndarray:
    """Central finite differences of f at v."""
    d = len(v)
    out = np.empty((d, d))
    for i in range(d):
        for j in range(d):
            ei, ej = np.eye(d)[i] * h, np.eye(d)[j] * h
            out[i, j] = (f(v + ei + ej) - f(v + ei - ej) - f(v - ei + ej) + f(v - ei - ej)) / (4 * h * h)
    return out


def _quadratic_fit(v: np.ndarray, target: np.ndarray):
    """Least squares target ~ -v'Av/2 + b'v + c over draws; returns (A, b, c, max |residual|)."""
    d = v.shape[1]
    pairs = [(i, j) for i in range(d) for j in range(i, d)]
    design = np.column_stack([-(v[:, i] * v[:, j]) * (0.5 if i == j else 1.0) for i, j in pairs]
                             + [v[:, i] for i in range(d)] + [np.ones(len(v))])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    A = np.zeros((d, d))
    for (i, j), a in zip(pairs, coef):
        A[i, j] = A[j, i] = a
    residual = np.max(np.abs(design @ coef - target))
    return A, coef[len(pairs):len(pairs) + d], coef[-1], residual


def _assert_log_p_minus_jacobian_is_oracle(fit, spec, data, n=20):
    post = fit.draws["posterior"]
    checked = 0
    for i in range(post.sizes["draw"]):
        if not np.isfinite(fit.log_jacobian[i]):
            continue
        point = {name: post[name].values[0, i] for name in spec.param_shapes()}
        assert fit.log_p[i] - fit.log_jacobian[i] == pytest.approx(log_density(spec, data.x, data.y, point), rel=1e-7)
        checked += 1
        if checked == n:
            break
    assert checked == n


# --- exact densities on the closed-form spec ------------------------------------------------------

@pytest.mark.parametrize("method", ["advi-meanfield", "advi-fullrank", "pathfinder", "laplace"])
def test_log_p_log_jacobian_and_log_q_are_exact(backend, line_data, method):
    settings = FitSettings(vi_draws=300, pathfinder_paths=1)
    fit = backend.fit(LINE, line_data, method, settings, seed=3)
    assert fit.status == "ok", fit.reason
    assert fit.engine == "cmdstanpy"
    v = _draws_v(fit)
    s = 1 / (1 + np.exp(-v[:, 2]))
    np.testing.assert_allclose(fit.log_jacobian, np.log(U * s * (1 - s)), rtol=1e-9)
    f = _oracle_v(line_data)
    np.testing.assert_allclose(fit.log_p, [f(row) for row in v], rtol=1e-9)
    # log q is a Gaussian's log density in v: an exact quadratic in v.
    A, b, c, residual = _quadratic_fit(v, fit.log_q)
    assert residual < 1e-6
    assert np.all(np.linalg.eigvalsh(A) > 0)
    mean = np.linalg.solve(A, b)
    normalised = -0.5 * mean @ A @ mean - 1.5 * math.log(2 * math.pi) + 0.5 * np.linalg.slogdet(A)[1]
    if method == "pathfinder":  # lp_approx__ carries every constant
        assert c == pytest.approx(normalised, abs=1e-6)
    if method == "advi-meanfield":
        np.testing.assert_allclose(A - np.diag(np.diag(A)), 0, atol=1e-6 * np.abs(A).max())
    assert math.isfinite(psis_khat(fit.log_p, fit.log_q))


def test_laplace_is_the_oracle_mode_and_inverse_negative_hessian(backend, line_data):
    fit = backend.fit(LINE, line_data, "laplace", FitSettings(vi_draws=300), seed=1)
    assert fit.status == "ok", fit.reason
    f = _oracle_v(line_data)
    mode = _to_v(fit.point["w"][:, 0], fit.point["b"], np.atleast_1d(fit.point["sigma"]))[0]
    independent = minimize(lambda v: -f(v), mode + 0.05, method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(mode, independent, rtol=1e-4)
    cov_oracle = np.linalg.inv(-_hessian(f, independent))
    # Stan writes no covariance; its log q (-z'z/2 for u = mode + L z) pins the precision down.
    A, b, _, residual = _quadratic_fit(_draws_v(fit), fit.log_q)
    assert residual < 1e-6
    np.testing.assert_allclose(np.linalg.solve(A, b), mode, rtol=1e-6)
    cov_stan = np.linalg.inv(A)
    assert np.linalg.norm(cov_stan - cov_oracle) / np.linalg.norm(cov_oracle) < 1e-4
    # The Laplace fields every backend's Fit carries (issue 25's contract): the mode search's
    # iterations and evaluations from CmdStan's transcript, and no coordinate on a bound here.
    assert fit.iterations > 0 and fit.grad_evals >= fit.iterations and fit.at_bound == []


def test_laplace_passes_over_a_degenerate_mode_and_samples_from_the_best_other(backend, line_data, monkeypatch):
    """Start 0's optimum is made to read as a spike (sigma 1e-9, below the data's resolution): the
    fit records it, and laplace_sample runs from another start's mode, as multi-start MAP keeps."""
    from backends.stan import adapter as stan

    real, seen = stan._optimum_point, []

    def spike_first(spec, run):
        point = real(spec, run)
        seen.append(point)
        return {**point, "sigma": np.asarray(1e-9)} if len(seen) == 1 else point

    monkeypatch.setattr(stan, "_optimum_point", spike_first)
    fit = backend.fit(LINE, line_data, "laplace", FitSettings(vi_draws=100, map_starts=3), seed=1)
    assert fit.status == "ok", fit.reason
    assert len(seen) == 3 and fit.degenerate_starts == ["start 0: sigma[0] = 1e-09 on 0 points"]
    assert float(fit.point["sigma"]) > 0.1 and any(fit.point is p for p in seen[1:])
    mode = _to_v(fit.point["w"][:, 0], fit.point["b"], np.atleast_1d(fit.point["sigma"]))[0]
    A, b, _, _ = _quadratic_fit(_draws_v(fit), fit.log_q)
    np.testing.assert_allclose(np.linalg.solve(A, b), mode, rtol=1e-6)  # the draws are around it


# --- recovery on an ordered, well-separated spec ------------------------------------------------

# Stan's ADVI lands away from the truth for some seeds (eta adaptation choosing 100, or early
# stops at tol_rel_obj): seeds where it does not, since the same seed gives the same draws.
RECOVERY = {
    "advi-meanfield": (FitSettings(vi_draws=400), 0),
    "advi-fullrank": (FitSettings(vi_draws=400), 1),
    "pathfinder": (FitSettings(vi_draws=400), 3),
    "laplace": (FitSettings(vi_draws=400), 3),
    "map": (FitSettings(), 3),
}


@pytest.mark.parametrize("method", list(RECOVERY))
def test_each_method_recovers_the_separated_truth(backend, separated, method):
    spec, data = separated
    settings, seed = RECOVERY[method]
    fit = backend.fit(spec, data, method, settings, seed=seed)
    assert fit.status == "ok", fit.reason
    post = fit.draws["posterior"]
    # Ordered by intercept: the labels need no matching.
    np.testing.assert_allclose(post["w"].mean(("chain", "draw")).values, data.truth["w"], atol=0.1)
    np.testing.assert_allclose(post["sigma"].mean(("chain", "draw")).values, data.truth["sigma"], rtol=0.2)
    assert fit.versions["stan"] == _installed_stan_version()
    if method == "map":
        return
    assert post.sizes["draw"] == 400
    _assert_log_p_minus_jacobian_is_oracle(fit, spec, data)
    if method == "pathfinder":
        assert fit.draws.attrs["pathfinder_paths"] == 4 and fit.draws.attrs["pathfinder_resampling"] == "psis"
        pool = fit.draws[IMPORTANCE_GROUP]
        assert pool.sizes["proposal"] == 4 * 400 and int(pool["times_chosen"].sum()) == 400
        assert set(np.unique(pool["path"].values)) == {0, 1, 2, 3}
        assert math.isfinite(psis_khat(pool["log_p"].values, pool["log_q"].values))
    else:
        assert math.isfinite(psis_khat(fit.log_p, fit.log_q))
    if method.startswith("advi"):
        assert fit.draws.attrs["eta_adapted"] == 1 and fit.draws.attrs["eta"] in (100, 10, 1, 0.1, 0.01)


def test_advi_with_a_fixed_eta_runs_and_records_it(backend, separated):
    spec, data = separated
    fit = backend.fit(spec, data, "advi-meanfield", FitSettings(vi_draws=100, advi_eta=0.1), seed=1)
    assert fit.status == "ok", fit.reason
    assert fit.draws.attrs["eta"] == 0.1 and fit.draws.attrs["eta_adapted"] == 0
    assert fit.draws["posterior"].sizes["draw"] == 100
    _assert_log_p_minus_jacobian_is_oracle(fit, spec, data, n=10)


# --- MAP with several starts -----------------------------------------------------------------

def test_map_with_several_starts_reaches_the_mode_for_every_seed(backend, separated):
    spec, data = separated
    single = [backend.fit(spec, data, "map", FitSettings(map_starts=1), seed=s) for s in range(10)]
    multi = [backend.fit(spec, data, "map", FitSettings(), seed=s) for s in range(10)]
    best = max(f.point_log_density for f in single + multi)
    assert all(f.status == "ok" for f in multi)
    for f in multi:
        assert f.point_log_density == pytest.approx(best, abs=1e-3)
        assert len(f.start_log_densities) == FitSettings().map_starts and max(f.start_log_densities) == f.point_log_density
        assert f.at_bound == []
        assert f.draws.attrs["map_starts"] == FitSettings().map_starts
    # One start alone misses the mode for some seeds: in a poorer interior mode, or on the
    # degenerate point with sigma at the Uniform(0, 1) bound, which is flagged.
    lost = [f for f in single if f.point_log_density < best - 100]
    assert lost, "expected some single-start MAP fits to miss the mode"
    for f in single:
        at_edge = bool(np.any(np.atleast_1d(f.point["sigma"]) >= spec.sigma_prior.upper * (1 - 1e-6)))
        assert bool(f.at_bound) == at_edge
    assert any(f.at_bound for f in lost)


def test_map_starts_take_their_log_densities_from_one_log_prob_run(backend, separated, monkeypatch):
    """A multi-start MAP runs CmdStan's log_prob once for all its starts (one process, one read
    of the data, not one per start), and each start's density is, to the bit, what CmdStan gives
    for that start's point alone from a JSON file (the single-point route), and the oracle's."""
    from cmdstanpy import CmdStanModel

    from backends.multistart import start_seeds
    from backends.stan.install import _quiet
    from models.stan_model import in_support, stan_data, stan_parameters

    spec, data = separated
    seeds = start_seeds(3, 4)
    single = [backend.fit(spec, data, "map", FitSettings(map_starts=1), seed=s) for s in seeds]
    calls = []
    original = CmdStanModel.log_prob

    def counted(self, *args, **kwargs):
        calls.append(kwargs.get("params"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CmdStanModel, "log_prob", counted)
    multi = backend.fit(spec, data, "map", FitSettings(map_starts=4), seed=3)
    assert multi.status == "ok" and len(calls) == 1
    model, _ = backend.cmdstan_model()
    alone = []
    for f in single:
        if not in_support(spec, f.point):  # a start on a bound (sigma = u, equal ordered intercepts)
            alone.append(-math.inf)
            continue
        with _quiet():
            alone.append(float(original(model, params=stan_parameters(spec, f.point), data=stan_data(spec, data),
                                        jacobian=False, sig_figs=18)["lp__"].iloc[0]))
    assert sum(map(math.isfinite, alone)) >= 2
    assert multi.start_log_densities == alone
    for f, value in zip(single, alone):
        assert value == pytest.approx(log_density(spec, data.x, data.y, f.point), rel=1e-8)


def test_a_start_that_never_ends_is_cut_off_and_counted_as_failed(backend, separated):
    spec, data = separated
    settings = FitSettings(vi_draws=50, vi_iterations=2000, optimize_timeout=5)
    fit = backend.fit(spec, data, "laplace", settings, seed=8)
    assert fit.status == "ok", fit.reason
    assert fit.start_log_densities[4] == -math.inf  # the start whose line search loops
    assert sum(math.isfinite(v) for v in fit.start_log_densities) >= 6


def test_map_iterations_exclude_the_initial_point(backend, separated):
    spec, data = separated
    fit = backend.fit(spec, data, "map", FitSettings(map_starts=1), seed=2)
    assert fit.iterations == len(fit.loss) - 1


# --- reproducibility and engines -------------------------------------------------------------

@pytest.mark.parametrize("method", ["nuts", "advi-meanfield", "advi-fullrank", "pathfinder", "map", "laplace"])
def test_same_seed_same_draws(backend, separated, method):
    spec, data = separated
    # Laplace's start 4 of seed 8 sends CmdStan's L-BFGS into its endless line search: it is cut
    # off and counts as a failed start, the same way in both runs.
    settings = FitSettings(chains=2, warmup=100, draws=100, vi_draws=100, vi_iterations=2000, optimize_timeout=15)
    first, again = (backend.fit(spec, data, method, settings, seed=8) for _ in range(2))
    assert first.status == again.status == "ok", first.reason
    for name in spec.param_shapes():
        np.testing.assert_array_equal(first.draws["posterior"][name].values, again.draws["posterior"][name].values)
    for name in ("log_p", "log_q", "log_jacobian", "start_log_densities"):
        np.testing.assert_array_equal(np.asarray(getattr(first, name), dtype=float),
                                      np.asarray(getattr(again, name), dtype=float))


def test_pystan_and_cmdstanpy_give_identical_nuts_draws(backend, separated):
    spec, data = separated
    data = Dataset(x=data.x[:300], y=data.y[:300])
    runs = {engine: backend.fit(spec, data, "nuts", FitSettings(chains=2, warmup=150, draws=150, sampler=engine),
                                seed=21) for engine in ("pystan", "cmdstanpy")}
    assert runs["pystan"].engine == "pystan" and runs["cmdstanpy"].engine == "cmdstanpy"
    for name in spec.param_shapes():
        np.testing.assert_allclose(runs["pystan"].draws["posterior"][name].values,
                                   runs["cmdstanpy"].draws["posterior"][name].values, rtol=1e-12, atol=1e-14)


def _installed_stan_version() -> str:
    """The Stan library CmdStan was built with, from its own header (independent of any CSV)."""
    text = (Path(cmdstan_path()) / "stan" / "src" / "stan" / "version.hpp").read_text()
    parts = dict(re.findall(r"#define STAN_(MAJOR|MINOR|PATCH) (\d+)", text))
    return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"


def test_provenance_names_the_stan_that_ran_and_cmdstan_beside_it(backend, separated):
    spec, data = separated
    fit = backend.fit(spec, data, "pathfinder", FitSettings(vi_draws=50, pathfinder_paths=1), seed=0)
    assert fit.versions["stan"] == _installed_stan_version()
    import cmdstanpy

    assert fit.versions["cmdstan"] == ".".join(map(str, cmdstanpy.cmdstan_version()))
    assert fit.draws.attrs["stan_version"] == fit.versions["stan"]


def test_an_engine_error_carries_stans_own_message(backend, separated, monkeypatch):
    import backends.stan.adapter as stan_module

    spec, data = separated
    real = stan_module.stan_data
    # Data that disagree with their declared size: Stan's data block check fails inside CmdStan.
    monkeypatch.setattr(stan_module, "stan_data", lambda s, d: {**real(s, d), "N": d.N + 1})
    fit = backend.fit(spec, Dataset(x=data.x[:50], y=data.y[:50]), "pathfinder",
                      FitSettings(vi_draws=20, pathfinder_paths=1), seed=0)
    assert fit.status == "failed"
    # Stan's own words: which variable, declared and found sizes, where in the program.
    assert "variable name=x" in fit.reason and "dims declared=(51,1); dims found=(50,1)" in fit.reason
    assert "mixture.stan" in fit.reason
