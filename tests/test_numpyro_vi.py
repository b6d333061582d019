"""The NumPyro backend's VI methods: ADVI (full data and minibatch), Pathfinder, MAP."""

import json

import numpy as np
import pytest
from scipy import special, stats

from backends.base import FitSettings
from models import MixbenchError, get_scenario, log_density

BACKEND = "numpyro"  # read by the shared `backend` fixture (tests/conftest.py)

VI_METHODS = ["advi-meanfield", "advi-fullrank", "advi-minibatch-meanfield", "advi-minibatch-fullrank",
              "pathfinder"]
FORUM = get_scenario("forum")
# Ordered by slope, the forum posterior has one mode: every method should find it.
ORDERED = FORUM.spec.with_(ordering="slope")
# Adam at 0.01 for 3000 updates: enough on this data for every method (facts.md: PyMC's default
# optimiser fails here, adam(0.01) does not). Minibatches of 128 of the 2000 points.
RECOVERY = FitSettings(optimizer="adam", learning_rate=0.01, vi_iterations=3000, vi_draws=500, batch_size=128)


@pytest.fixture(scope="module")
def forum_data():
    return FORUM.simulate(seed=7, N=2000)


@pytest.fixture(scope="module")
def recovery_fits(backend, forum_data):
    return {m: backend.fit(ORDERED, forum_data, m, RECOVERY, seed=2) for m in VI_METHODS + ["map"]}


def oracle_at_draws(spec, data, fit, n):
    post = fit.draws.posterior
    return np.array([log_density(spec, data.x, data.y, {k: post[k].values[0, i] for k in post.data_vars})
                     for i in range(n)])


@pytest.mark.parametrize(("method", "scenario"), [
    # Every method also runs on the ordered forum spec below; these add the other spec shapes and
    # each guide once: three-lines is K = 3, D = 2, intercepts, per-component sigma, unordered;
    # gmm3 is D = 0 (no slopes at all).
    ("advi-fullrank", "three-lines"),
    ("pathfinder", "three-lines"),
    ("advi-minibatch-meanfield", "gmm3"),
    ("map", "gmm3"),
])
def test_every_method_runs_on_small_data(backend, method, scenario):
    sc = get_scenario(scenario)
    data = sc.simulate(seed=1, N=300)
    settings = FitSettings(vi_iterations=200, vi_draws=40, batch_size=64)
    fit = backend.fit(sc.spec, data, method, settings, seed=0)
    assert fit.ok, fit.reason
    # MAP runs map_starts optimisations and sums their iterations; its loss is the best start's.
    starts = settings.map_starts if method == "map" else 1
    assert fit.engine == "numpyro" and fit.iterations is not None and fit.iterations <= 200 * starts
    assert set(fit.timings) == {"compile", "optimisation", "extraction"}
    assert all(t >= 0 for t in fit.timings.values()) and fit.timings["optimisation"] > 0
    if method == "map":
        assert 1 <= len(fit.loss) <= 200
    elif method == "pathfinder":
        # Four paths: the loss is the best path's objective along its L-BFGS iterations, and
        # iterations the longest path's.
        assert 2 <= len(fit.loss) <= fit.iterations + 1
    else:
        assert len(fit.loss) == fit.iterations
    post = fit.draws.posterior
    n = 1 if method == "map" else 40
    K, D = sc.spec.K, sc.spec.D
    assert post["w"].shape == (1, n, K, D) and post["b"].shape == (1, n, K) and post["pi"].shape == (1, n, K)
    assert post["sigma"].shape == ((1, n) if sc.spec.sigma == "shared" else (1, n, K))
    if method == "map":
        assert fit.point["pi"].shape == (K,) and fit.log_q is None
    else:
        for arr in (fit.log_p, fit.log_jacobian, fit.log_q):
            assert arr.shape == (n,) and np.all(np.isfinite(arr))


@pytest.mark.parametrize("method", VI_METHODS + ["map"])
def test_vi_recovers_ordered_forum_truth(recovery_fits, method):
    fit = recovery_fits[method]
    assert fit.ok, fit.reason
    post = fit.draws.posterior
    # Ordered by slope: component 0 is the -1 line, component 1 the 3 line.
    np.testing.assert_allclose(post["w"].mean(("chain", "draw")).values[:, 0], [-1.0, 3.0], atol=0.1)
    assert float(post["sigma"].mean()) == pytest.approx(0.1, rel=0.2)


def test_meanfield_log_q_matches_scipy_on_the_guide(recovery_fits, forum_data):
    """Rebuild each draw's unconstrained point from the constrained draw and evaluate the guide's
    Normal(loc, scale) there with SciPy: the forum spec ordered by slope has sites pi (stick-breaking,
    K = 2: logit pi_0), w_first (ordered: w_0, log(w_1 - w_0)) and sigma (Uniform(0, 1): logit)."""
    fit = recovery_fits["advi-meanfield"]
    q = {k: np.asarray(v) for k, v in json.loads(fit.draws.attrs["approximation"]).items()}
    post = fit.draws.posterior
    w = post["w"].values[0, :, :, 0]
    z = {
        "pi": special.logit(post["pi"].values[0, :, :1]),
        "w_first": np.stack([w[:, 0], np.log(w[:, 1] - w[:, 0])], axis=1),
        "sigma": special.logit(post["sigma"].values[0]),
    }
    log_q = sum(stats.norm.logpdf(z[s], q[f"{s}_auto_loc"], q[f"{s}_auto_scale"]).reshape(len(w), -1).sum(1)
                for s in z)
    np.testing.assert_allclose(fit.log_q, log_q, rtol=1e-6)


@pytest.mark.parametrize("method", VI_METHODS)
def test_log_p_minus_jacobian_is_the_oracle(recovery_fits, forum_data, method):
    fit = recovery_fits[method]
    expected = oracle_at_draws(ORDERED, forum_data, fit, 20)
    np.testing.assert_allclose(fit.log_p[:20] - fit.log_jacobian[:20], expected, rtol=1e-8)


def test_map_point_is_a_local_maximum_of_the_oracle(recovery_fits, forum_data):
    fit = recovery_fits["map"]
    at_map = log_density(ORDERED, forum_data.x, forum_data.y, fit.point)
    assert fit.point_log_density == pytest.approx(at_map, rel=1e-10)
    assert fit.converged
    for name, delta in (("w", 2e-3), ("sigma", 2e-3)):
        for sign in (1, -1):
            moved = dict(fit.point, **{name: fit.point[name] + sign * delta})
            assert log_density(ORDERED, forum_data.x, forum_data.y, moved) < at_map


def test_same_seed_same_result(backend, forum_data, recovery_fits):
    for method in ("advi-fullrank", "pathfinder"):
        again = backend.fit(ORDERED, forum_data, method, RECOVERY, seed=2)
        first = recovery_fits[method]
        np.testing.assert_array_equal(again.draws.posterior["w"].values, first.draws.posterior["w"].values)
        np.testing.assert_array_equal(again.loss, first.loss)
        np.testing.assert_array_equal(again.log_q, first.log_q)


def test_minibatch_without_total_size_is_far_too_wide(backend):
    """Without total_size the 128-point batch counts as 128 points, not N = 5000: the posterior
    it approximates is that of 128 points, slope sd about sqrt(5000 / 128) ~ 6 times too wide.
    Full-rank, adam(0.01), 10000 updates: both runs have converged to their own target."""
    data = FORUM.simulate(seed=4, N=5000)
    sds = {}
    for total_size in (True, False):
        settings = FitSettings(vi_iterations=10_000, vi_draws=1000, minibatch_total_size=total_size)
        fit = backend.fit(ORDERED, data, "advi-minibatch-fullrank", settings, seed=1)
        assert fit.ok, fit.reason
        sds[total_size] = fit.draws.posterior["w"].std(("chain", "draw")).values[:, 0]
    assert np.all(sds[False] > 3 * sds[True]), sds


def test_tolerance_stops_early_and_budget_caps(backend, forum_data):
    loose = backend.fit(ORDERED, forum_data, "advi-meanfield",
                        FitSettings(vi_iterations=1000, vi_tolerance=10.0, vi_draws=10), seed=0)
    assert loose.converged and loose.iterations == 100 and len(loose.loss) == 100
    strict = backend.fit(ORDERED, forum_data, "advi-meanfield",
                         FitSettings(vi_iterations=250, vi_tolerance=1e-12, vi_draws=10), seed=0)
    assert not strict.converged and strict.iterations == 250 and len(strict.loss) == 250


@pytest.mark.slow  # float32 recompiles every eager operation of the set-up: ~10 s
def test_float32_vi_runs_in_float32(backend, forum_data):
    fit = backend.fit(ORDERED, forum_data, "advi-fullrank",
                      FitSettings(vi_iterations=200, vi_draws=10, precision="float32"), seed=0)
    assert fit.ok and fit.precision == "float32" and fit.draws.attrs["engine_dtype"] == "float32"


def test_bad_minibatch_and_unknown_optimizer(backend, forum_data):
    with pytest.raises(MixbenchError, match="batch_size"):
        backend.fit(ORDERED, FORUM.simulate(seed=0, N=50), "advi-minibatch-meanfield", FitSettings())
    fit = backend.fit(ORDERED, forum_data, "advi-meanfield", FitSettings(optimizer="adadelta"))
    assert fit.status == "unsupported" and "adadelta" in fit.reason


def test_diverging_optimisation_is_a_failed_fit_not_an_exception(backend, forum_data):
    settings = FitSettings(optimizer="sgd", learning_rate=1e3, vi_iterations=300)
    fit = backend.fit(ORDERED, forum_data, "advi-meanfield", settings, seed=0)
    assert fit.status == "failed" and "non-finite" in fit.reason
    assert fit.draws is None and fit.loss is not None and not np.isfinite(fit.loss[-1])


def test_guide_internals_match_the_public_guide_calls():
    """Pin of the NumPyro guide internals ``backends.numpyro.vi._SVIProgram`` uses (docs/
    architecture.md, private engine paths): ``guide._init_locs`` orders the packed starting point
    as NumPyro's own ``init_to_value`` does, and ``guide._unpack_latent`` unpacks the packed
    vector as the public ``guide.median`` does. Remove with those two calls once NumPyro's
    AutoContinuous exposes its packing order."""
    import jax
    import jax.numpy as jnp
    from jax import random
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal
    from numpyro.infer.initialization import init_to_value
    from numpyro.optim import Adam

    from backends.numpyro.model import _constrain, _device_data, _uniform_init
    from backends.numpyro.vi import _SVIProgram

    spec = ORDERED
    data = FORUM.simulate(seed=7, N=200)
    x, y = _device_data(data, "float64")
    program = _SVIProgram(spec, "advi-fullrank", FitSettings(vi_iterations=10))
    z0 = _uniform_init(spec, random.PRNGKey(4), y.dtype)
    state = program._init_state(random.PRNGKey(4), random.PRNGKey(5), x, y)
    params = program._get_params(state, x, y)
    # The public way to start the guide at z0: init_to_value at its constrained values.
    public = AutoMultivariateNormal(program.model, init_loc_fn=init_to_value(values=_constrain(spec, z0)))
    svi = SVI(program.model, public, Adam(0.01), Trace_ELBO())
    public_params = svi.get_params(svi.init(random.PRNGKey(5), x, y))
    np.testing.assert_allclose(params["auto_loc"], public_params["auto_loc"], rtol=1e-10, atol=1e-12)
    # Unpacking the location, then constraining it, is the guide's public median.
    unpacked = jax.vmap(program.guide._unpack_latent)(jnp.asarray(params["auto_loc"])[None])
    median = program.guide.median(params)
    for name, value in _constrain(spec, {k: v[0] for k, v in unpacked.items()}).items():
        np.testing.assert_allclose(value, median[name], rtol=1e-10, atol=1e-12)
