"""The engines' own caches of compiled code, checked like mixbench's (backends.caches).

An engine loads code from its cache: httpstan its models' extension modules, PyTensor the C and
Numba modules under its compiledir, JAX its persistent compilation cache, Numba its cache
directory, cmdstanpy the executables it builds with a CmdStan install. Someone who can write
there runs code in the next fit. So before a run, every such directory that exists is checked
with ``check_private`` (owned by the current user, writable by neither group nor others), and a
run with one that fails is refused in one line. The CmdStan install (``CMDSTAN`` or cmdstanpy's
``~/.cmdstan``) may also belong to root, as a system-wide install does.

Where each is, without importing the engine (seconds each):

- httpstan: ``$XDG_CACHE_HOME/httpstan`` (appdirs' user cache directory), its version folder
  and ``models/`` with each model's folder;
- PyTensor: ``base_compiledir`` from ``PYTENSOR_FLAGS`` (else ``~/.pytensor``), each
  ``compiledir_*`` in it (or ``compiledir`` from ``PYTENSOR_FLAGS``), and their ``numba/``;
- JAX: ``JAX_COMPILATION_CACHE_DIR`` when set (else mixbench's own ``jax`` store);
- Numba: ``NUMBA_CACHE_DIR`` when set (else Numba writes beside the source it compiles: the
  environment's packages and mixbench's own ``nutpie`` store);
- CmdStan: the install directory; the executables it builds live in mixbench's ``stan`` store.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from backends.caches import STORES, cache_root, check_private
from models.errors import MixbenchError


def _pytensor_flags() -> dict[str, str]:
    flags = {}
    for item in os.environ.get("PYTENSOR_FLAGS", "").split(","):
        name, sep, value = item.partition("=")
        if sep:
            flags[name.strip()] = value.strip()
    return flags


def _subdirs(path: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in path.glob(pattern) if p.is_dir() and not p.is_symlink())


def engine_cache_dirs() -> list[tuple[str, Path]]:
    """(engine, directory) of every engine cache directory that exists now, outermost first."""
    found: list[tuple[str, Path]] = []
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    httpstan = cache_home / "httpstan"
    if httpstan.is_dir():
        found.append(("httpstan", httpstan))
        for version in _subdirs(httpstan):
            found.append(("httpstan", version))
            if (version / "models").is_dir():
                found += [("httpstan", d) for d in [version / "models", *_subdirs(version / "models")]]
    flags = _pytensor_flags()
    base = Path(flags.get("base_compiledir") or Path.home() / ".pytensor").expanduser()
    compiledirs = [Path(flags["compiledir"]).expanduser()] if flags.get("compiledir") else _subdirs(base, "compiledir_*")
    numba = [base / "numba", *(c / "numba" for c in compiledirs)]
    found += [("PyTensor", d) for d in [base, *compiledirs, *numba] if d.is_dir()]
    for engine, variable in (("JAX", "JAX_COMPILATION_CACHE_DIR"), ("Numba", "NUMBA_CACHE_DIR")):
        if os.environ.get(variable) and Path(os.environ[variable]).is_dir():
            found.append((engine, Path(os.environ[variable])))
    return found


def _cmdstan_install() -> Path | None:
    path = os.environ.get("CMDSTAN")
    if path:
        return Path(path) if Path(path).is_dir() else None
    installs = sorted((Path.home() / ".cmdstan").glob("cmdstan-*"))
    return installs[-1] if installs else None


def check_engine_caches() -> None:
    """Raise MixbenchError (one line naming the engine and the directory) when an engine cache
    (``engine_cache_dirs``) or the CmdStan install fails the ownership and mode check."""
    for engine, directory in engine_cache_dirs():
        try:
            check_private(directory)
        except MixbenchError as exc:
            raise MixbenchError(f"{engine}'s {exc}") from None
    install = _cmdstan_install()
    if install is not None:
        info = install.stat()
        writable = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH)) if info.st_mode & bit]
        why = (f"owned by uid {info.st_uid}, not by you (uid {os.getuid()}) or root" if info.st_uid not in (os.getuid(), 0)
               else f"writable by {' and '.join(writable)} (mode {stat.S_IMODE(info.st_mode):04o})" if writable else None)
        if why:
            raise MixbenchError(f"CmdStan install {install}: {why}; the executables built with it load its libraries "
                                "(README.md, on caches)")


def check_cache_dirs() -> None:
    """Check every cache a run loads code from, creating nothing: the engines' own caches, the
    mixbench cache root and each store under it that exists (``backends.caches.STORES``).

    A run refuses, in one line, before any cell loads from an unsafe directory.

    Raises
    ------
    MixbenchError
        A directory that another user owns or that group or others can write, named with its
        engine or store.
    """
    check_engine_caches()
    root = cache_root()
    if not root.exists():
        return
    check_private(root)
    for name in STORES:
        if (root / name).exists():
            check_private(root / name)
