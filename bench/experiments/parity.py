"""Parity, end to end: one ``mixbench run`` cell against a user's direct nutpie or NumPyro script.

    uv run python -m bench.experiments.parity --N 10000 --chains 2 --warmup 500 --draws 500 --repeats 2

Both sides are whole processes timed from launch to exit (imports, compile, warm-up, sampling,
and for mixbench its scoring and row writing), on the forum scenario's data (K = 2, D = 1, no
intercepts, shared sigma; Dirichlet(1), Normal(0, 2), Uniform(0, 1); float64): mixbench simulates
it from the scenario, the direct scripts read the same arrays from a file, as a user would read
theirs. The direct scripts are what a user would write from the libraries' documentation:
PyMC's ``NormalMixture`` sampled by ``nutpie.sample`` (``compile_pymc_model``, Numba), and a
NumPyro model with ``MixtureSameFamily`` sampled by ``MCMC(NUTS)`` with parallel chains on as many
host devices. mixbench runs with ``--reference none`` (no reference posterior is fitted) into a
fresh output directory, its caches as they are (say which in the report: a first run compiles).

Runs alternate (mixbench, direct, mixbench, direct, ...) so that a change of load on a shared
machine falls on both; each pair's ratio is mixbench's wall seconds over the direct script's.
The load average before each run is recorded, and mixbench's row says whether its compile was
cold (a first run at a new N compiles; later ones load the caches) and how its time split. CPU
seconds are not compared: mixbench's cells run in processes forked by a server process, whose
usage never reaches this process's children's account. Prints a line per pair and writes
``parity.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from models import get_scenario

NUTPIE_SCRIPT = """
import sys
import numpy as np
import nutpie
import pymc as pm

data = np.load(sys.argv[1])
x, y = data["x"], data["y"]
chains, warmup, draws, seed = (int(a) for a in sys.argv[2:6])
with pm.Model() as model:
    pi = pm.Dirichlet("pi", a=np.ones(2))
    w = pm.Normal("w", 0.0, 2.0, shape=(2, 1))
    sigma = pm.Uniform("sigma", 0.0, 1.0)
    mu = pm.math.dot(x, w.T)
    pm.NormalMixture("y", w=pi, mu=mu, sigma=sigma, observed=y)
compiled = nutpie.compile_pymc_model(model)
trace = nutpie.sample(compiled, chains=chains, tune=warmup, draws=draws, seed=seed, cores=chains,
                      progress_bar=False)
print(trace.posterior["w"].mean(("chain", "draw")).values.ravel())
"""

NUMPYRO_SCRIPT = """
import sys
import numpy as np
chains, warmup, draws, seed = (int(a) for a in sys.argv[2:6])
import numpyro
numpyro.set_host_device_count(chains)
numpyro.enable_x64()
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

data = np.load(sys.argv[1])
x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

def model(x, y):
    pi = numpyro.sample("pi", dist.Dirichlet(jnp.ones(2)))
    w = numpyro.sample("w", dist.Normal(0.0, 2.0).expand((2, 1)).to_event(2))
    sigma = numpyro.sample("sigma", dist.Uniform(0.0, 1.0))
    mu = x @ w.T
    numpyro.sample("y", dist.MixtureSameFamily(dist.Categorical(probs=pi), dist.Normal(mu, sigma)), obs=y)

mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method="parallel",
            progress_bar=False)
mcmc.run(jax.random.PRNGKey(seed), x, y)
print(np.asarray(mcmc.get_samples()["w"]).mean(axis=0).ravel())
"""

DIRECT = {"pymc": ("nutpie", NUTPIE_SCRIPT), "numpyro": ("numpyro", NUMPYRO_SCRIPT)}


def timed(cmd: list[str]) -> dict:
    """Wall seconds of one command, and the load average before it."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return {"wall_s": wall, "load_1min": load, "stdout_tail": proc.stdout[-300:]}


def cell_row(out: Path) -> dict:
    """The mixbench cell's compile state and phase seconds, from its row."""
    row = json.loads((out / "cells.jsonl").read_text().splitlines()[-1])
    return {k: row.get(k) for k in ("status", "compile", "t_startup", "t_backend_import", "t_compile",
                                     "t_compile_wait", "t_warmup", "t_sampling", "t_fit")}


def mixbench_cmd(backend: str, args, out: Path) -> list[str]:
    exe = shutil.which("mixbench") or str(Path(sys.executable).with_name("mixbench"))
    return [exe, "run", "--scenario", "forum", "--N", str(args.N), "--backends", backend, "--methods", "nuts",
            "--seeds", str(args.seed), "--chains", str(args.chains), "--warmup", str(args.warmup),
            "--draws", str(args.draws), "--reference", "none", "--out", str(out), "--fresh", "--no-report"]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=10_000)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="pymc,numpyro", help="pymc (against nutpie), numpyro")
    parser.add_argument("--out", type=Path, default=Path("results/parity"))
    return parser


def write_inputs(args, work: Path) -> None:
    """The forum data at N (``data.npz``) and the direct scripts, in ``work``."""
    data = get_scenario("forum").simulate(0, N=args.N)
    np.savez(work / "data.npz", x=np.asarray(data.x, dtype=float), y=np.asarray(data.y, dtype=float))
    for name, source in DIRECT.values():
        (work / f"direct_{name}.py").write_text(textwrap.dedent(source))


def direct_cmd(backend: str, args, work: Path) -> list[str]:
    name, _ = DIRECT[backend]
    return [sys.executable, str(work / f"direct_{name}.py"), str(work / "data.npz"), str(args.chains),
            str(args.warmup), str(args.draws), str(args.seed)]


def run_pair(backend: str, args, work: Path, repeat: int) -> dict:
    """One mixbench cell, then the direct script, each a whole process: their times and ratio."""
    out = work / f"run-{backend}-{repeat}"
    mb = timed(mixbench_cmd(backend, args, out)) | {"row": cell_row(out)}
    dr = timed(direct_cmd(backend, args, work))
    return {"backend": backend, "direct": DIRECT[backend][0], "repeat": repeat, "mixbench": mb,
            "direct_script": dr, "ratio_wall": mb["wall_s"] / dr["wall_s"]}


def describe(run: dict) -> str:
    mb, dr, row = run["mixbench"], run["direct_script"], run["mixbench"]["row"]
    return (f"{run['backend']} vs {run['direct']} #{run['repeat']}: mixbench {mb['wall_s']:.1f} s (load "
            f"{mb['load_1min']:.1f}; compile {row['compile']} {row['t_compile'] or 0:.1f} s, warm-up + sampling "
            f"{(row['t_warmup'] or 0) + (row['t_sampling'] or 0):.1f} s), direct {dr['wall_s']:.1f} s "
            f"(load {dr['load_1min']:.1f}): ratio {run['ratio_wall']:.2f}")


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="mixbench-parity-"))
    write_inputs(args, work)
    results = {"settings": vars(args) | {"out": str(args.out)}, "cpus": os.cpu_count(), "runs": []}
    for backend in args.backends.split(","):
        for repeat in range(args.repeats):
            run = run_pair(backend, args, work, repeat)
            results["runs"].append(run)
            print(describe(run), flush=True)
        ratios = [r["ratio_wall"] for r in results["runs"] if r["backend"] == backend]
        results[f"{backend}_median_ratio_wall"] = statistics.median(ratios)
    (args.out / "parity.json").write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
