"""The NumPyro backend: one NumPyro model for every spec; NUTS, SVI (ADVI, minibatch ADVI), MAP,
the Laplace approximation (AutoLaplaceApproximation) and BlackJAX's Pathfinder on it.

JAX fixes two things per process before its first computation: how many CPU devices exist
(parallel chains need one device each) and whether 64-bit floats are allowed. Both are set for
the whole process when the first backend loads (backends/jax_setup.py); a float32 fit then runs
inside ``jax.enable_x64(False)`` with its data cast to float32, so every array JAX creates in it (initial points, momenta, step sizes) is
float32 too, not only the data.

Every fit runs as programs compiled ahead of time and stored whole (backends/jax_programs.py):
NUTS as a warm-up and a sampling program, SVI as set-up, update chunk, parameters and draws,
Pathfinder as its path and its draws. A later process loads them and traces nothing.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
# numpyro itself before any of its submodules: imported the other way round after arviz_base,
# numpyro.distributions is left without its `distribution` attribute, which numpyro.factor needs.
import numpyro  # noqa: F401
import numpyro.distributions as dist
import xarray as xr
from jax import lax, random
from jax.flatten_util import ravel_pytree
from numpyro import handlers, optim
from numpyro.distributions.transforms import biject_to
from numpyro.infer import NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoLaplaceApproximation, AutoMultivariateNormal, AutoNormal
from numpyro.infer.util import log_density as numpyro_log_density
from numpyro.infer.util import potential_energy

from backends import laplace
from backends.degenerate import best_start
from backends.base import (Backend, Fit, FitSettings, approximation_group, bound_hits, canonical_datatree, package_versions,
                           start_seeds, stopwatch)
from backends.importance import GROUP as IMPORTANCE_GROUP, keep_proposal, proposal_group, psis_resample
from backends.methods import Kind
from backends.methods import method as method_named
from backends.base import note_compile
from backends.jax_setup import configure as configure_jax
from backends.smc_numpyro import fit_smc
from backends.jax_programs import LOAD_EVENT, StoredJit, abstract, load_or_compile, program_key
from models.data import Dataset
from models.errors import MixbenchError
from models.numpyro_model import mixture_model
from models.numpyro_model import canonical_values as _canonical
from models.numpyro_model import site_values as _sites_from_params
from models.spec import MixtureSpec

# Importing JAX and NumPyro starts nothing; the first computation does (importing BlackJAX does
# too, hence its lazy imports below). The device count and x64 are set for the whole process by
# backends.jax_setup (get_backend calls it before any backend loads; this covers a direct import).
# If JAX has already started, chains that do not fit on its devices run one after another.
configure_jax()

from backends.caches import enable_jax_compilation_cache  # noqa: E402

# Compiled programs persist across processes (~/.cache/mixbench/jax): a second identical run
# loads them instead of compiling.
enable_jax_compilation_cache()

ENGINE = "numpyro"

# The sources every stored program of this backend is built from (backends/jax_programs.py):
# an edit to any of them retires the programs stored before it.
SOURCES = (Path(__file__), Path(__file__).with_name("jax_programs.py"),
           Path(__file__).parents[1] / "models" / "spec.py", Path(__file__).parents[1] / "models" / "numpyro_model.py")


def _stored(fun: Callable, program: str, spec: MixtureSpec, static_argnums: tuple[int, ...] = (), **settings) -> StoredJit:
    """``jax.jit(fun)`` kept on disk; ``fun`` may close over ``spec`` and ``settings`` only."""
    return StoredJit(fun, {"program": program, "spec": spec.to_dict(), **settings}, SOURCES, static_argnums)


@dataclass(frozen=True)
class _Site:
    name: str
    shape: tuple[int, ...]  # unconstrained shape
    transform: Any  # unconstrained -> constrained


@cache
def _layout(spec: MixtureSpec) -> tuple[_Site, ...]:
    """The model's latent sites in trace order, with their unconstrained shapes and transforms."""
    transforms = {}

    def unconstrained(x, y):
        tr = handlers.trace(handlers.seed(partial(mixture_model, spec), 0)).get_trace(x, y)
        out = {}
        for name, site in tr.items():
            if site["type"] == "sample" and not site["is_observed"]:
                transforms[name] = biject_to(site["fn"].support)
                out[name] = transforms[name].inv(site["value"])
        return out

    # Shapes only: abstract evaluation runs no computation.
    shapes = jax.eval_shape(unconstrained, jnp.zeros((1, spec.D)), jnp.zeros(1))
    return tuple(_Site(name, tuple(shapes[name].shape), transforms[name]) for name in transforms)


def _uniform_init(spec: MixtureSpec, key, dtype) -> dict[str, jax.Array]:
    """NumPyro's init_to_uniform: every unconstrained coordinate uniform on (-2, 2)."""
    layout = _layout(spec)
    keys = random.split(key, len(layout))
    return {s.name: random.uniform(k, s.shape, dtype, -2.0, 2.0) for s, k in zip(layout, keys)}


def _constrain(spec: MixtureSpec, z: dict) -> dict:
    return {s.name: s.transform(z[s.name]) for s in _layout(spec)}


def _log_jacobian(spec: MixtureSpec, z: dict):
    """log |det d constrain / dz| at one unconstrained point."""
    total = 0.0
    for s in _layout(spec):
        value = s.transform(z[s.name])
        total = total + jnp.sum(s.transform.log_abs_det_jacobian(z[s.name], value))
    return total


@cache
def _log_density_fn(spec: MixtureSpec) -> Callable:
    """Jitted (sites, x, y) -> model log density at constrained sites, no Jacobian."""
    model = partial(mixture_model, spec)
    return jax.jit(lambda sites, x, y: numpyro_log_density(model, (x, y), {}, sites)[0])


def _unflatten(spec: MixtureSpec, flat) -> dict:
    """One flat unconstrained vector -> the latent sites, in _layout order (any float dtype)."""
    out, start = {}, 0
    for site in _layout(spec):
        size = math.prod(site.shape)
        out[site.name] = flat[start:start + size].reshape(site.shape)
        start += size
    return out


@cache
def _value_and_grad_fn(spec: MixtureSpec, form: str = "mixture_same_family") -> Callable:
    """Jitted (flat z, x, y) -> (log density with Jacobian, its gradient): what each NUTS step
    evaluates (NUTS runs on minus the potential energy)."""
    model = partial(mixture_model, spec, form=form)
    return jax.jit(jax.value_and_grad(lambda flat, x, y: -potential_energy(model, (x, y), {}, _unflatten(spec, flat))))


@cache
def _constrain_fn(spec: MixtureSpec) -> Callable:
    """(z batch) -> constrained sites per draw."""
    return _stored(jax.vmap(partial(_constrain, spec)), "constrain", spec)


@cache
def _draw_diagnostics_fn(spec: MixtureSpec) -> Callable:
    """Jitted (z batch, x, y) -> (log_p, log_jacobian) per draw on the full data.

    log_p is minus the potential energy (log density in unconstrained space, Jacobian included).
    lax.map in batches keeps memory at (batch x N x K), not (draws x N x K).
    """
    model = partial(mixture_model, spec)

    def one(z, x, y):
        return -potential_energy(model, (x, y), {}, z), _log_jacobian(spec, z)

    return _stored(lambda z, x, y: lax.map(lambda zi: one(zi, x, y), z, batch_size=64), "draw_diagnostics", spec)


def _svi_approximation(spec: MixtureSpec, guide, params: dict) -> dict[str, np.ndarray]:
    """A fitted ADVI guide's parameters on the unconstrained space, in ``_layout`` order: mean and
    std (AutoNormal, one normal per site), or mean, std and cov = L L' (AutoMultivariateNormal,
    which packs the sites in trace order, the order of ``_layout``), as PyMC's ADVI gives them."""
    layout = _layout(spec)
    if isinstance(guide, AutoNormal):
        return {"mean": np.concatenate([np.ravel(params[f"{s.name}_auto_loc"]) for s in layout]),
                "std": np.concatenate([np.ravel(params[f"{s.name}_auto_scale"]) for s in layout])}
    tril = np.asarray(params["auto_scale_tril"], dtype=float)
    cov = tril @ tril.T
    return {"mean": np.asarray(params["auto_loc"], dtype=float), "std": np.sqrt(np.diag(cov)), "cov": cov}


def _as_json(arrays: dict) -> str:
    """The fitted approximation's parameters as a JSON attribute: a record that survives netCDF."""
    return json.dumps({k: np.asarray(v).tolist() for k, v in arrays.items()})


# The Laplace approximation: NumPyro's AutoLaplaceApproximation. Its loss, Trace_ELBO of its
# Delta guide on the packed unconstrained latent, is minus the log density with the Jacobian of
# the constraining transforms; its covariance is the inverse of that loss's Hessian (jax.hessian)
# at the mode. The guide closes over the data it is set up with, so every program builds and sets
# up its own guide on the data it is given. The mode search is backends/laplace.py's (SciPy's
# trust-exact on this loss, its gradient and Hessian), as in the PyMC backend: jax.scipy's BFGS,
# which NumPyro's optim.Minimize runs, stops on line-search failures far from the mode here.


def _laplace_guide(spec: MixtureSpec, x, y) -> tuple[AutoLaplaceApproximation, np.ndarray]:
    """AutoLaplaceApproximation of the full-data model, set up on (x, y), and the permutation
    ``packed`` with guide vector = _layout vector[packed]: the guide packs its sites in its own
    order (by name), the backend's unconstrained vector is in trace order (_layout)."""
    guide = AutoLaplaceApproximation(partial(mixture_model, spec))
    handlers.seed(guide, random.PRNGKey(0))(x, y)
    starts, offset = {}, 0
    for site in _layout(spec):
        starts[site.name] = offset
        offset += math.prod(site.shape)
    sizes = {s.name: math.prod(s.shape) for s in _layout(spec)}
    packed = np.concatenate([np.arange(starts[name], starts[name] + sizes[name]) for name in guide._init_locs])
    return guide, packed.astype(int)


def _laplace_loss(spec: MixtureSpec, guide: AutoLaplaceApproximation, x, y) -> Callable:
    """guide vector -> AutoLaplaceApproximation's loss there (-log density with Jacobian)."""
    model = partial(mixture_model, spec)
    return lambda flat: Trace_ELBO().loss(random.PRNGKey(0), {"auto_loc": flat}, model, guide, x, y)


@cache
def _laplace_objective_fn(spec: MixtureSpec) -> Callable:
    """(z, x, y) -> AutoLaplaceApproximation's loss at z (_layout order), its gradient and its
    Hessian (jax.hessian, the guide's own default), in _layout order."""
    def run(z, x, y):
        guide, packed = _laplace_guide(spec, x, y)
        loss = _laplace_loss(spec, guide, x, y)

        def in_layout(flat):
            return loss(flat[packed])

        value, gradient = jax.value_and_grad(in_layout)(z)
        return value, gradient, jax.hessian(in_layout)(z)

    return _stored(run, "laplace_objective", spec)


@cache
def _laplace_start_fn(spec: MixtureSpec) -> Callable:
    """(key, y) -> NumPyro's uniform initial point (every unconstrained coordinate uniform on
    (-2, 2)) as one vector in _layout order, in y's dtype."""
    def start(key, y):
        z0 = _uniform_init(spec, key, y.dtype)
        return jnp.concatenate([jnp.ravel(z0[s.name]) for s in _layout(spec)])

    return _stored(start, "laplace_start", spec)


@cache
def _laplace_gaussian_fn(spec: MixtureSpec) -> Callable:
    """(mode, x, y) -> the covariance of AutoLaplaceApproximation's Gaussian there
    (``get_posterior``), in _layout order; zero where the Hessian has no Cholesky factor of its
    inverse, as NumPyro returns it."""
    def run(loc, x, y):
        guide, packed = _laplace_guide(spec, x, y)
        inverse = np.argsort(packed)
        return guide.get_posterior({"auto_loc": loc[packed]}).covariance_matrix[inverse][:, inverse]

    return _stored(run, "laplace_gaussian", spec)


@cache
def _laplace_draws_fn(spec: MixtureSpec) -> Callable:
    """(mean, cov, key, n) -> n draws of the Gaussian, unpacked to latent sites, and its exact
    log density at each (NumPyro's MultivariateNormal)."""
    def draw(loc, cov, key, n):
        gaussian = dist.MultivariateNormal(loc, covariance_matrix=cov)
        flat = gaussian.sample(key, (n,))
        return jax.vmap(partial(_unflatten, spec))(flat), gaussian.log_prob(flat)

    return _stored(draw, "laplace_draws", spec, static_argnums=(3,))


def _unconstrained_labels(spec: MixtureSpec) -> list[str]:
    """site[i] for every unconstrained coordinate, in _layout order (flattened row-major)."""
    return [f"{s.name}[{i}]" for s in _layout(spec) for i in range(math.prod(s.shape))]


def _device_data(dataset: Dataset, precision: str):
    dtype = jnp.float32 if precision == "float32" else jnp.float64
    return jnp.asarray(dataset.x, dtype=dtype), jnp.asarray(dataset.y, dtype=dtype)


def _precision(precision: str):
    return jax.enable_x64(precision == "float64")


# ----------------------------------------------------------------------------------------------
# Timing: JAX compiles lazily, inside the first call of each program, so a phase's wall time
# contains its own compilation. JAX reports the time span of every trace, lowering to MLIR and
# XLA compilation; the union of those spans inside a phase moves from the phase to "compile".

_COMPILE_EVENTS = frozenset({
    LOAD_EVENT,
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
})
_compile_spans: list[tuple[float, float]] | None = None


def _record_span(event: str, start: float, end: float, **_):
    if _compile_spans is not None and event in _COMPILE_EVENTS:
        _compile_spans.append((start, end))


jax.monitoring.register_event_time_span_listener(_record_span)


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@contextmanager
def _phase(timings: dict[str, float], phase: str):
    """Wall time of the block into ``timings[phase]``, less JAX's compilation in it, which goes to
    ``timings["compile"]``. The block must wait for its results (block_until_ready)."""
    global _compile_spans
    _compile_spans = []
    start = time.perf_counter()
    try:
        yield
    finally:
        wall = time.perf_counter() - start
        compiling = min(_union_length(_compile_spans), wall)
        # Any trace, compile or stored-program load inside the phase makes the fit cold.
        note_compile("cold" if _compile_spans else "warm")
        _compile_spans = None
        timings["compile"] = timings.get("compile", 0.0) + compiling
        timings[phase] = timings.get(phase, 0.0) + wall - compiling


# ----------------------------------------------------------------------------------------------
# The backend

# Optimiser names (PyMC's where they overlap) -> NumPyro optimisers, given the learning rate.
_OPTIMIZERS: dict[str, Callable[[float], Any]] = {
    "adam": optim.Adam,
    "sgd": optim.SGD,
    "adagrad": optim.Adagrad,
    "clipped_adam": optim.ClippedAdam,
    "rmsprop": optim.RMSProp,
    "momentum": lambda lr: optim.Momentum(lr, 0.9),
}


class NumPyroBackend(Backend):
    name = "numpyro"

    def __init__(self):
        self._programs: dict[tuple, _SVIProgram] = {}
        self._nuts_cache: dict[str, _NUTSPrograms] = {}

    def versions(self) -> dict[str, str]:
        return package_versions("numpyro", "jax", "jaxlib", "blackjax")

    # The method table (Backend's contract); the model implements the correct mixture only.
    methods = {
        "nuts": "_fit_nuts",
        **dict.fromkeys(("advi-meanfield", "advi-fullrank", "advi-minibatch-meanfield",
                         "advi-minibatch-fullrank", "map"), "_fit_svi"),
        "pathfinder": "_fit_pathfinder",
        "laplace": "_fit_laplace",
        "smc": "_fit_smc",
    }
    _fit_smc = fit_smc  # backends/smc_numpyro.py

    def refuses(self, spec: MixtureSpec, method: str, settings: FitSettings) -> str | None:
        if method_named(method).kind is Kind.MCMC and settings.sampler not in (None, "numpyro"):
            return f"sampler {settings.sampler!r}: the numpyro backend runs NumPyro's own NUTS only"
        if method in _GUIDES:  # the methods this backend runs by SVI
            if settings.optimizer not in _OPTIMIZERS:
                return (f"optimizer {settings.optimizer!r} is not available in the numpyro backend; "
                        f"known: {', '.join(_OPTIMIZERS)}")
        return None

    def log_density(self, spec: MixtureSpec, dataset: Dataset, params: dict[str, np.ndarray]) -> float:
        self.check_likelihood(spec)
        dataset.check_against(spec)
        params = spec.check_params(params)
        with _precision("float64"):
            x, y = _device_data(dataset, "float64")
            sites = {k: jnp.asarray(v) for k, v in _sites_from_params(spec, params).items()}
            return float(_log_density_fn(spec)(sites, x, y))

    def gradient_function(self, spec: MixtureSpec, dataset: Dataset, settings: FitSettings):
        """The jitted log density + gradient NUTS uses, on a flat vector of the unconstrained
        sites (trace order), at ``settings.precision``, compiled before returning."""
        from backends.gradients import fixed_point

        self.check_likelihood(spec)
        if settings.sampler not in (None, ENGINE):
            raise MixbenchError(f"sampler {settings.sampler!r}: the numpyro backend runs NumPyro only")
        dataset.check_against(spec)
        sites = _sites_from_params(spec, fixed_point(spec, dataset))
        fn = _value_and_grad_fn(spec)
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            z0 = [jnp.ravel(s.transform.inv(jnp.asarray(sites[s.name], y.dtype))) for s in _layout(spec)]
            flat0 = jnp.concatenate(z0)
            jax.block_until_ready(fn(flat0, x, y))

        def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
            with _precision(settings.precision):
                lp, grad = jax.block_until_ready(fn(jnp.asarray(theta, y.dtype), x, y))
            return float(lp), np.asarray(grad, dtype=np.float64)

        return f, np.asarray(flat0, dtype=np.float64)

    # -- NUTS ------------------------------------------------------------------------------------

    @staticmethod
    def chain_method(settings: FitSettings) -> str:
        """Parallel chains (pmap, one device each) where devices allow, else one after another."""
        if settings.chains > 1 and settings.parallel_chains and jax.local_device_count() >= settings.chains:
            return "parallel"
        return "sequential"

    def _fit_nuts(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                  seed: int) -> Fit:
        timings: dict[str, float] = {}
        chain_method = self.chain_method(settings)
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            # Phases. compile: building or loading the two programs (backends/jax_programs.py:
            # a later process loads them from disk, with no tracing, lowering or compiling).
            # warmup: each chain's initial point and the adaptation iterations. sampling: the
            # kept iterations, from the post-warm-up state. extraction: device to NumPy,
            # canonical names, DataTree.
            with stopwatch(timings, "compile"):
                programs = self._nuts_programs(spec, dataset.N, settings, chain_method, x, y)
            keys = random.split(random.PRNGKey(seed), settings.chains)
            warmup_stats, samples, stats = programs.run(keys, x, y, timings)
            with stopwatch(timings, "extraction"):
                samples, stats, warmup_stats = jax.device_get((samples, stats, warmup_stats))
                engine_dtype = str(np.asarray(samples["sigma"]).dtype)
                lead = (settings.chains, settings.draws)
                n_steps = np.asarray(stats["num_steps"])
                tree_depth = np.log2(n_steps).astype(int) + 1
                sample_stats = {
                    "diverging": np.asarray(stats["diverging"], dtype=bool),
                    "n_steps": n_steps,
                    "tree_depth": tree_depth,
                    "reached_max_tree_depth": tree_depth >= settings.max_treedepth,
                    "lp": -np.asarray(stats["potential_energy"]),
                    "energy": np.asarray(stats["energy"]),
                    "acceptance_rate": np.asarray(stats["accept_prob"]),
                    "step_size": np.asarray(stats["step_size"]),
                }
                draws = canonical_datatree(
                    spec, _canonical(spec, samples, lead), sample_stats,
                    attrs={"/": {"backend": self.name, "engine": ENGINE, "method": "nuts",
                                 "chain_method": chain_method, "precision": settings.precision,
                                 "engine_dtype": engine_dtype,
                                 "programs": "loaded" if programs.loaded else "compiled"}},
                )
        warmup_steps = int(np.sum(warmup_stats["num_steps"]))
        return Fit(
            backend=self.name, method="nuts", status="ok", engine=ENGINE, draws=draws, timings=timings,
            precision=settings.precision, grad_evals=warmup_steps + int(n_steps.sum()),
            divergences=int(sample_stats["diverging"].sum()),
        )

    def _nuts_programs(self, spec: MixtureSpec, N: int, settings: FitSettings, chain_method: str,
                       x, y) -> "_NUTSPrograms":
        description = _NUTSPrograms.describe(spec, N, settings, chain_method, y.dtype)
        description_key = json.dumps(description, sort_keys=True)
        note_compile("warm" if description_key in self._nuts_cache else "cold")
        if description_key not in self._nuts_cache:
            self._nuts_cache[description_key] = _NUTSPrograms(spec, settings, chain_method, x, y, description)
        return self._nuts_cache[description_key]

    # -- SVI: ADVI (mean-field, full-rank, minibatch) and MAP -----------------------------------

    def _svi_program(self, spec: MixtureSpec, N: int, method: str, settings: FitSettings) -> "_SVIProgram":
        minibatch = method_named(method).minibatch
        key = (spec, N, method, settings.optimizer, settings.learning_rate, settings.precision,
               settings.batch_size if minibatch else None, settings.minibatch_total_size if minibatch else None)
        if key not in self._programs:
            self._programs[key] = _SVIProgram(spec, method, settings)
        return self._programs[key]

    def _fit_svi(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        timings: dict[str, float] = {"compile": 0.0}
        init_key, svi_key, draw_key = random.split(random.PRNGKey(seed), 3)
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            # optimisation: SVI set-up and every update, in jitted chunks between convergence checks.
            with _phase(timings, "optimisation"):
                program = self._svi_program(spec, dataset.N, method, settings)
                state = program.init(init_key, svi_key, x, y)
                state, loss, iterations, converged = _optimise(program, state, x, y, settings)
                params = jax.block_until_ready(program.get_params(state, x, y))
        common = dict(backend=self.name, method=method, engine=ENGINE, timings=timings,
                      precision=settings.precision, loss=loss, iterations=iterations, converged=converged,
                      grad_evals=iterations)
        if not np.all(np.isfinite(loss)):
            bad = int(np.argmin(np.isfinite(loss)))
            return Fit(status="failed", reason=f"the loss became non-finite at iteration {bad + 1}", **common)
        attrs = {"optimizer": settings.optimizer, "learning_rate": settings.learning_rate,
                 "guide": type(program.guide).__name__, "check_every": _CHECK_EVERY,
                 "engine_dtype": str(jax.tree.leaves(params)[0].dtype), "approximation": _as_json(params)}
        # extraction: draws from the fitted approximation and their densities, in float64 whatever
        # the fit's precision (importance weights need it at large N), then canonical names.
        # log_p is the full-data model's, for minibatch fits too (and for the unscaled forum
        # replay): PSIS then measures q against the real posterior.
        with _phase(timings, "extraction"), _precision("float64"):
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            if method_named(method).kind is Kind.POINT:
                point = _canonical(spec, program.map_point(params), ())
                draws = canonical_datatree(spec, {k: v[None, None] for k, v in point.items()},
                                           attrs={"/": self._attrs("map", settings, attrs)})
                return Fit(status="ok", draws=draws, point=point,
                           point_log_density=self.log_density(spec, dataset, point), **common)
            z, log_q = program.draw(params, draw_key, *_device_data(dataset, "float64"), settings.vi_draws)
            draws, log_p, log_jacobian = self._approximation_draws(
                spec, dataset, z, self._attrs(method, settings, attrs))
            draws["approximation"] = approximation_group(_unconstrained_labels(spec),
                                                         **_svi_approximation(spec, program.guide, params))
        return Fit(status="ok", draws=draws, log_p=log_p, log_jacobian=log_jacobian,
                   log_q=np.asarray(log_q), **common)

    def _attrs(self, method: str, settings: FitSettings, extra: dict) -> dict:
        return {"backend": self.name, "engine": ENGINE, "method": method,
                "precision": settings.precision, **extra}

    # -- Laplace (AutoLaplaceApproximation) -----------------------------------------------------

    def _fit_laplace(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                     seed: int) -> Fit:
        """The Laplace approximation on NumPyro's unconstrained space (the sites' ``biject_to``
        inverses, flattened in trace order), by NumPyro's AutoLaplaceApproximation and
        backends/laplace.py.

        Mode: the maximum of the log density with the Jacobian (the guide's loss is its negative),
        searched by backends/laplace.py on the loss, its gradient and Hessian from
        ``settings.map_starts`` starts, NumPyro's uniform initial point drawn with the seeds of
        ``start_seeds(seed, map_starts)``; the highest log density wins among the modes without a
        degenerate component (backends.degenerate.best_start, MAP's rule; the others are recorded
        in ``degenerate_starts``). Gaussian: the guide's
        ``get_posterior`` at the mode. The search and the Hessian run at ``settings.precision``;
        ``vi_draws`` draws (key from ``seed``), their log q (NumPyro's MultivariateNormal) and
        log p in float64.

        ``start_log_densities``: each start's final log density with the Jacobian (-inf for a
        start that failed). ``converged``: the Newton decrement at the mode is below
        backends.laplace.DECREMENT posterior standard deviations. ``iterations``,
        ``grad_evals``: summed over starts. Fails when every start fails or the negative Hessian
        at the best mode is not positive definite.
        """
        timings: dict[str, float] = {"compile": 0.0}
        seeds = start_seeds(seed, settings.map_starts)
        draw_key = random.split(random.PRNGKey(seed), 2)[1]
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            function = _laplace_objective_fn(spec)
            objective = laplace.Objective(lambda z: jax.device_get(function(z, x, y)),
                                          lambda z: jnp.asarray(z, dtype=y.dtype))
            # optimisation: every start's search, then the guide's Gaussian at the best mode.
            with _phase(timings, "optimisation"):
                starts = [np.asarray(_laplace_start_fn(spec)(random.split(random.PRNGKey(s))[0], y), np.float64)
                          for s in seeds]
                search = laplace.search_modes(objective, starts, settings.vi_iterations)
                # The best mode without a degenerate component (backends.degenerate), as MAP keeps.
                best, degenerate = best_start(
                    search.log_densities, [None if m is None else self._laplace_point(spec, m) for m in search.modes],
                    dataset.x, dataset.y)
                if best is not None:
                    mean = search.modes[best]
                    gradient = objective(mean)[1]
                    cast = jnp.asarray(mean, dtype=y.dtype)
                    cov = np.asarray(jax.device_get(_laplace_gaussian_fn(spec)(cast, x, y)), np.float64)
            engine_dtype = str(y.dtype)
        common = dict(backend=self.name, method="laplace", engine=ENGINE, timings=timings,
                      precision=settings.precision, start_log_densities=search.log_densities,
                      iterations=search.iterations, grad_evals=search.grad_evals, degenerate_starts=degenerate)
        if best is None:
            return Fit(status="failed", reason="every start of the mode search failed", **common)
        reason = laplace.not_positive_definite(cov)
        if reason is not None:
            return Fit(status="failed", converged=False, reason=reason, **common)
        decrement = laplace.newton_decrement(gradient, cov)
        attrs = {"guide": "AutoLaplaceApproximation", "optimizer": "scipy trust-exact",
                 "engine_dtype": engine_dtype, "laplace_starts": len(seeds), "laplace_best_start": best,
                 "laplace_start_seeds": seeds, "newton_decrement": decrement}
        with _phase(timings, "extraction"), _precision("float64"):
            z, log_q = _laplace_draws_fn(spec)(jnp.asarray(mean), jnp.asarray(cov), draw_key, settings.vi_draws)
            draws, log_p, log_jacobian = self._approximation_draws(spec, dataset, z, self._attrs("laplace", settings, attrs))
            flat = np.concatenate([np.asarray(z[s.name]).reshape(settings.vi_draws, -1) for s in _layout(spec)], axis=1)
            labels = _unconstrained_labels(spec)
            draws["unconstrained_posterior"] = xr.DataTree(xr.Dataset(
                {"z": (("chain", "draw", "unconstrained"), flat[None])},
                coords={"chain": [0], "draw": np.arange(settings.vi_draws), "unconstrained": labels}))
            draws["approximation"] = approximation_group(labels, mean, cov=cov)
            point = self._laplace_point(spec, mean)
            point_log_density = self.log_density(spec, dataset, point)
        return Fit(status="ok", draws=draws, converged=decrement < laplace.DECREMENT, log_p=log_p,
                   log_jacobian=log_jacobian, log_q=np.asarray(log_q, np.float64), point=point,
                   point_log_density=point_log_density, at_bound=bound_hits(spec, point), **common)

    @staticmethod
    def _laplace_point(spec: MixtureSpec, mode: np.ndarray) -> dict:
        """A mode of the Laplace search (unconstrained, _layout order) as canonical parameters."""
        return _canonical(spec, _constrain(spec, _unflatten(spec, jnp.asarray(mode))), ())

    def _approximation_draws(self, spec: MixtureSpec, dataset: Dataset, z: dict, attrs: dict):
        """Unconstrained draws (leading axis: draw) -> canonical one-chain DataTree, log_p, log_jacobian."""
        x, y = _device_data(dataset, "float64")
        log_p, log_jacobian = _draw_diagnostics_fn(spec)(z, x, y)
        constrained = _constrain_fn(spec)(z)
        n = int(np.shape(log_p)[0])
        posterior = {k: v[None] for k, v in _canonical(spec, constrained, (n,)).items()}
        draws = canonical_datatree(spec, posterior, attrs={"/": attrs})
        return draws, np.asarray(log_p), np.asarray(log_jacobian)

    # -- Pathfinder (BlackJAX's building blocks on the model's potential) ------------------------

    def _fit_pathfinder(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                        seed: int) -> Fit:
        """Multi-path Pathfinder as Stan and pymc-extras run it: settings.pathfinder_paths single paths
        from their own uniform initial points, each drawing from its best normal approximation;
        by default the pooled draws are importance-resampled (backends/importance.py)."""
        timings: dict[str, float] = {"compile": 0.0}
        keys = [random.split(random.fold_in(random.PRNGKey(seed), path), 3) for path in range(settings.pathfinder_paths)]
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            # optimisation: for each path, L-BFGS from a uniform initial point, then the ELBO at
            # each point of its path.
            with _phase(timings, "optimisation"):
                paths = [jax.block_until_ready(_pathfinder_fn(spec, settings.vi_iterations)(k[0], k[1], x, y))
                         for k in keys]
        finite = [i for i, path in enumerate(paths) if np.isfinite(path["elbo"])]
        iterations = max(int(path["iterations"]) for path in paths)
        best = max(finite, key=lambda i: float(paths[i]["elbo"])) if finite else 0
        # The loss shown is the best path's objective along its L-BFGS iterations.
        loss = np.asarray(paths[best]["objective"])[: int(paths[best]["iterations"]) + 1]
        common = dict(backend=self.name, method="pathfinder", engine=ENGINE, timings=timings,
                      precision=settings.precision, loss=loss, iterations=iterations,
                      converged=all(int(p["iterations"]) < settings.vi_iterations for p in paths))
        if not finite:
            return Fit(status="failed", reason="no point of any L-BFGS path has a finite ELBO estimate", **common)
        resample = settings.pathfinder_resampling == "psis"
        # Resampling draws vi_draws from a pool of vi_draws per path, as Stan; pooling keeps
        # vi_draws in all, an equal share per path.
        per_path = settings.vi_draws if resample else -(-settings.vi_draws // len(finite))
        names = ("position", "grad", "alpha", "beta", "gamma")
        approximations = [{k: paths[i][k] for k in names} for i in finite]
        attrs = {**{f"pathfinder_{k}": v for k, v in _PATHFINDER.items()},
                 "pathfinder_paths": settings.pathfinder_paths, "pathfinder_paths_finite": len(finite),
                 "pathfinder_best_iteration": json.dumps([int(paths[i]["best"]) for i in finite]),
                 "pathfinder_elbo": json.dumps([float(paths[i]["elbo"]) for i in finite]),
                 "pathfinder_resampling": settings.pathfinder_resampling,
                 "engine_dtype": str(paths[best]["position"].dtype),
                 "approximation": json.dumps([json.loads(_as_json(a)) for a in approximations])}
        with _phase(timings, "extraction"), _precision("float64"):
            pieces, log_qs = [], []
            for i, approx in zip(finite, approximations):
                approx = {k: jnp.asarray(v, jnp.float64) for k, v in approx.items()}
                z, log_q = _pathfinder_draws_fn(spec)(approx, keys[i][2], per_path)
                pieces.append(z)
                log_qs.append(np.asarray(log_q))
            pool = {name: jnp.concatenate([z[name] for z in pieces]) for name in pieces[0]}
            pool_log_q = np.concatenate(log_qs)
            pool_path = np.repeat(np.asarray(finite), per_path)
            x64, y64 = _device_data(dataset, "float64")
            pool_log_p, pool_log_jacobian = (np.asarray(a) for a in _draw_diagnostics_fn(spec)(pool, x64, y64))
            if resample:
                chosen, pareto_k = psis_resample(pool_log_p, pool_log_q, settings.vi_draws, seed)
            else:
                chosen = np.arange(pool_log_q.size).reshape(len(finite), per_path).T.reshape(-1)[: settings.vi_draws]
            constrained = _constrain_fn(spec)({name: v[chosen] for name, v in pool.items()})
            posterior = {k: v[None] for k, v in _canonical(spec, constrained, (chosen.size,)).items()}
            draws = canonical_datatree(spec, posterior, attrs={"/": self._attrs("pathfinder", settings, attrs)})
            if resample:
                draws[IMPORTANCE_GROUP] = proposal_group(
                    pool_log_p, pool_log_q, pool_path, chosen, method="psis", paths=len(finite),
                    resampled_with_replacement=1, pareto_k=float(pareto_k))
                pool_canonical = _canonical(spec, _constrain_fn(spec)(pool), (pool_log_q.size,))
                keep_proposal(draws, canonical_datatree(spec, {k: v[None] for k, v in pool_canonical.items()}))
        return Fit(status="ok", draws=draws, log_p=pool_log_p[chosen], log_jacobian=pool_log_jacobian[chosen],
                   log_q=pool_log_q[chosen], **common)


# ----------------------------------------------------------------------------------------------
# SVI machinery

_CHECK_EVERY = 100  # updates between convergence checks, as PyMC's CheckParametersConvergence
_GUIDES = {
    "advi-meanfield": AutoNormal,
    "advi-minibatch-meanfield": AutoNormal,
    "advi-fullrank": AutoMultivariateNormal,
    "advi-minibatch-fullrank": AutoMultivariateNormal,
    "map": AutoDelta,
}


class _NUTSPrograms:
    """NumPyro's NUTS for one (spec, N, settings, chain method, precision) as two compiled
    programs over all chains: warm-up (each chain's initial point, then the adaptation
    iterations) and sampling (the kept iterations from the post-warm-up state).

    The kernel is NumPyro's NUTS with its defaults (diagonal mass matrix adapted in windows, dual
    averaging of the step size), driven as ``MCMC`` drives it: ``init`` then ``sample`` in a
    loop. Chains run on one device each with ``pmap`` (parallel), or one after another inside
    one program (sequential). Written this way, not through ``MCMC``, so that the programs can
    be stored whole (backends/jax_programs.py): ``MCMC`` builds fresh closures on every call and
    has to trace and lower them again in every process.

    Pinned to the public call by tests/test_numpyro_backend.py (the same key gives MCMC's draws).
    Remove it for ``MCMC`` once NumPyro can keep its compiled sampler across processes
    (pyro-ppl/numpyro#1249, open) or once warm workers reuse one process per backend, so that
    JAX's persistent cache alone brings a second identical run's compile under a second a fit.
    """

    def __init__(self, spec: MixtureSpec, settings: FitSettings, chain_method: str, x, y, description: dict):
        self.kernel = NUTS(partial(mixture_model, spec), target_accept_prob=settings.target_accept,
                           max_tree_depth=settings.max_treedepth)
        self.num_warmup, self.num_draws = settings.warmup, settings.draws
        if chain_method == "parallel":
            self.devices = jax.devices()[: settings.chains]
            over_chains = partial(jax.pmap, in_axes=(0, None, None), devices=self.devices)
        else:
            self.devices = jax.devices()[:1]

            def over_chains(one_chain):
                return jax.jit(lambda batch, x, y: lax.map(lambda item: one_chain(item, x, y), batch))

        self.warmup_fn = over_chains(self._warmup_chain)
        self.sampling_fn = over_chains(self._sampling_chain)
        keys = jax.ShapeDtypeStruct((settings.chains, 2), jnp.uint32)
        x, y = abstract((x, y))  # the programs take the data as arguments: lower on shapes only
        self.keys = {name: program_key({**description, "program": name}, SOURCES, self.devices)
                     for name in ("warmup", "sampling")}
        self.warmup = load_or_compile(self.keys["warmup"], lambda: self.warmup_fn.lower(keys, x, y), self.devices)

        def lower_sampling():
            state = jax.eval_shape(self.warmup_fn, keys, x, y)[0]
            return self.sampling_fn.lower(state, x, y)

        self.sampling = load_or_compile(self.keys["sampling"], lower_sampling, self.devices)

    @staticmethod
    def describe(spec: MixtureSpec, N: int, settings: FitSettings, chain_method: str, dtype) -> dict:
        """Everything the two programs depend on besides the code (the program key adds that)."""
        return {"spec": spec.to_dict(), "N": int(N), "dtype": str(dtype), "chain_method": chain_method,
                "chains": settings.chains, "warmup": settings.warmup, "draws": settings.draws,
                "target_accept": settings.target_accept, "max_treedepth": settings.max_treedepth}

    @property
    def loaded(self) -> bool:
        return self.warmup.loaded and self.sampling.loaded

    @staticmethod
    def _fields(state) -> dict:
        return {"num_steps": state.num_steps, "potential_energy": state.potential_energy,
                "energy": state.energy, "accept_prob": state.accept_prob,
                "step_size": state.adapt_state.step_size, "diverging": state.diverging}

    def _iterate(self, state, x, y, length: int, keep_position: bool):
        def step(state, _):
            state = self.kernel.sample(state, (x, y), {})
            return state, ((state.z if keep_position else None), self._fields(state))
        return lax.scan(step, state, None, length=length)

    def _warmup_chain(self, key, x, y):
        state = self.kernel.init(key, self.num_warmup, None, (x, y), {})
        state, (_, fields) = self._iterate(state, x, y, self.num_warmup, keep_position=False)
        return state, fields

    def _sampling_chain(self, state, x, y):
        constrain = self.kernel.postprocess_fn((x, y), {})
        state, (positions, fields) = self._iterate(state, x, y, self.num_draws, keep_position=True)
        return state, jax.vmap(constrain)(positions), fields

    def run(self, keys, x, y, timings: dict[str, float]):
        """Warm-up then sampling, each timed to its results being ready. A stored program that
        has to be compiled again on its first run (backends/jax_programs.py) is charged to
        compile, not to the phase."""
        with _phase(timings, "warmup"):
            state, warmup_stats = jax.block_until_ready(self.warmup(keys, x, y))
        with _phase(timings, "sampling"):
            _, samples, stats = jax.block_until_ready(self.sampling(state, x, y))
        return warmup_stats, samples, stats


class _SVIProgram:
    """Model, guide, optimiser and their programs for one (spec, N, method, settings): set-up,
    a chunk of updates, the fitted parameters, draws from the guide.

    Every program is stored on disk (backends/jax_programs.py), so a later process runs them
    without tracing anything. NumPyro's AutoGuides set themselves up on first use by running the
    model op by op (some 300 small programs); here that first use happens inside whichever
    program is traced first (``_ensure_guide``), so it is traced once, never executed eagerly,
    and not at all when every program is loaded. The guide's starting point comes from each
    fit's seed (``init``), not from the guide's set-up.
    """

    def __init__(self, spec: MixtureSpec, method: str, settings: FitSettings):
        minibatch = method_named(method).minibatch
        self.spec = spec
        self.model = partial(mixture_model, spec, subsample_size=settings.batch_size if minibatch else None,
                             total_size=settings.minibatch_total_size)
        self.guide = _GUIDES[method](self.model)
        self.svi = SVI(self.model, self.guide, _OPTIMIZERS[settings.optimizer](settings.learning_rate),
                       Trace_ELBO())
        described = {"method": method, "optimizer": settings.optimizer, "learning_rate": settings.learning_rate,
                     "batch_size": settings.batch_size if minibatch else None,
                     "total_size": settings.minibatch_total_size if minibatch else None,
                     "check_every": _CHECK_EVERY}
        self.init = _stored(self._init_state, "svi_init", spec, **described)
        self.run_chunk = _stored(self._run_chunk, "svi_chunk", spec, **described)
        self.get_params = _stored(self._get_params, "svi_params", spec, **described)
        self.draw = _stored(self._draw, "svi_draw", spec, static_argnums=(4,), **described)

    def _ensure_guide(self, x, y):
        """Set the guide (and SVI's constraint transforms) up inside the current trace."""
        if self.guide.prototype_trace is None:
            self.svi.init(random.PRNGKey(0), x, y)

    def _init_state(self, init_key, key, x, y):
        self._ensure_guide(x, y)
        z0 = _uniform_init(self.spec, init_key, y.dtype)
        return self.svi.init(key, x, y, init_params=self._init_params(z0))

    def _get_params(self, state, x, y):
        self._ensure_guide(x, y)
        return self.svi.get_params(state)

    def _run_chunk(self, state, n, x, y):
        """``n`` <= _CHECK_EVERY updates; losses padded with NaN to a fixed length (one compile)."""
        self._ensure_guide(x, y)

        def step(i, carry):
            state, losses = carry
            state, loss = self.svi.update(state, x, y)
            return state, losses.at[i].set(loss)

        return lax.fori_loop(0, n, step, (state, jnp.full(_CHECK_EVERY, jnp.nan, y.dtype)))

    def _init_params(self, z0: dict) -> dict:
        if isinstance(self.guide, AutoNormal):
            return {f"{name}_auto_loc": value for name, value in z0.items()}
        if isinstance(self.guide, AutoDelta):  # its locations live in the constrained space
            return {f"{name}_auto_loc": value for name, value in _constrain(self.spec, z0).items()}
        # AutoContinuous packs its sites into one vector in the order of its init locations.
        return {"auto_loc": jnp.concatenate([jnp.ravel(z0[name]) for name in self.guide._init_locs])}

    def flat_params(self, state) -> np.ndarray:
        """The guide's parameters in the optimiser's (unconstrained) space, as one vector (in
        NumPy: no small JAX program per check)."""
        leaves = jax.tree.leaves(self.svi.optim.get_params(state.optim_state))
        return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])

    def map_point(self, params: dict) -> dict:
        return {s.name: params[f"{s.name}_auto_loc"] for s in _layout(self.spec)}

    def _draw(self, params: dict, key, x, y, n: int):
        """``n`` draws of the guide's unconstrained latent and the guide's log density at each."""
        self._ensure_guide(x, y)
        if isinstance(self.guide, AutoNormal):
            layout = _layout(self.spec)
            z, log_q = {}, jnp.zeros(n)
            for site, k in zip(layout, random.split(key, len(layout))):
                q = dist.Normal(params[f"{site.name}_auto_loc"], params[f"{site.name}_auto_scale"])
                z[site.name] = q.sample(k, (n,))
                log_q = log_q + q.log_prob(z[site.name]).reshape(n, -1).sum(-1)
            return z, log_q
        posterior = self.guide.get_posterior(params)
        flat = posterior.sample(key, (n,))
        return jax.vmap(self.guide._unpack_latent)(flat), posterior.log_prob(flat)


def _optimise(program: _SVIProgram, state, x, y, settings: FitSettings):
    """Run SVI for up to ``vi_iterations`` updates, stopping like PyMC's CheckParametersConvergence:
    every _CHECK_EVERY updates, the largest relative change of a parameter,
    (|new - old| + 1e-6) / (|old| + 1e-6), below ``vi_tolerance`` means converged."""
    losses, done, converged = [], 0, False
    previous = program.flat_params(state)
    while done < settings.vi_iterations:
        n = min(_CHECK_EVERY, settings.vi_iterations - done)
        state, chunk = program.run_chunk(state, n, x, y)
        losses.append(np.asarray(chunk)[:n])
        done += n
        if not np.all(np.isfinite(losses[-1])):
            break
        current = program.flat_params(state)
        change = np.max((np.abs(current - previous) + 1e-6) / (np.abs(previous) + 1e-6))
        previous = current
        if change < settings.vi_tolerance:
            converged = True
            break
    return state, np.concatenate(losses).astype(np.float64), done, converged


# ----------------------------------------------------------------------------------------------
# Pathfinder. blackjax.vi.pathfinder.approximate evaluates the ELBO at every point of the
# L-BFGS path at once (vmap), which needs memory for (maxiter x draws x N x K) values; here the
# same computation runs point by point over the iterations L-BFGS actually took. BlackJAX's
# approximate also passes the objective's gradient, grad(-log p), where the paper's BFGS-Sample
# mean theta + H grad(log p) needs grad(log p): on a Gaussian target its mean then steps away
# from the mode. This code passes grad(log p).

# BlackJAX's defaults for L-BFGS and for the number of draws per ELBO estimate.
_PATHFINDER = {"maxcor": 10, "gtol": 1e-8, "ftol": 1e-5, "maxls": 1000, "elbo_draws": 200}


def _flat_template(spec: MixtureSpec) -> Callable:
    return ravel_pytree({s.name: jnp.zeros(s.shape) for s in _layout(spec)})[1]


@cache
def _pathfinder_fn(spec: MixtureSpec, maxiter: int) -> Callable:
    from blackjax.optimizers.lbfgs import bfgs_sample, lbfgs_inverse_hessian_factors, minimize_lbfgs

    model = partial(mixture_model, spec)
    maxcor = _PATHFINDER["maxcor"]

    def run(init_key, key, x, y):
        flat0, unravel = ravel_pytree(_uniform_init(spec, init_key, y.dtype))

        def objective(flat):
            return potential_energy(model, (x, y), {}, unravel(flat))

        last, history = minimize_lbfgs(objective, flat0, maxiter, maxcor, _PATHFINDER["gtol"],
                                       _PATHFINDER["ftol"], _PATHFINDER["maxls"])
        iterations = last.state.iter_num
        mask = history.update_mask[1:]
        s = jnp.where(mask, jnp.diff(history.x, axis=0), 0.0)
        dz = jnp.where(mask, jnp.diff(history.g, axis=0), 0.0)
        s, dz = jnp.pad(s, ((maxcor, 0), (0, 0))), jnp.pad(dz, ((maxcor, 0), (0, 0)))

        def factors(i):
            window = i + jnp.arange(maxcor)
            return lbfgs_inverse_hessian_factors(s[window].T, dz[window].T, history.alpha[i])

        def elbo(i, k):
            beta, gamma = factors(i)
            phi, log_q = bfgs_sample(k, _PATHFINDER["elbo_draws"], history.x[i], -history.g[i],
                                     history.alpha[i], beta, gamma)
            log_p = -lax.map(objective, phi, batch_size=16)
            return jnp.mean(log_p - log_q)

        keys = random.split(key, maxiter + 1)

        def best_of(i, best):
            value = elbo(i, keys[i])
            better = jnp.isfinite(value) & (value > best[0])
            return jnp.where(better, value, best[0]), jnp.where(better, i, best[1])

        # As BlackJAX: the points before the last iteration are candidates.
        best_elbo, best = lax.fori_loop(0, iterations, best_of, (jnp.array(-jnp.inf, flat0.dtype), 0))
        beta, gamma = factors(best)
        return {"position": history.x[best], "grad": -history.g[best], "alpha": history.alpha[best],
                "beta": beta, "gamma": gamma, "elbo": best_elbo, "best": best,
                "iterations": iterations, "objective": history.f}

    return _stored(run, "pathfinder", spec, maxiter=maxiter, **_PATHFINDER)


@cache
def _pathfinder_draws_fn(spec: MixtureSpec) -> Callable:
    from blackjax.optimizers.lbfgs import bfgs_sample

    unravel = _flat_template(spec)

    def draw(approx, key, n):
        phi, log_q = bfgs_sample(key, n, approx["position"], approx["grad"], approx["alpha"],
                                 approx["beta"], approx["gamma"])
        return jax.vmap(unravel)(phi), log_q

    return _stored(draw, "pathfinder_draws", spec, static_argnums=(2,))
