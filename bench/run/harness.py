"""The harness: a grid of cells, each fitted in a worker process (bench.run.executors: warm workers by
default, a fresh process per cell, or Dask), each row written as it finishes.

A cell is (scenario or data file and its content digest, backend, method, seed, settings). Rows
go to ``<out>/cells.jsonl`` the moment a cell finishes, one whole line under an exclusive file
lock, so a run killed at any point keeps every finished row and a second run over the same output
skips the cells already there (resume). A line torn by a kill mid-write is moved aside before the
next append (its cell runs again); every line is checked when read, and an unreadable one is
reported by its line number and skipped. One run at a time per output directory (``run.lock``).
SIGINT, SIGTERM and SIGHUP stop a run cleanly: the cells in flight are killed with their process
groups, the finished rows stay, and the run ends with ``RunInterrupted`` (exit code 128 + signal).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends import get_backend, shares_program
from backends.base import FitSettings, check_batch_size, stopwatch
from backends.engine_caches import check_cache_dirs
from bench.reference.posterior import load_reference
from bench.run.executors import WarmProcessExecutor
from bench.run.provenance import write_run_info
from bench.run.stopping import STOP_SIGNALS, RunInterrupted, stop_on_signals  # noqa: F401 - re-exported
from bench.score.metrics import score_fit
from bench.score.problem import Problem
from bench.score.stacked_rows import STACKED_KEY, split, stacked_row
from models.datafile import data_digest, load_csv
from models.errors import MixbenchError, MixbenchWarning
from models.families import point_params
from models.scenarios import get_scenario
from models.spec import MixtureSpec

if TYPE_CHECKING:
    from bench.run.executors import CellExecutor

CELLS_FILE = "cells.jsonl"
RUN_FILE = "run.json"
DRAWS_DIR = "draws"
LOCK_FILE = "run.lock"
# Where a torn last line of cells.jsonl is moved, so that repairing the file deletes nothing.
DAMAGED_SUFFIX = ".damaged"
# Fields every row has (the executor's own rows for crashed and timed-out cells included): a
# line without them is not a row, whatever JSON it holds.
ROW_FIELDS = ("cell_id", "status", "backend", "method", "scenario")
# A cell needs at least this many observations per component (K <= N / MIN_POINTS_PER_COMPONENT).
MIN_POINTS_PER_COMPONENT = 10

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
    standardize: bool = False  # fit centred and scaled data, report on the data's scale (bench.score.problem)
    reference: str | None = None  # directory of the data set's reference posterior (bench.reference.posterior)
    # SHA-256 prefix of a data file's bytes (models.datafile.data_digest), filled in when the cell
    # is made: an edited file is a different cell. None for built-in scenarios.
    data_digest: str | None = None
    # Why the data set has no reference when its fit failed, crashed or timed out (bench.run.references):
    # the row says so instead of the run stopping. Not part of the variant: the same cell either way.
    reference_error: str | None = None

    def __post_init__(self):
        if self.data_digest is None and self.is_data_file and Path(self.scenario).is_file():
            object.__setattr__(self, "data_digest", data_digest(self.scenario))

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
        # Only when set, so that cells without them keep the ids earlier runs gave them (a data
        # file's digest: only data-file cells have one).
        parts.update({k: v for k, v in (("standardize", self.standardize), ("reference", self.reference),
                                        ("data_digest", self.data_digest)) if v})
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

    # What an executor needs of a cell (bench.run.executors.ExecutableCell): the executors run any
    # object with these, so other kinds of grid (sweeps) use them unchanged.

    @property
    def shape(self) -> str:
        """The cell without its seed: cells of one shape fit the same spec, data and settings,
        so a warm worker reuses for the next what it compiled for the first."""
        return f"{self.scenario_label}.{self.backend}.{self.method}.{self.variant}"

    @property
    def program(self) -> str:
        """What the cell's fit compiles, shared by the cells that name the same: the backend's
        one program where it has one (``Backend.shared_program``: Stan), else the cell's shape.
        A run gives a free worker another cell while one worker builds it."""
        return self.backend if _shares_program(self.backend) else self.shape

    def ids(self) -> dict[str, Any]:
        """The identifying fields every row of this cell carries (an executor's crashed and
        timed-out rows included)."""
        return cell_ids(self)

    def execute(self, out_dir: Path | None = None, save_draws: bool = False) -> dict[str, Any]:
        """Run the cell to its row in this process (``execute_cell``)."""
        return execute_cell(self, out_dir, save_draws)

    def files(self) -> dict[str, bytes]:
        """The content of every file the cell reads, by the path the cell names it: the data
        file and the reference posterior's files. A worker on another machine gets these with
        the cell (``execute_with_files``) instead of paths only this machine can read.
        Raises MixbenchError when one cannot be read."""
        out: dict[str, bytes] = {}
        paths = [Path(self.scenario)] if self.is_data_file else []
        if self.reference:
            directory = Path(self.reference)
            paths += sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else [directory]
        for path in paths:
            try:
                out[str(path)] = path.read_bytes()
            except OSError as exc:
                raise MixbenchError(f"{path}: cannot be read to send to a worker ({exc.strerror or exc})") from None
        return out

    def execute_with_files(self, files: dict[str, bytes], out_dir: Path, save_draws: bool = False) -> dict[str, Any]:
        """``execute`` with the files the cell reads taken from ``files`` (``Cell.files`` made on
        the client) instead of this machine's disk. The data file's content is checked against
        the cell's digest as any data file is (load_cell_data)."""
        with tempfile.TemporaryDirectory(prefix="mixbench-cell-") as tmp:
            local = {}
            for number, (path, content) in enumerate(sorted(files.items())):
                parent = Path(tmp) / str(number)
                if self.reference and Path(path).parent == Path(self.reference):
                    parent = Path(tmp) / "reference"
                    local[self.reference] = str(parent)
                parent.mkdir(exist_ok=True)
                (parent / Path(path).name).write_bytes(content)
                local.setdefault(path, str(parent / Path(path).name))
            _local_copies.update(local)
            try:
                return execute_cell(self, out_dir, save_draws)
            finally:
                for path in local:
                    _local_copies.pop(path, None)


@functools.lru_cache(maxsize=None)
def _shares_program(backend: str) -> bool:
    try:
        return shares_program(backend)  # without importing the backend: the parent orders cells
    except MixbenchError:  # the cell fails in its own process, with its row saying why
        return False


# Where this process finds the files a cell names, when they came with it (execute_with_files).
_local_copies: dict[str, str] = {}


def _local(path: str) -> str:
    return _local_copies.get(str(path), str(path))


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

    if cell.is_data_file:
        if cell.data_digest is not None and data_digest(_local(cell.scenario)) != cell.data_digest:
            raise MixbenchError(f"data file {cell.scenario}: changed since the run was planned; "
                                "rerun to fit its new content")
        dataset = load_csv(_local(cell.scenario), list(cell.covariates) if cell.covariates is not None else None,
                           cell.response)
        spec = MixtureSpec.from_dict({"D": dataset.D, **cell.spec})
    else:
        scenario = get_scenario(cell.scenario)
        dataset = scenario.simulate(cell.data_seed, N=cell.n)
        spec = scenario.spec.overridden(cell.spec)
        truth = dict(dataset.truth)
        if spec.sigma == "per-component" and np.ndim(truth["sigma"]) == 0:
            truth["sigma"] = np.full(spec.K, float(truth["sigma"]))  # a shared truth, fitted per component
        try:
            # Normal-error data fitted with Student-t errors: no true nu, the other parameters scored.
            no_nu = spec.nu_is_parameter and "nu" not in truth
            checked = spec.check_params({**truth, "nu": np.nan} if no_nu else truth)
            if no_nu:
                del checked["nu"]
            dataset = type(dataset)(x=dataset.x, y=dataset.y, truth=checked, name=dataset.name)
        except MixbenchError:
            # A spec override that changes the parameters (adds intercepts, another K) has no
            # ground truth to compare with: metrics fall back to a pivot.
            dataset = type(dataset)(x=dataset.x, y=dataset.y, truth=None, name=dataset.name)
    return spec, dataset


def execute_cell(cell: Cell, out_dir: Path | None = None, save_draws: bool = False) -> dict[str, Any]:
    """Run one cell to a row. Never raises: an exception becomes a failed row with its error.

    Besides the fit's own phases the row times what the suite adds around it: importing the
    backend (t_backend_import), making the data (t_data), the backend call as a whole (t_fit,
    which holds the fit's phases) and the metrics (time_metrics); time_cell is all of it.
    ``warnings`` lists the MixbenchWarnings raised in the cell (a cache entry rebuilt, ...).
    """
    start = time.perf_counter()
    row: dict[str, Any] = {"cell_id": cell.id, **cell_ids(cell), "compile": "none"}
    notes: list[str] = []
    with _recording_warnings(notes):
        _execute(cell, row, out_dir, save_draws)
    if notes:
        row["warnings"] = notes
    row["time_cell"] = time.perf_counter() - start
    return row


def _execute(cell: Cell, row: dict[str, Any], out_dir: Path | None, save_draws: bool) -> None:
    try:
        with stopwatch(row, "t_data"):
            spec, dataset = load_cell_data(cell)
            problem = Problem.make(spec, dataset, standardize=cell.standardize)
            reference = load_reference(_local(cell.reference), problem) if cell.reference else None
        row["N"] = dataset.N
        row["K"] = spec.K
        row["D"] = spec.D
        settings = FitSettings.from_dict(cell.settings)
        check_fit_size(spec.K, dataset.N, cell.method, settings)
        with stopwatch(row, "t_backend_import"):
            backend = get_backend(cell.backend)
        with stopwatch(row, "t_fit"):
            fit = backend.fit(spec, problem.fit_dataset, cell.method, settings, seed=cell.seed)
        fit = problem.to_data_scale(fit)
        row["compile"] = fit.compile or "none"
        metrics_start = time.perf_counter()
        scored, means = score_fit(fit, truth=dataset.truth, reference=reference, problem=problem)
        row.update({**scored, **cell_ids(cell), **means})
        row["versions"] = fit.versions
        if cell.reference_error:
            row["reference_status"] = "failed"
            row["reference_failed"] = cell.reference_error
        if reference is not None:
            row["reference_name"] = reference.name
            row["reference_status"] = reference.status
            if reference.modes:
                row["reference_modes"] = reference.modes
            if not reference.accepted:
                row["reference_failed"] = "; ".join(reference.failed_checks)
                row["reference_causes"] = reference.causes
        if fit.ok and fit.draws is not None:
            stacked = stacked_row(row, fit, dataset.truth, reference, problem)
            if stacked is not None:
                row[STACKED_KEY] = stacked
        row["time_metrics"] = time.perf_counter() - metrics_start
        if fit.ok and fit.draws is not None and out_dir is not None:
            row.update(_keep_draws(cell, fit, out_dir, save_draws))
    except MixbenchError as exc:
        row.update(status="failed", error=str(exc))
    except Exception as exc:  # the cell fails, the run goes on
        row.update(status="failed", error=_one_line(exc), traceback=traceback.format_exc(limit=8))


def check_fit_size(K: int, N: int, method: str, settings: FitSettings) -> None:
    """Refuse what no backend should be asked to fit, the same way for every backend.

    Raises MixbenchError when K > N / 10 (fewer than MIN_POINTS_PER_COMPONENT observations per
    component: the components are not identified by the data, and the run would be all prior), or
    when a minibatch method's ``settings.batch_size`` exceeds N (backends.base.check_batch_size,
    which ``Backend.fit`` applies too, so a direct call gets the same answer from every backend).
    """
    check_components(K, N)
    check_batch_size(method, settings, N)


def check_components(K: int, N: int) -> None:
    """Raises MixbenchError when K > N / MIN_POINTS_PER_COMPONENT: the data cannot identify K
    components (a fit or a reference posterior would be all prior)."""
    if K * MIN_POINTS_PER_COMPONENT <= N:
        return
    most = N // MIN_POINTS_PER_COMPONENT
    fix = (f"K may be at most {most}" if most >= 2
           else f"a mixture of K = 2 needs N >= {2 * MIN_POINTS_PER_COMPONENT}")
    raise MixbenchError(f"K: {K} components for N = {N} observations leaves fewer than "
                        f"{MIN_POINTS_PER_COMPONENT} per component ({fix})")


@contextlib.contextmanager
def _recording_warnings(into: list[str]) -> Iterator[None]:
    """Collect the text of every MixbenchWarning raised inside (a cache entry rebuilt, ...) into
    ``into``, still showing it where warnings go (the cell's log)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", MixbenchWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, MixbenchWarning):
                into.append(str(message))
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _keep_draws(cell: Cell, fit, out_dir: Path, save_draws: bool) -> dict[str, Any]:
    """Always keep the slope traces (small) for the report; the full draws on request."""
    paths = {}
    draws_dir = out_dir / DRAWS_DIR
    draws_dir.mkdir(parents=True, exist_ok=True)
    w = fit.draws["posterior"]["w"].values
    trace_path = draws_dir / f"{cell.id}.slopes.npy"
    np.save(trace_path, w.astype(np.float32))
    paths["slope_trace_file"] = str(trace_path.relative_to(out_dir))
    if save_draws:
        nc_path = draws_dir / f"{cell.id}.nc"
        fit.draws.to_netcdf(nc_path, engine="h5netcdf")
        paths["draws_file"] = str(nc_path.relative_to(out_dir))
    return paths


def cell_ids(cell: Cell) -> dict[str, Any]:
    return {
        # A scenario family's point (models.families): its axes as columns, for sweeps.
        **({} if cell.is_data_file else point_params(cell.scenario)),
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
        """Append ``row`` as one line. Raises OSError when it cannot be written (a full disk),
        leaving the file as it was: never a torn line of its own."""
        line = (json.dumps(to_jsonable(row), sort_keys=True, default=str) + "\n").encode()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with self._locked() as fd:
            size = self._repair(fd)
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)  # a half-written line would tear the file
                raise

    def repair(self) -> None:
        """Move a torn last line aside (see ``_repair``); nothing to do when there is no file."""
        if self.path.is_file():
            with self._locked() as fd:
                self._repair(fd)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        # One exclusive lock for the whole check-repair-write, so another writer's line can
        # never land between the repair and this line.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _repair(self, fd: int) -> int:
        """Make the file end with a whole line; return its size. A last line without its newline
        was cut off by a kill mid-write: it is appended to ``cells.jsonl.damaged`` and removed
        (its cell has no row, so it runs again), or, if it is a whole row that only lacks the
        newline, kept and ended."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        data = os.pread(fd, size, 0)
        start = data.rfind(b"\n") + 1
        tail = data[start:]
        if _parse_row(tail)[0] is not None:
            _write_all(fd, b"\n")
            return size + 1
        damaged = self.path.with_name(self.path.name + DAMAGED_SUFFIX)
        with open(damaged, "ab") as fh:
            fh.write(tail + b"\n")
        os.ftruncate(fd, start)
        warnings.warn(f"results file {self.path}: line {data.count(b'\n') + 1} was cut off mid-write "
                      f"(a run killed while writing it); moved to {damaged.name}, its cell runs again",
                      MixbenchWarning, stacklevel=3)
        return start

    def read(self, warn: bool = True) -> list[dict[str, Any]]:
        """Every readable row; the latest row wins when a cell appears twice (see read_rows)."""
        return read_rows(self.path, warn=warn)

    def finished_ids(self, retry_failed: bool = False) -> set[str]:
        done = set()
        for row in self.read():
            if row.get("status") in ("ok", "unsupported") or (not retry_failed and row.get("status") in FINISHED):
                done.add(row["cell_id"])
        return done


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _parse_row(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """(row, "") for a valid row line, else (None, why not)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None, "not JSON"
    if not isinstance(row, dict):
        return None, "not a cell row"
    missing = [name for name in ROW_FIELDS if not isinstance(row.get(name), str)]
    if missing:
        return None, f"not a cell row (no {', '.join(missing)})"
    return row, ""


def read_rows(path: Path, warn: bool = True) -> list[dict[str, Any]]:
    """Every readable row of a ``cells.jsonl`` file; the latest row wins when a cell appears twice.

    Each line is checked: one that is not UTF-8 JSON holding a row (ROW_FIELDS) is skipped and,
    unless ``warn`` is False, named with its line number in one MixbenchWarning for the file.
    A missing file has no rows. Raises MixbenchError when the file exists but cannot be read.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MixbenchError(f"results file {path}: cannot be read ({exc.strerror or exc})") from None
    rows: dict[str, dict[str, Any]] = {}
    problems = []
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row, why = _parse_row(line.strip())
        if row is None:
            if number == len(lines):  # no newline after it: torn by a kill mid-write
                why = "cut off mid-write"
            problems.append(f"line {number} ({why})")
            continue
        rows[row["cell_id"]] = row
    if problems and warn:
        shown = ", ".join(problems[:5]) + (f" and {len(problems) - 5} more" if len(problems) > 5 else "")
        warnings.warn(f"results file {path}: skipped {len(problems)} unreadable line(s): {shown}",
                      MixbenchWarning, stacklevel=2)
    return list(rows.values())


def read_run_info(run_dir: Path) -> dict[str, Any] | None:
    """A run directory's ``run.json``, or None when it is missing or damaged (a MixbenchWarning
    says which): the rows stand without it."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not valid JSON"
        warnings.warn(f"{path}: skipped, cannot be read ({why})", MixbenchWarning, stacklevel=2)
        return None
    environment = info.get("environment", {}) if isinstance(info, dict) else None
    if not (isinstance(environment, dict)
            and all(isinstance(environment.get(key, {}), dict) for key in ("machine", "versions"))
            and isinstance(info.get("cost_records", []), list)):
        warnings.warn(f"{path}: skipped, not a run record", MixbenchWarning, stacklevel=2)
        return None
    return info


def load_slope_trace(path: Path) -> np.ndarray | None:
    """A cell's saved slope trace (chain, draw, component, covariate), or None with a
    MixbenchWarning when the file is cut off or otherwise unreadable."""
    try:
        w = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        warnings.warn(f"{path}: skipped, cannot be read ({_one_line(exc)})", MixbenchWarning, stacklevel=2)
        return None
    if w.ndim != 4:
        warnings.warn(f"{path}: skipped, not a slope trace (shape {w.shape})", MixbenchWarning, stacklevel=2)
        return None
    return w


# ---------------------------------------------------------------------------------------------
# The output directory


def prepare_out_dir(path: Path) -> Path:
    """Create the output directory ``path`` if needed and check that it can be written.

    Raises MixbenchError (one line naming the directory) when ``path`` or one of its parents is
    a file, or when it cannot be created or written (permission, read-only file system).
    """
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"is under {parent}, which is a file"
                raise MixbenchError(f"output directory {path}: {where}, not a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Permission bits alone do not say it (root, read-only mounts, ACLs): try a file.
        probe = path / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise MixbenchError(f"output directory {path}: cannot be written ({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``<out_dir>/run.lock`` for the duration: one run per output directory at a time.

    Raises MixbenchError naming the other run's process id when another run holds it. The lock
    is the kernel's (flock), so a run that dies, however it dies, releases it.
    """
    path = Path(out_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MixbenchError(f"output directory {out_dir}: cannot create {LOCK_FILE} ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip() or "unknown"
            raise MixbenchError(f"output directory {out_dir}: another mixbench run (pid {holder}) is using it; "
                                "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Running a grid


@dataclass
class RunOptions:
    out_dir: Path
    time_limit: float | None = 1800.0  # seconds per cell; None: no limit
    save_draws: bool = False
    retry_failed: bool = False
    fresh: bool = False  # discard the rows already in out_dir instead of resuming
    notes: tuple[str, ...] = ()  # said about the whole run (the prior-scale check), kept in run.json


class RunRows(list):
    """The rows of a run (a list of dicts); ``unwritten`` holds the rows of this run that could
    not be appended to ``cells.jsonl`` (a full disk): they are in the list, not on disk."""

    unwritten: list[dict[str, Any]]


ProgressFn = Callable[[str, dict[str, Any]], None]


def run_grid(cells: list[Cell], options: RunOptions, executor: "CellExecutor | None" = None,
             progress: ProgressFn | None = None) -> RunRows:
    """Run every cell not already finished in ``options.out_dir``; return all rows there.

    ``executor``: what runs the cells (bench.run.executors); default a WarmProcessExecutor with one
    worker.

    Raises MixbenchError when the output directory cannot be used (a file, not writable, another
    run holding it) and RunInterrupted on SIGINT, SIGTERM or SIGHUP, after killing the cells in
    flight. A row that cannot be written (OSError) is reported with a MixbenchWarning and kept in
    ``RunRows.unwritten``; the run goes on.
    """

    check_cache_dirs()  # cells load compiled code from there: refuse before any runs
    out_dir = prepare_out_dir(Path(options.out_dir))
    with run_lock(out_dir), stop_on_signals():
        store = RowStore(out_dir)
        if options.fresh:
            store.path.unlink(missing_ok=True)
        store.repair()
        done = store.finished_ids(options.retry_failed)
        todo = [c for c in _unique(cells) if c.id not in done]
        executor = executor or WarmProcessExecutor()
        if hasattr(executor, "prepare"):  # a local executor's forkserver imports while run.json is written
            executor.prepare(todo)
        # Before any cell: a run.json that cannot be written (a full disk) stops the run with no
        # cell's work lost. Its versions are read without importing the engines (milliseconds).
        write_run_info(out_dir, cells, options.notes)
        if progress:
            progress("plan", {"todo": len(todo), "finished_before": len(cells) - len(todo)})
        written: list[str] = []
        unwritten: list[dict[str, Any]] = []

        def on_row(row: dict[str, Any]) -> None:
            try:
                for one in split(row):  # a cell's row and its stacked row (bench.stacked_rows)
                    store.append(one)
                written.append(row["cell_id"])
            except (OSError, TypeError, ValueError) as exc:
                unwritten.append(row)
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _one_line(exc)
                warnings.warn(f"results file {store.path}: the row of {row['cell_id']} could not be written "
                              f"({why}); the cell runs again on resume", MixbenchWarning, stacklevel=2)
            if progress:
                progress("done", row)

        try:
            executor.run(todo, options, on_row, progress)
        except RunInterrupted as exc:
            exc.kept, exc.rows_file = len(written), store.path
            raise
        rows = RunRows(store.read(warn=False))
        on_disk = {row["cell_id"] for row in rows}
        rows.extend(row for row in unwritten if row["cell_id"] not in on_disk)
        rows.unwritten = unwritten
        return rows


def _unique(cells: list[Cell]) -> list[Cell]:
    seen, out = set(), []
    for cell in cells:
        if cell.id not in seen:
            seen.add(cell.id)
            out.append(cell)
    return out
