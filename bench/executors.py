"""What executes cells. One small interface, so a grid too big for one machine can move to a
cluster by adding an executor, not by changing the harness."""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench.harness import Cell, RunInterrupted, RunOptions, cell_ids, execute_cell

RowFn = Callable[[dict[str, Any]], None]
LOGS_DIR = "logs"


class CellExecutor(Protocol):
    def run(self, cells: list[Cell], options: RunOptions, on_row: RowFn, progress=None) -> None:
        """Run every cell, calling ``on_row`` with each row as soon as it exists."""


# What every cell imports before and after its fit (about 3 s, docs/performance.md). Under the
# forkserver start method a server process imports these once per run and each cell is forked
# from it: a fresh process that never ran an engine, without paying the imports again.
COMMON_MODULES = ("numpy", "scipy.stats", "pandas", "xarray", "arviz_base", "arviz_stats", "backends",
                  "backends.base", "bench.harness", "bench.metrics", "bench.relabel", "models.scenarios")


def preload_modules(cells: list[Cell]) -> list[str]:
    """COMMON_MODULES and the modules of the cells' backends. Importing a backend module starts
    no engine (JAX, PyTensor, Stan load lazily), so forking after it is safe."""
    from backends import BACKENDS

    modules = list(COMMON_MODULES)
    for cell in cells:
        module = BACKENDS[cell.backend][0] if cell.backend in BACKENDS else cell.backend.partition(":")[0]
        if module and module not in modules:
            modules.append(module)
    return modules


# The parent's environment when it started the forkserver (the server's own environment then).
_server_environ: dict[str, str] | None = None


def _environ_changes() -> tuple[dict[str, str], list[str]]:
    """What the parent changed in its environment since the forkserver started: (set, unset)."""
    base = _server_environ or {}
    current = dict(os.environ)
    return ({k: v for k, v in current.items() if base.get(k) != v}, [k for k in base if k not in current])


def _worker(cell_dict: dict, out_dir: str, save_draws: bool, conn, launched: float | None = None,
            environ_changes: tuple[dict[str, str], list[str]] | None = None) -> None:
    # The wall clock (shared by both processes) from the parent's start() to here: starting the
    # process and whatever it imports before it can run (all of it under spawn; under a
    # forkserver, the server's start and imports for the run's first cell, a fork afterwards).
    startup = time.time() - launched if launched is not None else None
    if environ_changes is not None:
        # A forkserver's children inherit the server's environment: apply what the parent has
        # changed since, as a spawned child would see it. What the server's imports set (the
        # NumPyro backend's XLA_FLAGS for one CPU device per core) stays.
        changed, unset = environ_changes
        for key in unset:
            os.environ.pop(key, None)
        os.environ.update(changed)
    # Own process group, so a time-out kills the engine's own workers (httpstan, chains) too.
    os.setsid()
    _die_with_parent(conn)
    cell = Cell.from_dict(cell_dict)
    log_dir = Path(out_dir) / LOGS_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    # Engines write progress bars and compiler chatter: keep it per cell, off the user's terminal.
    with open(log_dir / f"{cell.id}.log", "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        row = execute_cell(cell, Path(out_dir), save_draws)
    row["t_startup"] = startup
    conn.send(row)
    conn.close()


def _die_with_parent(conn) -> None:
    """Kill this cell's whole process group as soon as the run that started it is gone.

    The run holds the only read end of ``conn``'s pipe; the kernel closes it when the run exits,
    however it exits (SIGKILL included), and then reports an error on the write end. A thread
    waits for that: without it a cell, alone in its own session, would outlive a killed run by as
    long as its fit takes. Must run after ``os.setsid()``: the group killed is this cell's own.
    """
    fd = os.dup(conn.fileno())  # the worker closes conn after sending its row; this stays open

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever the mask
        while True:
            for _, event in poller.poll():
                if event & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    os.killpg(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="mixbench-die-with-parent", daemon=True).start()


def _dead_row(cell: Cell, status: str, error: str, elapsed: float) -> dict[str, Any]:
    return {"cell_id": cell.id, **cell_ids(cell), "status": status, "error": error, "time_cell": elapsed}


class LocalProcessExecutor:
    """Each cell in a fresh process, ``jobs`` at a time, each under the run's per-cell time limit.

    start_method "forkserver" (default): cells fork from a server that has imported the common
    modules and the run's backend modules but never ran an engine, so no engine state leaks
    between cells and the imports are paid once per run (by the first cell's t_startup).
    "spawn": every cell starts a new interpreter and imports everything itself.

    However ``run`` ends (an exception, RunInterrupted from a signal) the cells in flight are
    killed with their process groups before it returns; a cell whose run is killed outright
    kills itself (``_die_with_parent``). RunInterrupted leaves with ``stopped``, the ids of the
    cells killed in flight.
    """

    def __init__(self, jobs: int = 1, poll_interval: float = 0.2, start_method: str = "forkserver"):
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        if start_method not in ("forkserver", "spawn"):
            raise ValueError(f"start_method must be forkserver or spawn, got {start_method!r}")
        self.jobs = jobs
        self.poll_interval = poll_interval
        self.start_method = start_method
        self._context = mp.get_context(start_method)

    def run(self, cells: list[Cell], options: RunOptions, on_row: RowFn, progress=None) -> None:
        global _server_environ
        if self.start_method == "forkserver" and cells:
            # Takes effect when the server starts (at the first cell of the first run in this
            # process); a server already running keeps what it imported.
            self._context.set_forkserver_preload(preload_modules(cells))
            if _server_environ is None:
                _server_environ = dict(os.environ)
        pending = list(cells)
        active: dict[int, tuple[Cell, Any, Any, float]] = {}
        try:
            while pending or active:
                while pending and len(active) < self.jobs:
                    cell = pending.pop(0)
                    receiver, sender = self._context.Pipe(duplex=False)
                    started = time.perf_counter()
                    proc = self._context.Process(
                        target=_worker,
                        args=(cell.to_dict(), str(options.out_dir), options.save_draws, sender, time.time(),
                              _environ_changes() if self.start_method == "forkserver" else None),
                        name=f"mixbench-{cell.id}",
                    )
                    proc.start()
                    sender.close()
                    active[proc.pid] = (cell, proc, receiver, started)
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
                # Woken as soon as a row arrives or a worker dies, so the row's hand-over adds
                # no polling delay to time_total; the interval only paces progress and time-outs.
                waitables = [r for _, _, r, _ in active.values()] + [p.sentinel for _, p, _, _ in active.values()]
                if waitables:
                    mp_connection.wait(waitables, timeout=self.poll_interval)
        except RunInterrupted as exc:
            exc.stopped = [cell.id for cell, _, _, _ in active.values()]
            raise
        finally:
            for cell, proc, receiver, _ in active.values():
                _kill(proc)
                receiver.close()

    def _poll(self, cell, proc, receiver, started, time_limit) -> dict[str, Any] | None:
        elapsed = time.perf_counter() - started
        if receiver.poll():
            try:
                row = receiver.recv()
            except EOFError:
                row = None
            if row is not None:
                # The cell's whole cost seen from here: process start to row received.
                row["time_total"] = time.perf_counter() - started
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
