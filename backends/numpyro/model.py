"""The NumPyro backend's model object: the model's latent sites and their transforms
(constrain, log Jacobian, flat <-> sites), the jitted log density and gradient, the per-draw log p
and log Jacobian, NumPyro's uniform initial point, the precision and device data, and JAX's
compile spans reported to the fit's clock (backends/timing.py). Every program is stored whole
(backends/jax_programs.py) keyed by this package's sources.
"""


from __future__ import annotations

import math
import time
from functools import cache, partial
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
# numpyro itself before any of its submodules: imported the other way round after arviz_base,
# numpyro.distributions is left without its `distribution` attribute, which numpyro.factor needs.
import numpyro  # noqa: F401
from jax import lax, random
from numpyro.infer.util import log_density as numpyro_log_density
from numpyro.infer.util import potential_energy

from backends.timing import record_compile
from backends.jax_setup import configure as configure_jax
from backends.jax_programs import LOAD_EVENT, StoredJit
from models.data import Dataset
from models.numpyro_model import latent_sites as _layout  # the model's sites and their transforms
from models.numpyro_model import mixture_model
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
# an edit to any of them (any module of this package) retires the programs stored before it.
_ROOT = Path(__file__).resolve().parents[2]
SOURCES = (*sorted(Path(__file__).resolve().parent.glob("*.py")), _ROOT / "backends" / "jax_programs.py",
           _ROOT / "models" / "spec.py", _ROOT / "models" / "numpyro_model.py")


def _stored(fun: Callable, program: str, spec: MixtureSpec, static_argnums: tuple[int, ...] = (), **settings) -> StoredJit:
    """``jax.jit(fun)`` kept on disk; ``fun`` may close over ``spec`` and ``settings`` only."""
    return StoredJit(fun, {"program": program, "spec": spec.to_dict(), **settings}, SOURCES, static_argnums)


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
# XLA compilation (and backends/jax_programs.py every stored program's load): each is reported as
# compile time, which backends.timing's stopwatch moves out of the phase it falls in.

_COMPILE_EVENTS = frozenset({
    LOAD_EVENT,
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
})


def _record_span(event: str, start: float, end: float, **_):
    if event in _COMPILE_EVENTS:
        # JAX's spans are time.time() seconds; the stopwatch's clock is time.perf_counter().
        shift = time.perf_counter() - time.time()
        record_compile(start + shift, end + shift)


jax.monitoring.register_event_time_span_listener(_record_span)
