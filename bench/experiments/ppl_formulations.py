"""Does writing the mixture likelihood differently make PyMC's or NumPyro's gradient cheaper?

PyMC: the backend's CustomDist (log-sum-exp written out) against pm.NormalMixture and a
pm.Potential holding the same log-sum-exp, each through nutpie's Numba function, PyMC's own
PyTensor function (default backend: Numba) and the JAX function PyMC gives NumPyro. NumPyro: MixtureSameFamily against
a log-sum-exp factor. Every variant's log density and gradient at the truth (and a perturbed
point) must equal the backend's default form's to 1e-8 (the default is checked against the
oracle by tests/test_log_density.py). Times are milliseconds per log density + gradient, median
of repeats (bench.run.gradient.time_calls), on the gradient-cost problem (bench/run/gradient.py).

    uv run python -m bench.experiments.ppl_formulations                 # N = 1e4, 1e5; K = 2; float64
    uv run python -m bench.experiments.ppl_formulations --N 100000 --K 2,3 --precision float64,float32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from backends.fit import SAMPLERS
from bench.run.gradient import gradient_problem, time_calls

RTOL = 1e-8


def _points(x0: np.ndarray) -> list[np.ndarray]:
    return [x0, x0 + np.linspace(-0.2, 0.3, x0.size)]


def _agreement(f, reference, x0) -> float:
    """Largest relative difference of value and gradient between two gradient functions."""
    worst = 0.0
    for theta in _points(x0):
        (lp, grad), (lp_ref, grad_ref) = f(theta), reference(theta)
        worst = max(worst, abs(lp - lp_ref) / abs(lp_ref),
                    float(np.max(np.abs(grad - grad_ref))) / max(float(np.max(np.abs(grad_ref))), 1.0))
    return worst


def pymc_cases(N: int, K: int, precision: str, repeats: int, log=print) -> list[dict]:
    from backends.gradients import fixed_point
    from backends.pymc import model as entries, nuts
    from models import pymc_model

    spec, dataset = gradient_problem(N, K)
    rows = []
    for engine in SAMPLERS["pymc"]:
        build = {"nutpie": nuts._nutpie_gradient, "pymc": nuts._pytensor_gradient,
                 "numpyro": nuts._jax_gradient}[engine]
        functions = {}
        for form in pymc_model.LIKELIHOOD_FORMS:
            with entries._precision(precision):
                model = pymc_model.build_model(spec, dataset.x, dataset.y, form=form)
                entry = entries._Compiled(spec=spec, model=model, precision=precision).use(dataset)
                x0 = entry.unconstrained_point(fixed_point(spec, dataset))
                start = time.perf_counter()
                f = build(entry, x0.size, precision)
                f(x0)
                built = time.perf_counter() - start
            functions[form] = f
            timing = time_calls(f, x0, repeats=repeats)
            rows.append({"backend": "pymc", "engine": engine, "form": form, "precision": precision, "N": N, "K": K,
                         "ms_per_gradient": 1e3 * timing.median, **timing.to_dict(), "build_s": built,
                         "rel_diff_vs_default": _agreement(f, functions["custom_dist"], x0)})
            log(_line(rows[-1]))
    return rows


def numpyro_cases(N: int, K: int, precision: str, repeats: int, log=print) -> list[dict]:
    import jax.numpy as jnp

    from backends.numpyro import model as backend
    from backends.base import FitSettings
    from backends.gradients import fixed_point  # noqa: F401  (the same point the backend uses)
    from backends.numpyro import NumPyroBackend
    from models import numpyro_model

    spec, dataset = gradient_problem(N, K)
    # The backend's own function fixes the point and the data on the device.
    reference, x0 = NumPyroBackend().gradient_function(spec, dataset, FitSettings(precision=precision))
    rows = []
    for form in numpyro_model.LIKELIHOOD_FORMS:
        fn = backend._value_and_grad_fn(spec, form)
        with backend._precision(precision):
            x, y = backend._device_data(dataset, precision)

        def f(theta, fn=fn, x=x, y=y):
            with backend._precision(precision):
                lp, grad = fn(jnp.asarray(theta, y.dtype), x, y)
                lp.block_until_ready()
            return float(lp), np.asarray(grad, dtype=np.float64)

        start = time.perf_counter()
        f(x0)
        built = time.perf_counter() - start
        timing = time_calls(f, x0, repeats=repeats)
        rows.append({"backend": "numpyro", "engine": "numpyro", "form": form, "precision": precision, "N": N,
                     "K": K, "ms_per_gradient": 1e3 * timing.median, **timing.to_dict(), "build_s": built,
                     "rel_diff_vs_default": _agreement(f, reference, x0)})
        log(_line(rows[-1]))
    return rows


def _line(row: dict) -> str:
    return (f"{row['backend']:<8} {row['engine']:<8} {row['form']:<20} {row['precision']} K={row['K']} "
            f"N={row['N']:>7}: {row['ms_per_gradient']:8.4f} ms (min {1e3 * row['min_s']:.4f}, "
            f"max {1e3 * row['max_s']:.4f}); rel diff vs default {row['rel_diff_vs_default']:.1e}")


def markdown(rows: list[dict]) -> str:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if frame.empty:
        return "_no results_\n"
    frame["column"] = [f"K={k} N={n:.0e}".replace("e+0", "e") for k, n in zip(frame["K"], frame["N"])]
    keys = ["backend", "engine", "precision", "form"]
    table = frame.pivot_table(index=keys, columns="column", values="ms_per_gradient", sort=False)
    table = table.join(frame.groupby(keys, sort=False)["rel_diff_vs_default"].max())
    lines = ["| " + " | ".join(keys) + " | " + " | ".join(table.columns) + " |",
             "|" + "---|" * (len(keys) + len(table.columns))]
    for index, row in table.iterrows():
        cells = [f"{v:.1e}" if c == "rel_diff_vs_default" else f"{v:.3g}" for c, v in row.items()]
        lines.append("| " + " | ".join(index) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ints(value: str) -> list[int]:
    return [int(float(v)) for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments.ppl_formulations", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="pymc,numpyro")
    parser.add_argument("--N", type=_ints, default=[10_000, 100_000])
    parser.add_argument("--K", type=_ints, default=[2])
    parser.add_argument("--precision", default="float64", help="float64, float32 or both comma-separated")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("results") / "ppl-formulations.json")
    args = parser.parse_args(argv)
    rows = []
    for backend in args.backends.split(","):
        cases = {"pymc": pymc_cases, "numpyro": numpyro_cases}[backend.strip()]
        for precision in args.precision.split(","):
            for K in args.K:
                for N in args.N:
                    rows += cases(N, K, precision.strip(), args.repeats)
    bad = [r for r in rows if not r["rel_diff_vs_default"] <= (RTOL if r["precision"] == "float64" else 1e-4)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"kind": "ppl-formulations", "command": sys.argv, "results": rows}, indent=1))
    print()
    print(markdown(rows))
    print(f"written: {args.out}")
    if bad:
        print(f"{len(bad)} variant(s) disagree with the default form beyond tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
