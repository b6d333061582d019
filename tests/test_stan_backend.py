"""The Stan backend: NUTS through pystan (and CmdStan where installed), names, seeds, caches."""

import itertools
import os
import time

import numpy as np
import pytest

from backends import FitSettings
from backends.stan import NO_CMDSTAN, cmdstan_path, pystan_stan_version
from models.stan_model import flat_to_canonical, parse_flat_name, program_code, stan_data, stan_parameters
from models import Dataset, MixbenchError, MixtureSpec, SigmaPrior, get_scenario, log_density, random_point
from tests.conftest import AGREEMENT_SPECS, assert_canonical_draws, make_data

BACKEND = "stan"  # read by the shared `backend` fixture (tests/conftest.py)

pytestmark = pytest.mark.stan

needs_cmdstan = pytest.mark.skipif("cmdstan_path() is None", reason=NO_CMDSTAN)  # asked at set-up: cmdstanpy is an engine


def best_permutation(estimate: np.ndarray, truth: np.ndarray) -> tuple[int, ...]:
    """The relabelling of estimate's components closest to the truth's."""
    K = truth.shape[0]
    return min(itertools.permutations(range(K)),
               key=lambda perm: float(np.abs(estimate[list(perm)] - truth).sum()))


def assert_recovers_forum_truth(fit, truth):
    """Per chain (chains may settle in different labelings): slopes within 0.05, sigma within 10%."""
    post = fit.draws["posterior"]
    for chain in post["chain"].values:
        w = post["w"].sel(chain=chain).mean("draw").values
        perm = best_permutation(w, truth["w"])
        np.testing.assert_allclose(w[list(perm)], truth["w"], atol=0.05)
        sigma = float(post["sigma"].sel(chain=chain).mean("draw"))
        assert abs(sigma - float(truth["sigma"])) < 0.1 * float(truth["sigma"])


@pytest.fixture(scope="module")
def forum_fit(backend):
    scenario = get_scenario("forum")
    data = scenario.simulate(2024, N=3000)
    settings = FitSettings(chains=2, warmup=400, draws=400, sampler="pystan")
    return scenario, data, backend.fit(scenario.spec, data, "nuts", settings, seed=7)


def small_fit(backend, scenario_name: str, seed: int, N: int = 200, **settings):
    scenario = get_scenario(scenario_name)
    data = scenario.simulate(1, N=N)
    options = dict(chains=1, warmup=100, draws=30, sampler="pystan") | settings
    return scenario, backend.fit(scenario.spec, data, "nuts", FitSettings(**options), seed=seed)


# --- NUTS through pystan ---------------------------------------------------------------------------

def test_pystan_nuts_recovers_forum_truth(forum_fit):
    scenario, data, fit = forum_fit
    assert fit.status == "ok", fit.reason
    assert fit.engine == "pystan"
    assert_recovers_forum_truth(fit, data.truth)


def test_nuts_fit_records_timings_costs_and_versions(forum_fit):
    _, _, fit = forum_fit
    assert set(fit.timings) == {"compile", "warmup", "sampling", "extraction"}
    assert all(seconds >= 0 for seconds in fit.timings.values())
    assert fit.timings["warmup"] > 0 and fit.timings["sampling"] > 0
    # Stan's own clocks sit inside the wall time of the whole run.
    assert fit.timings["warmup"] + fit.timings["sampling"] <= fit.draws.attrs["run_wall_s"] + 0.5
    stats = fit.draws["sample_stats"]
    # Gradient evaluations count warm-up too, so they exceed the kept draws' leapfrog steps.
    assert fit.grad_evals > int(stats["n_steps"].sum())
    assert fit.divergences == int(stats["diverging"].sum())
    assert fit.versions["stan"] == pystan_stan_version()
    assert fit.versions["engine"] == "pystan"
    assert fit.versions["cmdstan"] == "not installed" or cmdstan_path() is not None
    assert fit.seed == 7 and fit.settings["chains"] == 2


def test_sample_stats_names_and_types(forum_fit):
    stats = forum_fit[2].draws["sample_stats"]
    assert {"lp", "acceptance_rate", "step_size", "tree_depth", "n_steps", "diverging", "energy"} <= set(stats)
    assert stats["diverging"].dtype == bool
    assert stats["n_steps"].dtype.kind == "i" and stats["tree_depth"].dtype.kind == "i"
    assert stats["lp"].dims == ("chain", "draw") and stats["lp"].shape == (2, 400)
    assert float(stats["acceptance_rate"].min()) >= 0 and float(stats["acceptance_rate"].max()) <= 1


@pytest.mark.parametrize("scenario_name", ["separated", "gmm3", "three-lines"])
def test_canonical_names_dims_and_shapes(backend, scenario_name):
    scenario, fit = small_fit(backend, scenario_name, seed=3)
    assert fit.status == "ok", fit.reason
    post = fit.draws["posterior"]
    spec = scenario.spec
    assert_canonical_draws(fit.draws, spec, chains=1, n_draws=30)
    if spec.ordering == "intercept":
        assert bool((post["b"].diff("component") > 0).all())


def test_same_seed_same_draws_and_no_cached_fit(backend):
    import httpstan.cache
    import httpstan.models

    _, first = small_fit(backend, "forum-small", seed=5, N=300)
    _, again = small_fit(backend, "forum-small", seed=5, N=300)
    _, other = small_fit(backend, "forum-small", seed=6, N=300)
    for name in ("w", "sigma", "pi"):
        a, b, c = (f.draws["posterior"][name].values for f in (first, again, other))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    # Every run sampled afresh: httpstan keeps no seeded fit to serve a repeat from.
    fits = httpstan.cache.model_directory(httpstan.models.calculate_model_name(program_code())) / "fits"
    assert not fits.exists() or not any(fits.iterdir())
    assert again.timings["warmup"] > 0


def test_sequential_chains_add_their_times(backend):
    _, fit = small_fit(backend, "forum-small", seed=9, chains=2, parallel_chains=False)
    attrs = fit.draws.attrs
    assert fit.timings["warmup"] == pytest.approx(sum(attrs["chain_warmup_s"]))
    assert fit.timings["sampling"] == pytest.approx(sum(attrs["chain_sampling_s"]))


# --- programs, engines --------------------------------------------------------------------------

def test_compiled_program_is_cached(backend):
    import httpstan.cache
    import httpstan.models

    spec = MixtureSpec(K=2, D=2, intercept=True)
    x, y = make_data(spec, n=50, seed=123)
    started = time.perf_counter()
    model, compiled = backend.pystan_model(spec, Dataset(x=x, y=y))
    seconds = time.perf_counter() - started
    assert httpstan.models.calculate_model_name(program_code()) in httpstan.cache.list_model_names()
    assert compiled, "the program was compiled again for a new spec and data set"
    assert seconds < 20, f"a cached build took {seconds:.1f} s (a compile takes 30-60 s)"
    same, _ = backend.pystan_model(spec, Dataset(x=x.copy(), y=y.copy()))
    assert same is model


@pytest.mark.skipif("cmdstan_path() is not None", reason="CmdStan is installed here")
def test_engine_selection_without_cmdstan(backend):
    assert backend.engine_for(FitSettings()) == "pystan"
    data = get_scenario("forum-small").simulate(0, N=50)
    spec = get_scenario("forum-small").spec
    forced = backend.fit(spec, data, "nuts", FitSettings(sampler="cmdstanpy"))
    assert forced.status == "unsupported"
    assert NO_CMDSTAN in forced.reason and "cmdstanpy" in forced.reason


def test_unusable_settings_are_unsupported(backend):
    data = get_scenario("forum-small").simulate(0, N=50)
    spec = get_scenario("forum-small").spec
    other = backend.fit(spec, data, "nuts", FitSettings(sampler="nutpie"))
    assert other.status == "unsupported" and "not a Stan engine" in other.reason
    single = backend.fit(spec, data, "nuts", FitSettings(precision="float32"))
    assert single.status == "unsupported" and "float64" in single.reason


def test_bad_seed_raises(backend):
    data = get_scenario("forum-small").simulate(0, N=50)
    with pytest.raises(MixbenchError, match="seed"):
        backend.fit(get_scenario("forum-small").spec, data, "nuts", FitSettings(sampler="pystan"), seed=-1)


# --- names and data ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("w.2.1", ("w", (1, 0))),
    ("w[2,1]", ("w", (1, 0))),
    ("w[2, 1]", ("w", (1, 0))),
    ("theta.3", ("theta", (2,))),
    ("sigma[1]", ("sigma", (0,))),
    ("lp__", ("lp__", ())),
    ("w_free.1.10", ("w_free", (0, 9))),
])
def test_parse_flat_name(name, expected):
    assert parse_flat_name(name) == expected


def _flat_draws(spec: MixtureSpec, style: str):
    """Hand-built Stan output for 2 chains x 3 draws: value = 1000 chain + 100 draw + code."""
    names, codes = ["lp__"], [0.0]
    stan_shapes = {"theta": (spec.K,), "w": (spec.K, spec.D), "sigma": (spec.n_sigma,)}
    if spec.intercept:
        stan_shapes["b"] = (spec.K,)
    for base, shape in stan_shapes.items():
        for index in np.ndindex(*shape):
            one_based = [i + 1 for i in index]
            names.append(f"{base}[{','.join(map(str, one_based))}]" if style == "cmdstanpy"
                         else ".".join([base, *map(str, one_based)]))
            codes.append({"theta": 10, "w": 20, "b": 30, "sigma": 40}[base] + sum(
                (i + 1) * 0.1 ** (n + 1) for n, i in enumerate(index)))
    chain = np.arange(2)[:, None, None] * 1000.0
    draw = np.arange(3)[None, :, None] * 100.0
    return names, chain + draw + np.asarray(codes)[None, None, :]


@pytest.mark.parametrize("style", ["pystan", "cmdstanpy"])
def test_flat_draws_map_to_canonical(style):
    spec = MixtureSpec(K=3, D=2, intercept=True, sigma="per-component")
    names, values = _flat_draws(spec, style)
    out = flat_to_canonical(spec, names, values)
    assert {k: v.shape for k, v in out.items()} == {"w": (2, 3, 3, 2), "b": (2, 3, 3), "sigma": (2, 3, 3),
                                                     "pi": (2, 3, 3)}
    # w[k, d] came from Stan's w[k+1, d+1]; pi from theta.
    assert out["w"][1, 2, 2, 0] == pytest.approx(1000 + 200 + 20 + 0.3 + 0.01)
    assert out["pi"][0, 1, 1] == pytest.approx(100 + 10 + 0.2)
    assert out["b"][1, 0, 0] == pytest.approx(1000 + 30 + 0.1)
    assert out["sigma"][0, 0, 2] == pytest.approx(40 + 0.3)


def test_flat_draws_shared_sigma_and_no_covariates():
    spec = MixtureSpec(K=2, D=0, intercept=True)
    names, values = _flat_draws(spec, "pystan")
    out = flat_to_canonical(spec, names, values)
    assert out["sigma"].shape == (2, 3) and out["w"].shape == (2, 3, 2, 0)
    assert out["sigma"][1, 1] == pytest.approx(1000 + 100 + 40 + 0.1)


def test_flat_draws_missing_column_is_an_error():
    spec = MixtureSpec(K=2, D=1)
    names, values = _flat_draws(spec, "pystan")
    keep = [j for j, n in enumerate(names) if n != "w.2.1"]
    with pytest.raises(ValueError, match=r"w\[2, 1\]"):
        flat_to_canonical(spec, [names[j] for j in keep], values[:, :, keep])


def test_stan_parameters_split_ordered_pieces():
    spec = MixtureSpec(K=3, D=2, ordering="slope", sigma="per-component")
    point = random_point(spec, np.random.default_rng(0))
    pieces = stan_parameters(spec, point)
    np.testing.assert_array_equal(pieces["w_first_ordered"], point["w"][:, 0])
    np.testing.assert_array_equal(pieces["w_free"], point["w"][:, 1:])
    assert pieces["b_ordered"].size == 0 and pieces["b_free"].size == 0
    spec = MixtureSpec(K=2, D=1, intercept=True, ordering="intercept")
    point = random_point(spec, np.random.default_rng(1))
    pieces = stan_parameters(spec, point)
    np.testing.assert_array_equal(pieces["b_ordered"], point["b"])
    assert pieces["b_free"].size == 0 and pieces["w_first_ordered"].size == 0
    assert pieces["sigma"].shape == (1,)
    np.testing.assert_array_equal(pieces["theta"], point["pi"])


def test_stan_data_codes_the_spec():
    spec = AGREEMENT_SPECS["K3-D2-percomp-intercept"]
    x, y = make_data(spec, n=20)
    data = stan_data(spec, Dataset(x=x, y=y))
    assert (data["N"], data["K"], data["D"]) == (20, 3, 2)
    assert data["has_intercept"] == 1 and data["sigma_per_component"] == 1
    assert data["sigma_family"] == 2 and data["sigma_scale"] == 0.7 and data["sigma_shape"] == 0.0
    for prior, code in ((SigmaPrior("gamma", 2.0), 3), (SigmaPrior("invgamma", 1.5, 3.0), 4),
                        (SigmaPrior("lognormal", 0.5, 0.8), 5)):
        coded = stan_data(spec.with_(sigma_prior=prior), Dataset(x=x, y=y))
        assert (coded["sigma_family"], coded["sigma_scale"], coded["sigma_shape"]) == (code, prior.scale, prior.shape)
    np.testing.assert_array_equal(data["alpha"], [1.0, 2.0, 3.5])
    assert stan_data(AGREEMENT_SPECS["K3-D1-order-slope"], Dataset(x=x[:, :1], y=y))["ordering"] == 2
    with pytest.raises(MixbenchError, match="covariate"):
        stan_data(spec, Dataset(x=x[:, :1], y=y))


def test_log_density_outside_support_and_forum_likelihood(backend):
    spec = MixtureSpec(K=2, D=1, ordering="slope")
    x, y = make_data(spec, n=30)
    data = Dataset(x=x, y=y)
    point = {"w": np.array([[1.0], [0.5]]), "sigma": 0.3, "pi": np.array([0.5, 0.5])}
    assert backend.log_density(spec, data, point) == -np.inf
    assert log_density(spec, x, y, point) == -np.inf
    with pytest.raises(MixbenchError, match="not implemented in the stan backend"):
        backend.log_density(spec.with_(likelihood="forum-original"), data, point)


# --- CmdStan (skipped where it is not installed) ---------------------------------------------------

@pytest.mark.cmdstan
@needs_cmdstan
def test_cmdstanpy_is_the_default_engine(backend):
    assert backend.engine_for(FitSettings()) == "cmdstanpy"


@pytest.mark.cmdstan
@needs_cmdstan
def test_cmdstanpy_nuts_recovers_forum_truth(backend):
    scenario = get_scenario("forum")
    data = scenario.simulate(2024, N=3000)
    settings = FitSettings(chains=2, warmup=400, draws=400, sampler="cmdstanpy")
    fit = backend.fit(scenario.spec, data, "nuts", settings, seed=7)
    assert fit.status == "ok", fit.reason
    assert fit.engine == "cmdstanpy"
    assert_recovers_forum_truth(fit, data.truth)
    assert set(fit.timings) == {"compile", "warmup", "sampling", "extraction"}
    assert fit.grad_evals > int(fit.draws["sample_stats"]["n_steps"].sum())
    again = backend.fit(scenario.spec, data, "nuts", settings, seed=7)
    np.testing.assert_array_equal(fit.draws["posterior"]["w"].values, again.draws["posterior"]["w"].values)


@pytest.mark.cmdstan
@needs_cmdstan
def test_cmdstanpy_log_density_matches_oracle(backend):
    rng = np.random.default_rng(42)
    for spec in AGREEMENT_SPECS.values():
        x, y = make_data(spec)
        for _ in range(3):
            point = random_point(spec, rng)
            got = backend.log_density(spec, Dataset(x=x, y=y), point, engine="cmdstanpy")
            assert got == pytest.approx(log_density(spec, x, y, point), rel=1e-8)


@pytest.mark.cmdstan
@needs_cmdstan
def test_cmdstan_executable_is_cached():
    from backends.stan import StanBackend

    first, _ = StanBackend().cmdstan_model()
    stamp = os.path.getmtime(first.exe_file)
    started = time.perf_counter()
    second, compiled = StanBackend().cmdstan_model()
    assert compiled and second.exe_file == first.exe_file
    assert os.path.getmtime(second.exe_file) == stamp
    assert time.perf_counter() - started < 10
