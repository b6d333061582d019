"""What compiling stan/mixture.stan costs at each optimisation level, and what the level costs in
sampling, through pystan (httpstan) and through CmdStan.

    uv run python -m bench.experiments.stan_compile_flags [builds] [rounds] [out.json] [caches]
    # default builds mixbench,O2,O1,O0, 1 round

A build is one of:

- ``default``: httpstan's own call as pystan makes it: Python's compiler flags (sysconfig's
  CFLAGS, ``-g`` included), then httpstan's ``-O3 -std=c++17 -Wno-sign-compare``;
- ``mixbench``: the Stan backend's own build (``backends.stan.programs.build_httpstan_module``
  in ``backends.stan.install.httpstan_build_env``: Python's flags without ``-g``, then httpstan's
  arguments with ``-O2``);
- ``O2``, ``O1+pipe``, ...: the ``mixbench`` build with httpstan's arguments replaced by
  ``-O2`` (each ``+``-joined flag with a dash) ``-std=c++17 -Wno-sign-compare``; they come last
  on the compiler's command line (setuptools' ``extra_postargs``), so their ``-O`` wins;
- ``cmdstan-O3``, ``cmdstan-O1``, ...: cmdstanpy's build with make's ``O`` variable set
  (``cpp_options``), against the CmdStan in ``CMDSTAN`` (read only: make writes the executable
  beside the program, in the cache directory).

Each build runs in a child process with a fresh cache directory of its own
(``<caches>/<build>-<round>``; httpstan's through XDG_CACHE_HOME; a rerun with the same
directory samples with the build already there and reports its recorded compile figures), then
samples the forum-small data (N = 2000) three times: one chain of 1000 warm-up + 1000 (1001,
1002) draws, seed 1 (httpstan serves a repeated request from its fit cache, hence one draw more
each time; the first pystan run also loads the module).

Reported per build: the compile's wall seconds and CPU seconds (user + sys of the compiler's
processes: ``resource.getrusage(RUSAGE_CHILDREN)`` across the build, stanc included; robust to
other jobs on the machine), the sampling CPU seconds of each run (pystan: the httpstan worker
process that runs Stan's sampler, read with psutil; CmdStan: the executable, RUSAGE_CHILDREN),
the module's size, and the last run's draws (a SHA-256 of every column, and the sum of sigma):
without fast-math the levels compute the same floating-point operations, so equal digests show
that the sampling seconds compare the gradient's speed alone. ``load`` is the 1-minute load
average when the build finished.

Measured (session 5, 2 shared cores; CPU seconds still move 15-25% with contention, so builds
were run side by side in pairs): compiling the program is mostly gcc's front end (-O0 still
takes 57 CPU s against 58-73 at -O3). -O2 took 8-10% less compile CPU than -O3 (pair 52.0
against 57.9 s; means 59.1 against 64.3) with the same sampling CPU; -O1 14-16% less (pair 57.4
against 68.0 s; mean 55.2) but sampled 5-6% slower in every round (0.84-0.89 against 0.78-0.87 CPU s) although its draws
are bit-identical; -O0 samples 44 times slower and its draws differ. Session 6 adopted -O2
(``mixbench``); GCC's garbage-collector parameters (``--param=ggc-min-expand=100``,
``ggc-min-heapsize=1048576``) on top of it bought nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = r"""
import hashlib, json, pathlib, resource, sys, time
import numpy as np
from models import get_scenario
from models.stan_model import program_code, stan_data
build, directory = sys.argv[1], pathlib.Path(sys.argv[2])
record = directory / "compile.json"
code = program_code()
scenario = get_scenario("forum-small")
data = stan_data(scenario.spec, scenario.simulate(0, N=2000))

def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime

def timed_compile(compile_):
    if not record.exists():
        start, cpu = time.perf_counter(), children_cpu()
        compile_()
        record.write_text(json.dumps({"compile_s": time.perf_counter() - start, "compile_cpu_s": children_cpu() - cpu}))
    return json.loads(record.read_text())

def digest(frame):
    return hashlib.sha256(np.ascontiguousarray(frame.to_numpy(dtype=float)).tobytes()).hexdigest()[:16]
"""

PYSTAN = COMMON + r"""
import asyncio, contextlib, psutil
import httpstan.cache, httpstan.compile, httpstan.models, httpstan.services_stub, stan
from backends.stan.install import httpstan_build_env
from backends.stan.programs import build_httpstan_module
# httpstan gives stanc 1 s (httpstan/compile.py); a loaded machine needs more.
run = httpstan.compile.subprocess.run
httpstan.compile.subprocess.run = lambda *a, **k: run(*a, **{**k, "timeout": 120})
name = httpstan.models.calculate_model_name(code)

def compile_():
    if build == "mixbench":
        with httpstan_build_env():
            return build_httpstan_module(code, name)
    args = None if build == "default" else [*("-" + flag for flag in build.split("+")), "-std=c++17", "-Wno-sign-compare"]
    with contextlib.nullcontext() if build == "default" else httpstan_build_env():
        output = asyncio.run(httpstan.models.build_services_extension_module(code, extra_compile_args=args))
    # What httpstan's own build request records beside the module, so that pystan's build finds it.
    httpstan.cache.dump_services_extension_module_compiler_output(output, name)
    httpstan.cache.dump_stanc_warnings("", name)

compiled = timed_compile(compile_)
model = stan.build(code, data=data, random_seed=1)  # served by the build above

def workers_cpu():
    # Stan's sampler runs in httpstan's process pool (forked workers), not in this process.
    cpu = {}
    for pid in list(httpstan.services_stub.executor._processes or {}):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            cpu[pid] = times.user + times.system
    return cpu

sample_s, sample_cpu_s = [], []
for extra in range(3):
    start, before = time.perf_counter(), workers_cpu()
    fit = model.sample(num_chains=1, num_samples=1000 + extra, num_warmup=1000)
    sample_s.append(time.perf_counter() - start)
    sample_cpu_s.append(sum(cpu - before.get(pid, 0.0) for pid, cpu in workers_cpu().items()))
frame = fit.to_frame()
library = max(httpstan.cache.model_directory(name).glob("*.so"), key=lambda p: p.stat().st_size)
print(json.dumps({**compiled, "sample_s": sample_s, "sample_cpu_s": sample_cpu_s, "so_mb": library.stat().st_size / 1e6,
                  "digest": digest(frame), "sigma_sum": float(frame.filter(regex=r"^sigma\b").to_numpy().sum()), "leapfrogs": int(frame["n_leapfrog__"].sum())}))
"""

CMDSTAN = COMMON + r"""
import logging
import cmdstanpy
logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
source = directory / "mixture.stan"
if not source.exists():
    source.write_text(code)
options = {"O": build.removeprefix("cmdstan-O")}
timed_compile(lambda: cmdstanpy.CmdStanModel(stan_file=source, cpp_options=options))
compiled = json.loads(record.read_text())
model = cmdstanpy.CmdStanModel(stan_file=source, exe_file=source.with_suffix(""))
sample_s, sample_cpu_s = [], []
for extra in range(3):
    start, cpu = time.perf_counter(), children_cpu()
    fit = model.sample(data=data, chains=1, iter_warmup=1000, iter_sampling=1000 + extra, seed=1,
                       output_dir=directory / f"run{extra}", show_progress=False)
    sample_s.append(time.perf_counter() - start)
    sample_cpu_s.append(children_cpu() - cpu)
frame = fit.draws_pd()
print(json.dumps({**compiled, "sample_s": sample_s, "sample_cpu_s": sample_cpu_s,
                  "so_mb": source.with_suffix("").stat().st_size / 1e6, "digest": digest(frame),
                  "sigma_sum": float(frame.filter(regex=r"^sigma\b").to_numpy().sum()), "leapfrogs": int(frame["n_leapfrog__"].sum())}))
"""


def run(build: str, directory: Path) -> dict:
    """Build (once per ``directory``: the compile figures are kept in it) and sample with ``build``."""
    directory.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "XDG_CACHE_HOME": str(directory)}
    child = CMDSTAN if build.startswith("cmdstan-") else PYSTAN
    out = subprocess.run([sys.executable, "-c", child, build, str(directory)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{build}: exited {out.returncode}:\n{out.stderr[-3000:]}")
    return {"build": build, **json.loads(out.stdout.strip().splitlines()[-1]), "load": os.getloadavg()[0]}


def main(builds: list[str], rounds: int, path: str | None, caches: Path) -> None:
    """``rounds`` times each build in turn (alternating the builds), each in a fresh cache."""
    results = []
    for round_ in range(rounds):
        for build in builds:
            result = {"round": round_, **run(build, caches / f"{build}-{round_}")}
            results.append(result)
            print(json.dumps(result), flush=True)
            if path:
                Path(path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["mixbench", "O2", "O1", "O0"],
         int(sys.argv[2]) if len(sys.argv) > 2 else 1, sys.argv[3] if len(sys.argv) > 3 else None,
         Path(sys.argv[4]) if len(sys.argv) > 4 else Path(tempfile.mkdtemp(prefix="mixbench-stan-flags-")))
