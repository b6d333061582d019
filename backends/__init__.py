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

_instances: dict[str, Backend] = {}


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
