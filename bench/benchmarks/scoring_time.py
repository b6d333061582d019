"""Seconds to score one NUTS fit (every metric and the posterior means, as a cell scores it).

The fit is 2 chains x 500 draws of the forum scenario (K = 2, D = 1, shared sigma) scattered
around the truth with the posterior sds of N observations, in opposite labellings; the reference
is 4 chains x 500 such draws, canonically relabelled. The fit needs no engine, so the figure is
the scoring's alone. Run: ``python -m bench.benchmarks.scoring_time 1000 100000``.

``--first`` times only the first scoring of a fresh process (one N a run): what a worker's first
cell pays on top, lazy imports included (bench.score.lazy_jax: the JAX that SciPy loaded there).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import xarray as xr

from backends.base import Fit, canonical_datatree
from bench.reference.posterior import Reference, canonical_relabel
from bench.score.metrics import score_fit
from bench.score.problem import Problem
from models import Dataset, get_scenario

FORUM = get_scenario("forum-small")


def _draws(N: int, chains: int, seed: int, swap: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd = {"w": 0.17 / np.sqrt(N), "sigma": 0.07 / np.sqrt(N), "pi": 0.5 / np.sqrt(N)}
    post = {k: np.asarray(v, float)[None, None] + sd[k] * rng.standard_normal((chains, 500) + np.shape(v))
            for k, v in FORUM.truth.items()}
    post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
    for c in swap:
        for name in ("w", "pi"):
            post[name][c] = post[name][c][:, ::-1]
    return post


def setup(N: int):
    data = FORUM.simulate(0, N=N)
    problem = Problem.make(FORUM.spec, Dataset(x=data.x, y=data.y))
    ref_draws = canonical_datatree(FORUM.spec, _draws(N, 4, 1, (2,)))
    lp, _ = problem.draw_log_densities(ref_draws, per_chain=500)
    relabelled, _ = canonical_relabel(ref_draws, lp, FORUM.spec)
    tree = xr.DataTree.from_dict({"posterior": relabelled["posterior"].to_dataset(),
                                  "sample_stats": xr.Dataset({"lp": (("chain", "draw"), lp)})})
    reference = Reference(tree, {"name": "synthetic", "accepted": True})
    fit = Fit(backend="t", method="nuts", status="ok", engine="synthetic", seed=0,
              draws=canonical_datatree(FORUM.spec, _draws(N, 2, 2, (1,))), timings={"sampling": 1.0})
    return fit, FORUM.truth, reference, problem


def score(fit, truth, reference, problem) -> dict:
    row, means = score_fit(fit, truth, reference, problem=problem)
    return {**row, **means}


def first(N: int) -> None:
    """The first scoring of this process, cold (CPU seconds, wall seconds)."""
    args = setup(N)
    start, start_cpu = time.perf_counter(), time.process_time()
    score(*args)
    print(f"N={N}: first scoring of the process {time.perf_counter() - start:.3f} s wall, "
          f"{time.process_time() - start_cpu:.3f} s CPU")


def main(sizes: list[int]) -> None:
    for N in sizes:
        args = setup(N)
        score(*args)  # warm imports and caches
        times, cpu = [], []
        for _ in range(3):
            start, start_cpu = time.perf_counter(), time.process_time()
            score(*args)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        # CPU seconds beside wall seconds: on a shared machine the wall clock also counts waiting.
        print(f"N={N}: scoring {min(times):.3f} s wall, {min(cpu):.3f} s CPU (best of 3; wall "
              f"{', '.join(f'{t:.3f}' for t in times)})")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--first"]:
        first(int(float(sys.argv[2])) if len(sys.argv) > 2 else 1000)
    else:
        main([int(float(a)) for a in sys.argv[1:]] or [1000, 100000])
