"""What executes cells. One small interface, so a grid too big for one machine can move to a
cluster by adding an executor, not by changing the harness."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench.harness import Cell, RunOptions, cell_ids, execute_cell

RowFn = Callable[[dict[str, Any]], None]
LOGS_DIR = "logs"


class CellExecutor(Protocol):
    def run(self, cells: list[Cell], options: RunOptions, on_row: RowFn, progress=None) -> None:
        """Run every cell, calling ``on_row`` with each row as soon as it exists."""


def _worker(cell_dict: dict, out_dir: str, save_draws: bool, conn) -> None:
    # Own process group, so a time-out kills the engine's own workers (httpstan, chains) too.
    os.setsid()
    cell = Cell.from_dict(cell_dict)
    log_dir = Path(out_dir) / LOGS_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    # Engines write progress bars and compiler chatter: keep it per cell, off the user's terminal.
    with open(log_dir / f"{cell.id}.log", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        row = execute_cell(cell, Path(out_dir), save_draws)
    conn.send(row)
    conn.close()


def _dead_row(cell: Cell, status: str, error: str, elapsed: float) -> dict[str, Any]:
    return {"cell_id": cell.id, **cell_ids(cell), "status": status, "error": error, "time_cell": elapsed}


class LocalProcessExecutor:
    """Each cell in a fresh process (spawned, so no engine state leaks between cells), ``jobs``
    at a time, each under the run's per-cell time limit."""

    def __init__(self, jobs: int = 1, poll_interval: float = 0.2):
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.jobs = jobs
        self.poll_interval = poll_interval
        self._context = mp.get_context("spawn")

    def run(self, cells: list[Cell], options: RunOptions, on_row: RowFn, progress=None) -> None:
        pending = list(cells)
        active: dict[int, tuple[Cell, Any, Any, float]] = {}
        try:
            while pending or active:
                while pending and len(active) < self.jobs:
                    cell = pending.pop(0)
                    receiver, sender = self._context.Pipe(duplex=False)
                    proc = self._context.Process(
                        target=_worker, args=(cell.to_dict(), str(options.out_dir), options.save_draws, sender),
                        name=f"mixbench-{cell.id}",
                    )
                    proc.start()
                    sender.close()
                    active[proc.pid] = (cell, proc, receiver, time.perf_counter())
                    if progress:
                        progress("start", {"cell_id": cell.id})
                for pid, (cell, proc, receiver, started) in list(active.items()):
                    row = self._poll(cell, proc, receiver, started, options.time_limit)
                    if row is not None:
                        del active[pid]
                        on_row(row)
                if progress:
                    for cell, _, _, started in active.values():
                        progress("tick", {"cell_id": cell.id, "elapsed": time.perf_counter() - started})
                time.sleep(self.poll_interval)
        finally:
            for cell, proc, receiver, _ in active.values():
                _kill(proc)

    def _poll(self, cell, proc, receiver, started, time_limit) -> dict[str, Any] | None:
        elapsed = time.perf_counter() - started
        if receiver.poll():
            try:
                row = receiver.recv()
            except EOFError:
                row = None
            proc.join(timeout=10)
            if proc.is_alive():
                _kill(proc)
            if row is not None:
                return row
        if not proc.is_alive():
            proc.join()
            code = proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return _dead_row(cell, "crashed", f"cell process died ({how}) before writing its row", elapsed)
        if time_limit is not None and elapsed > time_limit:
            _kill(proc)
            return _dead_row(cell, "timeout", f"exceeded the per-cell time limit of {time_limit:g} s", elapsed)
        return None


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.join(timeout=10)
