"""Backends: one module per probabilistic programming library, behind one contract."""

from __future__ import annotations

from importlib import import_module

from backends.base import METHODS, Backend, Fit, FitSettings
from backends.jax_setup import configure as configure_jax
from models.errors import MixbenchError

# name -> (module, class). Imported lazily: loading JAX, PyTensor and Stan costs seconds each.
BACKENDS: dict[str, tuple[str, str]] = {
    "pymc": ("backends.pymc", "PyMCBackend"),
    "numpyro": ("backends.numpyro", "NumPyroBackend"),
    "stan": ("backends.stan", "StanBackend"),
}

# Registered backends, the longest cold compile first: a run starts those cells first, so that
# their compile overlaps the other cells. Cold compiles of forum-small's NUTS measured on this
# project's 2-core machine (issue 24): Stan 59-64 s, PyMC 16 s, NumPyro 5-6 s.
SLOWEST_COMPILE_FIRST: tuple[str, ...] = ("stan", "pymc", "numpyro")

_instances: dict[str, Backend] = {}


def compile_rank(name: str) -> int:
    """Where ``name``'s cells start in a run: by SLOWEST_COMPILE_FIRST, other backends last."""
    return SLOWEST_COMPILE_FIRST.index(name) if name in SLOWEST_COMPILE_FIRST else len(SLOWEST_COMPILE_FIRST)


def get_backend(name: str) -> Backend:
    """A registered backend by name, or any Backend subclass named as 'package.module:Class'
    (how third-party backends, and the harness tests' fakes, plug in without editing this file)."""
    if name in BACKENDS:
        module, cls = BACKENDS[name]
    elif ":" in name:
        module, cls = name.split(":", 1)
    else:
        raise MixbenchError(f"backend: unknown {name!r}; known: {', '.join(BACKENDS)}")
    if name not in _instances:
        configure_jax()  # process-wide JAX settings, the same whichever backends this process loads
        try:
            backend = getattr(import_module(module), cls)()
        except (ImportError, AttributeError) as exc:
            raise MixbenchError(f"backend: cannot load {name!r} ({exc})") from None
        if not isinstance(backend, Backend):
            raise MixbenchError(f"backend: {name!r} is not a mixbench Backend")
        _instances[name] = backend
    return _instances[name]


__all__ = ["BACKENDS", "METHODS", "Backend", "Fit", "FitSettings", "get_backend"]
