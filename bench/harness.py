"""The harness: a grid of cells, each fitted in its own process, each row written as it finishes.

A cell is (scenario or data file, backend, method, seed, settings). Rows go to
``<out>/cells.jsonl`` the moment a cell finishes, under an exclusive file lock, so a run killed at
any point keeps every finished row, two runs sharing an output never interleave a line, and a
second run over the same output skips the cells already there (resume).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import FitSettings, stopwatch
from models.errors import MixbenchError

CELLS_FILE = "cells.jsonl"
RUN_FILE = "run.json"
DRAWS_DIR = "draws"

# Statuses a row can carry. "ok" and "unsupported" come from the backend; "failed" is an
# exception inside the cell; "timeout" and "crashed" are decided by the executor.
FINISHED = ("ok", "unsupported", "failed", "timeout", "crashed")


@dataclass(frozen=True)
class Cell:
    """One fit to run: what the grid is made of."""

    scenario: str  # a built-in scenario name, or the path of a CSV data file
    backend: str
    method: str
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # FitSettings fields that differ from defaults
    spec: dict[str, Any] = field(default_factory=dict)  # MixtureSpec fields that override the scenario's
    n: int | None = None  # data size override for a built-in scenario
    data_seed: int = 0  # the data set is shared by every cell of a scenario; seeds vary inference only
    covariates: tuple[str, ...] | None = None  # data file columns
    response: str = "y"
    standardize: bool = False  # fit centred and scaled data, report on the data's scale (bench.problem)
    reference: str | None = None  # directory of the data set's reference posterior (bench.reference)

    @property
    def is_data_file(self) -> bool:
        return self.scenario.endswith(".csv") or os.sep in self.scenario

    @property
    def scenario_label(self) -> str:
        return Path(self.scenario).stem if self.is_data_file else self.scenario

    @property
    def variant(self) -> str:
        """A short stable hash of everything beyond the ids, so changed settings are new cells."""
        parts = {"settings": self.settings, "spec": self.spec, "n": self.n, "data_seed": self.data_seed,
                 "covariates": self.covariates, "response": self.response, "scenario": self.scenario}
        # Only when set, so that cells without them keep the ids earlier runs gave them.
        parts.update({k: v for k, v in (("standardize", self.standardize), ("reference", self.reference)) if v})
        blob = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:8]

    @property
    def setup(self) -> str:
        """What this cell changes from the scenario's defaults, for people: 'default' if nothing."""
        parts = [f"N={self.n}"] if self.n is not None else []
        parts += [f"{k}={v}" for k, v in sorted(self.spec.items())]
        parts += [f"{k}={v}" for k, v in sorted(self.settings.items())]
        if self.standardize:
            parts.append("standardize")
        if self.data_seed:
            parts.append(f"data_seed={self.data_seed}")
        return ", ".join(parts) or "default"

    @property
    def id(self) -> str:
        return f"{self.scenario_label}.{self.backend}.{self.method}.s{self.seed}.{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["covariates"] = list(self.covariates) if self.covariates is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Cell":
        data = dict(data)
        if data.get("covariates") is not None:
            data["covariates"] = tuple(data["covariates"])
        return cls(**data)


def make_grid(
    scenarios: Iterable[str],
    backends: Iterable[str],
    methods: Iterable[str],
    seeds: Iterable[int],
    **common: Any,
) -> list[Cell]:
    return [
        Cell(scenario=s, backend=b, method=m, seed=int(seed), **common)
        for s in scenarios for b in backends for m in methods for seed in seeds
    ]


# ---------------------------------------------------------------------------------------------
# Inside the cell's process


def load_cell_data(cell: Cell):
    """The spec, data set and truth (None for a data file) a cell fits."""
    from models.datafile import load_csv
    from models.scenarios import get_scenario
    from models.spec import MixtureSpec

    if cell.is_data_file:
        dataset = load_csv(cell.scenario, list(cell.covariates) if cell.covariates is not None else None,
                           cell.response)
        spec = MixtureSpec.from_dict({"D": dataset.D, **cell.spec})
    else:
        scenario = get_scenario(cell.scenario)
        dataset = scenario.simulate(cell.data_seed, N=cell.n)
        spec = MixtureSpec.from_dict({**scenario.spec.to_dict(), **cell.spec})
        truth = dict(dataset.truth)
        if spec.sigma == "per-component" and np.ndim(truth["sigma"]) == 0:
            truth["sigma"] = np.full(spec.K, float(truth["sigma"]))  # a shared truth, fitted per component
        try:
            dataset = type(dataset)(x=dataset.x, y=dataset.y, truth=spec.check_params(truth), name=dataset.name)
        except MixbenchError:
            # A spec override that changes the parameters (adds intercepts, another K) has no
            # ground truth to compare with: metrics fall back to a pivot.
            dataset = type(dataset)(x=dataset.x, y=dataset.y, truth=None, name=dataset.name)
    return spec, dataset


def posterior_means(fit, truth: dict | None, reference=None) -> dict[str, float]:
    """Relabelled posterior mean of every scalar parameter, plus the truth, as flat columns
    (``mean.w[0,0]``, ``truth.w[0,0]``, ...) for the run's summary table. Relabelled to the same
    target as the metrics: the truth, else the reference posterior, else the fit's own pivot."""
    from bench.metrics import fit_draws, labelling_target
    from bench.relabel import posterior_dataset, relabel

    draws = fit_draws(fit)
    target, _ = labelling_target(truth, reference, None, draws)
    means = posterior_dataset(relabel(draws, target).draws).mean(dim=("chain", "draw"))
    out = {}
    for name in ("w", "b", "sigma", "pi"):
        if name not in means:
            continue
        values = np.asarray(means[name].values)
        for index in np.ndindex(values.shape):
            label = f"{name}[{','.join(map(str, index))}]" if index else name
            out[f"mean.{label}"] = float(values[index])
            if truth is not None:
                out[f"truth.{label}"] = float(np.asarray(truth[name])[index])
    return out


def execute_cell(cell: Cell, out_dir: Path | None = None, save_draws: bool = False) -> dict[str, Any]:
    """Run one cell to a row. Never raises: an exception becomes a failed row with its error.

    Besides the fit's own phases the row times what the suite adds around it: importing the
    backend (t_backend_import), making the data (t_data), the backend call as a whole (t_fit,
    which holds the fit's phases) and the metrics (time_metrics); time_cell is all of it.
    """
    start = time.perf_counter()
    row: dict[str, Any] = {"cell_id": cell.id, **cell_ids(cell)}
    try:
        from backends import get_backend
        from bench.metrics import evaluate
        from bench.problem import Problem
        from bench.reference import load_reference

        with stopwatch(row, "t_data"):
            spec, dataset = load_cell_data(cell)
            problem = Problem.make(spec, dataset, standardize=cell.standardize)
            reference = load_reference(cell.reference, problem) if cell.reference else None
        row["N"] = dataset.N
        row["K"] = spec.K
        row["D"] = spec.D
        settings = FitSettings.from_dict(cell.settings)
        with stopwatch(row, "t_backend_import"):
            backend = get_backend(cell.backend)
        with stopwatch(row, "t_fit"):
            fit = backend.fit(spec, problem.fit_dataset, cell.method, settings, seed=cell.seed)
        fit = problem.to_data_scale(fit)
        metrics_start = time.perf_counter()
        row.update({**evaluate(fit, truth=dataset.truth, reference=reference, problem=problem), **cell_ids(cell)})
        row["versions"] = fit.versions
        if reference is not None:
            row["reference_name"] = reference.name
        if fit.ok:
            row.update(posterior_means(fit, dataset.truth, reference))
        row["time_metrics"] = time.perf_counter() - metrics_start
        if fit.ok and fit.draws is not None and out_dir is not None:
            row.update(_keep_draws(cell, fit, out_dir, save_draws))
    except MixbenchError as exc:
        row.update(status="failed", error=str(exc))
    except Exception as exc:  # the cell fails, the run goes on
        row.update(status="failed", error=_one_line(exc), traceback=traceback.format_exc(limit=8))
    row["time_cell"] = time.perf_counter() - start
    return row


def _keep_draws(cell: Cell, fit, out_dir: Path, save_draws: bool) -> dict[str, Any]:
    """Always keep the slope traces (small) for the report; the full draws on request."""
    paths = {}
    draws_dir = out_dir / DRAWS_DIR
    draws_dir.mkdir(parents=True, exist_ok=True)
    w = fit.draws["posterior"]["w"].values
    trace_path = draws_dir / f"{cell.id}.slopes.npy"
    np.save(trace_path, w.astype(np.float32))
    paths["slope_trace_file"] = str(trace_path.relative_to(out_dir))
    paths["run_dir"] = str(Path(out_dir).resolve())  # lets a report built from elsewhere find the files
    if save_draws:
        nc_path = draws_dir / f"{cell.id}.nc"
        fit.draws.to_netcdf(nc_path, engine="h5netcdf")
        paths["draws_file"] = str(nc_path.relative_to(out_dir))
    return paths


def cell_ids(cell: Cell) -> dict[str, Any]:
    return {
        "scenario": cell.scenario_label,
        "data_file": cell.scenario if cell.is_data_file else None,
        "backend": cell.backend,
        "method": cell.method,
        "seed": cell.seed,
        "variant": cell.variant,
        "setup": cell.setup,
        "cell": cell.to_dict(),
    }


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Rows on disk


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class RowStore:
    """Append-only JSON-lines file of rows, safe under concurrent writers and sudden death."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / CELLS_FILE

    def append(self, row: dict[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps(to_jsonable(row), sort_keys=True) + "\n"
        # One write of one whole line under an exclusive lock: another run appending to the same
        # file waits, and a kill leaves at worst one torn last line, which read() skips.
        with open(self.path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> list[dict[str, Any]]:
        """Every complete row; the latest row wins when a cell appears twice."""
        return read_rows(self.path)

    def finished_ids(self, retry_failed: bool = False) -> set[str]:
        done = set()
        for row in self.read():
            if row.get("status") in ("ok", "unsupported") or (not retry_failed and row.get("status") in FINISHED):
                done.add(row["cell_id"])
        return done


def read_rows(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    rows: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write
            if not isinstance(row, dict) or "cell_id" not in row:
                raise MixbenchError(f"results file {path}: line {number} is not a cell row")
            rows[row["cell_id"]] = row
    return list(rows.values())


# ---------------------------------------------------------------------------------------------
# Running a grid


@dataclass
class RunOptions:
    out_dir: Path
    time_limit: float | None = 1800.0  # seconds per cell; None: no limit
    save_draws: bool = False
    retry_failed: bool = False


ProgressFn = Callable[[str, dict[str, Any]], None]


def run_grid(cells: list[Cell], options: RunOptions, executor=None, progress: ProgressFn | None = None) -> list[dict]:
    """Run every cell not already finished in ``options.out_dir``; return all rows there."""
    from bench.executors import LocalProcessExecutor
    from bench.provenance import write_run_info

    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = RowStore(out_dir)
    write_run_info(out_dir, cells)
    done = store.finished_ids(options.retry_failed)
    todo = [c for c in _unique(cells) if c.id not in done]
    executor = executor or LocalProcessExecutor()
    if progress:
        progress("plan", {"todo": len(todo), "finished_before": len(cells) - len(todo)})

    def on_row(row: dict[str, Any]) -> None:
        store.append(row)
        if progress:
            progress("done", row)

    executor.run(todo, options, on_row, progress)
    return store.read()


def _unique(cells: list[Cell]) -> list[Cell]:
    seen, out = set(), []
    for cell in cells:
        if cell.id not in seen:
            seen.add(cell.id)
            out.append(cell)
    return out
