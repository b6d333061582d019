"""Compiled JAX programs kept on disk, so that a later process runs them without tracing,
lowering or compiling.

JAX's persistent compilation cache (backends/caches.py) saves XLA's compile, but it is keyed by
the lowered program: every process still traces its Python and lowers it to MLIR before it can
look the program up, which for NumPyro's NUTS costs about a second. Here a program is stored
whole, as ``jax.experimental.serialize_executable`` writes it, under a key built from what
determines it (the caller's description, the versions of JAX, jaxlib and NumPyro, the source of
the modules that build it, the devices and the CPU), and loaded back without touching Python
tracing at all.

One XLA limitation shapes the code: an executable that was itself loaded from a serialized form
(for instance out of JAX's persistent cache) does not serialize again whole; the copy fails
when run ("Function ... not found"). Programs compiled here therefore never meet JAX's
persistent cache: they compile with a compiler option of their own (its default value, so the
code is the same, but the cache key differs from any plain ``jax.jit`` of the same function) and
are never written to it. Should a stored program fail anyway, it is dropped and compiled afresh.
"""

from __future__ import annotations

import json
import pickle
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from jax.experimental.serialize_executable import deserialize_and_load, serialize

from backends.fit import package_versions
from backends.caches import (CacheWarning, cache_key, cache_root, cpu_signature, discard_entry, evict, mark_used,
                             private_dir, source_digest, write_atomic)

FORMAT = 1


def programs_dir() -> Path:
    """Where the programs live: ``cache_root()/jax-programs``, created private; MixbenchError
    when it is not (caches.private_dir: a stored program is code)."""
    return private_dir(cache_root() / "jax-programs")


def program_key(description: dict[str, Any], sources: Sequence[Path], devices: Sequence[Any]) -> str:
    """A file-name-safe key for one program: ``description`` (JSON-serialisable: what the caller
    builds, its shapes and settings), the source files that build it, the devices it runs on,
    the package versions and the CPU."""
    return cache_key({
        "format": FORMAT,
        "description": description,
        "sources": source_digest(sources),
        "versions": package_versions("jax", "jaxlib", "numpyro"),
        "x64": bool(jax.config.jax_enable_x64),
        "devices": [f"{d.platform}:{d.device_kind}:{d.id}" for d in devices],
        "platform_version": devices[0].client.platform_version,
        "cpu": cpu_signature(),
    })


def _path(key: str) -> Path:
    return programs_dir() / f"{key}.pkl"


def _initialize_cpu_kernels() -> None:
    """jaxlib's CPU LAPACK kernels fetch their LAPACK function pointers when a linear-algebra
    operation is first lowered. A loaded program lowers nothing, and would call null pointers
    (a segfault), so they are fetched here, as ``jax.export`` does for its loaded modules."""
    try:
        from jax._src.lax.linalg import initialize_lapack
    except ImportError:  # a JAX that moved it: lowering any decomposition has the same effect
        jax.jit(jax.numpy.linalg.cholesky).lower(jax.ShapeDtypeStruct((2, 2), "float32"))
        return
    initialize_lapack()


def load(key: str, devices: Sequence[Any]) -> jax.stages.Compiled | None:
    """The stored program ``key`` loaded onto ``devices``, or None when there is none or it
    cannot be read (a torn or foreign file is discarded with one CacheWarning, and replaced)."""
    path = _path(key)
    try:
        payload, in_tree, out_tree = pickle.loads(path.read_bytes())
        _initialize_cpu_kernels()
        compiled = deserialize_and_load(payload, in_tree, out_tree, execution_devices=list(devices))
        mark_used(path)
        return compiled
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is a miss, and is replaced
        discard_entry(path, exc)
        return None


def discard(key: str) -> None:
    """Remove the stored program ``key`` (a loaded copy that failed to run)."""
    _path(key).unlink(missing_ok=True)


# XLA's default for this flag (off): setting it explicitly changes no code, only the
# persistent-cache key, so a program compiled here is never one JAX's cache holds.
_OWN_COMPILER_OPTIONS = {"xla_cpu_enable_fast_math": False}


def compile_fresh(lower: Callable[[], jax.stages.Lowered]) -> jax.stages.Compiled:
    """Compile ``lower()`` so that the executable serializes whole: never read from JAX's
    persistent cache, nor written to it (see the module's docstring)."""
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        return lower().compile(_OWN_COMPILER_OPTIONS)
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)


def store(key: str, compiled: jax.stages.Compiled) -> None:
    """Write ``compiled`` under ``key``, atomically, keeping the store within its bound."""
    write_atomic(_path(key), pickle.dumps(serialize(compiled)))
    evict(programs_dir())


# Reported as a JAX time span, so that code which moves JAX's own compile spans out of a timed
# phase (backends/numpyro/model.py) moves loading, storing and recompiling programs with them.
LOAD_EVENT = "/mixbench/jax_programs/load_or_compile"


@dataclass
class Program:
    """A compiled program, loaded from disk (``loaded``) or compiled here.

    The first run of a loaded program is waited for: one that fails (see the module's
    docstring) is dropped from the store, compiled afresh (timed as a ``LOAD_EVENT`` span) and
    run again, instead of failing the fit later.
    """

    compiled: jax.stages.Compiled
    loaded: bool
    key: str
    lower: Callable[[], jax.stages.Lowered]
    devices: Sequence[Any]
    verified: bool = False

    def __call__(self, *args):
        if not self.loaded or self.verified:
            return self.compiled(*args)
        try:
            result = jax.block_until_ready(self.compiled(*args))
        except jax.errors.JaxRuntimeError as exc:
            discard_entry(_path(self.key), exc)
            fresh = load_or_compile(self.key, self.lower, self.devices, reuse=False)
            self.compiled, self.loaded = fresh.compiled, False
            return self.compiled(*args)
        self.verified = True
        return result


def load_or_compile(key: str, lower: Callable[[], jax.stages.Lowered], devices: Sequence[Any],
                    *, reuse: bool = True) -> Program:
    """The program ``key``: loaded from disk when stored (and ``reuse``), else lowered, compiled
    and stored. ``lower`` traces and lowers it, and is called only on a miss."""
    # Wall-clock times, as JAX stamps its own compile spans: the two kinds are merged.
    start = time.time()
    compiled = load(key, devices) if reuse else None
    loaded = compiled is not None
    if not loaded:
        compiled = compile_fresh(lower)
        try:
            store(key, compiled)
        except (OSError, ValueError, NotImplementedError, TypeError, pickle.PicklingError) as exc:
            # The program still runs here; only later processes lose it.
            warnings.warn(f"mixbench: JAX program not stored, later processes will compile it again "
                          f"({type(exc).__name__}: {exc})", CacheWarning, stacklevel=2)
    jax.monitoring.record_event_time_span(LOAD_EVENT, start, time.time())
    return Program(compiled, loaded, key, lower, devices)


def abstract(tree):
    """``tree`` with every array replaced by its shape and dtype, enough to lower a program
    again later without keeping the arrays alive; Python scalars stay (they are weakly typed)."""
    def leaf(value):
        if isinstance(value, (int, float, bool)):
            return value
        return jax.ShapeDtypeStruct(jax.numpy.shape(value), jax.numpy.result_type(value))
    return jax.tree.map(leaf, tree)


class StoredJit:
    """``jax.jit(fun)`` whose compiled programs are kept on disk, one per signature of the
    arguments (tree structure, shapes, dtypes, and the values of ``static_argnums``).

    ``description`` must name everything ``fun`` closes over that shapes the program (a spec,
    settings): it is part of every key, with ``sources``, versions, devices and CPU. Runs on the
    first device.
    """

    def __init__(self, fun: Callable, description: dict[str, Any], sources: Sequence[Path],
                 static_argnums: tuple[int, ...] = ()):
        self.jitted = jax.jit(fun, static_argnums=static_argnums)
        self.description = description
        self.sources = tuple(sources)
        self.static_argnums = tuple(static_argnums)
        self.programs: dict[str, Program] = {}

    def _signature(self, args: tuple) -> tuple[str, tuple]:
        dynamic = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        leaves, treedef = jax.tree.flatten(dynamic)
        shapes = [(tuple(jax.numpy.shape(leaf)), str(jax.numpy.result_type(leaf)),
                   isinstance(leaf, (int, float, bool))) for leaf in leaves]
        static = [repr(args[i]) for i in self.static_argnums]
        return json.dumps([str(treedef), shapes, static, bool(jax.config.jax_enable_x64)]), dynamic

    def __call__(self, *args):
        signature, dynamic = self._signature(args)
        program = self.programs.get(signature)
        if program is None:
            devices = jax.devices()[:1]
            key = program_key({**self.description, "signature": signature}, self.sources, devices)
            shapes = tuple(arg if i in self.static_argnums else abstract(arg) for i, arg in enumerate(args))
            program = load_or_compile(key, lambda: self.jitted.lower(*shapes), devices)
            self.programs[signature] = program
        return program(*dynamic)
