"""One compile measurement in a fresh process, for bench/benchmarks/test_compile_cache.py.

    uv run python -m bench.experiments.compile_probe --backend numpyro --engine numpyro
    uv run python -m bench.experiments.compile_probe --backend pymc --method advi-fullrank

Fits the forum model on 1000 points with a short run of ``--method`` (NUTS: 1 chain, 50 + 50
draws; VI: 200 iterations, 100 draws) and prints one JSON line: the fit's compile seconds (``Fit.timings["compile"]``, each backend's own account of
its compilation), its other timings, and how long importing the backend took. Which caches it
finds is up to the environment it is started with (XDG_CACHE_HOME, PYTENSOR_FLAGS,
NUMBA_CACHE_DIR): the benchmark points them at empty directories for the cold run and reuses
them for the warm one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def probe(backend_name: str, engine: str | None, precision: str, N: int, method: str = "nuts") -> dict:
    start = time.perf_counter()
    from backends import FitSettings, get_backend
    from models.scenarios import get_scenario

    backend = get_backend(backend_name)
    t_import = time.perf_counter() - start
    scenario = get_scenario("forum")
    dataset = scenario.simulate(0, N=N)
    settings = FitSettings(chains=1, warmup=50, draws=50, sampler=engine, precision=precision,
                           vi_iterations=200, vi_draws=100)
    fit = backend.fit(scenario.spec, dataset, method, settings, seed=0)
    return {"status": fit.status, "reason": fit.reason, "engine": fit.engine, "t_import": t_import,
            "t_compile": fit.timings.get("compile"), "timings": fit.timings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.compile_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--engine", default=None)
    parser.add_argument("--precision", default="float64")
    parser.add_argument("--N", type=int, default=1000)
    parser.add_argument("--method", default="nuts")
    args = parser.parse_args(argv)
    result = probe(args.backend, args.engine, args.precision, args.N, args.method)
    print("MIXBENCH-PROBE " + json.dumps(result))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
