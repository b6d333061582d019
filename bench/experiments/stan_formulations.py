"""Which way of writing the mixture likelihood makes Stan's gradient cheapest, and is it exact?

Every program under ``stan/formulations/`` (same data, parameters, priors and log density as
``stan/mixture.stan``; only the likelihood block differs) is compiled with and without stanc's
``--O1`` through ``backends.stan_gradient`` (httpstan's stanc, headers and flags), checked against
the NumPy oracle, and timed: one log density + gradient (Jacobian included, as NUTS evaluates it)
at the truth of the gradient-cost problem (``bench.run.gradient``), for each N and K.

    uv run python -m bench.experiments.stan_formulations                       # N = 1e3, 1e4, 1e5; K = 2, 3
    uv run python -m bench.experiments.stan_formulations --N 1000000 --K 2 --only vector_lse,scaled_product_lse

Prints a markdown table of milliseconds per gradient (median of repeats; the machine's other
load shows in min/max in the JSON) and writes every measurement to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

from backends.stan import pystan_stan_version
from models.stan_model import stan_data, stan_parameters
from backends.stan_gradient import StanGradient, build_library
from bench.run.gradient import GRADIENT_KS, gradient_problem, time_calls
from models.errors import MixbenchError
from models.oracle import log_density
from models.spec import random_point

FORMULATIONS_DIR = Path(__file__).resolve().parents[2] / "stan" / "formulations"
REFERENCE = "vector_lse"
STANC_OPTIONS = {"O0": (), "O1": ("--O1",)}
EXACT_RTOL = 1e-8
GRADIENT_RTOL = 1e-7
N_CHECK_POINTS = 5


def check_formulation_spec(spec) -> None:
    """Refuse a spec the candidate programs cannot state: they are the likelihood of the normal,
    constant-weight, unshared model with a Uniform or HalfNormal sigma prior (data
    ``sigma_family`` 1-2), what bench.run.gradient's problem fits; stan/mixture.stan holds the rest.

    Raises
    ------
    MixbenchError
        One line naming the fields the candidates lack.
    """
    lacking = [text for text, bad in (
        (f"sigma prior {spec.sigma_prior.family}", spec.sigma_prior.family not in ("uniform", "halfnormal")),
        (f"errors {spec.errors}", spec.errors != "normal"), (f"shared {spec.shared}", spec.shared != "none"),
        (f"weights {spec.weights}", spec.weights != "dirichlet")) if bad]
    if lacking:
        raise MixbenchError(f"stan/formulations: the candidate programs state only normal errors, Dirichlet "
                            f"weights, no shared coefficients and a uniform or halfnormal sigma prior; this "
                            f"spec has {', '.join(lacking)}")


def formulations() -> dict[str, str]:
    """name -> program code, for every candidate program on disk."""
    return {path.stem: path.read_text() for path in sorted(FORMULATIONS_DIR.glob("*.stan"))}


def check_against_oracle(model: StanGradient, spec, dataset, reference: StanGradient | None,
                         seed: int = 1) -> dict[str, float]:
    """Largest relative error of the log density (no Jacobian) against the oracle, and of the
    gradient against the reference program's, over the truth and a few random points."""
    rng = np.random.default_rng(seed)
    points = [spec.check_params(dataset.truth)] + [random_point(spec, rng) for _ in range(N_CHECK_POINTS)]
    lp_err, grad_err = 0.0, 0.0
    for point in points:
        theta = model.unconstrain(stan_parameters(spec, point))
        lp, grad = model.log_density_gradient(theta, jacobian=False)
        expected = log_density(spec, dataset.x, dataset.y, point)
        lp_err = max(lp_err, abs(lp - expected) / abs(expected))
        if reference is not None:
            _, ref_grad = reference.log_density_gradient(theta, jacobian=False)
            scale = max(np.max(np.abs(ref_grad)), 1.0)
            grad_err = max(grad_err, float(np.max(np.abs(grad - ref_grad))) / scale)
    return {"lp_rel_err": lp_err, "grad_rel_err": grad_err if reference is not None else math.nan}


def compare(names: list[str], options: list[str], Ns: list[int], Ks: list[int], repeats: int,
            log=print) -> dict:
    programs = formulations()
    unknown = sorted(set(names) - set(programs))
    if unknown:
        raise SystemExit(f"unknown formulation(s): {', '.join(unknown)}; known: {', '.join(programs)}")
    libraries, builds = {}, []
    for name in names:
        for option in options:
            start = time.perf_counter()
            libraries[name, option], cached = build_library(programs[name], STANC_OPTIONS[option])
            builds.append({"formulation": name, "stanc": option, "cached": cached,
                           "build_s": time.perf_counter() - start})
            log(f"built {name} {option} in {builds[-1]['build_s']:.1f} s{' (cached)' if cached else ''}")
    reference_library, _ = build_library(programs[REFERENCE])
    rows = []
    for K in Ks:
        for N in Ns:
            spec, dataset = gradient_problem(N, K)
            check_formulation_spec(spec)
            data = stan_data(spec, dataset)
            reference = StanGradient(reference_library, data)
            truth = spec.check_params(dataset.truth)
            for (name, option), library in libraries.items():
                model = StanGradient(library, data)
                checks = check_against_oracle(model, spec, dataset, reference)
                x0 = model.unconstrain(stan_parameters(spec, truth))
                timing = time_calls(model.log_density_gradient, x0, repeats=repeats)
                row = {"formulation": name, "stanc": option, "K": K, "N": N, **checks, **timing.to_dict(),
                       "ms_per_gradient": 1e3 * timing.median}
                rows.append(row)
                log(f"K={K} N={N:>8} {name:<24} {option}: {row['ms_per_gradient']:9.4f} ms "
                    f"(min {1e3 * timing.minimum:.4f}, max {1e3 * timing.maximum:.4f}); "
                    f"lp err {checks['lp_rel_err']:.1e}, grad err {checks['grad_rel_err']:.1e}")
                del model
    return {
        "kind": "stan-formulations",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": platform.python_version()},
        "stan_version": pystan_stan_version(),
        "httpstan_passes_stanc_options": False,
        "builds": builds,
        "results": rows,
    }


def markdown(results: dict) -> str:
    """Formulation x stanc option rows, one column per (K, N): ms per gradient; exactness last."""
    import pandas as pd

    frame = pd.DataFrame(results["results"])
    if frame.empty:
        return "_no results_\n"
    frame["column"] = [f"K={k} N={n:.0e}".replace("e+0", "e") for k, n in zip(frame["K"], frame["N"])]
    table = frame.pivot_table(index=["formulation", "stanc"], columns="column", values="ms_per_gradient",
                              sort=False)
    errors = frame.groupby(["formulation", "stanc"], sort=False)[["lp_rel_err", "grad_rel_err"]].max()
    table = table.join(errors)
    lines = ["| formulation | stanc | " + " | ".join(table.columns) + " |",
             "|---|---|" + "---|" * len(table.columns)]
    for (name, option), row in table.iterrows():
        cells = [f"{v:.3g}" if "err" not in c else f"{v:.1e}" for c, v in row.items()]
        lines.append(f"| {name} | {option} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ints(value: str) -> list[int]:
    return [int(float(v)) for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.stan_formulations", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="formulations, comma-separated (default: all on disk)")
    parser.add_argument("--stanc", default="O0,O1", help="stanc optimisation levels: O0,O1 (default both)")
    parser.add_argument("--N", type=_ints, default=[1_000, 10_000, 100_000], help="data sizes (default 1e3,1e4,1e5)")
    parser.add_argument("--K", type=_ints, default=list(GRADIENT_KS), help="components (default 2,3)")
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats per measurement (default 7)")
    parser.add_argument("--out", type=Path, default=Path("results") / "stan-formulations.json")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(formulations())
    options = [o.strip() for o in args.stanc.split(",") if o.strip()]
    for option in options:
        if option not in STANC_OPTIONS:
            parser.error(f"--stanc: unknown {option!r}; known: {', '.join(STANC_OPTIONS)}")
    results = compare(names, options, args.N, args.K, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print()
    print(markdown(results))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
