"""The PyMC backend: the mixture of regressions as one PyMC model, fitted by NUTS, VI or MAP.

NUTS runs through nutpie (default), PyMC's own sampler or PyMC's NumPyro/JAX sampler. VI is
pm.fit's ADVI (mean-field or full-rank, on the full data or on minibatches), Pathfinder comes
from pymc-extras, MAP is pm.find_MAP's L-BFGS-B and the Laplace approximation a trust-region
search, both on pymc-extras' compiled log density and derivatives, compiled once per model so
that every start of a multi-start search reuses them (``_map``, ``_laplace``).

The model and its canonical <-> native parameter maps are models/pymc_model.py's, beside the
NumPyro model and the Stan program; this module adapts them to the engines.

What is compiled is kept on disk for later processes: the full-data model's functions after
PyTensor's rewrites (backends/pytensor_store.py), nutpie's C callbacks (backends/nutpie_cache.py),
and, per exact cell, the prepared ADVI and pymc-extras' single-path Pathfinder function. A later
identical run loads them and compiles nothing (docs/performance.md, section 5).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import pymc.variational as pmvi
import pytensor
import pytensor.tensor as pt
import xarray as xr
from scipy import optimize
from pytensor.graph.replace import graph_replace

# Numba is PyTensor's default linker: loading its dispatch modules (and Numba) belongs to this
# import, not to the first compile that would otherwise load them.
import pytensor.link.numba.dispatch  # noqa: E402,F401  isort: skip

from backends import base, laplace, pymc_vi_store
from backends.base import (Backend, Fit, FitSettings, bound_hits, approximation_group, canonical_datatree, chain_seconds, package_versions, start_seeds,
                           stopwatch)
from backends.degenerate import best_start
from backends.importance import GROUP as IMPORTANCE_GROUP, keep_proposal, proposal_group, psis_resample
from backends.methods import Kind
from backends.methods import method as method_named
from backends.pytensor_store import load_or_build, set_shared
from backends.base import note_compile
from models.data import Dataset
from models.errors import MixbenchError
from models.pymc_model import build_model
from models.pymc_model import canonical_values as _canonical
from models.pymc_model import model_values as _model_values
from models.spec import LIKELIHOODS, MixtureSpec

SAMPLERS = base.SAMPLERS["pymc"]
VI_METHODS = {
    "advi-meanfield": ("advi", False),
    "advi-fullrank": ("fullrank_advi", False),
    "advi-minibatch-meanfield": ("advi", True),
    "advi-minibatch-fullrank": ("fullrank_advi", True),
}
OPTIMIZERS = base.OPTIMIZERS["pymc"]
PATHFINDER_MAXITER = 1000
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Compiled functions, cached per (spec, data, precision)
# --------------------------------------------------------------------------------------------

@contextmanager
def _precision(precision: str):
    with pytensor.config.change_flags(floatX=precision):
        yield


@dataclass
class _Compiled:
    """A full-data model and the functions compiled from it, built on first use.

    The data live in pm.Data (shared variables): every compiled function reads the current
    values, so one entry serves every data set of the same size, set by ``use``.
    """

    spec: MixtureSpec
    model: pm.Model
    precision: str
    _fns: dict = field(default_factory=dict)
    compile_seconds: dict = field(default_factory=dict)
    # Functions loaded from disk hold their own copies of the data (backends/pytensor_store.py).
    _stored: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    data_key: str = ""

    def use(self, dataset: Dataset) -> "_Compiled":
        key = dataset.digest()
        if key != self.data_key:
            dtype = pytensor.config.floatX if self.precision == "float32" else "float64"
            self.data = {"y": dataset.y.astype(dtype)}
            if self.spec.D:
                self.data["x"] = dataset.x.astype(dtype)
            pm.set_data(self.data, model=self.model)
            for function in self._stored:
                set_shared(function, self.data)
            self.data_key = key
        return self

    @property
    def free_names(self) -> list[str]:
        return [rv.name for rv in self.model.free_RVs]

    def description(self, **extra) -> dict:
        """What every function compiled from this entry depends on, for the stores' keys."""
        return {"spec": self.spec.to_dict(), "precision": self.precision,
                "data_shapes": {k: list(v.shape) for k, v in self.data.items()}, **extra}

    def _get(self, name, build, stored: bool = True):
        """The function ``name``, built once per process. ``stored``: a PyTensor function (or
        PyMC's ValueGradFunction) kept on disk after its rewrites and loaded in later processes
        (backends/pytensor_store.py), its data then set to this entry's."""
        if name not in self._fns:
            note_compile("cold")
            start = time.perf_counter()
            with _precision(self.precision):
                if stored:
                    function, loaded = load_or_build(self.description(function=name), build)
                    if loaded:
                        inner = getattr(function, "_pytensor_function", function)
                        set_shared(inner, self.data)
                        self._stored.append(inner)
                    self._fns[name] = function
                else:
                    self._fns[name] = build()
            self.compile_seconds[name] = time.perf_counter() - start
        return self._fns[name]

    def constrained_logp(self):
        """f(*constrained values in free_RVs order) -> log density, no Jacobian."""
        def build():
            model = self.model
            inputs, replace = [], {}
            for rv in model.free_RVs:
                value = model.rvs_to_values[rv]
                point = rv.type(name=rv.name)
                transform = model.rvs_to_transforms.get(rv)
                replace[value] = transform.forward(point, *rv.owner.inputs) if transform else point
                inputs.append(point)
            logp = graph_replace(model.logp(jacobian=False), replace, strict=False)
            return pytensor.function(inputs, logp, on_unused_input="ignore")
        return self._get("constrained_logp", build)

    def constrain(self):
        """f(*value vars) -> the canonical outputs: w (when D > 0), b, sigma, nu (a parameter), pi (when K > 1)."""
        def build():
            outs = self.model.replace_rvs_by_values([self.model[n] for n in self.output_names])
            return pytensor.function(self.model.value_vars, outs, on_unused_input="ignore")
        return self._get("constrain", build)

    def log_p_jacobian(self):
        """f(*value vars) -> (log density with the Jacobian, log |Jacobian| of the transforms)."""
        def build():
            model = self.model
            jacobian = pt.constant(0.0)
            for rv in model.free_RVs:
                transform = model.rvs_to_transforms.get(rv)
                if transform is not None:
                    value = model.rvs_to_values[rv]
                    jacobian = jacobian + pt.sum(transform.log_jac_det(value, *rv.owner.inputs))
            return pytensor.function(model.value_vars, [model.logp(jacobian=True), jacobian],
                                     on_unused_input="ignore")
        return self._get("log_p_jacobian", build)

    def unconstrain(self):
        """f(*constrained values in free_RVs order) -> the value variables (unconstrained)."""
        def build():
            model = self.model
            inputs, outputs = [], []
            for rv in model.free_RVs:
                point = rv.type(name=rv.name)
                transform = model.rvs_to_transforms.get(rv)
                inputs.append(point)
                outputs.append(transform.forward(point, *rv.owner.inputs) if transform else point)
            return pytensor.function(inputs, outputs, on_unused_input="ignore")
        return self._get("unconstrain", build)

    def unconstrained_point(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """A canonical constrained point -> the flat unconstrained vector every sampler uses
        (value variables in free_RVs order, each raveled)."""
        values = _model_values(self.spec, params)
        dtype = pytensor.config.floatX
        parts = self.unconstrain()(*[np.asarray(values[n], dtype=dtype) for n in self.free_names])
        return np.concatenate([np.ravel(p) for p in parts]).astype(np.float64)

    @property
    def output_names(self) -> list[str]:
        names = ["w"] if self.spec.D else []
        names += ["b"] if self.spec.intercept else []
        names += ["sigma"]
        names += ["nu"] if self.spec.nu_is_parameter else []
        names += ["pi"] if self.spec.K > 1 else []
        return names

    def logp_dlogp(self):
        """PyMC's ValueGradFunction for its own NUTS (ravelled inputs)."""
        function = self._get("logp_dlogp", lambda: self.model.logp_dlogp_function(ravel_inputs=True))
        function.trust_input = True
        return function

    def _scipy_objective(self, name: str, jacobian: bool, hessian: bool):
        """pymc-extras' ``scipy_optimize_funcs_from_loss`` on -log density (with or without the
        Jacobian): the fused f(flat value vars) -> (loss, gradient[, Hessian]) that its
        ``find_MAP`` and ``fit_laplace`` compile. Built once per entry, so every start of a
        multi-start search runs on it. The flat vector is the value variables in
        ``model.value_vars`` order, each raveled."""
        def build():
            from pymc_extras.inference.laplace_approx.scipy_interface import scipy_optimize_funcs_from_loss

            model = self.model
            start = model.initial_point()
            f_fused, _ = scipy_optimize_funcs_from_loss(
                loss=-model.logp(jacobian=jacobian), inputs=model.value_vars,
                initial_point_dict={v.name: start[v.name] for v in model.value_vars},
                use_grad=True, use_hess=hessian, use_hessp=False)
            return f_fused
        return self._get(name, build)

    def jittered_start(self):
        """f(seed) -> {value variable name: value}: PyMC's initial point jittered in the
        unconstrained space, as NUTS starts (the plain initial point puts every unordered
        component at the same place, a saddle that a gradient method never leaves)."""
        from pymc.initial_point import make_initial_point_fn

        return self._get("jittered_start", lambda: make_initial_point_fn(
            model=self.model, jitter_rvs=set(self.model.free_RVs), return_transformed=True), stored=False)

    def map_objective(self):
        """f(flat value vars) -> (-log density without the Jacobian, its gradient): what
        ``pm.find_MAP`` minimises (the constrained-space mode, searched on the unconstrained
        space), compiled once instead of inside every ``find_MAP`` call."""
        return self._scipy_objective("map_objective", jacobian=False, hessian=False)

    def laplace_objective(self):
        """f(flat value vars) -> (-log density with the Jacobian, its gradient, its Hessian).

        Given the log density *with* the Jacobian: pymc-extras' ``fit_laplace`` itself maximises
        ``model.logp(jacobian=False)``, the constrained-space MAP, not the unconstrained mode a
        Laplace approximation on the unconstrained space is centred at.
        """
        return self._scipy_objective("laplace_objective", jacobian=True, hessian=True)

    def nutpie(self):
        """nutpie's compiled model, holding the current data (nutpie copies shared data in)."""
        from backends.nutpie_cache import compile_nutpie_model

        compiled_model = self._get("nutpie", lambda: compile_nutpie_model(self.model, self.description(), self.data),
                                   stored=False)  # nutpie_cache keeps its own
        return compiled_model.with_data(**self.data)


_CACHE: OrderedDict[tuple, _Compiled] = OrderedDict()
_CACHE_SIZE = 16


def compiled(spec: MixtureSpec, dataset: Dataset, precision: str = "float64") -> _Compiled:
    """The cached full-data model of ``spec`` for data of this size, holding ``dataset``."""
    key = (spec, dataset.N, precision)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        note_compile("warm")
        return _CACHE[key].use(dataset)
    note_compile("cold")
    with _precision(precision):
        model = build_model(spec, dataset.x, dataset.y)
    entry = _Compiled(spec=spec, model=model, precision=precision)
    _CACHE[key] = entry
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return entry.use(dataset)


# --------------------------------------------------------------------------------------------
# Compiled once, kept on disk: PyMC's own NUTS set-up, ADVI, pymc-extras' Pathfinder
# --------------------------------------------------------------------------------------------

def _prepared_advi(entry: _Compiled, dataset: Dataset, method: str, settings: FitSettings, seed: int):
    """PyMC's ADVI (``pm.fit(method=...)`` is these classes) after ``fit(0)``, which builds the
    approximation and compiles its step function; ``refine()`` then runs the iterations, so the
    two are timed apart.

    The prepared object is stored whole (backends/pytensor_store.py) under spec, data, method and
    VI settings, not the seed, and kept in the process (backends/pymc_vi_store.py): every fit
    resets its parameters and gives its random streams those PyMC seeds from ``seed``.
    """
    pm_method, minibatch = VI_METHODS[method]

    def build(build_seed: int):
        model = entry.model
        if minibatch:
            # The step function draws a fresh batch of rows each iteration; each batch's log
            # likelihood is scaled by N / batch_size unless minibatch_total_size is False.
            model = build_model(entry.spec, dataset.x, dataset.y, batch_size=settings.batch_size,
                                total_size=settings.minibatch_total_size)
        inference_cls = pm.ADVI if pm_method == "advi" else pm.FullRankADVI
        with model:
            inference = inference_cls(random_seed=build_seed)
            inference.fit(0, obj_optimizer=_optimizer(settings), progressbar=False)
        return inference

    description = entry.description(function="advi", method=method, data=dataset.digest(),
                                    optimizer=settings.optimizer, learning_rate=settings.learning_rate,
                                    batch_size=settings.batch_size if minibatch else None,
                                    total_size=settings.minibatch_total_size if minibatch else None)
    return pymc_vi_store.advi(description, build, seed)


@contextmanager
def _stored_single_pathfinder(entry: _Compiled, dataset: Dataset):
    """pymc-extras' Pathfinder with its compiled single-path function stored on disk.

    ``multipath_pathfinder`` builds (and times as its compile) one seedable single-path function
    per call, from ``make_single_pathfinder_fn``, and offers no way to pass one in; for this block
    its module's reference is swapped for a version that keeps the function (cloudpickle) under
    the data and every argument, so an identical run loads it instead of compiling, and keeps it
    in the process for later seeds (backends/pymc_vi_store.py). The paths
    themselves are pymc-extras' own, seeded per call as before. Its graphs are keyed differently
    by Numba once unpickled, hence the warm-up path (backends/pytensor_store.py).
    """
    from pymc_extras.inference.pathfinder import multipath

    original = multipath.make_single_pathfinder_fn

    def stored(model, **kwargs):
        description = entry.description(function="single_pathfinder", data=dataset.digest(),
                                        arguments={name: repr(value) for name, value in sorted(kwargs.items())})
        return pymc_vi_store.single_path(description, lambda: original(model, **kwargs))

    multipath.make_single_pathfinder_fn = stored
    try:
        yield
    finally:
        multipath.make_single_pathfinder_fn = original


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
def _quiet(logger_name: str):
    """Keep a library's progress chatter (INFO) out of a benchmark's output."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


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


def _optimizer(settings: FitSettings):
    if settings.optimizer not in OPTIMIZERS:
        raise MixbenchError(
            f"settings.optimizer: unknown {settings.optimizer!r}; PyMC has {', '.join(OPTIMIZERS)}"
        )
    return getattr(pmvi, settings.optimizer)(learning_rate=settings.learning_rate)


class _ConvergenceCheck:
    """The thread's CheckParametersConvergence callback, remembering whether it stopped the fit."""

    def __init__(self, tolerance: float):
        self.check = pmvi.callbacks.CheckParametersConvergence(tolerance=tolerance)
        self.stopped_at: int | None = None

    def __call__(self, approx, loss, i):
        try:
            self.check(approx, loss, i)
        except StopIteration:
            self.stopped_at = i
            raise


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------

class PyMCBackend(Backend):
    name = "pymc"

    def versions(self) -> dict[str, str]:
        return package_versions("pymc", "pytensor", "nutpie", "numba", "pymc-extras", "numpyro",
                                "jax", "numpy", "scipy")

    # The method table and the likelihoods this backend's model implements (Backend's contract).
    methods = {
        "nuts": "_nuts",
        **dict.fromkeys(VI_METHODS, "_advi"),
        "pathfinder": "_pathfinder",
        "map": "_map",
        "laplace": "_laplace",
    }
    likelihoods = LIKELIHOODS  # the forum replay likelihoods too: they replay PyMC code

    def refuses(self, spec: MixtureSpec, method: str, settings: FitSettings) -> str | None:
        if method_named(method).kind is Kind.MCMC and (settings.sampler or "nutpie") not in SAMPLERS:
            raise MixbenchError(
                f"settings.sampler: the PyMC backend runs {', '.join(SAMPLERS)}, got {settings.sampler!r}"
            )
        if method in VI_METHODS:
            _optimizer(settings)
        if method == "pathfinder" and settings.precision == "float32":
            return "pymc-extras' Pathfinder builds float64 graphs that do not accept a float32 model"
        return None

    def log_density(self, spec: MixtureSpec, dataset: Dataset, params: dict[str, np.ndarray]) -> float:
        dataset.check_against(spec)
        entry = compiled(spec, dataset)
        values = _model_values(spec, params)
        return float(entry.constrained_logp()(*[values[n] for n in entry.free_names]))

    def gradient_function(self, spec: MixtureSpec, dataset: Dataset, settings: FitSettings):
        """The log density + gradient each NUTS engine evaluates, on the flat value variables:
        nutpie's Numba function (called through the C pointer nuts-rs calls), PyMC's own
        ValueGradFunction (PyTensor's default backend, Numba in PyTensor 3, as PyMC's NUTS calls
        it), or the JAX function PyMC's numpyro sampler differentiates. Compiled before returning."""
        from backends.gradients import fixed_point

        engine = settings.sampler or "nutpie"
        if engine not in SAMPLERS:
            raise MixbenchError(f"settings.sampler: the PyMC backend runs {', '.join(SAMPLERS)}, got {engine!r}")
        dataset.check_against(spec)
        with _precision(settings.precision):
            entry = compiled(spec, dataset, settings.precision)
            x0 = entry.unconstrained_point(fixed_point(spec, dataset))
            build = {"nutpie": _nutpie_gradient, "pymc": _pytensor_gradient, "numpyro": _jax_gradient}[engine]
            f = build(entry, x0.size, settings.precision)
        f(x0)  # any lazy compilation happens now
        return f, x0

    def _fit(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        # Every method runs at the fit's precision with PyMC's chatter off; the table dispatches.
        with _precision(settings.precision), _quiet("pymc"):
            return super()._fit(spec, dataset, method, settings, seed)

    # ---- NUTS ------------------------------------------------------------------------------

    def _nuts(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
              seed: int) -> Fit:
        sampler = settings.sampler or "nutpie"
        entry = compiled(spec, dataset, settings.precision)
        cores = settings.chains if settings.parallel_chains else 1
        timings: dict[str, float] = {}
        run = {"nutpie": self._run_nutpie, "pymc": self._run_pymc, "numpyro": self._run_numpyro}[sampler]
        trace, warmup_stats = run(entry, settings, seed, cores, timings)

        with stopwatch(timings, "extraction"):
            post = trace.posterior
            lead = (settings.chains, settings.draws)
            posterior = _canonical(spec, {n: post[n].values for n in entry.output_names}, lead)
            stats = _sample_stats(trace.sample_stats, sampler)
            draws = canonical_datatree(spec, posterior, stats,
                                       attrs={"/": {"backend": self.name, "engine": f"pymc+{sampler}"}})
        grad_evals = None
        if warmup_stats is not None:
            grad_evals = int(stats["n_steps"].sum()) + int(_sample_stats(warmup_stats, sampler)["n_steps"].sum())
        return Fit(backend=self.name, method="nuts", status="ok", engine=f"pymc+{sampler}", draws=draws,
                   timings=timings, precision=settings.precision, grad_evals=grad_evals,
                   divergences=int(stats["diverging"].sum()))

    def _run_nutpie(self, entry: _Compiled, settings: FitSettings, seed: int, cores: int, timings):
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

    def _run_pymc(self, entry: _Compiled, settings: FitSettings, seed: int, cores: int, timings):
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

    def _run_numpyro(self, entry: _Compiled, settings: FitSettings, seed: int, cores: int, timings):
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

    def _advi(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        pm_method, minibatch = VI_METHODS[method]
        entry = compiled(spec, dataset, settings.precision)
        engine = f"pymc+{pm_method}"
        timings: dict[str, float] = {}
        check = _ConvergenceCheck(settings.vi_tolerance)
        try:
            with stopwatch(timings, "compile"):
                inference = _prepared_advi(entry, dataset, method, settings, seed)
                inference.state = inference.state._replace(callbacks=[check])
            with stopwatch(timings, "optimisation"):
                inference.refine(settings.vi_iterations, progressbar=False)
        except FloatingPointError as exc:
            return Fit(backend=self.name, method=method, status="failed", engine=engine,
                       reason=f"optimisation diverged: {str(exc).splitlines()[0]}", timings=timings,
                       precision=settings.precision)
        with stopwatch(timings, "extraction"):
            group = inference.approx.groups[0]
            draw_fn = pytensor.function([group.symbolic_initial],
                                        [group.symbolic_random, group.symbolic_logq_not_scaled])
            noise = np.random.default_rng(seed).standard_normal((settings.vi_draws, group.ddim))
            flat, log_q = draw_fn(noise.astype(group.symbolic_initial.dtype))
        layout = [(name, sl, shape) for name, sl, shape, _ in group.ordering.values()]
        params = {"mean": group.mean.eval(), "std": group.std.eval()}
        if pm_method == "fullrank_advi":
            params["cov"] = group.cov.eval()
        draws, log_p, log_jacobian = self._approximation_draws(
            spec, entry, flat, layout, timings, engine, stats={"log_q": np.asarray(log_q, float)[None]},
            approximation=params)
        return Fit(backend=self.name, method=method, status="ok", engine=engine, draws=draws,
                   timings=timings, precision=settings.precision,
                   converged=check.stopped_at is not None,
                   iterations=check.stopped_at or settings.vi_iterations,
                   log_p=log_p, log_jacobian=log_jacobian, log_q=np.asarray(log_q, float),
                   loss=np.asarray(inference.hist, float))

    def _pathfinder(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                    seed: int) -> Fit:
        from pymc.blocking import DictToArrayBijection
        from pymc_extras.inference.pathfinder.lbfgs import LBFGSConfig, LBFGSStatus
        from pymc_extras.inference.pathfinder.multipath import multipath_pathfinder

        entry = compiled(spec, dataset, settings.precision)
        info = DictToArrayBijection.map(entry.model.initial_point()).point_map_info
        n_dim = sum(size for _, _, size, _ in info)
        resample = settings.pathfinder_resampling == "psis"
        # Resampling draws vi_draws from a pool of vi_draws per path, as Stan (num_draws per path,
        # num_psis_draws in all); pooling keeps vi_draws in all, an equal share per path.
        per_path = settings.vi_draws if resample else -(-settings.vi_draws // settings.pathfinder_paths)
        # pymc-extras evaluates the approximation at every L-BFGS step of a buffer sized by
        # maxiter, so a large maxiter costs time even when L-BFGS stops early: vi_iterations is
        # capped at pymc-extras' own default (1000).
        maxiter = min(settings.vi_iterations, PATHFINDER_MAXITER)
        try:
            # fit_pathfinder's own engine, without its importance sampling (whose "psis" draws
            # without replacement): the pool is resampled below as Stan does, and kept, so that
            # its log p - log q give the PSIS k-hat. Paths run one after another in this process
            # (no worker processes to start).
            with _stored_single_pathfinder(entry, dataset):
                result = multipath_pathfinder(
                    entry.model, num_paths=settings.pathfinder_paths, num_draws=settings.vi_draws,
                    num_draws_per_path=per_path, num_elbo_draws=10, jitter=2.0,
                    lbfgs_config=LBFGSConfig(maxiter=maxiter).set_default_maxcor(n_dim),
                    importance_sampling=None, progressbar=False, parallel=False, random_seed=seed,
                )
        except ValueError as exc:
            return Fit(backend=self.name, method="pathfinder", status="failed", engine="pymc-extras+pathfinder",
                       reason=str(exc).splitlines()[0], precision=settings.precision)
        timings = {"compile": float(result.compile_time), "optimisation": float(result.compute_time)}
        with stopwatch(timings, "extraction"):
            # The pool, path after path. Each draw's log q is its own path's normal approximation
            # and log p pymc-extras' own (unconstrained, Jacobian included), as Stan weighs them.
            paths = np.asarray(result.samples)
            pool = paths.reshape(-1, n_dim)
            pool_log_p = np.asarray(result.logP, dtype=float).reshape(-1)
            pool_log_q = np.asarray(result.logQ, dtype=float).reshape(-1)
            pool_path = np.repeat(np.arange(paths.shape[0]), paths.shape[1])
            if resample:
                chosen, pareto_k = psis_resample(pool_log_p, pool_log_q, settings.vi_draws, seed)
            else:
                # Interleave the paths draw by draw so that truncating to vi_draws keeps them balanced.
                chosen = np.arange(pool.shape[0]).reshape(paths.shape[:2]).T.reshape(-1)[: settings.vi_draws]
                pareto_k = None
            samples, log_q, engine_log_p = pool[chosen], pool_log_q[chosen], pool_log_p[chosen]
            layout, start = [], 0
            for name, shape, size, _ in info:
                layout.append((name, slice(start, start + size), shape))
                start += size
        # engine_log_p: pymc-extras' log p of each draw, kept to show the two agree.
        draws, log_p, log_jacobian = self._approximation_draws(
            spec, entry, samples, layout, timings, "pymc-extras+pathfinder",
            stats={"log_q": log_q[None].astype(float), "engine_log_p": engine_log_p[None].astype(float)})
        draws.attrs["pathfinder_resampling"] = settings.pathfinder_resampling
        if resample:
            draws[IMPORTANCE_GROUP] = proposal_group(
                pool_log_p, pool_log_q, pool_path, chosen, method="psis", paths=int(paths.shape[0]),
                resampled_with_replacement=1, pareto_k=float(pareto_k))
            # The proposal's own draws, for PSIS-LOO weighted by p/q; constraining them is extraction.
            pool_draws, _, _ = self._approximation_draws(spec, entry, pool, layout, timings, "pymc-extras+pathfinder")
            keep_proposal(draws, pool_draws)
        statuses = set(result.lbfgs_status)
        return Fit(backend=self.name, method="pathfinder", status="ok", engine="pymc-extras+pathfinder",
                   draws=draws, timings=timings, precision=settings.precision,
                   converged=statuses == {LBFGSStatus.CONVERGED},
                   iterations=int(np.max(result.lbfgs_niter)),
                   log_p=log_p, log_jacobian=log_jacobian, log_q=log_q.astype(float))

    def _approximation_draws(self, spec: MixtureSpec, entry: _Compiled, flat: np.ndarray, layout,
                             timings: dict[str, float], engine: str, stats: dict | None = None,
                             approximation: dict | None = None):
        """Unconstrained draws (one row each) -> canonical DataTree, log p, log |Jacobian|.

        log p is the full-data model's log density with the Jacobian, whatever model (minibatch
        or not) the approximation was fitted to; its cost is part of extraction, as in every
        backend. The tree also carries the unconstrained draws
        (group unconstrained_posterior) and, when given, the approximation's parameters (group
        approximation), both over the dim "unconstrained" labelled value_var[i].
        """
        names = [v.name for v in entry.model.value_vars]
        points = [[row[name] for name in names] for row in (
            {name: flat[i, sl].reshape(shape) for name, sl, shape in layout} for i in range(flat.shape[0]))]
        with stopwatch(timings, "extraction"):
            constrain = entry.constrain()
            outputs = [constrain(*point) for point in points]
            stacked = {name: np.stack([out[j] for out in outputs])[None]
                       for j, name in enumerate(entry.output_names)}
            posterior = _canonical(spec, stacked, (1, flat.shape[0]))
        with stopwatch(timings, "extraction"):
            log_p_jacobian = entry.log_p_jacobian()
            log_p, log_jacobian = np.array([log_p_jacobian(*point) for point in points], float).T
        stats = {"log_p": log_p[None], "log_jacobian": log_jacobian[None], **(stats or {})}
        draws = canonical_datatree(spec, posterior, stats, attrs={"/": {"backend": self.name, "engine": engine}})
        order = np.argsort([sl.start for _, sl, _ in layout], kind="stable")
        labels = [f"{layout[k][0]}[{i}]" for k in order for i in range(layout[k][1].stop - layout[k][1].start)]
        coords = {"unconstrained": labels}
        draws["unconstrained_posterior"] = xr.DataTree(xr.Dataset(
            {"z": (("chain", "draw", "unconstrained"), flat[None].astype(float))},
            coords={"chain": [0], "draw": np.arange(flat.shape[0]), **coords}))
        if approximation:
            draws["approximation"] = approximation_group(labels, **approximation)
        return draws, log_p, log_jacobian

    def _map(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
             seed: int) -> Fit:
        """One L-BFGS-B start of what ``pm.find_MAP`` does (SciPy on -log density without the
        Jacobian, over the unconstrained value variables, at most ``vi_iterations`` function
        evaluations), on a function compiled once per model (``_Compiled.map_objective``):
        ``find_MAP`` compiles its log density, gradient and output function inside every call,
        which made each of the multi-start MAP's starts pay the compile again."""
        engine = "pymc+L-BFGS-B"
        entry = compiled(spec, dataset, settings.precision)
        model = entry.model
        dtype = pytensor.config.floatX
        names = [v.name for v in model.value_vars]
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            first = "map_objective" not in entry._fns
            function = entry.map_objective()
            constrain = entry.constrain()
            make_start = entry.jittered_start()
        point = make_start(seed)
        x0 = np.concatenate([np.ravel(point[n]) for n in names]).astype(np.float64)
        if first:
            with stopwatch(timings, "compile"):
                # Numba compiles the function's code on its first call: charged here, not to the search.
                function(x0.astype(dtype))

        def loss_and_gradient(x):
            loss, grad = function(x.astype(dtype))
            return float(loss), np.asarray(grad, np.float64)

        with stopwatch(timings, "optimisation"), np.errstate(all="ignore"):
            raw = optimize.minimize(loss_and_gradient, x0, jac=True, method="L-BFGS-B",
                                    options={"maxfun": settings.vi_iterations})
        with stopwatch(timings, "extraction"):
            values, start = [], 0
            for name in names:
                size = int(np.size(point[name]))
                values.append(raw.x[start:start + size].reshape(np.shape(point[name])).astype(dtype))
                start += size
            canonical = _canonical(spec, dict(zip(entry.output_names, constrain(*values))), ())
            draws = canonical_datatree(spec, {k: np.asarray(v)[None, None] for k, v in canonical.items()},
                                       attrs={"/": {"backend": self.name, "engine": engine}})
            log_density = self.log_density(spec, dataset, canonical)
        return Fit(backend=self.name, method="map", status="ok", engine=engine, draws=draws,
                   timings=timings, precision=settings.precision, converged=bool(raw.success),
                   iterations=int(raw.nit), grad_evals=int(raw.njev),
                   point=canonical, point_log_density=log_density)

    def _laplace(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                 seed: int) -> Fit:
        """The Laplace approximation on PyMC's unconstrained space (the value variables, in
        ``model.value_vars`` order), by backends/laplace.py on pymc-extras' compiled loss,
        gradient and Hessian (``_Compiled.laplace_objective``).

        Starts: PyMC's initial point jittered in the unconstrained space (as find_MAP's starts
        here), seeded by ``start_seeds(seed, map_starts)``; the highest log density wins among
        the modes without a degenerate component (backends.degenerate.best_start, MAP's rule;
        the others are recorded in ``degenerate_starts``). ``vi_draws`` draws: mean + L eps with L the Cholesky factor of the covariance and eps
        standard normal from NumPy's generator seeded ``seed``, with their exact log q.

        ``start_log_densities``: each start's final log density with the Jacobian (the quantity
        maximised; -inf for a start that failed). ``converged``: the Newton decrement at the
        mode is below backends.laplace.DECREMENT posterior standard deviations. ``iterations``,
        ``grad_evals``: summed over starts. Fails when every start fails or when the negative
        Hessian at the best mode is not positive definite.
        """
        engine = "pymc-extras+laplace"
        entry = compiled(spec, dataset, settings.precision)
        model = entry.model
        dtype = pytensor.config.floatX
        names = [v.name for v in model.value_vars]
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            objective = laplace.Objective(entry.laplace_objective(), lambda z: np.asarray(z, dtype=dtype))
            # Numba compiles the function's code on its first call: charged here, not to the search.
            initial = model.initial_point()
            objective(np.concatenate([np.ravel(initial[n]) for n in names]))
            make_start = entry.jittered_start()
            constrain = entry.constrain()
        seeds = start_seeds(seed, settings.map_starts)
        layout, start = [], 0
        for name in names:
            size = int(np.size(initial[name]))
            layout.append((name, slice(start, start + size), np.shape(initial[name])))
            start += size

        def canonical(mode):
            outputs = constrain(*[mode[sl].reshape(shape).astype(dtype) for _, sl, shape in layout])
            return _canonical(spec, dict(zip(entry.output_names, outputs)), ())

        with stopwatch(timings, "optimisation"):
            starts = [np.concatenate([np.ravel(p[n]) for n in names]) for p in map(make_start, seeds)]
            search = laplace.search_modes(objective, starts, settings.vi_iterations)
            # The best mode without a degenerate component (backends.degenerate), as MAP keeps.
            best, degenerate = best_start(search.log_densities,
                                          [None if m is None else canonical(m) for m in search.modes],
                                          dataset.x, dataset.y)
            if best is not None:
                mean = search.modes[best]
                _, gradient, hessian = objective(mean)
                reason = laplace.not_positive_definite(hessian)
                cov = laplace.inverse_hessian(hessian) if reason is None else None
        common = dict(backend=self.name, method="laplace", engine=engine, timings=timings,
                      precision=settings.precision, iterations=search.iterations, grad_evals=search.grad_evals,
                      start_log_densities=search.log_densities, degenerate_starts=degenerate)
        if best is None:
            return Fit(status="failed", reason="every start of the mode search failed", **common)
        if cov is None:
            return Fit(status="failed", reason=reason, converged=False, **common)
        decrement = laplace.newton_decrement(gradient, cov)
        with stopwatch(timings, "extraction"):
            # The draws at the model's precision, and log q where they then lie.
            flat, log_q = laplace.gaussian_draws(mean, cov, settings.vi_draws, seed, dtype)
            point = canonical(mean)
        draws, log_p, log_jacobian = self._approximation_draws(
            spec, entry, flat, layout, timings, engine, stats={"log_q": log_q[None]},
            approximation={"mean": mean, "cov": cov})
        draws.attrs.update({"method": "laplace", "optimizer": "scipy trust-exact",
                            "laplace_starts": len(seeds), "laplace_best_start": best,
                            "laplace_start_seeds": seeds, "newton_decrement": decrement})
        with stopwatch(timings, "extraction"):
            point_log_density = self.log_density(spec, dataset, point)
        return Fit(status="ok", draws=draws, converged=decrement < laplace.DECREMENT, log_p=log_p,
                   log_jacobian=log_jacobian, log_q=log_q, point=point, point_log_density=point_log_density,
                   at_bound=bound_hits(spec, point), **common)


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
