"""What a run records about where it ran: the machine and every version that can change a result."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import util
from pathlib import Path
from typing import Any

from backends.base import machine_info, package_versions

PACKAGES = (
    "mixbench", "numpy", "scipy", "pandas", "xarray", "arviz", "arviz-base", "arviz-stats",
    "pymc", "pytensor", "nutpie", "numba", "pymc-extras", "numpyro", "jax", "jaxlib", "blackjax",
    "pystan", "httpstan", "cmdstanpy", "pytest-benchmark",
)


def cmdstan_info() -> dict[str, str | None]:
    """Where CmdStan is and which version, or None when no install is found."""
    try:
        import cmdstanpy

        path = cmdstanpy.cmdstan_path()
    except Exception:  # cmdstanpy raises ValueError when no install is found
        return {"cmdstan_path": None, "cmdstan_version": None}
    try:
        version = ".".join(str(v) for v in cmdstanpy.cmdstan_version() or ())
    except Exception:
        version = None
    return {"cmdstan_path": str(path), "cmdstan_version": version or None}


def pystan_stan_version() -> str | None:
    """The Stan version inside pystan's httpstan wheel, read from its stanc."""
    spec = util.find_spec("httpstan")
    if spec is None or not spec.submodule_search_locations:
        return None
    stanc = Path(next(iter(spec.submodule_search_locations))) / "stanc"
    try:
        out = subprocess.run([str(stanc), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    # "stanc3 v2.39.0 (Unix)" -> "2.39.0"
    parts = out.split()
    return parts[1].lstrip("v") if len(parts) > 1 else None


def environment() -> dict[str, Any]:
    return {
        "machine": machine_info(),
        "python_executable": sys.executable,
        "versions": package_versions(*PACKAGES),
        "pystan_stan_version": pystan_stan_version(),
        **cmdstan_info(),
    }


def write_run_info(out_dir: Path, cells) -> dict[str, Any]:
    """Write ``run.json`` (machine, versions, command, grid) beside the rows."""
    info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "n_cells": len(cells),
        "environment": environment(),
    }
    path = Path(out_dir) / "run.json"
    path.write_text(json.dumps(info, indent=2, default=str))
    return info

