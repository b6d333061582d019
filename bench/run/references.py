"""Reference posteriors made as cells: the same executors, isolation, time limit and
crash-to-row behaviour as every fit.

A reference fit (NUTS, or the modes of bench.reference.modes) runs for minutes and loads an
engine; it runs in an executor's worker (bench.run.executors) as a ``ReferenceCell``, never in the
process that plans the run. The worker sends back the reference's files (posteriordb's layout,
bench.reference.posteriordb) in its row, so a worker on another machine (Dask) needs no shared
disk; this process checks them against the data (``load_reference``) and writes them into the
reference cache (bench.reference.posterior.cache_dir_for). A reference cell that fails, crashes or
runs past the time limit is a row with its error (``ReferenceNotMade``, naming its log); a run does
not stop for it: every fit runs without a reference, its row says why (``reference_status``
"failed"), and nothing is said to have reached one.

Which reference a data set gets (cached accepted, other accepted, provisional, made now) is
bench.reference.make.resolve_reference's rule; only "made now" comes here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.reference.posterior import (INFO_FILE, Reference, ReferenceSettings, cache_dir_for, load_reference, reference_from_draws, write_reference)
from bench.reference.make import make_reference, resolve_reference
from bench.run.executors import LOGS_DIR, CellExecutor, ProgressFn, WarmProcessExecutor
from bench.run.harness import Cell, RunOptions, load_cell_data
from bench.score.modes import modes_table_lines
from bench.score.problem import Problem
from models.errors import MixbenchError

Say = Callable[[str], None]


class ReferenceNotMade(MixbenchError):
    """A reference cell's row is not ok (failed, crashed, timeout): its status, error and log."""


@dataclass(frozen=True)
class ReferenceCell:
    """One reference fit as a cell an executor runs (bench.run.executors.ExecutableCell).

    data: a fit cell of the data set (its data, spec and scale; its backend, method and seed
    are not read). settings: how the reference is made. directory: where it goes in the cache
    (only its name is used in the worker). make: the function that makes it,
    ``make(problem, settings, progress=...) -> Reference`` (bench.reference.make.make_reference;
    a module-level function, sent to the worker by name).
    """

    data: Cell
    settings: ReferenceSettings
    directory: str
    make: Callable[..., Reference] = make_reference

    @property
    def backend(self) -> str:
        """The backend whose worker runs it: NumPyro for the modes, else the NUTS run's."""
        return "numpyro" if self.settings.method == "modes" else self.settings.backend

    @property
    def id(self) -> str:
        return f"reference-{Path(self.directory).name}"

    @property
    def shape(self) -> str:
        return self.id

    def ids(self) -> dict[str, Any]:
        """The identifying fields of its row (its crashed and timed-out rows included)."""
        return {"backend": self.backend, "method": f"reference-{self.settings.method}",
                "scenario": self.data.scenario_label}

    def execute(self, out_dir: Path | None = None, save_draws: bool = False) -> dict[str, Any]:
        """Make the reference in this process; its row carries its files (``files``: name ->
        bytes) when ``status`` is "ok", else ``error``. Never raises."""
        return self._execute(self.data)

    def files(self) -> dict[str, bytes]:
        """The content of the data file it reads, by its path (bench.run.harness.Cell.files)."""
        return self.data.files()

    def execute_with_files(self, files: dict[str, bytes], out_dir: Path, save_draws: bool = False) -> dict[str, Any]:
        """``execute`` reading the data file from ``files`` (``files()`` made on the client); its
        content is checked against the cell's digest as any data file's is."""
        if not self.data.is_data_file:
            return self._execute(self.data)
        with tempfile.TemporaryDirectory(prefix="mixbench-reference-") as tmp:
            path = Path(tmp) / Path(self.data.scenario).name
            path.write_bytes(files[self.data.scenario])
            return self._execute(dataclasses.replace(self.data, scenario=str(path)))

    def _execute(self, data: Cell) -> dict[str, Any]:
        start = time.perf_counter()
        row: dict[str, Any] = {"cell_id": self.id, **self.ids()}
        try:
            spec, dataset = load_cell_data(data)
            problem = Problem.make(spec, dataset, standardize=data.standardize)
            reference = self.make(problem, self.settings, progress=lambda text: print(text, flush=True))
            with tempfile.TemporaryDirectory(prefix="mixbench-reference-") as tmp:
                written = write_reference(reference, Path(tmp) / Path(self.directory).name)
                row["files"] = {path.name: path.read_bytes() for path in written.iterdir()}
            row.update(status="ok", reference_status=reference.status)
        except MixbenchError as exc:
            row.update(status="failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in a reference fit is its row's error, as a cell's is
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            print(row["traceback"], file=sys.stderr, flush=True)  # into the cell's log, which the error names
        row["time_cell"] = time.perf_counter() - start
        return row


def make_in_executor(cell: ReferenceCell, problem: Problem, executor: CellExecutor, log_root: Path | None,
                     time_limit: float | None = None, progress: ProgressFn | None = None) -> Reference:
    """Run one reference cell in ``executor`` and install what it made in ``cell.directory``.

    Parameters
    ----------
    cell : ReferenceCell
    problem : Problem
        The problem ``cell.data`` poses, to check the reference against.
    executor : CellExecutor
    log_root : Path or None
        The cell's log goes to ``log_root / "logs" / f"{cell.id}.log"``; None: a temporary
        folder, removed when the cell is ok.
    time_limit : float or None
        Seconds before the cell is stopped (status "timeout"); None for no limit.
    progress : callable, optional
        The executor's progress events (bench.run.progress.Progress).

    Returns
    -------
    Reference
        Accepted or provisional, its ``path`` the cache directory.

    Raises
    ------
    ReferenceNotMade
        The cell's row is not ok (failed, crashed, timeout): its status, error and log.
    """
    rows: list[dict[str, Any]] = []
    kept_logs = log_root is not None
    log_root = Path(log_root or tempfile.mkdtemp(prefix="mixbench-reference-"))
    if progress:
        progress("plan", {"todo": 1, "finished_before": 0})

    def on_row(row: dict[str, Any]) -> None:  # as bench.run.harness.run_grid reports a cell's row
        rows.append(row)
        if progress:
            progress("done", row)

    executor.run([cell], RunOptions(out_dir=log_root, time_limit=time_limit), on_row, progress)
    row = rows[-1] if rows else {"status": "crashed", "error": "no row came back"}
    if row.get("status") != "ok":
        raise ReferenceNotMade(f"reference posterior of {cell.data.scenario_label}: {row.get('status')}: "
                            f"{row.get('error')} (its log: {log_root / LOGS_DIR / cell.id}.log)")
    if not kept_logs:  # a log of its own, kept only to say why it failed
        shutil.rmtree(log_root, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="mixbench-reference-") as tmp:
        for name, content in row["files"].items():
            (Path(tmp) / name).write_bytes(content)
        reference = load_reference(tmp, problem)  # made for this data, spec and scale
        write_reference(reference, cell.directory)
    return reference


def _maker(data: Cell, executor: CellExecutor, log_root: Path | None, time_limit: float | None,
           progress: ProgressFn | None) -> Callable[[Problem, ReferenceSettings, Path], Reference]:
    def make(problem: Problem, settings: ReferenceSettings, directory: Path) -> Reference:
        cell = ReferenceCell(data, settings, str(directory), make_reference)
        return make_in_executor(cell, problem, executor, log_root, time_limit, progress)
    return make


def attach_references(cells: list[Cell], choice: str, settings: ReferenceSettings,
                      executor: CellExecutor | None = None, log_root: Path | None = None,
                      time_limit: float | None = None, say: Say | None = None,
                      progress: ProgressFn | None = None) -> list[Cell]:
    """Every cell of a data set gets that data set's reference posterior, read or made once per
    data set, so that all its fits share one labelling.

    Parameters
    ----------
    cells : list of Cell
    choice : str
        ``--reference``: "auto", "make", "none", a reference directory or a draws file
        (bench.reference.make.resolve_reference).
    settings : ReferenceSettings
    executor : CellExecutor, optional
        Runs a reference that must be made (default: one warm worker).
    log_root : Path, optional
        Its log goes under ``log_root / "logs"`` (default: a temporary folder, kept only when the
        reference fit fails).
    time_limit : float or None
        Seconds a reference fit may run (the run's ``--time-limit``); None for no limit.
    say : callable, optional
        Gets each line describing the references used (their checks, modes, what they lack).
    progress : callable, optional
        The executor's progress events.

    Returns
    -------
    list of Cell
        The cells, each with ``reference`` the directory of its data set's reference or None.

    Raises
    ------
    MixbenchError
        A reference that cannot be read or is for other data. A reference fit whose cell failed,
        crashed or timed out is said (``say``) and its cells carry ``reference_error``.
    """
    found: dict[str, str | None] = {}
    errors: dict[str, str] = {}
    out = []
    executor = executor or WarmProcessExecutor()
    for cell in cells:
        key = dataclasses.replace(cell, backend="", method="", seed=0, settings={}).variant
        if key not in found:
            spec, dataset = load_cell_data(cell)
            problem = Problem.make(spec, dataset, standardize=cell.standardize)
            try:
                ref = resolve_reference(choice, problem, settings, has_truth=dataset.truth is not None,
                                        make=_maker(cell, executor, log_root, time_limit, progress))
            except ReferenceNotMade as exc:  # never stop a run for want of a reference (its rows say why)
                errors[key] = str(exc)
                ref = None
                if say is not None:
                    say(f"reference: not made: {exc}; the fits run without one (nothing is said to have "
                        "reached it); `mixbench reference` makes one without a time limit")
            found[key] = str(ref.path) if ref is not None else None
            if ref is not None and say is not None:
                for line in [f"reference: {ref.describe()}", f"  at {ref.path}",
                             *(f"  {line}" for line in modes_table_lines(ref.modes)), *(f"  {line}" for line in ref.lacks())]:
                    say(line)
        out.append(dataclasses.replace(cell, reference=found[key], reference_error=errors.get(key)))
    return out


def command_reference(data: Cell, problem: Problem, settings: ReferenceSettings, out: Path | None = None,
                      draws_file: Path | None = None, executor: CellExecutor | None = None,
                      progress: ProgressFn | None = None) -> tuple[Reference, bool]:
    """``mixbench reference``: the reference of one data set, reused, read from a draws file or made.

    Parameters
    ----------
    data : Cell
        A cell of the data set (bench.run.plan.reference_data_cell).
    problem : Problem
        The problem it poses.
    settings : ReferenceSettings
    out : Path, optional
        Where the reference goes (default its cache directory).
    draws_file : Path, optional
        Draws to turn into the reference (bench.reference.posterior.reference_from_draws) instead
        of a fit.
    executor : CellExecutor, optional
        Runs the reference fit (default: one warm worker), without a time limit.
    progress : callable, optional

    Returns
    -------
    reference : Reference
        Its ``path`` the directory it is in.
    reused : bool
        True when an accepted reference of the same data, spec, scale and settings was already
        there (the cache key: NUTS would give the same draws) and nothing was made.

    Raises
    ------
    MixbenchError
        An unreadable draws file, or a reference fit whose cell failed, crashed or timed out.
    """
    if draws_file is not None:
        reference = reference_from_draws(problem, draws_file)
        source = hashlib.sha256(Path(draws_file).read_bytes()).hexdigest()
        write_reference(reference, out or cache_dir_for(problem, settings, source=source))
        return reference, False
    directory = Path(out or cache_dir_for(problem, settings))
    try:
        cached = load_reference(directory, problem) if (directory / INFO_FILE).is_file() else None
    except MixbenchError:  # --out names a reference of other data or spec: replaced below
        cached = None
    if cached is not None and cached.accepted and cached.info.get("made_by", {}).get("settings") == settings.to_dict():
        return cached, True
    cell = ReferenceCell(data, settings, str(directory), make_reference)
    return make_in_executor(cell, problem, executor or WarmProcessExecutor(), None, None, progress), False
