"""Backends: one module per probabilistic programming library, behind one contract."""

from __future__ import annotations

from importlib import import_module

from backends.base import METHODS, Backend, Fit, FitSettings, package_versions
from backends.jax_setup import configure as configure_jax
from backends.stan_versions import stan_engine_versions
from models.errors import MixbenchError

# name -> (module, class). Imported lazily: loading JAX, PyTensor and Stan costs seconds each.
BACKENDS: dict[str, tuple[str, str]] = {
    "pymc": ("backends.pymc", "PyMCBackend"),
    "numpyro": ("backends.numpyro", "NumPyroBackend"),
    "stan": ("backends.stan", "StanBackend"),
}

# name -> the distributions whose versions its fits depend on (``backend_versions``), read from
# their metadata: run.json records them before the cells start, and importing the engines only
# to read version strings cost the run's own process seconds (issue 24).
PACKAGES: dict[str, tuple[str, ...]] = {
    "pymc": ("pymc", "pytensor", "nutpie", "numba", "pymc-extras", "numpyro", "jax", "numpy", "scipy"),
    "numpyro": ("numpyro", "jax", "jaxlib", "blackjax"),
    "stan": ("cmdstanpy", "pystan", "httpstan"),
}
# What a backend's engines carry beyond their packages' versions, read as cheaply.
ENGINE_VERSIONS = {"stan": stan_engine_versions}

# Registered backends whose one compiled program serves every cell (``Backend.shared_program``),
# known without importing them: a run orders its cells before any backend loads.
SHARED_PROGRAM = frozenset({"stan"})

# Registered backends, the longest cold compile first: a run starts those cells first, so that
# their compile overlaps the other cells. Cold compiles of forum-small's NUTS measured on this
# project's 2-core machine (issue 24): Stan 59-64 s, PyMC 16 s, NumPyro 5-6 s.
SLOWEST_COMPILE_FIRST: tuple[str, ...] = ("stan", "pymc", "numpyro")

_instances: dict[str, Backend] = {}


def compile_rank(name: str) -> int:
    """Where ``name``'s cells start in a run: by SLOWEST_COMPILE_FIRST, other backends last."""
    return SLOWEST_COMPILE_FIRST.index(name) if name in SLOWEST_COMPILE_FIRST else len(SLOWEST_COMPILE_FIRST)


def backend_class(name: str) -> type[Backend]:
    """The Backend subclass a registered name or a plug-in 'package.module:Class' names, looked up
    without calling anything in it (a name such as os:abort must not run). Raises MixbenchError
    for an unknown name, a module or class that cannot be loaded, or a class that is not a Backend."""
    if name in BACKENDS:
        module, cls = BACKENDS[name]
    elif ":" in name:
        module, cls = name.split(":", 1)
    else:
        raise MixbenchError(f"backend: unknown {name!r}; known: {', '.join(BACKENDS)} (or package.module:Class)")
    try:
        found = getattr(import_module(module), cls)
    except (ImportError, AttributeError, ValueError) as exc:
        raise MixbenchError(f"backend: cannot load {name!r} ({exc})") from None
    if not (isinstance(found, type) and issubclass(found, Backend)):
        raise MixbenchError(f"backend: {name!r} is not a mixbench Backend subclass")
    return found


def get_backend(name: str) -> Backend:
    """A registered backend by name, or any Backend subclass named as 'package.module:Class'
    (how third-party backends, and the harness tests' fakes, plug in without editing this file)."""
    if name not in _instances:
        cls = backend_class(name)
        configure_jax()  # process-wide JAX settings, the same whichever backends this process loads
        _instances[name] = cls()
    return _instances[name]


def shares_program(name: str) -> bool:
    """``Backend.shared_program`` of a backend: a registered one's from ``SHARED_PROGRAM``, without
    importing it; a plug-in's from its class. Raises MixbenchError for a plug-in that cannot be
    loaded."""
    return name in SHARED_PROGRAM if name in BACKENDS else backend_class(name).shared_program


def backend_versions(name: str) -> dict[str, str]:
    """Versions of the packages and engines of a backend (``Backend.versions``), package or engine
    name -> version ("not installed" for one that is not). A registered backend's are read from
    ``PACKAGES`` and ``ENGINE_VERSIONS`` without importing it or its engines; a plug-in's from
    its class. Raises MixbenchError for a plug-in that cannot be loaded."""
    if name not in BACKENDS:
        return get_backend(name).versions()
    versions = package_versions(*PACKAGES[name])
    if name in ENGINE_VERSIONS:
        versions.update(ENGINE_VERSIONS[name]())
    return versions


__all__ = ["BACKENDS", "METHODS", "PACKAGES", "Backend", "Fit", "FitSettings", "backend_class", "backend_versions",
           "get_backend", "shares_program"]
