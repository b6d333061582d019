"""Cost measurement: gradient functions are right, the report's cost sections build, the harness
records what it adds around a fit, and every Stan formulation is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from backends import FitSettings, get_backend
from backends.gradients import fixed_point
from bench.report.costs import (
    compile_cache_table,
    cost_record,
    gradient_cost_table,
    harness_overhead_table,
    nuts_cost_curve_table,
)
from bench.report.document import load_inputs, write_report
from bench.run.gradient import finite_difference_gradient, gradient_problem, time_calls
from models import Dataset, log_density, random_point
from tests.conftest import make_data

ROOT = Path(__file__).resolve().parents[1]
FAKE = "tests.fake_backends:QuickBackend"


# --- the gradient problem and the timing helper ---------------------------------------------

def test_gradient_problem_has_the_forum_spec_with_k_components():
    for K in (2, 3):
        spec, dataset = gradient_problem(500, K)
        assert spec.K == K and spec.D == 1 and not spec.intercept and spec.sigma == "shared"
        assert dataset.N == 500 and dataset.truth["w"].shape == (K, 1)
        assert np.isfinite(log_density(spec, dataset.x, dataset.y, dataset.truth))


def test_time_calls_measures_a_known_duration():
    import time

    timing = time_calls(lambda x: time.sleep(0.002), None, repeats=3, min_repeat_s=0.02, warmup_calls=1)
    assert 0.0019 < timing.median < 0.02
    assert timing.minimum <= timing.median <= timing.maximum and timing.calls >= 1


def test_finite_difference_gradient_of_a_quadratic():
    f = lambda x: (float(-0.5 * x @ x + x[0]), None)  # noqa: E731
    x = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(finite_difference_gradient(f, x), -x + np.array([1.0, 0, 0]), rtol=1e-7)


def test_fixed_point_is_the_truth_or_a_seeded_prior_point():
    spec, dataset = gradient_problem(100, 2)
    assert fixed_point(spec, dataset)["w"].tolist() == [[3.0], [-1.0]]
    anonymous = Dataset(x=dataset.x, y=dataset.y)
    first, second = fixed_point(spec, anonymous), fixed_point(spec, anonymous)
    np.testing.assert_array_equal(first["w"], second["w"])


# --- Stan's gradient function ---------------------------------------------------------------

@pytest.fixture(scope="module")
def stan_gradient():
    spec, dataset = gradient_problem(2000, 2)
    f, x0 = get_backend("stan").gradient_function(spec, dataset, FitSettings())
    return spec, dataset, f, x0


@pytest.mark.stan
def test_stan_gradient_matches_finite_differences(stan_gradient):
    _, _, f, x0 = stan_gradient
    lp, grad = f(x0)
    assert np.isfinite(lp) and grad.shape == x0.shape == (4,)
    np.testing.assert_allclose(grad, finite_difference_gradient(f, x0), rtol=1e-5, atol=1e-4)


@pytest.mark.stan
def test_stan_gradient_function_is_pystans_log_density_with_jacobian(stan_gradient):
    """The library the gradient benchmark times computes what pystan's NUTS samples."""
    spec, dataset, f, x0 = stan_gradient
    model, _ = get_backend("stan").pystan_model(spec, dataset)
    for theta in (x0, x0 + np.array([0.2, -0.1, 0.05, 0.3])):
        expected = model.log_prob(theta.tolist(), adjust_transform=True)
        assert f(theta)[0] == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(f(theta)[1], model.grad_log_prob(theta.tolist()), rtol=1e-10)


@pytest.mark.stan
def test_stan_gradient_function_refuses_what_stan_cannot_do():
    from models import MixbenchError

    spec, dataset = gradient_problem(100, 2)
    with pytest.raises(MixbenchError, match="float64 only"):
        get_backend("stan").gradient_function(spec, dataset, FitSettings(precision="float32"))


@pytest.mark.stan
def test_stan_library_log_density_matches_the_oracle(agreement_spec):
    """stan/mixture.stan as the gradient library builds it equals the oracle (no Jacobian)."""
    from models.stan_model import program_code, stan_data, stan_parameters
    from backends.stan_gradient import load

    x, y = make_data(agreement_spec)
    model, _ = load(program_code(), stan_data(agreement_spec, Dataset(x=x, y=y)))
    rng = np.random.default_rng(7)
    for _ in range(5):
        point = random_point(agreement_spec, rng)
        theta = model.unconstrain(stan_parameters(agreement_spec, point))
        lp, _ = model.log_density_gradient(theta, jacobian=False)
        assert lp == pytest.approx(log_density(agreement_spec, x, y, point), rel=1e-8)


@pytest.mark.slow
@pytest.mark.stan
@pytest.mark.parametrize("formulation", sorted(p.stem for p in (ROOT / "stan" / "formulations").glob("*.stan")))
def test_every_stan_formulation_matches_the_oracle_and_the_kept_gradient(formulation, agreement_spec):
    """Each candidate program (built once, then cached) has the oracle's log density and the same
    gradient as stan/mixture.stan, for every agreement spec."""
    from models.stan_model import program_code, stan_data, stan_parameters
    from backends.stan_gradient import load

    x, y = make_data(agreement_spec)
    data = stan_data(agreement_spec, Dataset(x=x, y=y))
    model, _ = load((ROOT / "stan" / "formulations" / f"{formulation}.stan").read_text(), data)
    kept, _ = load(program_code(), data)
    rng = np.random.default_rng(11)
    for _ in range(5):
        point = random_point(agreement_spec, rng)
        theta = model.unconstrain(stan_parameters(agreement_spec, point))
        lp, grad = model.log_density_gradient(theta, jacobian=True)
        lp0, _ = model.log_density_gradient(theta, jacobian=False)
        assert lp0 == pytest.approx(log_density(agreement_spec, x, y, point), rel=1e-8)
        kept_lp, kept_grad = kept.log_density_gradient(theta, jacobian=True)
        assert lp == pytest.approx(kept_lp, rel=1e-8)
        np.testing.assert_allclose(grad, kept_grad, rtol=1e-6, atol=1e-6 * np.max(np.abs(kept_grad)))


# --- NumPyro's and PyMC's gradient functions --------------------------------------------------

def _numpyro_log_jacobian(spec, theta):
    import jax.numpy as jnp

    from backends.numpyro.model import _log_jacobian, _unflatten

    return float(_log_jacobian(spec, _unflatten(spec, jnp.asarray(theta))))


def _pymc_log_jacobian(spec, dataset, theta):
    from backends.pymc.model import compiled

    entry = compiled(spec, dataset)
    values, start = [], 0
    for value_var in entry.model.value_vars:
        shape = tuple(int(d) for d in value_var.type.shape)
        size = int(np.prod(shape))
        values.append(theta[start:start + size].reshape(shape))
        start += size
    return float(entry.log_p_jacobian()(*values)[1])


GRADIENT_ENGINES = [("numpyro", "numpyro"), ("pymc", "nutpie"), ("pymc", "pymc"), ("pymc", "numpyro")]


@pytest.mark.parametrize("backend_name, engine", GRADIENT_ENGINES, ids=[f"{b}-{e}" for b, e in GRADIENT_ENGINES])
@pytest.mark.parametrize("K", [2, 3])
def test_gradient_function_is_the_oracle_plus_jacobian_and_its_gradient(backend_name, engine, K):
    """At x0 (the truth), f's value less the backend's own log |Jacobian| is the oracle's log
    density; f's gradient matches central differences of f."""
    spec, dataset = gradient_problem(1500, K)
    f, x0 = get_backend(backend_name).gradient_function(spec, dataset, FitSettings(sampler=engine))
    lp, grad = f(x0)
    assert isinstance(lp, float) and grad.dtype == np.float64 and grad.shape == x0.shape
    jacobian = (_numpyro_log_jacobian(spec, x0) if backend_name == "numpyro"
                else _pymc_log_jacobian(spec, dataset, x0))
    assert lp - jacobian == pytest.approx(log_density(spec, dataset.x, dataset.y, dataset.truth), rel=1e-8)
    np.testing.assert_allclose(grad, finite_difference_gradient(f, x0), rtol=1e-5, atol=1e-4)
    moved = x0 + np.linspace(-0.3, 0.2, x0.size)
    np.testing.assert_allclose(f(moved)[1], finite_difference_gradient(f, moved), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend_name, engine", GRADIENT_ENGINES, ids=[f"{b}-{e}" for b, e in GRADIENT_ENGINES])
def test_float32_gradient_function_agrees_with_float64(backend_name, engine):
    spec, dataset = gradient_problem(1500, 2)
    backend = get_backend(backend_name)
    f64, x0 = backend.gradient_function(spec, dataset, FitSettings(sampler=engine))
    f32, x0_32 = backend.gradient_function(spec, dataset, FitSettings(sampler=engine, precision="float32"))
    np.testing.assert_allclose(x0_32, x0, rtol=1e-6, atol=1e-6)
    (lp64, g64), (lp32, g32) = f64(x0), f32(x0)
    assert lp32 == pytest.approx(lp64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-3, atol=1e-3 * np.max(np.abs(g64)))


def test_gradient_function_rejects_an_unknown_engine():
    from models import MixbenchError

    spec, dataset = gradient_problem(100, 2)
    for backend_name in ("numpyro", "pymc"):
        with pytest.raises(MixbenchError, match="sampler"):
            get_backend(backend_name).gradient_function(spec, dataset, FitSettings(sampler="stan-math"))


# --- the report's cost sections -------------------------------------------------------------

def _benchmark(extra: dict, median: float) -> dict:
    return {"name": f"test[{extra}]", "group": "g", "extra_info": extra,
            "stats": {"median": median, "min": median * 0.9, "max": median * 1.2, "mean": median,
                      "stddev": 0.0, "rounds": 5, "iterations": 10}}


def _cost_json(path: Path) -> Path:
    benchmarks = []
    for backend, engine, precision, base in (("stan", "pystan", "float64", 2e-5), ("numpyro", "numpyro", "float32", 1e-6)):
        for K in (2, 3):
            for N in (1_000, 10_000, 100_000):
                benchmarks.append(_benchmark({"kind": "gradient-cost", "backend": backend, "engine": engine,
                                              "precision": precision, "K": K, "N": N}, base * N / 1000 * K))
    benchmarks.append(_benchmark({"kind": "compile-cache", "backend": "stan", "engine": "pystan",
                                  "t_compile_cold": 61.0, "t_compile_warm": 0.4, "t_process_cold": 70.0,
                                  "t_process_warm": 6.0}, 6.0))
    benchmarks.append({"name": "unrelated", "extra_info": {}, "stats": {"median": 1.0}})
    path.write_text(json.dumps({"benchmarks": benchmarks, "machine_info": {"node": "test"}, "datetime": "now"}))
    return path


def test_cost_record_keeps_cost_benchmarks_only():
    assert cost_record({"extra_info": {"cell_id": "x"}}) is None
    assert cost_record({"extra_info": {}}) is None
    record = cost_record(_benchmark({"kind": "gradient-cost", "backend": "stan"}, 0.5))
    assert record["backend"] == "stan" and record["stats_median"] == 0.5


def test_gradient_cost_table_is_milliseconds_by_k_and_n(tmp_path):
    _, environments, _ = load_inputs([_cost_json(tmp_path / "b.json")])
    records = pd.DataFrame(environments[0]["cost_records"])
    table = gradient_cost_table(records[records["kind"] == "gradient-cost"])
    assert list(table["backend"]) == ["numpyro", "stan"]
    stan = table[table["backend"] == "stan"].iloc[0]
    assert stan["K=2 N=1e3 ms"] == pytest.approx(2e-5 * 2 * 1e3)
    assert stan["K=3 N=1e5 ms"] == pytest.approx(2e-5 * 100 * 3 * 1e3)
    compiles = compile_cache_table(records[records["kind"] == "compile-cache"])
    assert compiles.iloc[0]["cold compile s"] == 61.0 and compiles.iloc[0]["warm compile s"] == 0.4
    assert compiles.iloc[0]["method"] == "nuts"  # a record without a method is NUTS


def test_compile_cache_table_keeps_methods_of_one_engine_apart():
    def record(method, warm):
        extra = {"kind": "compile-cache", "backend": "numpyro", "engine": "numpyro", "method": method,
                 "t_compile_cold": 3.0, "t_compile_warm": warm, "t_process_cold": 5.0, "t_process_warm": 2.0}
        return cost_record(_benchmark(extra, 2.0))

    records = pd.DataFrame([record("nuts", 0.3), record("advi-fullrank", 0.1), record("nuts", 0.5)])
    table = compile_cache_table(records).set_index("method")
    assert table.loc["nuts", "warm compile s"] == pytest.approx(0.4) and table.loc["nuts", "runs"] == 2
    assert table.loc["advi-fullrank", "warm compile s"] == pytest.approx(0.1)


def test_gradient_cost_over_sessions_is_the_median_of_their_medians():
    extra = {"kind": "gradient-cost", "backend": "stan", "engine": "pystan", "precision": "float64", "K": 2,
             "N": 1000}
    records = pd.DataFrame([cost_record(_benchmark(extra, m)) for m in (1e-3, 5e-3, 2e-3)])
    assert gradient_cost_table(records).iloc[0]["K=2 N=1e3 ms"] == pytest.approx(2.0)


def test_report_from_cost_benchmarks_alone_has_the_cost_sections(tmp_path):
    paths = write_report([_cost_json(tmp_path / "b.json")], tmp_path / "report")
    text = paths["markdown"].read_text()
    assert "## Gradient cost" in text and "## Compile: cold and warm" in text
    assert "K=3 N=1e5 ms" in text and "| stan | pystan | float64 |" in text
    assert (tmp_path / "report" / "figures" / "gradient_cost.png").is_file()
    assert "## NUTS cost against N" not in text  # no cells at several N


def _cell_rows(Ns=(1_000, 10_000), seeds=(0, 1)) -> list[dict]:
    rows = []
    for backend in ("stan", "numpyro"):
        for N in Ns:
            for seed in seeds:
                scale = N / 1000 * (10 if backend == "stan" else 1)
                rows.append({"cell_id": f"{backend}-{N}-{seed}", "status": "ok", "scenario": "forum",
                             "backend": backend, "engine": backend, "precision": "float64", "method": "nuts",
                             "seed": seed, "N": N, "t_compile": 2.0, "t_warmup": scale, "t_sampling": scale,
                             "t_extraction": 0.1, "grad_evals": 20_000, "ess_bulk_per_s": 1000 / scale,
                             "time_total": 2 * scale + 4.0, "t_fit": 2 * scale + 2.3, "t_startup": 1.0,
                             "t_backend_import": 0.3, "t_data": 0.05, "time_metrics": 0.2,
                             "time_cell": 2 * scale + 2.9})
    return rows


def test_nuts_cost_curve_needs_several_n_and_takes_medians():
    frame = pd.DataFrame(_cell_rows())
    table = nuts_cost_curve_table(frame)
    assert len(table) == 4 and set(table["N"]) == {1_000, 10_000}
    stan_big = table[(table["backend"] == "stan") & (table["N"] == 10_000)].iloc[0]
    assert stan_big["warm-up + sampling s"] == 200.0 and stan_big["ESS bulk/s"] == 10.0
    assert stan_big["ms/grad in NUTS"] == pytest.approx(1e3 * 200 / 20_000)
    assert nuts_cost_curve_table(pd.DataFrame(_cell_rows(Ns=(1_000,)))).empty


def test_harness_overhead_splits_the_cell_time():
    row = _cell_rows(Ns=(1_000,), seeds=(0,))[0]  # stan, scale 10
    table = harness_overhead_table(pd.DataFrame([row]))
    r = table.iloc[0]
    assert r["fit s"] == pytest.approx(row["t_fit"] - 0.1)
    assert r["overhead s"] == pytest.approx(row["time_total"] - row["t_fit"] + 0.1)
    assert r["hand-over s"] == pytest.approx(row["time_total"] - 1.0 - row["time_cell"])
    assert r["in fit, unattributed s"] == pytest.approx(0.2)
    assert r["overhead %"] == pytest.approx(100 * r["overhead s"] / r["fit s"])


def test_report_with_cells_at_several_n_has_the_curve_and_overhead(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "cells.jsonl", "w") as fh:
        for row in _cell_rows():
            fh.write(json.dumps(row) + "\n")
    paths = write_report([run], run)
    text = paths["markdown"].read_text()
    assert "## NUTS cost against N" in text and "## Harness overhead" in text
    assert (run / "figures" / "nuts_cost_curve.png").is_file()


# --- the harness records its own overhead ----------------------------------------------------

def test_harness_rows_time_startup_fit_and_total(tmp_path):
    from bench.run.executors import LocalProcessExecutor
    from bench.run.harness import RunOptions, make_grid

    cells = make_grid(["forum-small"], [FAKE], ["nuts"], [0], settings={"chains": 2, "draws": 50}, n=200)
    rows: list[dict] = []
    LocalProcessExecutor().run(cells, RunOptions(out_dir=tmp_path), rows.append)
    row = rows[0]
    assert row["status"] == "ok"
    for name in ("t_startup", "t_backend_import", "t_data", "t_fit", "time_metrics", "time_cell", "time_total"):
        assert row[name] >= 0, name
    assert row["t_startup"] > 0  # a spawned interpreter never starts in no time
    assert row["t_fit"] + row["t_data"] + row["time_metrics"] <= row["time_cell"]
    assert row["t_startup"] + row["time_cell"] <= row["time_total"]


def test_forkserver_cells_see_the_parents_current_environment(tmp_path, monkeypatch):
    """Cells fork from a server started earlier; a variable the parent sets afterwards reaches
    them, as it would reach a spawned process."""
    from bench.run.executors import LocalProcessExecutor, preload_modules
    from bench.run.harness import RunOptions, make_grid
    from tests.fake_backends import MARKER_ENV, executions

    cells = make_grid(["forum-small"], [FAKE], ["nuts"], [0, 1], settings={"chains": 1, "draws": 20}, n=100)
    assert "tests.fake_backends" in preload_modules(cells) and "bench.score.metrics" in preload_modules(cells)
    for seed, name in enumerate(("first.txt", "second.txt")):
        monkeypatch.setenv(MARKER_ENV, str(tmp_path / name))
        LocalProcessExecutor().run(cells[seed:seed + 1], RunOptions(out_dir=tmp_path / "out"), lambda row: None)
    assert executions(tmp_path / "first.txt") == ["quick:0"]
    assert executions(tmp_path / "second.txt") == ["quick:1"]


def test_forkserver_preloads_only_the_first_cells_backend():
    """The server forks nothing before its imports end: the first cell (the longest compile)
    must not wait for the other backends' imports, which their own workers do."""
    from bench.run.executors import COMMON_MODULES, preload_modules
    from bench.run.harness import make_grid

    cells = make_grid(["forum-small"], ["stan", "pymc", "numpyro"], ["nuts"], [0], settings={"chains": 1}, n=100)
    assert [c.backend for c in cells][:1] == ["stan"]
    assert preload_modules(cells) == [*COMMON_MODULES, "backends.stan"]
    assert preload_modules(cells[1:]) == [*COMMON_MODULES, "backends.pymc"]
    assert preload_modules([]) == list(COMMON_MODULES)


def test_cli_accepts_several_sizes_and_makes_one_cell_per_size():
    from bench.cli import build_parser
    from bench.run.plan import run_cells

    args = build_parser().parse_args(["run", "--backends", FAKE, "--N", "1e3,10000", "--seeds", "0,1"])
    cells, _ = run_cells(args)
    assert sorted({c.n for c in cells}) == [1_000, 10_000] and len(cells) == 4
