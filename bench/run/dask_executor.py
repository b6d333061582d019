"""Cells on a Dask cluster (dask.distributed): an existing one by its scheduler's address, or a
LocalCluster of ``jobs`` single-threaded worker processes started for the run.

The client (the process running ``mixbench run``) is the only writer: each cell's row, its log
and its files (slope traces, draws) come back as the task's result and are written under the
run's output directory by the client, the moment the cell finishes. A cell reaches a worker as
its description (a built-in scenario and seeds) or, for a data file, with the file's content
(checked against the cell's digest on the worker, bench.run.harness.Cell.files) and that of its
reference posterior: a worker needs no access to the client's disk.

The client hands each worker one cell at a time, preferring a cell of the shape, then of the
backend, the worker ran last (bench.run.executors.next_cell), so a worker process is reused for the
cells of one backend and its compiled programs stay warm (rows say ``compile: warm``). So it knows which worker runs which cell: a cell still running
after the time limit has its worker restarted by the worker's nanny (the cell's row says
timeout), and a worker that dies (its nanny starts a new one) makes its cell a ``crashed`` row;
the run goes on with the other cells. Workers must run one task at a time (``--nthreads 1``):
the engines hold per-process state.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.run.executors import (
    LOGS_DIR,
    ExecutableCell,
    ProgressFn,
    RowFn,
    RunSettings,
    dead_row,
    next_cell,
    output_to,
    shape_of,
    time_limit_text,
)
from bench.run.stopping import RunInterrupted
from models.errors import MixbenchError

# A dying cell must not be retried on another worker (Dask's default retries it, killing up to
# three more workers): its death is its row.
DASK_CONFIG = {"distributed.scheduler.allowed-failures": 0}
# Seconds to reach the scheduler, and for a first worker to join it.
CONNECT_TIMEOUT = 30.0


# Cells this worker process has run (worker_cell in the rows, as the warm local executor's).
_served = 0


def run_cell_on_worker(cell: ExecutableCell, files: dict[str, bytes], save_draws: bool,
                       sent: float) -> tuple[dict[str, Any], dict[str, bytes], str]:
    """Run on a Dask worker: the cell's row, the files it wrote (relative path -> content) and its
    log (the engine's output while it ran)."""
    with tempfile.TemporaryDirectory(prefix="mixbench-dask-") as out, tempfile.TemporaryFile() as log:
        received = time.time()
        with output_to(log):
            if files:
                row = cell.execute_with_files(files, Path(out), save_draws)
            else:
                row = cell.execute(Path(out), save_draws)
        outputs = {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob("*")) if p.is_file()}
        log.seek(0)
        text = log.read().decode("utf-8", errors="replace")
    global _served
    _served += 1
    row["t_startup"] = received - sent  # the cell's trip to the worker
    row["worker_pid"] = os.getpid()
    row["worker_cell"] = _served  # 1 for the worker process's first cell, 2 for its second, ...
    try:
        from distributed import get_worker

        row["worker"] = get_worker().address
    except (ImportError, ValueError):
        pass
    return row, outputs, text


class DaskExecutor:
    """Cells on the Dask cluster at ``address`` (``tcp://HOST:8786``), or on a LocalCluster of
    ``jobs`` worker processes (one thread each) started for the run and closed after it.

    Every worker of an existing cluster must be started with ``--nthreads 1`` and be able to
    import mixbench (the same version as the client). A worker started without a nanny
    (``--no-nanny``) cannot be restarted when its cell runs past the time limit: the cell's row
    still says timeout and the worker stays busy until the fit ends.
    """

    def __init__(self, address: str | None = None, jobs: int = 1, poll_interval: float = 0.2,
                 connect_timeout: float | None = None):
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.address = address
        self.jobs = jobs
        self.poll_interval = poll_interval
        self.connect_timeout = CONNECT_TIMEOUT if connect_timeout is None else connect_timeout

    def run(self, cells: list[ExecutableCell], options: RunSettings, on_row: RowFn,
            progress: ProgressFn | None = None) -> None:
        import dask
        from distributed import Client, LocalCluster

        if not cells:
            return
        with dask.config.set(DASK_CONFIG):
            cluster = None
            try:
                if self.address is None:
                    cluster = LocalCluster(n_workers=self.jobs, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.CRITICAL)
                try:
                    client = Client(cluster if cluster is not None else self.address,
                                    timeout=self.connect_timeout, set_as_default=False)
                except (OSError, TimeoutError) as exc:
                    raise MixbenchError(f"--scheduler {self.address}: cannot connect to a Dask scheduler "
                                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
                try:
                    with client.as_current():  # distributed.wait finds its client there
                        self._run(client, cells, options, on_row, progress)
                finally:
                    client.close()
            finally:
                if cluster is not None:
                    cluster.close()

    @staticmethod
    def _workers(client) -> set[str]:
        """The addresses of the workers in the cluster now, asked of the scheduler each time.

        Not ``client.scheduler_info()``: it returns the client's cached identity, which the
        client's own periodic refresh (``n_workers=0``: no per-worker entries) can overwrite between
        the fetch and the read; a busy worker then looked gone and its cell was recorded as crashed
        (2 of 120 cells in the throughput benchmark, distributed 2025.x).
        """
        return set(client.sync(client.scheduler.identity, n_workers=-1)["workers"])

    def _run(self, client, cells, options, on_row, progress) -> None:
        from distributed import wait

        pending = list(cells)
        busy: dict[str, tuple[Any, Any, float]] = {}  # worker address -> (cell, future, started)
        last: dict[str, Any] = {}  # worker address -> the cell it ran last
        out_dir = Path(options.out_dir)
        deadline = time.monotonic() + self.connect_timeout
        while not self._workers(client):
            if time.monotonic() > deadline:
                raise MixbenchError(f"Dask scheduler {client.scheduler.address}: no workers joined within "
                                    f"{self.connect_timeout:g} s")
            time.sleep(0.2)
        try:
            while pending or busy:
                workers = self._workers(client)
                for address in [a for a in workers if a not in busy]:
                    if not pending:
                        break
                    cell = next_cell(pending, last.get(address), {shape_of(c) for c, _, _ in busy.values()})
                    pending.remove(cell)
                    files = cell.files()
                    future = client.submit(run_cell_on_worker, cell, files, options.save_draws, time.time(),
                                           key=f"mixbench-{cell.id}-{uuid.uuid4().hex[:8]}", pure=False,
                                           workers=[address], allow_other_workers=False)
                    busy[address] = (cell, future, time.perf_counter())
                    last[address] = cell
                    if progress:
                        progress("start", {"cell_id": cell.id})
                freed = False
                for address, (cell, future, started) in list(busy.items()):
                    row = self._poll(client, address, cell, future, started, workers, options.time_limit, out_dir)
                    if row is not None:
                        del busy[address]
                        on_row(row)
                        freed = True
                if progress:
                    for cell, _, started in busy.values():
                        progress("tick", {"cell_id": cell.id, "elapsed": time.perf_counter() - started})
                if freed:  # the freed worker takes its next cell at once, not after the interval
                    continue
                if busy:
                    try:
                        wait([f for _, f, _ in busy.values()], timeout=self.poll_interval,
                             return_when="FIRST_COMPLETED")
                    except TimeoutError:  # none finished within the interval: time limits, progress
                        pass
                else:  # every worker gone (restarting): wait for the nannies
                    time.sleep(self.poll_interval)
        except RunInterrupted as exc:
            exc.stopped = [cell.id for cell, _, _ in busy.values()]
            raise
        finally:
            for address, (_, future, _) in busy.items():
                future.cancel()
            if busy and self.address is not None:
                # Cells still running on a shared cluster: restart their workers, so that they do
                # not go on fitting for nobody.
                _restart(client, list(busy))

    def _poll(self, client, address, cell, future, started, workers, time_limit, out_dir) -> dict[str, Any] | None:
        elapsed = time.perf_counter() - started
        if future.done():
            try:
                row, outputs, log = future.result()
            except Exception as exc:  # noqa: BLE001 - the worker died (KilledWorker) or the task could not run
                name = type(exc).__name__
                why = ("cell process died (its Dask worker was lost)" if name == "KilledWorker"
                       else f"cell could not run ({name}: {_first_line(exc)})")
                return dead_row(cell, "crashed", f"{why} before writing its row", elapsed)
            finally:
                # Let go of the result at once: a finished result still held would be computed
                # again if its worker died later.
                future.release()
            self._write_back(cell, row, outputs, log, out_dir)
            row["time_total"] = time.perf_counter() - started
            return row
        if address not in workers:
            future.cancel()
            return dead_row(cell, "crashed", "cell process died (its Dask worker left the cluster) before writing its row",
                            elapsed)
        if time_limit is not None and elapsed > time_limit:
            future.cancel()
            _restart(client, [address])
            return dead_row(cell, "timeout", time_limit_text(time_limit), elapsed)
        return None

    @staticmethod
    def _write_back(cell, row: dict[str, Any], outputs: dict[str, bytes], log: str, out_dir: Path) -> None:
        """The cell's files and log under the run's directory, as a local run leaves them."""
        for relative, content in outputs.items():
            path = out_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        log_dir = out_dir / LOGS_DIR
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{cell.id}.log").write_text(log)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _restart(client, addresses: list[str]) -> None:
    """Restart these workers through their nannies (killing the cells they run); a worker
    without a nanny cannot be restarted and is left as it is."""
    try:
        client.restart_workers(workers=addresses, timeout=60, raise_for_error=False)
    except Exception:  # noqa: BLE001 - the row is written either way; the cluster is the user's
        pass
