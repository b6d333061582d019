"""Which Stan the Stan backend's engines carry and where CmdStan is, read without importing
httpstan (Stan's language version is in its bundled header) and with cmdstanpy's own search for
CmdStan (a 0.1 s import after NumPy and pandas): ``run.json`` records them before a run's cells
start, in the run's own process (bench.run.provenance)."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path


def cmdstan_path() -> str | None:
    """The CmdStan install cmdstanpy would use, or None."""
    import cmdstanpy

    try:
        return cmdstanpy.cmdstan_path()
    except (ValueError, RuntimeError):
        return None


@lru_cache(maxsize=1)
def pystan_stan_version() -> str:
    """The Stan release compiled into httpstan's wheel (from its bundled ``stan/version.hpp``),
    or ``"not installed"``. ``find_spec`` locates the package without running it."""
    spec = find_spec("httpstan")
    if spec is None or not spec.submodule_search_locations:
        return "not installed"
    header = Path(spec.submodule_search_locations[0]) / "include" / "stan" / "version.hpp"
    parts = dict(re.findall(r"#define STAN_(MAJOR|MINOR|PATCH) (\d+)", header.read_text()))
    return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"


def cmdstan_version() -> str | None:
    """CmdStan's version as cmdstanpy reads it (major.minor), "unknown" when it cannot, or None
    without an install."""
    if cmdstan_path() is None:
        return None
    import cmdstanpy

    version = cmdstanpy.cmdstan_version()
    return ".".join(map(str, version)) if version else "unknown"


def stan_engine_versions() -> dict[str, str]:
    """The engines' versions a Stan fit depends on beside its packages' (``Backend.versions``)."""
    return {
        "stan (httpstan)": pystan_stan_version(),
        "cmdstan": cmdstan_version() or "not installed",
        "cmdstan path": str(cmdstan_path() or "not installed"),
    }
