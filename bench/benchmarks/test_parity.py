"""Parity end to end: one whole ``mixbench run`` cell against a user's direct nutpie and NumPyro
scripts (bench/experiments/parity.py: the scripts, data and commands; this file only runs them).

    uv run pytest bench/benchmarks/test_parity.py --benchmark-columns=min,median,max
    MIXBENCH_PARITY_N=100000 MIXBENCH_PARITY_REPEATS=2 uv run pytest bench/benchmarks/test_parity.py

Each backend is one benchmark whose rounds are pairs: mixbench's cell process (launch to exit),
then at once the direct script's process, so that a change of load falls on both (the
benchmark's time is the pair's); the pairs' wall ratios (mixbench / direct; issue 24 asks for at most 1.0), their median, the load
before each run and mixbench's phase seconds go to ``extra_info``. Settings from the
environment: MIXBENCH_PARITY_N (default 10000), _CHAINS (2), _WARMUP (500), _DRAWS (500),
_REPEATS (2). The caches are the user's as they are: the first round at a new N compiles.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

import pytest

from bench.experiments.parity import describe, parser, run_pair, write_inputs

SETTINGS = {name: os.environ.get(f"MIXBENCH_PARITY_{name.upper()}", default)
            for name, default in (("N", "10000"), ("chains", "2"), ("warmup", "500"), ("draws", "500"),
                                  ("repeats", "2"))}


@pytest.fixture(scope="module")
def parity_inputs():
    args = parser().parse_args([f"--{name}={value}" for name, value in SETTINGS.items()])
    with tempfile.TemporaryDirectory(prefix="mixbench-parity-") as work:
        write_inputs(args, Path(work))
        yield args, Path(work)


@pytest.mark.parametrize("backend", ["pymc", "numpyro"])
def test_parity_end_to_end(benchmark, parity_inputs, backend):
    args, work = parity_inputs
    runs = []

    def pair():
        run = run_pair(backend, args, work, len(runs))
        runs.append(run)
        print(describe(run))

    benchmark.group = f"parity end to end, forum N={args.N}"
    benchmark.pedantic(pair, rounds=args.repeats, iterations=1)
    ratios = [r["ratio_wall"] for r in runs]
    benchmark.extra_info.update({
        "direct": runs[0]["direct"], "ratios_wall": ratios, "median_ratio_wall": statistics.median(ratios),
        "mixbench_wall_s": [r["mixbench"]["wall_s"] for r in runs],
        "direct_wall_s": [r["direct_script"]["wall_s"] for r in runs],
        "load_1min": [(r["mixbench"]["load_1min"], r["direct_script"]["load_1min"]) for r in runs],
        "mixbench_rows": [r["mixbench"]["row"] for r in runs],
    })
    assert all(r["mixbench"]["row"]["status"] == "ok" for r in runs)
