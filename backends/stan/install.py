"""Stan's engines as installed: where CmdStan is and which Stan httpstan and CmdStan carry (from
backends.stan_versions, which reads them without importing httpstan), the build lock, httpstan's
built libraries and whether they are intact, and the engines' chatter kept quiet."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sysconfig
from pathlib import Path

import numpy as np

from backends import artefacts
from backends.caches import build_lock
# Re-exported: the Stan backend and its tests name them from here (backends.stan).
from backends.stan_versions import cmdstan_path, cmdstan_version, pystan_stan_version  # noqa: F401
from models.errors import MixbenchError

NO_CMDSTAN = "CmdStan not installed (cmdstanpy.cmdstan_path() found none)"
INSTALL_CMDSTAN = "install it with `python -m cmdstanpy.install_cmdstan` (or point CMDSTAN at an install)"


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise MixbenchError(f"seed: Stan needs an integer in [0, 2^31), got {seed!r}")
    return int(seed)


def _compile_lock(key: str):
    """One process at a time builds the program ``key`` (backends.caches owns the lock and the
    store); other programs build meanwhile."""
    return build_lock("stan", key)


def _httpstan_libraries(name: str) -> list[Path]:
    """The compiled extension modules httpstan keeps for program ``name``."""
    import httpstan.cache

    return sorted(httpstan.cache.model_directory(name).glob("*.so"))


def _httpstan_build_intact(name: str) -> bool:
    """Whether httpstan's build of ``name`` is the one recorded when it was built
    (backends.artefacts); if not, its directory is deleted so that it is built again."""
    import httpstan.cache

    libraries = _httpstan_libraries(name)
    if libraries and all(artefacts.intact(library) for library in libraries):
        return True
    httpstan.cache.delete_model_directory(name)
    return False


_DEBUG_FLAG = re.compile(r"-g(gdb)?[0-3]?")


def httpstan_compile_flags() -> str:
    """Python's own compiler flags (sysconfig's CFLAGS) without its debug flags (``-g``).

    setuptools puts sysconfig's CFLAGS in front of every extension's command line
    (``configure_system`` in setuptools/_distutils/compilers/C/unix.py), so httpstan's build of
    a program carries full debug information (92 MB) that nothing reads; without it the build
    took 17% less time and the draws were bit-identical (docs/performance.md, section 7).
    """
    flags = sysconfig.get_config_var("CFLAGS") or ""
    return " ".join(flag for flag in flags.split() if not _DEBUG_FLAG.fullmatch(flag))


@contextlib.contextmanager
def httpstan_build_env():
    """The environment httpstan's build (pystan, in this process) reads its flags from:
    setuptools takes CFLAGS and CXXFLAGS (C++ sources, as httpstan's) from the environment in
    place of sysconfig's, so both are set to ``httpstan_compile_flags()`` for the duration and
    restored after. Flags the user set are left as they are."""
    unset = [name for name in ("CFLAGS", "CXXFLAGS") if name not in os.environ]
    os.environ.update(dict.fromkeys(unset, httpstan_compile_flags()))
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _quiet():
    """Silence the engines' console chatter (pystan's progress, cmdstanpy's INFO log)."""
    logger = logging.getLogger("cmdstanpy")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


