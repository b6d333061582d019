"""What executes cells. One small interface, so a grid too big for one machine can move to a
cluster by adding an executor, not by changing the harness.

Three executors run any cell that has what ``ExecutableCell`` names (bench.run.harness.Cell does):

- ``WarmProcessExecutor`` (the default): ``jobs`` worker processes, each kept for the cells of one
  backend, so what a backend compiled for one cell (spec, data shape, settings) stays in memory
  for the next cell of the same shape: its row says ``compile: warm``. A cell that crashes or runs
  past the time limit takes only its own worker with it (killed with its process group); a fresh
  one takes its place.
- ``LocalProcessExecutor``: every cell in a fresh process (what mixbench did before warm workers;
  the throughput benchmark compares the two). Every compile is cold.
- ``bench.run.dask_executor.DaskExecutor``: the cells on a Dask cluster, or a LocalCluster.

``bench.run.executor_choice.make_executor`` picks one by its name (``EXECUTORS``).

This module imports nothing from bench.run.harness: the harness hands it cells and takes back rows.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from backends import BACKENDS
from backends.base import TIMING_PHASES, set_phase_listener
from backends.caches import set_wait_listener
from bench.run.forkserver import COMMON_MODULES, environ_changes, set_preload, start
from bench.run.stopping import RunInterrupted

RowFn = Callable[[dict[str, Any]], None]
ProgressFn = Callable[[str, dict[str, Any]], None]
LOGS_DIR = "logs"
EXECUTORS = ("warm", "fresh", "dask")


class ExecutableCell(Protocol):
    """What an executor needs of a cell (bench.run.harness.Cell is one)."""

    @property
    def id(self) -> str: ...

    backend: str

    @property
    def shape(self) -> str:
        """The cell without its seed (optional): a worker gets the next cell of its last one's
        shape first, where what it compiled is reused."""

    @property
    def program(self) -> str:
        """What the cell compiles (optional, default its shape): while one worker builds it, a
        free worker takes a cell of another program if there is one."""

    def ids(self) -> dict[str, Any]:
        """The identifying fields of the cell's rows."""

    def execute(self, out_dir: Path | None = None, save_draws: bool = False) -> dict[str, Any]:
        """Run the cell to its row; never raises."""

    def files(self) -> dict[str, bytes]:
        """The content of the files the cell reads, by the path it names them."""

    def execute_with_files(self, files: dict[str, bytes], out_dir: Path, save_draws: bool = False) -> dict[str, Any]:
        """``execute`` reading those files from ``files`` instead of this machine's disk."""


class RunSettings(Protocol):
    """What an executor reads of a run's options (bench.run.harness.RunOptions)."""

    out_dir: Path
    time_limit: float | None
    save_draws: bool


class CellExecutor(Protocol):
    def run(self, cells: list[ExecutableCell], options: RunSettings, on_row: RowFn,
            progress: ProgressFn | None = None) -> None:
        """Run every cell, calling ``on_row`` (in the calling thread, the run's only writer) with
        each row as soon as it exists. A crash or time-out is a row. RunInterrupted leaves with
        ``stopped``, the ids of the cells killed in flight."""


def preload_modules(cells: list[ExecutableCell]) -> list[str]:
    """COMMON_MODULES and the module of the first cell's backend. Importing a backend module
    starts no engine (JAX, PyTensor, Stan load lazily), so forking after it is safe.

    The server forks no cell before its imports end, so the other backends are left to the
    workers that run them: they import on the other cores while the first cell, which the run
    orders to be the longest compile, is already compiling. On a fresh machine, where every
    import also compiles its bytecode, PyMC's and NumPyro's imports held that cell back by
    seconds (docs/performance.md, section 7).
    """
    modules = list(COMMON_MODULES)
    if cells:
        backend = cells[0].backend
        module = BACKENDS[backend][0] if backend in BACKENDS else backend.partition(":")[0]
        if module and module not in modules:
            modules.append(module)
    return modules


def start_forkserver(cells) -> None:
    """Start the forkserver now: it imports its modules (seconds) while the run does its own
    bookkeeping, instead of the run's first process waiting for them."""
    if cells:
        start(preload_modules(cells))


def _enter_worker(launched: float | None, environ_changes, conn) -> float | None:
    """What every cell process does first; returns its start-up seconds."""
    # The wall clock (shared by both processes) from the parent's start() to here: starting the
    # process and whatever it imports before it can run (all of it under spawn; under a
    # forkserver, the server's start and imports for the run's first process, a fork afterwards).
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
    # The run does not count waiting for another process's build against the cell's time limit,
    # and its progress line says what the cell is doing.

    set_wait_listener(lambda event: _send(conn, (WAIT_MESSAGE, event)))
    set_phase_listener(lambda phase: _send(conn, (PHASE_MESSAGE, phase)))
    return startup


# A worker's messages beside its rows: it starts or stops waiting for another process's build;
# its fit enters a timing phase (backends.timing.stopwatch) or leaves it (None).
WAIT_MESSAGE = "compile_wait"
PHASE_MESSAGE = "phase"
# A fit's phases that come after its compile (backends.timing.TIMING_PHASES).
AFTER_COMPILE = frozenset(TIMING_PHASES) - {"compile", "compile_wait"}


@dataclass
class WaitClock:
    """What a cell's worker reported beside its row: its waits for another process's build
    (``WAIT_MESSAGE``), as the parent times them, and the phase its fit is in."""

    waited: float = 0.0
    since: float | None = None
    phase: str | None = None
    compiled: bool = False  # the fit has entered a phase after its compile: its program is built

    def enter(self, phase: str | None) -> None:
        self.phase = phase
        # (The harness's own stopwatches, t_data and t_fit, say nothing of the compile.)
        self.compiled = self.compiled or phase in AFTER_COMPILE

    def note(self, event: str) -> None:
        now = time.perf_counter()
        if event == "start" and self.since is None:
            self.since = now
        elif event == "end" and self.since is not None:
            self.waited += now - self.since
            self.since = None

    def doing(self) -> str | None:
        """What the cell is doing, for the progress line: waiting for a build, or its phase."""
        return "compile_wait" if self.since is not None else self.phase

    def seconds(self) -> float:
        """Seconds waited so far, the wait in progress included."""
        return self.waited + (time.perf_counter() - self.since if self.since is not None else 0.0)


def receive_row(conn, clock: WaitClock) -> dict[str, Any] | None:
    """The row waiting on ``conn``, if any, after noting every wait message before it in
    ``clock``. Raises EOFError or OSError as ``conn.recv`` does."""
    while conn.poll():
        message = conn.recv()
        if isinstance(message, tuple) and message and message[0] == WAIT_MESSAGE:
            clock.note(message[1])
        elif isinstance(message, tuple) and message and message[0] == PHASE_MESSAGE:
            clock.enter(message[1])
        else:
            return message
    return None


def _row_left_behind(conn, clock: WaitClock) -> dict[str, Any] | None:
    """A row still in the pipe of a process that has ended (None if it wrote none)."""
    try:
        return receive_row(conn, clock)
    except (EOFError, OSError):
        return None


def over_limit(elapsed: float, clock: WaitClock, time_limit: float | None) -> bool:
    """Whether a cell ``elapsed`` seconds in has used its time limit, its waits not counted."""
    return time_limit is not None and elapsed - clock.seconds() > time_limit


@contextlib.contextmanager
def output_to(log) -> Iterator[None]:
    """File descriptors 1 and 2 (so an engine's own C/C++ output too) go to the open file
    ``log`` inside the block, and back afterwards."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _run_logged(cell, out_dir: str, save_draws: bool) -> dict[str, Any]:
    """The cell's row, its engine's output (progress bars, compiler chatter) in its own log file
    under ``out_dir/logs``, off the user's terminal."""
    log_dir = Path(out_dir) / LOGS_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{cell.id}.log", "w") as log, output_to(log):
        return cell.execute(Path(out_dir), save_draws)


def _worker(cell, out_dir: str, save_draws: bool, conn, launched: float | None = None,
            environ_changes: tuple[dict[str, str], list[str]] | None = None) -> None:
    """A fresh process's whole life: one cell."""
    startup = _enter_worker(launched, environ_changes, conn)
    row = _run_logged(cell, out_dir, save_draws)
    row["t_startup"] = startup
    conn.send(row)
    conn.close()
    _exit_now()


def _warm_worker(tasks, results, out_dir: str, save_draws: bool, launched: float | None = None,
                 environ_changes: tuple[dict[str, str], list[str]] | None = None) -> None:
    """A warm worker's life: cells of one backend, one after another, until the parent sends
    None or goes away. What the backend compiled stays in this process's memory between them."""
    startup = _enter_worker(launched, environ_changes, results)
    served = 0
    while True:
        try:
            task = tasks.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        cell, sent = task
        received = time.time()
        row = _run_logged(cell, out_dir, save_draws)
        served += 1
        # The first cell pays the process's start; a later one only the hand-over of its cell.
        row["t_startup"] = startup if served == 1 and startup is not None else received - sent
        row["worker_pid"] = os.getpid()
        row["worker_cell"] = served  # 1 for the worker's first cell, 2 for its second, ...
        results.send(row)
    results.close()
    _exit_now()


def _exit_now() -> None:
    """End a cell process once its rows are sent, without joining its threads: pystan leaves a
    non-daemon thread (httpstan's server) that kept a finished Stan worker alive until the
    parent's 5 s join timeout killed it, at the end of every run and whenever a Stan worker
    retired, with the dispatch loop waiting."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


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


def shape_of(cell) -> str:
    return getattr(cell, "shape", None) or cell.backend


def program_of(cell) -> str:
    return getattr(cell, "program", None) or shape_of(cell)


def next_cell(pending: list, last, running: set[str], building: set[str] = frozenset()):
    """The cell a free worker takes from ``pending``.

    Cells whose program another worker is ``building`` now (and this one has not built) wait
    while any other cell is pending: the worker would only wait for that build (a Stan
    executable) or compile the same thing beside it. Among the rest, in ``pending``'s order: one
    of the shape it ran ``last`` (everything it compiled is reused); else one of its backend (the
    engine is loaded) whose shape no other worker is ``running`` now, else any of its backend;
    else the first cell of a shape not running (so that two workers do not both compile one
    thing, and the seeds of a shape follow each other on one worker); else the first."""
    pending = [c for c in pending if program_of(c) not in building] or pending
    tiers = []
    if last is not None:
        tiers += [lambda c: shape_of(c) == shape_of(last),
                  lambda c: c.backend == last.backend and shape_of(c) not in running,
                  lambda c: c.backend == last.backend]
    tiers.append(lambda c: shape_of(c) not in running)
    for tier in tiers:
        cell = next((c for c in pending if tier(c)), None)
        if cell is not None:
            return cell
    return pending[0]


def dead_row(cell: ExecutableCell, status: str, error: str, elapsed: float) -> dict[str, Any]:
    """The row of a cell whose process died ("crashed") or was stopped ("timeout")."""
    return {"cell_id": cell.id, **cell.ids(), "status": status, "error": error, "time_cell": elapsed}


def _exit_text(code: int | None) -> str:
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


def time_limit_text(limit: float) -> str:
    return f"exceeded the per-cell time limit of {limit:g} s"


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

    def prepare(self, cells: list[ExecutableCell]) -> None:
        """Start what ``run`` needs to start cells (the forkserver) ahead of it."""
        if self.start_method == "forkserver":
            start_forkserver(cells)

    def run(self, cells: list[ExecutableCell], options: RunSettings, on_row: RowFn,
            progress: ProgressFn | None = None) -> None:
        if self.start_method == "forkserver" and cells:
            set_preload(preload_modules(cells))  # takes effect when the server starts; a running one keeps its imports
        pending = list(cells)
        active: dict[int, tuple[Any, Any, Any, float]] = {}
        clocks: dict[int, WaitClock] = {}
        try:
            while pending or active:
                while pending and len(active) < self.jobs:
                    cell = pending.pop(0)
                    receiver, sender = self._context.Pipe(duplex=False)
                    started = time.perf_counter()
                    proc = self._context.Process(
                        target=_worker,
                        args=(cell, str(options.out_dir), options.save_draws, sender, time.time(),
                              environ_changes() if self.start_method == "forkserver" else None),
                        name=f"mixbench-{cell.id}",
                    )
                    proc.start()
                    sender.close()
                    active[proc.pid] = (cell, proc, receiver, started)
                    clocks[proc.pid] = WaitClock()
                    if progress:
                        progress("start", {"cell_id": cell.id})
                freed = False
                for pid, (cell, proc, receiver, started) in list(active.items()):
                    row = self._poll(cell, proc, receiver, started, options.time_limit, clocks[pid])
                    if row is not None:
                        del active[pid], clocks[pid]
                        on_row(row)
                        freed = True
                if progress:
                    for pid, (cell, _, _, started) in active.items():
                        progress("tick", {"cell_id": cell.id, "elapsed": time.perf_counter() - started,
                                          "doing": clocks[pid].doing()})
                # Woken as soon as a row arrives or a worker dies, so the row's hand-over adds
                # no polling delay to time_total; the interval only paces progress and time-outs.
                # A place just freed goes to the next cell at once, not after waiting on the others.
                waitables = [r for _, _, r, _ in active.values()] + [p.sentinel for _, p, _, _ in active.values()]
                if waitables and not freed:
                    mp_connection.wait(waitables, timeout=self.poll_interval)
        except RunInterrupted as exc:
            exc.stopped = [cell.id for cell, _, _, _ in active.values()]
            raise
        finally:
            for cell, proc, receiver, _ in active.values():
                _kill(proc)
                receiver.close()

    def _poll(self, cell, proc, receiver, started, time_limit, clock: WaitClock) -> dict[str, Any] | None:
        elapsed = time.perf_counter() - started
        ended = False
        try:
            row = receive_row(receiver, clock)
        except EOFError:
            row, ended = None, True
        if row is not None or ended:
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
            row = _row_left_behind(receiver, clock)  # sent just before it ended, after the read above
            if row is not None:
                row["time_total"] = time.perf_counter() - started
                return row
            return dead_row(cell, "crashed", f"cell process died ({_exit_text(proc.exitcode)}) before writing its row",
                            elapsed)
        if over_limit(elapsed, clock, time_limit):
            _kill(proc)
            return dead_row(cell, "timeout", time_limit_text(time_limit), elapsed)
        return None


@dataclass
class _Warm:
    """One warm worker as the parent sees it."""

    backend: str
    proc: Any
    tasks: Any  # the parent's send end
    results: Any  # the parent's receive end
    cell: Any = None  # the cell it runs now, None when idle
    last: Any = None  # the cell it ran last
    built: set[str] = field(default_factory=set)  # the programs its cells have compiled (program_of)
    started: float = 0.0
    clock: WaitClock = field(default_factory=WaitClock)  # its cell's waits for other builds


class WarmProcessExecutor:
    """``jobs`` worker processes, each serving the cells of one backend one after another.

    A worker is forked (forkserver, as LocalProcessExecutor's cells) for the backend of the next
    cell that has no idle worker of its own; it is kept while cells of its backend remain and
    then ends, freeing its place for another backend's. Within a worker, what a backend compiled
    for one (spec, data shape, settings) is reused by the next cell of the same shape (rows say
    ``compile: warm``; the draws are the same as a cold run's at the same seed). A free worker
    takes the next cell of its last cell's shape first (``next_cell``), so the seeds of one shape
    follow each other on one worker; while one worker builds a program (a Stan executable, which
    serves every Stan cell), the others take cells of other programs, if any are left, instead of
    waiting for that build. A worker told to end exits at once (``_exit_now``).

    A cell that runs past the time limit or whose worker dies costs only that worker: it is
    killed with its process group (the engine's own processes too), the cell's row says timeout
    or crashed, and the next cell of that backend gets a fresh worker. However ``run`` ends, every
    worker is killed before it returns; a worker whose run is killed outright kills itself.
    """

    def __init__(self, jobs: int = 1, poll_interval: float = 0.2):
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.jobs = jobs
        self.poll_interval = poll_interval
        self._context = mp.get_context("forkserver")

    def prepare(self, cells: list[ExecutableCell]) -> None:
        """Start what ``run`` needs to start workers (the forkserver) ahead of it."""
        start_forkserver(cells)

    def run(self, cells: list[ExecutableCell], options: RunSettings, on_row: RowFn,
            progress: ProgressFn | None = None) -> None:
        if cells:
            set_preload(preload_modules(cells))  # takes effect when the server starts; a running one keeps its imports
        pending = list(cells)
        workers: list[_Warm] = []
        try:
            while pending or any(w.cell is not None for w in workers):
                self._dispatch(pending, workers, options, progress)
                freed = False
                for worker in [w for w in workers if w.cell is not None]:
                    row = self._poll(worker, options.time_limit)
                    if row is not None:
                        freed = True
                        worker.built.add(program_of(worker.cell))
                        worker.cell = None
                        if not worker.proc.is_alive() or row["status"] in ("crashed", "timeout"):
                            _end(worker)
                            workers.remove(worker)
                        on_row(row)
                if progress:
                    for worker in workers:
                        if worker.cell is not None:
                            progress("tick", {"cell_id": worker.cell.id,
                                              "elapsed": time.perf_counter() - worker.started,
                                              "doing": worker.clock.doing()})
                # A worker just freed takes its next cell at once (the loop's _dispatch), not
                # after waiting up to poll_interval on the others: 0.2 s a cell on a 2-job grid.
                busy = [w for w in workers if w.cell is not None]
                waitables = [w.results for w in busy] + [w.proc.sentinel for w in busy]
                if waitables and not freed:
                    mp_connection.wait(waitables, timeout=self.poll_interval)
        except RunInterrupted as exc:
            exc.stopped = [w.cell.id for w in workers if w.cell is not None]
            raise
        finally:
            for worker in workers:
                if worker.cell is None:
                    _send(worker.tasks, None)  # ends its loop; killed below if it does not
            for worker in workers:
                worker.proc.join(timeout=0 if worker.cell is not None else 5)
                _end(worker)

    def _dispatch(self, pending: list, workers: list[_Warm], options: RunSettings, progress) -> None:
        # Idle workers take the next cell of their backend (of their last cell's shape first, see
        # next_cell); one whose backend has none left ends, as does one whose backend has only
        # cells of a program another worker is building while other backends' cells wait.
        for worker in [w for w in workers if w.cell is None]:
            mine = [c for c in pending if c.backend == worker.backend]
            running = {shape_of(w.cell) for w in workers if w.cell is not None}
            building = _building(workers) - worker.built
            if all(program_of(c) in building for c in mine) and \
                    any(program_of(c) not in building for c in pending if c.backend != worker.backend):
                mine = []
            cell = next_cell(mine, worker.last, running, building) if mine else None
            if cell is None:
                _send(worker.tasks, None)  # it ends at once (_exit_now); killed if not within 5 s
                worker.proc.join(timeout=5)
                _end(worker)
                workers.remove(worker)
            else:
                pending.remove(cell)
                self._hand(worker, cell, progress)
        # Free places go to the first waiting cells whose backend has no worker yet, or whose
        # workers are all busy.
        while pending and len(workers) < self.jobs:
            cell = next_cell(pending, None, {shape_of(w.cell) for w in workers if w.cell is not None},
                             _building(workers))
            pending.remove(cell)
            receiver, sender = self._context.Pipe(duplex=False)
            task_receiver, task_sender = self._context.Pipe(duplex=False)
            proc = self._context.Process(
                target=_warm_worker,
                args=(task_receiver, sender, str(options.out_dir), options.save_draws, time.time(),
                      environ_changes()),
                name=f"mixbench-warm-{cell.backend}",
            )
            proc.start()
            sender.close()
            task_receiver.close()
            worker = _Warm(backend=cell.backend, proc=proc, tasks=task_sender, results=receiver)
            workers.append(worker)
            self._hand(worker, cell, progress)

    @staticmethod
    def _hand(worker: _Warm, cell, progress) -> None:
        worker.cell = worker.last = cell
        worker.started = time.perf_counter()
        worker.clock = WaitClock()
        _send(worker.tasks, (cell, time.time()))
        if progress:
            progress("start", {"cell_id": cell.id})

    @staticmethod
    def _poll(worker: _Warm, time_limit: float | None) -> dict[str, Any] | None:
        elapsed = time.perf_counter() - worker.started
        try:
            row = receive_row(worker.results, worker.clock)
        except (EOFError, OSError):
            row = None
        if row is not None:
            row["time_total"] = time.perf_counter() - worker.started
            return row
        if not worker.proc.is_alive():
            worker.proc.join()
            row = _row_left_behind(worker.results, worker.clock)  # sent just before it ended, after the read above
            if row is not None:
                row["time_total"] = time.perf_counter() - worker.started
                return row
            return dead_row(worker.cell, "crashed",
                            f"cell process died ({_exit_text(worker.proc.exitcode)}) before writing its row", elapsed)
        if over_limit(elapsed, worker.clock, time_limit):
            _kill(worker.proc)
            return dead_row(worker.cell, "timeout", time_limit_text(time_limit), elapsed)
        return None


def _end(worker: _Warm) -> None:
    _kill(worker.proc)  # its process group: what the engine started, if anything outlived it
    worker.tasks.close()
    worker.results.close()


def _building(workers: list[_Warm]) -> set[str]:
    """The programs workers may be building now: those of cells that have not passed their
    compile phase (a cell just handed over counts: its compile is about to start), unless the
    worker built that program for an earlier cell (it has it in memory)."""
    return {program_of(w.cell) for w in workers
            if w.cell is not None and not w.clock.compiled and program_of(w.cell) not in w.built}


def _send(conn, message) -> None:
    try:
        conn.send(message)
    except (BrokenPipeError, OSError):  # the worker is gone: its sentinel says so
        pass


def _kill(proc) -> None:
    if proc.pid is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.join(timeout=10)
