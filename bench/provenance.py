"""What a run records about where it ran: the machine and every version that can change a result."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from backends.base import machine_info, package_versions
from backends.stan import cmdstan_path, cmdstan_version, pystan_stan_version

PACKAGES = (
    "mixbench", "numpy", "scipy", "pandas", "xarray", "arviz", "arviz-base", "arviz-stats",
    "pymc", "pytensor", "nutpie", "numba", "pymc-extras", "numpyro", "jax", "jaxlib", "blackjax",
    "pystan", "httpstan", "cmdstanpy", "pytest-benchmark",
)


def cmdstan_info() -> dict[str, str | None]:
    """Where CmdStan is and which version, or None when no install is found."""
    path = cmdstan_path()
    return {"cmdstan_path": str(path) if path else None, "cmdstan_version": cmdstan_version()}


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
    # Whole or not at all: a full disk must not leave the previous record torn.
    tmp = path.with_name(f".run.json.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(info, indent=2, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return info

