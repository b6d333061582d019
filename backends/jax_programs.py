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
when run ("Function ... not found"). Programs compiled here therefore bypass JAX's persistent
cache on the way out (they are never written to it, so no later compile can read them back from
it), and an entry that fails anyway is dropped and compiled afresh by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from jax.experimental.serialize_executable import deserialize_and_load, serialize

from backends.base import package_versions
from backends.caches import cache_root, cpu_signature, source_digest

FORMAT = 1


def programs_dir() -> Path:
    """Where the programs live: ``cache_root()/jax-programs``."""
    return cache_root() / "jax-programs"


def program_key(description: dict[str, Any], sources: Sequence[Path], devices: Sequence[Any]) -> str:
    """A file-name-safe key for one program: ``description`` (JSON-serialisable: what the caller
    builds, its shapes and settings), the source files that build it, the devices it runs on,
    the package versions and the CPU."""
    parts = {
        "format": FORMAT,
        "description": description,
        "sources": source_digest(sources),
        "versions": package_versions("jax", "jaxlib", "numpyro"),
        "x64": bool(jax.config.jax_enable_x64),
        "devices": [f"{d.platform}:{d.device_kind}:{d.id}" for d in devices],
        "platform_version": devices[0].client.platform_version,
        "cpu": cpu_signature(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class Program:
    """A compiled program and whether it came from disk (``loaded``) or was compiled here."""

    compiled: jax.stages.Compiled
    loaded: bool
    key: str
    seconds: float

    def __call__(self, *args):
        return self.compiled(*args)


def _path(key: str) -> Path:
    return programs_dir() / f"{key}.pkl"


def load(key: str, devices: Sequence[Any]) -> jax.stages.Compiled | None:
    """The stored program ``key`` loaded onto ``devices``, or None when there is none or it
    cannot be read (a torn or foreign file is treated as absent)."""
    path = _path(key)
    try:
        payload, in_tree, out_tree = pickle.loads(path.read_bytes())
        return deserialize_and_load(payload, in_tree, out_tree, execution_devices=list(devices))
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - any unreadable entry is a miss, and is replaced
        discard(key)
        return None


def discard(key: str) -> None:
    """Remove the stored program ``key`` (a loaded copy that failed to run)."""
    try:
        _path(key).unlink()
    except FileNotFoundError:
        pass


def compile_fresh(lower: Callable[[], jax.stages.Lowered]) -> jax.stages.Compiled:
    """Compile ``lower()`` so that the executable serializes whole: nothing compiled here is
    written to JAX's persistent cache (see the module's docstring)."""
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        return lower().compile()
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)


def store(key: str, compiled: jax.stages.Compiled) -> None:
    """Write ``compiled`` under ``key``, atomically (a reader never sees half a file)."""
    directory = programs_dir()
    directory.mkdir(parents=True, exist_ok=True)
    data = pickle.dumps(serialize(compiled))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, _path(key))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_compile(key: str, lower: Callable[[], jax.stages.Lowered], devices: Sequence[Any],
                    *, reuse: bool = True) -> Program:
    """The program ``key``: loaded from disk when stored (and ``reuse``), else lowered, compiled
    and stored. ``lower`` traces and lowers it, and is called only on a miss."""
    start = time.perf_counter()
    compiled = load(key, devices) if reuse else None
    if compiled is not None:
        return Program(compiled, True, key, time.perf_counter() - start)
    compiled = compile_fresh(lower)
    try:
        store(key, compiled)
    except (OSError, ValueError, NotImplementedError, TypeError, pickle.PicklingError):
        pass  # a program that cannot be kept still runs; the next process compiles it again
    return Program(compiled, False, key, time.perf_counter() - start)
