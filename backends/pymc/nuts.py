"""The PyMC backend's NUTS runs: nutpie (default), PyMC's own sampler and PyMC's NumPyro/JAX
sampler on the cached model, their sample statistics in one vocabulary, and the log density +
gradient callables each engine evaluates (for the gradient-cost benchmark).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import pymc as pm
import pytensor

from backends.fit import FitSettings
from backends.timing import chain_seconds, stopwatch
from backends.pymc.model import _Compiled

def _init_nuts(entry: _Compiled, chain_seeds: list[int], settings: FitSettings):
    """``pm.init_nuts(init="jitter+adapt_diag")``, step for step, on the entry's stored
    log density and gradient instead of one compiled afresh: jittered initial points (retried
    until finite), a diagonal mass matrix adapted from their mean, and the NUTS step.

    A private path (PyMC's ``_init_jitter``): pinned to the public ``pm.sample`` by
    tests/test_pymc_backend.py (same seed, same draws). pm.sample compiles its own
    logp_dlogp_function on every call and takes none from outside (no upstream issue asks for
    it; pymc-devs/pymc#7578 added ``compile_kwargs`` only). Remove it for pm.sample once warm
    workers keep one compiled model per process, which makes that compile a one-off.
    """
    from pymc.blocking import DictToArrayBijection
    from pymc.sampling.mcmc import _init_jitter
    from pymc.step_methods.hmc import quadpotential

    model, logp_dlogp = entry.model, entry.logp_dlogp()

    def model_logp(point) -> float:
        flat, _ = DictToArrayBijection.map(point)
        return logp_dlogp([flat], extra_vars={})[0]

    initial_points = _init_jitter(model, None, seeds=chain_seeds, jitter=True, jitter_max_retries=10,
                                  logp_fn=model_logp)
    flat_points = [DictToArrayBijection.map(point).data for point in initial_points]
    mean = np.mean(flat_points, axis=0)
    potential = quadpotential.QuadPotentialDiagAdapt(len(mean), mean, np.ones_like(mean), 10, rng=chain_seeds[0])
    step = pm.NUTS(potential=potential, model=model, rng=chain_seeds[0], initial_point=initial_points[0],
                   logp_dlogp_func=logp_dlogp, target_accept=settings.target_accept,
                   max_treedepth=settings.max_treedepth)
    return initial_points, step


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------

class _NutpieClock:
    """Per-chain warm-up / sampling split of a nutpie run, from its progress callback.

    nutpie reports each chain's running time (runtime_ms) with its draw count every
    ``progress_rate`` ms; no per-draw timing exists. The warm-up time of a chain is its runtime
    interpolated at draw number ``tune`` between the two reports that bracket the end of tuning,
    so it is exact to within one reporting interval.
    """

    RATE_MS = 10

    def __init__(self, chains: int):
        self.reports: list[list[tuple[int, float]]] = [[(0, 0.0)] for _ in range(chains)]

    def __call__(self, progress) -> None:
        for chain, p in enumerate(progress):
            self.reports[chain].append((int(p.finished_draws), float(p.runtime_ms) / 1000.0))

    def split(self, tune: int, total_draws: int, wall: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-chain (warm-up, sampling) seconds.

        A chain whose last report came before its last draw is taken to have run until the
        end of the call (``wall``): an upper bound, never a silent undercount.
        """
        warmup, sampling = [], []
        for reports in self.reports:
            draws, seconds = np.array(reports, dtype=float).T
            if draws.max() < total_draws:
                draws, seconds = np.append(draws, total_draws), np.append(seconds, wall)
            warm = float(np.interp(tune, draws, seconds))
            warmup.append(warm)
            sampling.append(seconds.max() - warm)
        return np.array(warmup), np.array(sampling)
@contextmanager
def _jax_x64(enabled: bool):
    """PyMC's JAX sampler runs at JAX's global precision: set it for the run, then restore."""
    import jax
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
def _run_nutpie(entry: _Compiled, settings: FitSettings, seed: int, cores: int, timings):
    import nutpie

    # Compiled once per (spec, data size, precision) and cached: a fit that reuses it reports
    # only what it spent here (the data swap), not the first fit's compile again. With float32,
    # nutpie keeps positions and gradients in float64 and casts them into the float32 graph.
    with stopwatch(timings, "compile"):
        compiled_model = entry.nutpie()
    clock = _NutpieClock(settings.chains)
    # nuts-rs cannot run without a tuning draw (pm.sample makes the same substitution).
    tune = max(settings.warmup, 1)
    start = time.perf_counter()
    trace = nutpie.sample(
        compiled_model, draws=settings.draws, tune=tune, chains=settings.chains, cores=cores,
        seed=seed, target_accept=settings.target_accept, maxdepth=settings.max_treedepth,
        save_warmup=True, progress_bar=False, progress_callback=clock, progress_rate=clock.RATE_MS,
    )
    wall = time.perf_counter() - start
    warmup, sampling = clock.split(tune, tune + settings.draws, wall)
    timings["warmup"] = chain_seconds(warmup, cores)
    timings["sampling"] = chain_seconds(sampling, cores)
    # Thread start-up and nutpie's conversion of its arrow trace, outside every chain's runtime.
    timings["overhead"] = max(wall - timings["warmup"] - timings["sampling"], 0.0)
    return trace, trace["warmup_sample_stats"]

def _run_pymc(entry: _Compiled, settings: FitSettings, seed: int, cores: int, timings):
    # pm.sample's own seeding and initialisation (jitter+adapt_diag), done here so that
    # compiling the NUTS step is timed apart from sampling.
    rngs = np.random.default_rng(seed).spawn(settings.chains)
    chain_seeds = [int(rng.integers(2**30)) for rng in rngs]
    with entry.model, stopwatch(timings, "compile"):
        initial_points, step = _init_nuts(entry, chain_seeds, settings)
    start = time.perf_counter()
    with entry.model:
        trace = pm.sample(
            draws=settings.draws, tune=settings.warmup, chains=settings.chains, cores=cores,
            random_seed=seed, step=step, initvals=initial_points, nuts_sampler="pymc",
            discard_tuned_samples=False, progressbar=False, quiet=True,
            compute_convergence_checks=False,
        )
    wall = time.perf_counter() - start
    # PyMC times every draw inside the NUTS step (perf_counter_diff): the phases are the sums
    # of those times; process start-up, trace writing and conversion are the overhead.
    warmup_stats = trace["warmup_sample_stats"] if settings.warmup else None
    warmup = (warmup_stats.perf_counter_diff.sum("draw").values if warmup_stats is not None
              else np.zeros(settings.chains))
    sampling = trace.sample_stats.perf_counter_diff.sum("draw").values
    timings["warmup"] = chain_seconds(warmup, cores)
    timings["sampling"] = chain_seconds(sampling, cores)
    timings["overhead"] = max(wall - timings["warmup"] - timings["sampling"], 0.0)
    if warmup_stats is None:
        warmup_stats = trace.sample_stats.isel(draw=slice(0, 0))
    return trace, warmup_stats

def _run_numpyro(entry: _Compiled, settings: FitSettings, seed: int, cores: int, timings):
    from backends.caches import enable_jax_compilation_cache

    enable_jax_compilation_cache()  # a second identical run loads JAX's programs from disk
    start = time.perf_counter()
    with _jax_x64(settings.precision == "float64"), entry.model:
        trace = pm.sample(
            draws=settings.draws, tune=settings.warmup, chains=settings.chains,
            random_seed=seed, nuts_sampler="numpyro", target_accept=settings.target_accept,
            nuts={"max_tree_depth": settings.max_treedepth,
                  "chain_method": "parallel" if settings.parallel_chains else "sequential"},
            progressbar=False, quiet=True, compute_convergence_checks=False,
        )
    wall = time.perf_counter() - start
    # pm.sample runs NumPyro's warm-up and sampling as one jitted call and times only that
    # call (JAX compilation included): neither compile nor warm-up can be split from it.
    # The rest of pm.sample (PyTensor -> JAX conversion, initial points, transforming the
    # draws back) is the overhead. NumPyro discards warm-up statistics, so grad_evals stays
    # unknown.
    timings["warmup_and_sampling"] = float(trace.posterior.attrs["sampling_time"])
    timings["overhead"] = max(wall - timings["warmup_and_sampling"], 0.0)
    return trace, None

# ---- VI, Pathfinder, MAP ---------------------------------------------------------------
def _nutpie_gradient(entry: _Compiled, dim: int, precision: str):
    """nutpie's compiled C callback, the function nuts-rs calls at every leapfrog step:
    (dim, x, gradient out, logp out, user data) -> status, float64 in and out."""
    import ctypes

    compiled_model = entry.nutpie()
    if compiled_model.n_dim != dim:
        raise RuntimeError(f"nutpie's model has {compiled_model.n_dim} coordinates, expected {dim}")
    callback = compiled_model.compiled_logp_func.ctypes
    user_data = compiled_model.user_data
    double_p = ctypes.POINTER(ctypes.c_double)

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        grad, logp = np.empty(dim), np.empty(())
        # compiled_model stays referenced here: it owns user_data's buffers.
        status = callback(dim, theta.ctypes.data_as(double_p), grad.ctypes.data_as(double_p),
                          logp.ctypes.data_as(double_p), user_data.ctypes.data_as(ctypes.c_void_p))
        if status not in (0, 3, 4):  # 3, 4: a non-finite gradient or log density, still returned
            raise RuntimeError(f"nutpie's log density failed with status {status} ({compiled_model!r:.40})")
        return float(logp), grad

    return f


def _pytensor_gradient(entry: _Compiled, dim: int, precision: str):
    """PyMC's ValueGradFunction on raveled inputs (PyTensor's default backend: Numba in PyTensor
    3), the one the pymc engine's NUTS uses, called the way PyMC's integrator calls it."""
    function = entry.logp_dlogp()._pytensor_function
    dtype = pytensor.config.floatX

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        logp, grad = function(np.asarray(theta, dtype=dtype))
        return float(logp), np.asarray(grad, dtype=np.float64)

    return f


def _jax_gradient(entry: _Compiled, dim: int, precision: str):
    """The JAX log density PyMC hands to NumPyro (pymc.sampling.jax.get_jaxified_logp, the
    data frozen into the program as it does), differentiated and jitted on the flat vector."""
    import jax
    from pymc.sampling.jax import get_jaxified_logp

    from backends.caches import enable_jax_compilation_cache

    enable_jax_compilation_cache()
    with _jax_x64(precision == "float64"):
        # Despite its name, negative_logp=True returns +log p (the graph as is).
        logp_fn = get_jaxified_logp(entry.model, negative_logp=True)
        shapes = [tuple(int(d) for d in v.type.shape) for v in entry.model.value_vars]
        sizes = [math.prod(shape) for shape in shapes]

        def logp_flat(flat):
            parts, start = [], 0
            for shape, size in zip(shapes, sizes):
                parts.append(flat[start:start + size].reshape(shape))
                start += size
            return logp_fn(parts)

        value_and_grad = jax.jit(jax.value_and_grad(logp_flat))
    dtype = np.float64 if precision == "float64" else np.float32

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        with _jax_x64(precision == "float64"):
            logp, grad = jax.block_until_ready(value_and_grad(np.asarray(theta, dtype=dtype)))
        return float(logp), np.asarray(grad, dtype=np.float64)

    return f
def _sample_stats(stats, sampler: str) -> dict[str, np.ndarray]:
    """An engine's sample statistics -> diverging, n_steps, tree_depth, lp, step_size, accept.

    lp is the log density in the sampler's unconstrained space (Jacobian included).
    """
    names = {
        "nutpie": {"diverging": "diverging", "n_steps": "n_steps", "tree_depth": "depth",
                   "lp": "logp", "step_size": "step_size", "acceptance_rate": "mean_tree_accept"},
        "pymc": {"diverging": "diverging", "n_steps": "n_steps", "tree_depth": "tree_depth",
                 "lp": "lp", "step_size": "step_size", "acceptance_rate": "acceptance_rate"},
        "numpyro": {"diverging": "diverging", "n_steps": "n_steps", "tree_depth": "tree_depth",
                    "lp": "lp", "step_size": "step_size", "acceptance_rate": "acceptance_rate"},
    }[sampler]
    out = {ours: np.asarray(stats[theirs].values) for ours, theirs in names.items()}
    if sampler == "numpyro":
        # PyMC passes NumPyro's potential energy (minus the log density) on under the name lp.
        out["lp"] = -out["lp"]
    out["diverging"] = out["diverging"].astype(bool)
    out["n_steps"] = out["n_steps"].astype(np.int64)
    out["tree_depth"] = out["tree_depth"].astype(np.int64)
    return out
