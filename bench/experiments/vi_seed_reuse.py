"""Seconds per PyMC ADVI and Pathfinder fit, seed after seed in one process (a warm worker).

    uv run python -m bench.experiments.vi_seed_reuse [N] [seeds]     # defaults: 1000, 3

The first seed of a method pays the build (or the load from the function store); later seeds
show what a warm worker pays per cell. Prints the wall seconds of each ``fit`` call, its
``compile`` timing and the first draw of w (same seed, same draw; another seed, another draw).
"""

from __future__ import annotations

import os
import sys
import time
import warnings

from backends import get_backend
from backends.base import FitSettings
from models import get_scenario

METHODS = ("advi-meanfield", "advi-fullrank", "pathfinder")


def main(N: int = 1000, seeds: int = 3) -> None:
    warnings.simplefilter("ignore")
    scenario = get_scenario("forum")
    dataset = scenario.simulate(0, N=N)
    backend = get_backend("pymc")
    settings = FitSettings(vi_iterations=2000, vi_draws=1000)
    for method in METHODS:
        for seed in [*range(seeds), 0]:
            start = time.perf_counter()
            fit = backend.fit(scenario.spec, dataset, method, settings, seed=seed)
            wall = time.perf_counter() - start
            w = fit.draws.posterior["w"].values[0, 0].ravel() if fit.ok else None
            print(f"{method:15s} seed {seed}: {wall:6.2f} s wall, compile {fit.timings.get('compile', float('nan')):5.2f} s,"
                  f" optimisation {fit.timings.get('optimisation', float('nan')):5.2f} s, first w {w}, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main(*(int(float(a)) for a in sys.argv[1:]))
