"""Backends: one module per probabilistic programming library, behind one contract."""

from __future__ import annotations

from importlib import import_module

from backends.base import METHODS, Backend, Fit, FitSettings
from models.errors import MixbenchError

# name -> (module, class). Imported lazily: loading JAX, PyTensor and Stan costs seconds each.
BACKENDS: dict[str, tuple[str, str]] = {
    "pymc": ("backends.pymc", "PyMCBackend"),
    "numpyro": ("backends.numpyro", "NumPyroBackend"),
    "stan": ("backends.stan", "StanBackend"),
}

_instances: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise MixbenchError(f"backend: unknown {name!r}; known: {', '.join(BACKENDS)}")
    if name not in _instances:
        module, cls = BACKENDS[name]
        _instances[name] = getattr(import_module(module), cls)()
    return _instances[name]


__all__ = ["BACKENDS", "METHODS", "Backend", "Fit", "FitSettings", "get_backend"]
