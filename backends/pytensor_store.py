"""Compiled PyTensor functions kept on disk, rewritten graph and all.

A PyTensor function pickles as its FunctionMaker: the graph after PyTensor's rewrites, and the
linker. Unpickling skips the rewrites (the costly part of a compile once Numba's machine code is
cached by PyTensor itself) and only links the graph again, loading the Numba functions from
PyTensor's cache. The pickle is cloudpickle's, because PyMC's graphs hold OpFromGraph closures.

A stored function holds copies of its shared variables (the data): callers set their values
after loading (``set_shared``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import cloudpickle

from backends.base import package_versions
from backends.caches import cache_key, cache_root, evict, mark_used, source_digest, write_atomic

FORMAT = 1
SOURCES = (Path(__file__), Path(__file__).with_name("pymc.py"), Path(__file__).parents[1] / "models" / "spec.py")


def store_dir() -> Path:
    return cache_root() / "pytensor-functions"


def function_key(description: dict[str, Any]) -> str:
    return cache_key({"format": FORMAT, "description": description, "sources": source_digest(SOURCES),
                      "versions": package_versions("pymc", "pytensor", "numba", "numpy", "cloudpickle")})


def load_or_build(description: dict[str, Any], build: Callable[[], Any],
                  warm_up: Callable[[Any], None] | None = None) -> tuple[Any, bool]:
    """The object ``build()`` makes (a PyTensor function, or an object holding some), loaded from
    disk when stored under ``description``, else built and stored. Returns (object, loaded).

    ``warm_up``: for objects whose graphs Numba keys differently once unpickled (PyMC's ADVI
    step function is one), so that the first loaded copy would compile its Numba code on first
    call, seconds charged to whatever runs it. The built object is then stored, and a loaded
    copy of it is given to ``warm_up`` (which should run its functions once: Numba compiles and
    caches them here) and another returned: every run, first or later, uses the same loaded graph.
    """
    path = store_dir() / f"{function_key(description)}.pkl"
    try:
        loaded = cloudpickle.loads(path.read_bytes())
        mark_used(path)
        return loaded, True
    except FileNotFoundError:
        pass
    except Exception:  # noqa: BLE001 - a torn or stale entry is rebuilt and replaced
        path.unlink(missing_ok=True)
    built = build()
    try:
        data = cloudpickle.dumps(built)
        write_atomic(path, data)
        evict(path.parent)
    except Exception as exc:  # noqa: BLE001 - a function that cannot be kept still works here
        warnings.warn(f"mixbench: not stored, later processes will compile it again "
                      f"({description.get('function')}: {type(exc).__name__}: {exc})", RuntimeWarning, stacklevel=2)
        return built, False
    if warm_up is not None:
        warm_up(cloudpickle.loads(data))
        return cloudpickle.loads(data), False
    return built, False


def set_shared(function, values: dict[str, Any]) -> None:
    """Give the shared variables of a PyTensor ``function`` named in ``values`` those values."""
    for variable in function.get_shared():
        if variable.name in values:
            variable.set_value(values[variable.name])
