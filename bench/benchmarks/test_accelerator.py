"""NumPyro on whatever device JAX runs on (a GPU where one is installed, else this CPU) at large N:
NUTS, mean-field SVI and one log density + gradient, against the memory-bandwidth floor.

    uv run pytest bench/benchmarks/test_accelerator.py --benchmark-json=results/accelerator-cpu.json
    uv run pytest bench/benchmarks/test_accelerator.py -k "N1e5 or N1e6" --benchmark-json=...

Run it once on the CPU and once on a GPU machine (there JAX needs its CUDA plugin, for example
``uv pip install "jax[cuda13]"`` matching the locked jax version; the benchmark records which
platform and device ran each case in extra_info, so the two JSON files sit side by side in
``mixbench report``). Nothing here assumes a GPU: on a machine without one it measures the CPU.

The floor. Each gradient of the mixture's log density streams the data once: N x (D + 1) values
(x and y) of the precision's size. The floor is the time the same device takes to stream that many
values in the simplest reduction (a jitted ``sum`` over an array of that shape), measured here
rather than taken from a datasheet, so ``t_gradient / t_stream`` says how far the gradient is
from bandwidth-bound (1.0 would be at the floor; the per-component work makes it larger).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backends import FitSettings, get_backend
from bench.run.gradient import gradient_problem, time_calls

ACCELERATOR_NS = (100_000, 1_000_000, 10_000_000)
PRECISIONS = ("float32", "float64")
# Short runs: the cost per gradient and its scaling in N, not accuracy.
NUTS_SETTINGS = {"chains": 1, "warmup": 200, "draws": 200}
SVI_SETTINGS = {"vi_iterations": 2000, "vi_draws": 200}


def _size_id(n: int) -> str:
    return f"N1e{int(np.log10(n))}"


CASES = [pytest.param(n, p, id=f"{_size_id(n)}-{p}") for n in ACCELERATOR_NS for p in PRECISIONS]


def _device_info() -> dict[str, str]:
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": getattr(device, "device_kind", str(device)),
            "devices": str(jax.device_count())}


def _stream_seconds(n: int, d: int, precision: str) -> float:
    """Seconds per pass of a jitted sum over n x (d + 1) values on JAX's default device."""
    data = jax.device_put(jnp.ones((n, d + 1), dtype=jnp.dtype(precision)))
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(data))
    return time_calls(lambda a: jax.block_until_ready(total(a)), data).median


@pytest.mark.parametrize("n, precision", CASES)
def test_gradient_against_bandwidth_floor(benchmark, n, precision):
    spec, dataset = gradient_problem(n, 2)
    settings = FitSettings(precision=precision)
    f, x0 = get_backend("numpyro").gradient_function(spec, dataset, settings)
    lp, grad = f(x0)
    assert np.isfinite(lp) and np.all(np.isfinite(grad))
    t_gradient = time_calls(f, x0).median
    t_stream = _stream_seconds(n, spec.D, precision)
    value_bytes = np.dtype(precision).itemsize
    benchmark.group = f"accelerator gradient {_size_id(n)}"
    benchmark.extra_info.update(kind="accelerator-gradient", backend="numpyro", precision=precision, N=n,
                                **_device_info(), t_gradient=t_gradient, t_stream=t_stream,
                                floor_ratio=t_gradient / t_stream,
                                bytes_per_pass=n * (spec.D + 1) * value_bytes,
                                stream_gb_per_s=n * (spec.D + 1) * value_bytes / t_stream / 1e9)
    benchmark.pedantic(f, args=(x0,), rounds=5, iterations=3, warmup_rounds=1)


def _fit_once(benchmark, method: str, n: int, precision: str, extra: dict) -> None:
    spec, dataset = gradient_problem(n, 2)
    settings = FitSettings(precision=precision, **extra)
    backend = get_backend("numpyro")
    fits = []

    def run():
        start = time.perf_counter()
        fit = backend.fit(spec, dataset, method, settings, seed=0)
        fits.append((fit, time.perf_counter() - start))

    benchmark.group = f"accelerator {method} {_size_id(n)}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    fit, seconds = fits[-1]
    assert fit.status == "ok", fit.reason
    benchmark.extra_info.update(kind="accelerator-fit", backend="numpyro", method=method, precision=precision, N=n,
                                **_device_info(), t_fit=seconds, timings=dict(fit.timings),
                                grad_evals=fit.grad_evals)


@pytest.mark.parametrize("n, precision", CASES)
def test_nuts(benchmark, n, precision):
    _fit_once(benchmark, "nuts", n, precision, NUTS_SETTINGS)


@pytest.mark.parametrize("n, precision", CASES)
def test_svi_meanfield(benchmark, n, precision):
    _fit_once(benchmark, "advi-meanfield", n, precision, SVI_SETTINGS)
