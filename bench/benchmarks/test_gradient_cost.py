"""Gradient cost: one log density + gradient at a fixed point, per backend, engine and precision,
at N = 1e3 ... 1e6 and K = 2, 3 (the problem is bench/run/gradient.py's).

    uv run pytest bench/benchmarks/test_gradient_cost.py --benchmark-json=results/gradient-cost.json
    uv run pytest bench/benchmarks/test_gradient_cost.py -k "N1e5 and K2" --backends stan,numpyro
    uv run mixbench report results/gradient-cost.json --out results/gradient-cost

Each benchmark times the backend's ``gradient_function`` (compiled before timing starts, the
build time kept in extra_info as t_build) with pytest-benchmark's pedantic mode: rounds of
enough calls to be well above the clock's resolution. extra_info carries kind="gradient-cost",
backend, engine, precision, N and K, which the report's gradient-cost section reads.
"""

from __future__ import annotations

import time

import numpy as np

from backends import FitSettings, get_backend
from bench.run.gradient import GRADIENT_KS, GRADIENT_NS, gradient_problem

# (backend, engine, precision): every engine and precision a backend can evaluate its gradient
# with. PyMC: nutpie's Numba build, PyTensor's default build (Numba in PyTensor 3; PyMC's own
# NUTS) and PyTensor's JAX build (PyMC's numpyro sampler); Stan computes in float64 only.
ENGINES = (
    ("stan", "pystan", "float64"),
    ("numpyro", "numpyro", "float64"),
    ("numpyro", "numpyro", "float32"),
    ("pymc", "nutpie", "float64"),
    ("pymc", "nutpie", "float32"),
    ("pymc", "pymc", "float64"),
    ("pymc", "pymc", "float32"),
    ("pymc", "numpyro", "float64"),
    ("pymc", "numpyro", "float32"),
)
ROUND_S = 0.05  # seconds of calls per round
BUDGET_S = 1.5  # seconds of rounds per benchmark
MIN_ROUNDS, MAX_ROUNDS = 5, 100


def _size_id(n: int) -> str:
    return f"N1e{int(np.log10(n))}"


def pytest_generate_tests(metafunc):
    if "gradient_case" not in metafunc.fixturenames:
        return
    selected = set(metafunc.config.option.backends)  # a list, as mixbench run parses it
    cases = [(backend, engine, precision, K, N)
             for backend, engine, precision in ENGINES if backend in selected
             for K in GRADIENT_KS for N in GRADIENT_NS]
    ids = [f"{b}-{e}-{p}-K{K}-{_size_id(N)}" for b, e, p, K, N in cases]
    metafunc.parametrize("gradient_case", cases, ids=ids)


def _plan(f, x0) -> tuple[int, int]:
    """(rounds, iterations per round) for a call that takes about as long as one timed call."""
    start = time.perf_counter()
    f(x0)
    one = max(time.perf_counter() - start, 1e-7)
    iterations = max(1, int(ROUND_S / one))
    rounds = int(np.clip(BUDGET_S / (one * iterations), MIN_ROUNDS, MAX_ROUNDS))
    return rounds, iterations


def test_gradient_cost(benchmark, gradient_case):
    backend_name, engine, precision, K, N = gradient_case
    spec, dataset = gradient_problem(N, K)
    settings = FitSettings(sampler=engine, precision=precision)
    start = time.perf_counter()
    f, x0 = get_backend(backend_name).gradient_function(spec, dataset, settings)
    lp, grad = f(x0)  # the first call finishes any lazy compilation
    t_build = time.perf_counter() - start
    assert np.isfinite(lp), lp
    assert grad.shape == x0.shape and np.all(np.isfinite(grad)), grad
    f(x0)
    rounds, iterations = _plan(f, x0)
    benchmark.group = f"gradient K={K} {_size_id(N)}"
    benchmark.extra_info.update(kind="gradient-cost", backend=backend_name, engine=engine, precision=precision,
                                N=N, K=K, dim=int(x0.size), t_build=t_build, log_density=float(lp))
    benchmark.pedantic(f, args=(x0,), rounds=rounds, iterations=iterations, warmup_rounds=1)
