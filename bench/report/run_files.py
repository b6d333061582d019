"""What a report may read of a results folder: rows are data, never instructions.

A results folder may come from someone else, so ``report`` and ``compare`` read only files inside
the run folders they are given, whatever a row names:

- a file a row names (a slope trace) is read only when it resolves inside one of those folders
  (no absolute path, no ``..``, no symbolic link out of it); a row's recorded ``run_dir`` is not
  followed;
- a data file is read from the run folder's own copy, ``data/<digest>.csv``, written by
  ``mixbench run --data`` (``keep_data_copy``), and only when the copy's SHA-256 digest equals the
  digest the row records; a row without a digest gets no data figure;
- a built-in scenario is simulated again only at the size the row records it fitted, and at
  most ``MAX_SIMULATED`` points.

Each refusal is a reason (a note in the report), never an error.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from bench.run.harness import Cell, load_cell_data
from models.datafile import data_digest, load_csv
from models.errors import MixbenchError
from models.scenarios import get_scenario
from models.spec import MixtureSpec

DATA_DIR = "data"
# The largest data set a report simulates again for its data figure (the forum scenario has
# 100 000 points; 1e6 points of D = 1 are 16 MB).
MAX_SIMULATED = 1_000_000


def file_in_runs(name: Any, run_dirs: list[Path]) -> Path | None:
    """The file a row names by ``name`` (a path relative to its run folder), resolved, when it
    lies inside one of ``run_dirs``; else None."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        return None
    for run_dir in run_dirs:
        root = Path(run_dir).resolve()
        path = (root / name).resolve()
        if path.is_relative_to(root) and path.is_file():
            return path
    return None


def keep_data_copy(data_file: Path, out_dir: Path, digest: str) -> Path:
    """Copy ``data_file`` into ``out_dir/data/<digest>.csv`` (once), so that the run folder holds
    everything its report reads. Raises OSError when it cannot be written, MixbenchError when the file no longer has ``digest``."""
    target = Path(out_dir) / DATA_DIR / f"{digest}.csv"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".csv.partial")
        shutil.copyfile(data_file, partial)
        if data_digest(partial) != digest:
            partial.unlink()
            raise MixbenchError(f"data file {data_file}: changed since the run was planned; rerun to fit its new content")
        partial.replace(target)
    return target


def cell_data(cell: dict, row_n: Any, run_dirs: list[Path]):
    """((spec, dataset), '') of a row's cell for the report's data figure, or (None, why not).

    ``cell`` is the row's ``cell`` field, ``row_n`` the N the row records it fitted."""

    try:
        cell = Cell.from_dict({**cell, "data_digest": cell.get("data_digest") or ""})
    except (TypeError, ValueError, MixbenchError) as exc:
        return None, f"the row's cell cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if cell.is_data_file:
        if not cell.data_digest:
            return None, "the row records no digest of its data file, so no file is read for it"
        copy = file_in_runs(f"{DATA_DIR}/{cell.data_digest}.csv", run_dirs)
        if copy is None:
            return None, f"the run folder holds no copy of its data file ({DATA_DIR}/{cell.data_digest}.csv)"
        if data_digest(copy) != cell.data_digest:
            return None, f"{copy} does not match the digest its rows record"
        try:
            dataset = load_csv(copy, list(cell.covariates) if cell.covariates is not None else None, cell.response)
            return (MixtureSpec.from_dict({"D": dataset.D, **cell.spec}), dataset), ""
        except MixbenchError as exc:
            return None, str(exc)
    try:
        n = cell.n if cell.n is not None else get_scenario(cell.scenario).N
    except MixbenchError as exc:
        return None, str(exc)
    if not isinstance(n, int) or isinstance(n, bool) or n != row_n:
        return None, f"the row's N ({row_n}) is not the size its cell names ({n})"
    if n > MAX_SIMULATED:
        return None, f"N = {n:,} is more than the {MAX_SIMULATED:,} points a report simulates again"
    try:
        return load_cell_data(cell), ""
    except MixbenchError as exc:
        return None, str(exc)
