"""Compile caches kept across runs and processes, so a second identical run compiles nothing new.

- Stan: httpstan caches each program's extension module (``~/.cache/httpstan``); CmdStan
  executables and gradient libraries live under ``~/.cache/mixbench/stan`` (backends/stan/programs.py,
  backends/stan_gradient.py).
- JAX (NumPyro, and PyMC's JAX samplers): the persistent compilation cache, switched on here
  under ``~/.cache/mixbench/jax`` with its thresholds lowered so every program is kept (by
  default JAX keeps only programs that took over a second to compile). It still needs each
  program traced and lowered in every process, so the NumPyro backend goes further: its fits
  run as programs stored whole under ``~/.cache/mixbench/jax-programs``
  (backends/jax_programs.py).
- PyTensor: its compiledir (``~/.pytensor``, or ``PYTENSOR_FLAGS=base_compiledir=...``) keeps C
  modules and, under ``numba/``, the machine code of the Numba functions PyTensor generates (its
  default backend in PyTensor 3). On top of it, the PyMC backend keeps its compiled functions
  after PyTensor's rewrites, its prepared ADVI and Pathfinder functions
  (``~/.cache/mixbench/pytensor-functions``, backends/pytensor_store.py), and nutpie's two C
  callbacks, as generated source Numba can cache (``~/.cache/mixbench/nutpie``,
  backends/nutpie_cache.py).

Every location follows ``XDG_CACHE_HOME`` (or the engine's own setting), which is how the
compile-cache benchmark points a process at empty caches. Measured in docs/performance.md.

What these stores hold is code: pickles (cloudpickle's included), XLA executables, a generated
Python module with Numba's index of it, Stan executables. So entries are loaded only from
directories owned by the current user and writable by no one else (``private_dir``: created
0700, checked from ``cache_root()`` down before anything is loaded), and a directory that fails
the check is refused with one line saying why (MixbenchError). An entry that fails to load is
discarded and rebuilt, with one CacheWarning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import stat
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from models.errors import MixbenchError, MixbenchWarning


JAX_CACHE_MAX_BYTES = 2 * 1024**3
# Bound of each of mixbench's own stores (jax-programs, pytensor-functions): least recently used
# entries go first once a store passes it.
STORE_MAX_BYTES = 2 * 1024**3


# The directories under cache_root() that hold entries mixbench loads (the Stan backend's "stan"
# and the reference posteriors included) or its locks, checked by
# backends.engine_caches.check_cache_dirs before a run.
STORES = ("jax", "jax-programs", "pytensor-functions", "nutpie", "stan", "references", "locks")


class CacheWarning(MixbenchWarning, RuntimeWarning):
    """A cache entry was discarded (it failed to load) or could not be stored: the run goes on,
    compiling what the entry would have saved."""


def cache_root() -> Path:
    """mixbench's cache directory: ``$XDG_CACHE_HOME/mixbench``, else ``~/.cache/mixbench``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mixbench"


def store_dir(name: str) -> Path:
    """The directory of store ``name`` (one of ``STORES``) under ``cache_root()``, as the
    environment says now (not at import: a process may point XDG_CACHE_HOME elsewhere).

    Raises
    ------
    ValueError
        ``name`` is not one of ``STORES`` (a bug: every store is declared there).
    """
    if name not in STORES:
        raise ValueError(f"cache store: unknown {name!r}; known: {', '.join(STORES)}")
    return cache_root() / name


# Seconds this process has waited, in all, for other processes' builds (``build_lock``), and
# who is told when a wait starts and ends (a worker tells its run, which does not count the wait
# against the cell's time limit).
_waited = 0.0
_wait_listener: Callable[[str], None] | None = None


def waited_seconds() -> float:
    """Seconds this process has spent, in all, waiting for another process's build of a program
    it needed (``build_lock``). Backend.fit reports the part spent during a fit as its
    ``compile_wait`` phase."""
    return _waited


def set_wait_listener(listener: Callable[[str], None] | None) -> None:
    """Call ``listener("start")`` when this process begins waiting for another's build and
    ``listener("end")`` when it stops (None: nobody)."""
    global _wait_listener
    _wait_listener = listener


@contextlib.contextmanager
def build_lock(name: str, key: str):
    """Hold the exclusive lock of program ``key`` of store ``name`` while building it: two
    processes building one program would otherwise compile it side by side into one place, while
    different programs build in parallel. Waiting for another process that holds the lock is
    added to ``waited_seconds`` (a wait, not a compile). Yields the store's directory, made
    private (``private_dir``) first, since what is built there is loaded as code."""
    import fcntl

    global _waited
    directory = private_dir(store_dir(name))
    with open(private_dir(store_dir("locks")) / f"{name}-{key}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if _wait_listener is not None:
                _wait_listener("start")
            start = time.perf_counter()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            finally:
                _waited += time.perf_counter() - start
                if _wait_listener is not None:
                    _wait_listener("end")
        try:
            yield directory
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_private(path: Path) -> None:
    """Raise MixbenchError unless ``path`` is a directory owned by the current user that neither
    group nor others can write (they could plant an entry, and entries are code)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise MixbenchError(f"cache directory {path}: cannot be checked ({exc.strerror or exc})") from None
    fix = "; mixbench loads compiled code only from your own private directories (README.md, on caches)"
    if not stat.S_ISDIR(info.st_mode):
        raise MixbenchError(f"cache directory {path}: is not a directory{fix}")
    if info.st_uid != os.getuid():
        raise MixbenchError(f"cache directory {path}: owned by uid {info.st_uid}, not by you (uid {os.getuid()}); "
                            f"set XDG_CACHE_HOME to a directory of your own{fix}")
    writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if info.st_mode & bit]
    if writable:
        raise MixbenchError(f"cache directory {path}: writable by {' and '.join(writable)} "
                            f"(mode {stat.S_IMODE(info.st_mode):04o}); remove it or run chmod go-w on it{fix}")


def private_dir(path: Path) -> Path:
    """``path``, created if missing (mode 0700, as is every directory made between
    ``cache_root()`` and it), after checking with ``check_private`` it and each directory from
    the cache root down to it. Raises MixbenchError (one line) when one fails the check."""
    path = Path(path)
    root = cache_root()
    chain = [path]
    if path != root and root in path.parents:
        chain = [root, *reversed([p for p in path.parents if root in p.parents]), path]
    for directory in chain:
        try:
            directory.mkdir(mode=0o700, parents=directory == chain[0], exist_ok=True)
        except OSError as exc:
            raise MixbenchError(f"cache directory {directory}: cannot be created ({exc.strerror or exc})") from None
        check_private(directory)
    return path


def discard_entry(path: Path, error: BaseException) -> None:
    """Delete an entry (a file or a whole directory) that failed to load, with one CacheWarning
    naming it and the error; the caller rebuilds it."""
    if Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)
    text = (str(error).strip().splitlines() or [""])[0]
    warnings.warn(f"cache entry {path}: failed to load ({type(error).__name__}: {text[:200]}); "
                  "discarded, compiling it again", CacheWarning, stacklevel=3)


def enable_jax_compilation_cache() -> Path | None:
    """Point JAX's persistent compilation cache at ``cache_root()/jax`` unless the user chose a
    directory (``JAX_COMPILATION_CACHE_DIR`` or jax.config); keep every compiled program.
    Returns the directory in use."""
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        directory = private_dir(cache_root() / "jax")
        jax.config.update("jax_compilation_cache_dir", str(directory))
    # A sampler's programs compile in well under JAX's default 1 s threshold and would never be
    # written; -1 also turns off the size threshold for good.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # Keeping everything also keeps every small eager-op program: bound the directory (least
    # recently used entries go first) unless the user set a bound.
    if jax.config.jax_compilation_cache_max_size == -1:
        jax.config.update("jax_compilation_cache_max_size", JAX_CACHE_MAX_BYTES)
    return Path(jax.config.jax_compilation_cache_dir)


@lru_cache(maxsize=64)
def _file_digest(path: Path, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


def source_digest(paths: Sequence[Path]) -> str:
    """One hash of the named source files: a cached artefact built from them is stale once any
    of them changes."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        digest.update(path.name.encode())
        digest.update(_file_digest(path, stat.st_mtime_ns, stat.st_size))
    return digest.hexdigest()


@lru_cache(maxsize=1)
def cpu_signature() -> str:
    """The CPU machine code is compiled for: its model and feature flags where the system says
    them (a cache shared between machines must not hand one CPU's code to another)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = sorted({line for line in lines if line.startswith(("model name", "flags"))})
    return hashlib.sha256("\n".join(wanted).encode()).hexdigest()


def mark_used(path: Path) -> None:
    """Record that a stored entry was just used (its mtime), for ``evict``."""
    try:
        os.utime(path)
    except OSError:
        pass


def evict(directory: Path, max_bytes: int = STORE_MAX_BYTES, pattern: str = "*.pkl") -> list[Path]:
    """Delete the least recently used entries of ``directory`` until it holds at most
    ``max_bytes``. Returns what was deleted."""
    entries = []
    for path in directory.glob(pattern):
        try:
            stat = path.stat()
        except OSError:
            continue
        entries.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


def cache_key(parts: dict[str, Any]) -> str:
    """A file-name-safe key for a cached artefact: a hash of ``parts`` (JSON-serialisable; each
    store puts in it what its artefacts depend on: a description, versions, source digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that no reader, in this process or another, ever sees half
    a file: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
