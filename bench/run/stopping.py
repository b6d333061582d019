"""Stopping a run on a signal: SIGINT, SIGTERM and SIGHUP raise RunInterrupted.

Its own module so that the executors (bench.run.executors, bench.run.dask_executor) and the harness
share it without importing each other.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class RunInterrupted(BaseException):
    """A run stopped by SIGINT, SIGTERM or SIGHUP. ``exit_code`` is the shell's convention,
    128 + the signal number (130, 143, 129). ``kept``: rows written by this run before it
    stopped; ``stopped``: ids of the cells killed in flight (they run again on resume).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` in between can
    swallow it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.kept = 0
        self.stopped: list[str] = []
        self.rows_file: Path | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_stop_depth = 0
_stopping = False


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise RunInterrupted (once: a second
    signal while the first is handled is ignored, so that cleaning up cannot itself be cut
    short). Outside the main thread signals cannot be caught and the block changes nothing."""
    global _stop_depth, _stopping
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        global _stopping
        if _stopping:
            return
        _stopping = True
        raise RunInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    _stop_depth += 1
    try:
        yield
    finally:
        _stop_depth -= 1
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        if _stop_depth == 0:
            _stopping = False
