"""The NumPyro backend: NUTS recovery, canonical output, reproducibility, precision, timings."""

import importlib
from itertools import permutations

import numpy as np
import pytest

from backends.base import FitSettings
from tests.conftest import assert_canonical_draws, lazy_module
from models import Dataset, MixbenchError, MixtureSpec, get_scenario, log_density, random_point

# JAX and the backend load when a test runs, not at collection (tests/test_imports.py).
jax = lazy_module("jax")
numpyro_backend = lazy_module("backends.numpyro")

BACKEND = "numpyro"  # read by the shared `backend` fixture (tests/conftest.py)

FORUM = get_scenario("forum")
# Short chains: at N = 3000 the forum posterior is narrow and NUTS mixes within a few hundred draws.
NUTS_SETTINGS = FitSettings(chains=2, warmup=300, draws=300)


@pytest.fixture(scope="module")
def forum_data():
    return FORUM.simulate(seed=11, N=3000)


@pytest.fixture(scope="module")
def forum_fit(backend, forum_data):
    return backend.fit(FORUM.spec, forum_data, "nuts", NUTS_SETTINGS, seed=5)


def best_permutation(estimate: np.ndarray, truth: np.ndarray) -> tuple[int, ...]:
    """Component order of ``estimate`` (K x ...) closest to ``truth`` in squared error."""
    K = truth.shape[0]
    return min(permutations(range(K)), key=lambda p: float(np.sum((estimate[list(p)] - truth) ** 2)))


def test_nuts_recovers_forum_truth_per_chain(forum_fit):
    assert forum_fit.ok, forum_fit.reason
    truth = FORUM.truth
    post = forum_fit.draws.posterior
    for chain in range(NUTS_SETTINGS.chains):
        # Chains may settle in different labelings; each is matched to the truth on its own.
        w = post["w"].isel(chain=chain).mean("draw").values
        order = list(best_permutation(w, np.asarray(truth["w"])))
        np.testing.assert_allclose(w[order], truth["w"], atol=0.05)
        sigma = float(post["sigma"].isel(chain=chain).mean())
        assert sigma == pytest.approx(truth["sigma"], rel=0.10)
        pi = post["pi"].isel(chain=chain).mean("draw").values
        np.testing.assert_allclose(pi[order], truth["pi"], atol=0.05)


def test_nuts_output_is_canonical(forum_fit):
    tree = forum_fit.draws
    assert_canonical_draws(tree, FORUM.spec, chains=2, n_draws=300)
    stats = tree.sample_stats
    for name in ("diverging", "n_steps", "tree_depth", "lp", "energy", "acceptance_rate", "step_size"):
        assert stats[name].dims == ("chain", "draw"), name
    assert tree.attrs["engine"] == "numpyro"
    expected = "parallel" if jax.local_device_count() >= 2 else "sequential"
    assert tree.attrs["chain_method"] == expected
    assert tree.attrs["engine_dtype"] == "float64"


def test_nuts_engine_facts_and_timings(forum_fit):
    assert forum_fit.engine == "numpyro"
    assert forum_fit.precision == "float64"
    assert {"numpyro", "jax", "jaxlib"} <= set(forum_fit.versions)
    for phase in ("compile", "warmup", "sampling", "extraction"):
        assert forum_fit.timings[phase] > 0, phase
    sampled_steps = int(forum_fit.draws.sample_stats["n_steps"].sum())
    # Gradient evaluations count warm-up leapfrog steps too, which are at least one per iteration.
    assert forum_fit.grad_evals >= sampled_steps + NUTS_SETTINGS.chains * NUTS_SETTINGS.warmup
    assert forum_fit.divergences == int(forum_fit.draws.sample_stats["diverging"].sum())
    assert forum_fit.settings["draws"] == 300 and forum_fit.seed == 5


def test_nuts_same_seed_same_draws(backend, forum_data, forum_fit):
    again = backend.fit(FORUM.spec, forum_data, "nuts", NUTS_SETTINGS, seed=5)
    for name in ("w", "sigma", "pi"):
        np.testing.assert_array_equal(again.draws.posterior[name].values, forum_fit.draws.posterior[name].values)


def test_nuts_float32_really_runs_in_float32(backend):
    """float32 and slope ordering: both recorded and honoured."""
    spec = FORUM.spec.with_(ordering="slope")
    data = FORUM.simulate(seed=3, N=500)
    settings = FitSettings(chains=2, warmup=150, draws=100, precision="float32")
    fit = backend.fit(spec, data, "nuts", settings, seed=1)
    assert fit.ok and fit.precision == "float32"
    assert fit.draws.attrs["engine_dtype"] == "float32"
    assert fit.draws.sample_stats["lp"].dtype == np.float32
    assert fit.draws.sample_stats["step_size"].dtype == np.float32
    w = fit.draws.posterior["w"].values[..., 0]
    assert np.all(np.diff(w, axis=-1) > 0), "slope ordering violated"
    np.testing.assert_allclose(w.mean(axis=(0, 1)), [-1.0, 3.0], atol=0.1)


def test_chain_method_falls_back_to_sequential():
    devices = jax.local_device_count()
    assert numpyro_backend.NumPyroBackend.chain_method(FitSettings(chains=2, parallel_chains=False)) == "sequential"
    assert numpyro_backend.NumPyroBackend.chain_method(FitSettings(chains=devices + 1)) == "sequential"
    assert numpyro_backend.NumPyroBackend.chain_method(FitSettings(chains=1)) == "sequential"
    if devices >= 2:
        assert numpyro_backend.NumPyroBackend.chain_method(FitSettings(chains=2)) == "parallel"


def test_log_density_compiled_once_per_spec(backend):
    spec = MixtureSpec(K=2, D=2, intercept=True)
    rng = np.random.default_rng(0)
    data = Dataset(x=rng.uniform(-1, 1, (50, 2)), y=rng.normal(size=50))
    for _ in range(3):
        point = random_point(spec, rng)
        assert backend.log_density(spec, data, point) == pytest.approx(
            log_density(spec, data.x, data.y, point), rel=1e-10)
    assert importlib.import_module("backends.numpyro.model")._log_density_fn(spec)._cache_size() == 1


def test_forum_replay_likelihoods_are_unsupported_not_raised(backend, forum_data):
    spec = FORUM.spec.with_(likelihood="forum-original")
    fit = backend.fit(spec, forum_data, "nuts", NUTS_SETTINGS)
    assert fit.status == "unsupported" and "not implemented in the numpyro backend" in fit.reason
    with pytest.raises(MixbenchError, match="likelihood"):
        backend.log_density(spec, forum_data, FORUM.truth)


def test_other_nuts_samplers_are_unsupported(backend, forum_data):
    fit = backend.fit(FORUM.spec, forum_data, "nuts", FitSettings(sampler="nutpie"))
    assert fit.status == "unsupported" and "nutpie" in fit.reason


# -- NUTS programs stored whole (backends/jax_programs.py) ---------------------------------------

SMALL_NUTS = FitSettings(chains=2, warmup=40, draws=30)


@pytest.fixture
def program_store(monkeypatch, tmp_path):
    """An empty program store for this test (the store lives under XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from backends.jax_programs import programs_dir

    return programs_dir()


def test_nuts_programs_are_stored_then_loaded_with_identical_draws(program_store, forum_data):
    first = numpyro_backend.NumPyroBackend().fit(FORUM.spec, forum_data, "nuts", SMALL_NUTS, seed=3)
    assert first.ok, first.reason
    assert first.draws.attrs["programs"] == "compiled"
    assert len(list(program_store.glob("*.pkl"))) == 2  # warm-up and sampling
    # A new backend has no program in memory: it must load both from disk, and they must be the
    # same programs (same draws, bit for bit).
    again = numpyro_backend.NumPyroBackend().fit(FORUM.spec, forum_data, "nuts", SMALL_NUTS, seed=3)
    assert again.draws.attrs["programs"] == "loaded"
    for name in ("w", "sigma", "pi"):
        np.testing.assert_array_equal(again.draws.posterior[name].values, first.draws.posterior[name].values)
    np.testing.assert_array_equal(again.draws.sample_stats["n_steps"].values,
                                  first.draws.sample_stats["n_steps"].values)
    assert again.grad_evals == first.grad_evals


def test_nuts_program_key_follows_every_setting_that_shapes_the_program(program_store, forum_data):
    backend = numpyro_backend.NumPyroBackend()
    backend.fit(FORUM.spec, forum_data, "nuts", SMALL_NUTS, seed=3)
    longer = FitSettings(chains=2, warmup=40, draws=31)
    fit = backend.fit(FORUM.spec, forum_data, "nuts", longer, seed=3)
    assert fit.draws.attrs["programs"] == "compiled"
    assert fit.draws.posterior.sizes["draw"] == 31
    assert len(list(program_store.glob("*.pkl"))) == 4
    # The data are arguments, not constants: new data of the same size reuse the programs.
    other = FORUM.simulate(seed=12, N=forum_data.N)
    reuse = numpyro_backend.NumPyroBackend().fit(FORUM.spec, other, "nuts", SMALL_NUTS, seed=3)
    assert reuse.draws.attrs["programs"] == "loaded"


def test_unreadable_stored_program_is_compiled_again(program_store, forum_data):
    numpyro_backend.NumPyroBackend().fit(FORUM.spec, forum_data, "nuts", SMALL_NUTS, seed=3)
    for path in program_store.glob("*.pkl"):
        path.write_bytes(b"torn")
    fit = numpyro_backend.NumPyroBackend().fit(FORUM.spec, forum_data, "nuts", SMALL_NUTS, seed=3)
    assert fit.ok and fit.draws.attrs["programs"] == "compiled"
    assert all(path.stat().st_size > 1000 for path in program_store.glob("*.pkl"))


def test_stored_program_that_fails_to_run_is_dropped_and_recompiled(program_store, forum_data, monkeypatch):
    from backends import jax_programs

    reference = numpyro_backend.NumPyroBackend().fit(FORUM.spec, forum_data, "nuts", SMALL_NUTS, seed=3)
    real_load = jax_programs.load
    failures = []

    def load_broken(key, devices):
        compiled = real_load(key, devices)

        def run(*args):  # what XLA raises when a stored executable lacks a kernel
            failures.append(key)
            raise jax.errors.JaxRuntimeError("NOT_FOUND: Function fusion not found (type id: 1)")

        return None if compiled is None else run

    monkeypatch.setattr(jax_programs, "load", load_broken)
    fit = numpyro_backend.NumPyroBackend().fit(FORUM.spec, forum_data, "nuts", SMALL_NUTS, seed=3)
    assert len(failures) == 2  # warm-up and sampling, each once
    assert fit.ok and fit.draws.attrs["programs"] == "compiled"
    assert fit.timings["compile"] > fit.timings["warmup"]  # the recompiles are charged to compile
    np.testing.assert_array_equal(fit.draws.posterior["w"].values, reference.draws.posterior["w"].values)


def test_own_nuts_driver_gives_numpyro_mcmcs_draws_at_the_same_key(backend):
    """The backend's stored NUTS programs (_NUTSPrograms) replace numpyro.infer.MCMC; pinned
    here to MCMC itself: the same key gives the same chain, draw for draw."""
    from functools import partial

    from jax import random
    from numpyro.infer import MCMC, NUTS

    from models.numpyro_model import canonical_values as _canonical
    from backends.numpyro.model import _device_data, _precision
    from models.numpyro_model import mixture_model

    data = FORUM.simulate(seed=2, N=200)
    settings = FitSettings(chains=1, warmup=30, draws=20)
    fit = backend.fit(FORUM.spec, data, "nuts", settings, seed=3)
    assert fit.ok, fit.reason
    with _precision("float64"):
        x, y = _device_data(data, "float64")
        kernel = NUTS(partial(mixture_model, FORUM.spec), target_accept_prob=settings.target_accept,
                      max_tree_depth=settings.max_treedepth)
        mcmc = MCMC(kernel, num_warmup=settings.warmup, num_samples=settings.draws, num_chains=1,
                    progress_bar=False)
        # The backend splits the fit's key into one per chain (random.split(PRNGKey(seed), chains)).
        mcmc.run(random.split(random.PRNGKey(3), 1)[0], x, y)
        public = _canonical(FORUM.spec, jax.device_get(mcmc.get_samples()), (settings.draws,))
    for name, values in public.items():
        np.testing.assert_allclose(fit.draws.posterior[name].values[0], values, rtol=1e-8, atol=1e-10,
                                   err_msg=name)
