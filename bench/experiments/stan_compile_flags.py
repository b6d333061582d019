"""What httpstan's compile of stan/mixture.stan costs at each optimisation level, and what the
level costs in sampling.

    uv run python -m bench.experiments.stan_compile_flags [levels] [out.json] [caches]   # default O3,O2,O1,O0

``default`` is httpstan's own call as pystan makes it (its flags after Python's, -g included),
``mixbench`` the same call in the environment the Stan backend builds in
(``backends.stan.install.httpstan_build_env``: Python's flags without -g).

pystan builds the program through ``httpstan.models.build_services_extension_module`` with
``-O3 -std=c++17 -Wno-sign-compare`` (httpstan's default, which pystan cannot change). Each
level here builds the same module with only ``-O<n>`` changed (``O3+g0``: ``-O3 -g0``, no debug
information, which Python's own compiler flags otherwise add with ``-g``), in a fresh httpstan cache of its
own (a child process with XDG_CACHE_HOME=<caches>/stan-<level>, default under the temporary
directory; a rerun samples with the module already built there and reports its recorded compile
seconds), then samples with it through pystan three times (the first also loads the module): the
forum-small data (N = 2000), one chain of 1000 warm-up + 1000 (1001, 1002) draws, seed 1. Without fast-math the levels
compute the same floating-point operations, so the draws agree and the sampling seconds compare
the gradient's speed directly (the draws' checksum is printed to show it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import asyncio, json, pathlib, sys, time
import contextlib
import numpy as np
import httpstan.cache, httpstan.compile, httpstan.models, stan
from backends.stan.install import httpstan_build_env
from models.stan_model import program_code, stan_data
from models import get_scenario
level, record = sys.argv[1], pathlib.Path(sys.argv[2])
code = program_code()
# httpstan gives stanc 1 s (httpstan/compile.py); a loaded machine needs more.
run = httpstan.compile.subprocess.run
httpstan.compile.subprocess.run = lambda *a, **k: run(*a, **{**k, "timeout": 120})
name = httpstan.models.calculate_model_name(code)
if not record.exists():
    args = None if level in ("default", "mixbench") else [*("-" + flag for flag in level.split("+")), "-std=c++17", "-Wno-sign-compare"]
    start = time.perf_counter()
    with httpstan_build_env() if level == "mixbench" else contextlib.nullcontext():
        output = asyncio.run(httpstan.models.build_services_extension_module(code, extra_compile_args=args))
    record.write_text(json.dumps({"compile_s": time.perf_counter() - start}))
    # What httpstan's own build request records beside the module, so that pystan's build finds it.
    httpstan.cache.dump_services_extension_module_compiler_output(output, name)
    httpstan.cache.dump_stanc_warnings("", name)
compile_s = json.loads(record.read_text())["compile_s"]
scenario = get_scenario("forum-small")
dataset = scenario.simulate(0, N=2000)
model = stan.build(code, data=stan_data(scenario.spec, dataset), random_seed=1)  # served by the build above
samples = []
# httpstan serves a repeated request (same seed and arguments) from its fit cache: each run asks
# for one draw more. The first run also loads the module.
for extra in range(3):
    start = time.perf_counter()
    fit = model.sample(num_chains=1, num_samples=1000 + extra, num_warmup=1000)
    samples.append(time.perf_counter() - start)
library = max(httpstan.cache.model_directory(name).glob("*.so"), key=lambda p: p.stat().st_size)
print(json.dumps({"level": level, "compile_s": compile_s, "sample_s": samples, "so_mb": library.stat().st_size / 1e6,
                  "checksum": float(np.sum(fit["sigma"])), "leapfrogs": int(np.sum(fit["n_leapfrog__"]))}))
"""


def run(level: str, cache: Path) -> dict:
    """Build (once per ``cache``: the compile seconds are kept in it) and sample at ``level``."""
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD, level, str(cache / "compile.json")], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"-{level}: exited {out.returncode}:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load"] = os.getloadavg()[0]
    return result


def main(levels: list[str], path: str | None, caches: Path) -> None:
    results = []
    for level in levels:
        result = run(level, caches / f"stan-{level}")
        results.append(result)
        print(json.dumps(result), flush=True)
    if path:
        with open(path, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["O3", "O2", "O1", "O0"], sys.argv[2] if len(sys.argv) > 2 else None,
         Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.gettempdir()) / "mixbench-stan-flags")
