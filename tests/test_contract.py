"""The backend contract, generated from the registry: every registered backend x every method.

A backend added to ``backends.BACKENDS`` is tested here without editing this file: its method
table and likelihoods decide the support matrix; every method it declares (and can run here)
must give canonical draws, the same draws for the same seed, timings from the shared phases,
and, for approximations, log p - log Jacobian equal to the oracle's log density at every draw.
Small problems and few draws keep this fast; the methods' accuracy is tested per backend.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from backends import BACKENDS, get_backend
from backends.base import METHODS, TIMING_PHASES, Backend, Fit, FitSettings, approximation_group, canonical_datatree
from backends.methods import Kind, method as method_named
from models import Dataset, MixtureSpec, log_density
from models.spec import LIKELIHOODS
from tests.conftest import assert_canonical_draws

# Tiny fits: the contract, not accuracy. map_starts=2 still exercises the multi-start path.
SETTINGS = FitSettings(chains=2, warmup=30, draws=20, vi_iterations=60, vi_draws=25, batch_size=40,
                       map_starts=2, pathfinder_paths=2)
SPEC = MixtureSpec(K=2, D=1)
# Methods whose Fit carries draws of an approximation with log p / log q / log Jacobian per draw
# (a method added to METHODS is covered unedited).
APPROXIMATIONS = tuple(m for m in METHODS if m.kind is Kind.APPROXIMATION)


def _marks(name: str, method: str | None = None) -> list:
    if name != "stan":
        return []
    # A Stan method that pystan cannot run (all but MCMC: test_stan_marks_follow_pystan_refusals)
    # needs CmdStan: marked so that CI, which unpacks one, fails instead of skipping it
    # (tests/conftest.py), while a user's machine without one skips. Read from the method, not
    # the backend: collecting the tests imports no engine (test_imports.py).
    needs_cmdstan = method is not None and method_named(method).kind is not Kind.MCMC
    return [pytest.mark.stan] + ([pytest.mark.cmdstan] if needs_cmdstan else [])


BACKEND_PARAMS = [pytest.param(name, marks=_marks(name), id=name) for name in BACKENDS]
# Every (backend, method): a pair outside the backend's table must answer unsupported with the
# table's reason (``fits``), a declared one must run. A declared method skips only where this
# machine lacks what it needs (CmdStan), with the backend's own reason. The tables are read when
# the tests run, not at collection, which imports no engine.
PAIRS = [pytest.param(name, method, marks=_marks(name, method), id=f"{name}-{method}")
         for name in BACKENDS for method in METHODS]


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, size=(80, 1))
    z = rng.integers(0, 2, size=80)
    y = np.where(z == 0, 1.0 + 2.0 * x[:, 0], -1.0 - 1.5 * x[:, 0]) + 0.3 * rng.standard_normal(80)
    return Dataset(x=x, y=y)


# --- the declared tables --------------------------------------------------------------------------

@pytest.mark.parametrize("name, method", [p for p in PAIRS if p.values[0] == "stan"])
def test_stan_marks_follow_pystan_refusals(name, method):
    """The cmdstan marks above, read from the method's kind, say what the backend says."""
    refused = get_backend(name).refuses(SPEC, method, FitSettings(sampler="pystan")) is not None
    assert refused == (method_named(method).kind is not Kind.MCMC)


@pytest.mark.parametrize("name", BACKEND_PARAMS)
def test_method_table_names_runners_with_the_one_signature(name):
    backend = get_backend(name)
    assert isinstance(backend, Backend)
    assert backend.methods and set(backend.methods) <= set(METHODS)
    assert backend.likelihoods and set(backend.likelihoods) <= set(LIKELIHOODS)
    for method, attr in backend.methods.items():
        runner = getattr(backend, attr)
        assert list(inspect.signature(runner).parameters) == ["spec", "dataset", "method", "settings", "seed"], (
            f"{name}: {method} -> {attr}")


@pytest.mark.parametrize("name", BACKEND_PARAMS)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_support_matrix_follows_the_tables(name, likelihood, data):
    """Outside the table or the likelihoods: unsupported, with the reason, and nothing runs."""
    backend = get_backend(name)
    spec = SPEC.with_(likelihood=likelihood)
    for method in METHODS:
        reason = backend.unsupported_reason(spec, method, SETTINGS)
        if method not in backend.methods:
            assert reason == (f"method {str(method)!r} is not implemented by the {name} backend "
                              f"(it runs: {', '.join(backend.methods)})")
        elif likelihood not in backend.likelihoods:
            assert reason is not None and f"likelihood {likelihood!r} is not implemented in the {name}" in reason
        else:
            # Declared: only a settings or environment limit may refuse it, never the table.
            assert reason is None or "is not implemented" not in reason
        if method not in backend.methods or likelihood not in backend.likelihoods:
            fit = backend.fit(spec, data, method, SETTINGS, seed=0)
            assert (fit.status, fit.reason, fit.draws) == ("unsupported", reason, None)


# --- what every declared method returns -------------------------------------------------------------

@pytest.fixture(scope="module")
def fits(data):
    """(backend, method) -> (fit, refit with the same seed), computed once per pair; None for a
    pair outside the backend's table, once it has answered unsupported with the table's reason."""
    cache: dict[tuple[str, str], tuple] = {}

    def get(name: str, method: str):
        if (name, method) not in cache:
            backend = get_backend(name)
            reason = backend.unsupported_reason(SPEC, method, SETTINGS)
            if method not in backend.methods:
                # Outside the table: the support matrix's answer, and nothing else to test.
                fit = backend.fit(SPEC, data, method, SETTINGS, seed=11)
                assert (fit.status, fit.reason, fit.draws) == ("unsupported", reason, None)
                cache[(name, method)] = None  # nothing else to test (no skip: CI fails cmdstan skips)
                return None
            # A declared method must take the contract's spec and settings; only an engine this
            # machine lacks may refuse it.
            assert reason is None or "is not implemented" not in reason, (name, method, reason)
            if reason is not None:
                pytest.skip(f"{name}/{method}: {reason}")
            first = backend.fit(SPEC, data, method, SETTINGS, seed=11)
            again = backend.fit(SPEC, data, method, SETTINGS, seed=11)
            cache[(name, method)] = (first, again)
        return cache[(name, method)]

    return get


@pytest.mark.parametrize("name, method", PAIRS)
def test_declared_method_gives_canonical_output(name, method, fits, data):
    pair = fits(name, method)
    if pair is None:  # outside the table: answered unsupported (fits)
        return
    fit, _ = pair
    assert fit.status == "ok", fit.reason
    assert (fit.backend, fit.method, fit.seed) == (name, method, 11)
    assert set(fit.timings) <= set(TIMING_PHASES) and fit.timings
    assert all(np.isfinite(v) and v >= 0 for v in fit.timings.values())
    assert fit.versions and fit.settings == SETTINGS.to_dict()
    kind = method_named(method)
    # Shapes from the settings, written out here rather than read from Method.draw_shape.
    expected = {Kind.MCMC: (SETTINGS.chains, SETTINGS.draws), Kind.APPROXIMATION: (1, SETTINGS.vi_draws),
                Kind.POINT: (1, 1), Kind.PARTICLES: (SETTINGS.chains, SETTINGS.draws)}[kind.kind]
    assert_canonical_draws(fit.draws, SPEC, *expected)
    for group in kind.groups(SETTINGS, get_backend(name).stores_approximation):
        assert group in fit.draws.children, group
    if kind.multi_start:
        assert len(fit.start_log_densities) == SETTINGS.map_starts
    if kind.kind is Kind.POINT:
        assert fit.point_log_density == pytest.approx(log_density(SPEC, data.x, data.y, fit.point), rel=1e-6)


@pytest.mark.parametrize("name, method", PAIRS)
def test_same_seed_same_draws(name, method, fits):
    pair = fits(name, method)
    if pair is None:  # outside the table: answered unsupported (fits)
        return
    first, again = pair
    assert first.status == again.status == "ok", first.reason
    for var in SPEC.param_shapes():
        np.testing.assert_array_equal(first.draws["posterior"][var].values, again.draws["posterior"][var].values,
                                      err_msg=f"{name}/{method}: {var}")
    for field in ("log_p", "log_q", "log_jacobian", "loss", "start_log_densities"):
        a, b = getattr(first, field), getattr(again, field)
        assert (a is None) == (b is None), field
        if a is not None:
            np.testing.assert_array_equal(np.asarray(a, float), np.asarray(b, float), err_msg=f"{name}/{method}: {field}")


@pytest.mark.parametrize("name, method", [p for p in PAIRS if p.values[1] in APPROXIMATIONS])
def test_log_p_less_log_jacobian_is_the_oracle(name, method, fits, data):
    """Approximations record, per draw, the model's log density on the unconstrained space
    (log p) and the transform's log |Jacobian|; their difference is the oracle's density there."""
    pair = fits(name, method)
    if pair is None:  # outside the table: answered unsupported (fits)
        return
    fit, _ = pair
    assert fit.status == "ok", fit.reason
    n = SETTINGS.vi_draws
    for array in (fit.log_p, fit.log_q, fit.log_jacobian):
        assert array is not None and np.shape(array) == (n,)
    post = fit.draws["posterior"]
    oracle = [log_density(SPEC, data.x, data.y, {v: post[v].values[0, i] for v in SPEC.param_shapes()})
              for i in range(n)]
    np.testing.assert_allclose(np.asarray(fit.log_p) - np.asarray(fit.log_jacobian), oracle, rtol=1e-6, atol=1e-6)
    # Stored the same way by every backend: sample_stats over (chain, draw), as on the Fit.
    stats = fit.draws["sample_stats"]
    for array in ("log_p", "log_q", "log_jacobian"):
        assert stats[array].dims == ("chain", "draw")
        np.testing.assert_array_equal(stats[array].values[0], np.asarray(getattr(fit, array), float))
    if fit.loss is not None:
        np.testing.assert_array_equal(fit.draws["optimisation"]["loss"].values, np.asarray(fit.loss, float))
    # The approximation's parameters, where the engine reports them, in one group of one shape.
    if method_named(method).approximation_parameters:
        backend = get_backend(name)
        assert ("approximation" in fit.draws.children) == backend.stores_approximation
        if backend.stores_approximation:
            approx = fit.draws["approximation"]
            d = approx.sizes["unconstrained"]
            assert approx["mean"].dims == ("unconstrained",)
            assert d == SPEC.K * SPEC.D + SPEC.n_sigma + SPEC.K - 1  # w, sigma, pi's free simplex coordinates
            expected = {"laplace": {"mean", "cov"}, "advi-meanfield": {"mean", "std"},
                        "advi-minibatch-meanfield": {"mean", "std"}}.get(method, {"mean", "std", "cov"})
            assert set(approx.data_vars) == expected
            if "cov" in expected:
                cov = approx["cov"].values
                np.testing.assert_allclose(cov, cov.T, atol=1e-12)
                assert np.all(np.linalg.eigvalsh(cov) > 0)


# --- the failure policy ---------------------------------------------------------------------------

class _Exploding(Backend):
    name = "exploding"
    methods = {"nuts": "_nuts"}

    def versions(self):
        return {"exploding": "1"}

    def log_density(self, spec, dataset, params):
        return 0.0

    def _nuts(self, spec, dataset, method, settings, seed):
        raise ValueError("engine said no\n  at line 2")


class _BadPhase(_Exploding):
    def _nuts(self, spec, dataset, method, settings, seed):
        from backends.base import Fit

        return Fit(backend=self.name, method=method, status="failed", reason="x", timings={"warmup_and_io": 1.0})


def test_an_engine_exception_is_a_failed_fit_with_message_and_traceback(data):
    fit = _Exploding().fit(SPEC, data, "nuts", SETTINGS)
    assert fit.status == "failed"
    assert fit.reason == "ValueError: engine said no at line 2"
    assert "Traceback" in fit.traceback and "engine said no" in fit.traceback
    assert _Exploding().fit(SPEC, data, "advi-fullrank", SETTINGS).status == "unsupported"


def test_a_timing_phase_outside_the_shared_list_is_an_error(data):
    from models.errors import MixbenchError

    with pytest.raises(MixbenchError, match="timings: unknown phase"):
        _BadPhase().fit(SPEC, data, "nuts", SETTINGS)


# --- the kind check: an adapter whose output breaks its method's kind fails ------------------------

def _posterior(chains: int, draws: int) -> dict[str, np.ndarray]:
    shapes = SPEC.param_shapes()
    post = {name: np.ones((chains, draws, *shape)) for name, shape in shapes.items()}
    post["pi"] = np.full((chains, draws, SPEC.K), 1.0 / SPEC.K)
    return post


class _Faithful(Backend):
    """A fake adapter whose fits keep every promise of their method's kind; ``defect`` breaks one."""

    name = "faithful"
    methods = {"nuts": "_nuts", "advi-fullrank": "_advi", "pathfinder": "_advi", "map": "_map"}
    defect: str | None = None

    def versions(self):
        return {"faithful": "1"}

    def log_density(self, spec, dataset, params):
        return 0.0

    def _nuts(self, spec, dataset, method, settings, seed):
        chains = settings.chains - (self.defect == "chains")
        stats = {} if self.defect == "sample_stats" else {"diverging": np.zeros((chains, settings.draws), bool)}
        return Fit(backend=self.name, method=method, status="ok",
                   draws=canonical_datatree(spec, _posterior(chains, settings.draws), stats))

    def _advi(self, spec, dataset, method, settings, seed):
        n = settings.vi_draws
        draws = canonical_datatree(spec, _posterior(1, n))
        labels = [f"z[{i}]" for i in range(3)]
        if self.defect != "approximation_group":
            draws["approximation"] = approximation_group(labels, np.zeros(3), np.ones(3), np.eye(3))
        return Fit(backend=self.name, method=method, status="ok", draws=draws, log_p=np.zeros(n),
                   log_jacobian=np.zeros(n), log_q=None if self.defect == "log_q" else np.zeros(n))

    def _map(self, spec, dataset, method, settings, seed):
        point = {name: values[0, 0] for name, values in _posterior(1, 1).items()}
        return Fit(backend=self.name, method=method, status="ok",
                   draws=None if self.defect == "no_draws" else canonical_datatree(spec, _posterior(1, 1)),
                   point=point, point_log_density=None if self.defect == "point_log_density" else -1.0)


def test_a_faithful_fake_adapter_passes_the_kind_check(data):
    settings = FitSettings(chains=2, draws=5, vi_draws=4, map_starts=2, pathfinder_resampling="none")
    for method in _Faithful.methods:
        fit = _Faithful().fit(SPEC, data, method, settings, seed=1)
        assert fit.status == "ok", (method, fit.reason)


@pytest.mark.parametrize("defect, method, reason", [
    ("chains", "nuts", "contract: broken/nuts (mcmc): the posterior has (chain, draw) = (1, 5), expected (2, 5)"),
    ("sample_stats", "nuts", "contract: broken/nuts (mcmc): the draws lack group(s) sample_stats"),
    ("log_q", "advi-fullrank", "contract: broken/advi-fullrank (approximation): the fit does not set log_q"),
    ("approximation_group", "advi-fullrank",
     "contract: broken/advi-fullrank (approximation): the draws lack group(s) approximation"),
    ("no_draws", "map", "contract: broken/map (point): the fit has no draws"),
    ("point_log_density", "map", "contract: broken/map (point): the fit does not set point_log_density"),
])
def test_a_broken_fake_adapter_fails_the_kind_check(defect, method, reason, data):
    """One promise broken at a time: the fit fails with a reason naming it."""
    broken = type("_Broken", (_Faithful,), {"name": "broken", "defect": defect})()
    settings = FitSettings(chains=2, draws=5, vi_draws=4, map_starts=2, pathfinder_resampling="none")
    fit = broken.fit(SPEC, data, method, settings, seed=1)
    assert (fit.status, fit.reason) == ("failed", reason)


def test_pathfinder_resampled_by_psis_must_keep_its_pool(data):
    """The importance-resampled trait: with resampling on, the pool's groups are required."""
    fit = _Faithful().fit(SPEC, data, "pathfinder", FitSettings(vi_draws=4, pathfinder_resampling="psis"), seed=1)
    assert (fit.status, fit.reason) == (
        "failed", "contract: faithful/pathfinder (approximation): the draws lack group(s) "
                  "importance_sampling, importance_proposal")
    # One path has no pool to resample between (Stan returns its draws as they are): no groups due.
    one_path = FitSettings(vi_draws=4, pathfinder_resampling="psis", pathfinder_paths=1)
    assert _Faithful().fit(SPEC, data, "pathfinder", one_path, seed=1).status == "ok"
