"""What a run records about where it ran: the machine and every version that can change a result."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from backends import backend_versions
from backends.base import machine_info, package_versions
from models.errors import MixbenchError

# What every run uses whatever its backends; each backend names its own packages and engines
# (``backends.backend_versions``, read without importing them).
PACKAGES = (
    "mixbench", "numpy", "scipy", "pandas", "xarray", "arviz", "arviz-base", "arviz-stats", "pytest-benchmark",
)


def environment(backends: Iterable[str] = ()) -> dict[str, Any]:
    """The machine, the interpreter, and the versions of the shared packages and of every backend in
    ``backends`` (names as ``backends.get_backend`` takes them), as ``backends.backend_versions``
    reads them: a registered backend's without importing it or its engines.

    A backend that cannot load is recorded with its error (``"<name> backend": "cannot load: ..."``),
    not raised: the run's cells will report it themselves.
    """
    versions = package_versions(*PACKAGES)
    for name in sorted(set(backends)):
        try:
            versions.update(backend_versions(name))
        except MixbenchError as exc:
            versions[f"{name} backend"] = f"cannot load: {exc}"
    return {
        "machine": machine_info(),
        "python_executable": sys.executable,
        "versions": versions,
    }


def write_run_info(out_dir: Path, cells, notes: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``run.json`` (machine, versions, command, grid, and ``notes`` on the whole run, which
    the report shows under its headline) beside the rows."""
    info = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "n_cells": len(cells),
        "environment": environment(cell.backend for cell in cells),
        "notes": list(notes),
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

