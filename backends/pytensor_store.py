"""Compiled PyTensor functions kept on disk, rewritten graph and all.

A PyTensor function pickles as its FunctionMaker: the graph after PyTensor's rewrites, and the
linker. Unpickling skips the rewrites (the costly part of a compile once Numba's machine code is
cached by PyTensor itself) and only links the graph again, loading the Numba functions from
PyTensor's cache. The pickle is cloudpickle's, because PyMC's graphs hold OpFromGraph closures.

A stored function holds copies of its shared variables (the data): callers set their values
after loading (``set_shared``).

An entry is an envelope naming its key and the type of what it holds; one that does not unpickle
or is not such an envelope (torn, written by something else, another key's) is discarded with one
CacheWarning and built again. Entries load only from a private directory (caches.private_dir).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import cloudpickle

from backends.base import note_compile, package_versions
from backends.caches import (CacheWarning, cache_key, cache_root, discard_entry, evict, mark_used, private_dir,
                             source_digest, write_atomic)

FORMAT = 2  # 2: entries are envelopes (_wrap)
SOURCES = (Path(__file__), Path(__file__).with_name("pymc.py"), Path(__file__).with_name("pymc_vi_store.py"),
           Path(__file__).parents[1] / "models" / "spec.py")


def store_dir() -> Path:
    """The store's directory, created private; MixbenchError when it is not (caches.private_dir)."""
    return private_dir(cache_root() / "pytensor-functions")


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _wrap(key: str, obj: Any) -> bytes:
    return cloudpickle.dumps({"format": FORMAT, "key": key, "type": _type_name(obj), "object": obj})


def _unwrap(key: str, data: bytes) -> Any:
    """The object of an envelope written for ``key``; ValueError when ``data`` is not one."""
    envelope = cloudpickle.loads(data)
    if not (isinstance(envelope, dict) and envelope.get("format") == FORMAT and envelope.get("key") == key
            and "object" in envelope):
        raise ValueError(f"not an entry of this store for this key (a {_type_name(envelope)})")
    if _type_name(envelope["object"]) != envelope.get("type"):
        raise ValueError(f"holds a {_type_name(envelope['object'])}, recorded as {envelope.get('type')}")
    return envelope["object"]


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

    An entry that fails to load is discarded (one CacheWarning) and built again. Raises
    MixbenchError when the store's directory is not private (caches.private_dir).
    """
    note_compile("cold")  # loaded from disk or built: not in this process's memory
    key = function_key(description)
    path = store_dir() / f"{key}.pkl"
    try:
        loaded = _unwrap(key, path.read_bytes())
        mark_used(path)
        return loaded, True
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - a torn, foreign or stale entry is rebuilt and replaced
        discard_entry(path, exc)
    built = build()
    try:
        data = _wrap(key, built)
        write_atomic(path, data)
        evict(path.parent)
    except Exception as exc:  # noqa: BLE001 - a function that cannot be kept still works here
        warnings.warn(f"mixbench: not stored, later processes will compile it again "
                      f"({description.get('function')}: {type(exc).__name__}: {exc})", CacheWarning, stacklevel=2)
        return built, False
    if warm_up is not None:
        warm_up(_unwrap(key, data))
        return _unwrap(key, data), False
    return built, False


def set_shared(function, values: dict[str, Any]) -> None:
    """Give the shared variables of a PyTensor ``function`` named in ``values`` those values."""
    for variable in function.get_shared():
        if variable.name in values:
            variable.set_value(values[variable.name])
