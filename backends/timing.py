"""A fit's clock: the timing phases a Fit may report, the stopwatch that fills them (moving the
time spent building or compiling code out of a phase into "compile"), the rule for chains sharing
cores, and the note of whether a fit compiled ("cold") or reused ("warm")."""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import numpy as np

from models.errors import MixbenchError

# The timing phases a Fit may report, in seconds (the shared list: ``Backend.fit`` refuses any
# other name, so no phase is silently dropped on its way to a row's ``t_<phase>``). NUTS fills
# compile / warmup / sampling / extraction; VI and MAP compile / optimisation / extraction.
# warmup_and_sampling: an engine that runs both as one call it times as a whole (PyMC's numpyro
# sampler); overhead: wall time of the engine call outside every chain's own clock (thread or
# process start-up, the engine's trace conversion); compile_wait: time spent waiting for another
# process to finish building the same program (taken out of compile; not counted against a
# cell's time limit).
TIMING_PHASES: tuple[str, ...] = (
    "compile", "compile_wait", "warmup", "sampling", "warmup_and_sampling", "optimisation", "extraction", "overhead",
)

# What the fit in progress in this process compiled: note_compile's states, None outside a fit.
_compile_notes: list[str] | None = None


def note_compile(state: Literal["cold", "warm"]) -> None:
    """Say, where a backend looks up something it compiles, whether it was built (or loaded from
    a store: "cold") or found in this process's memory ("warm").

    Parameters
    ----------
    state : {"cold", "warm"}
        ``Backend.fit`` records the fit as cold when any lookup was cold, warm when all were
        warm; outside a fit the note is dropped.
    """
    if _compile_notes is not None:
        _compile_notes.append(state)


@contextmanager
def compile_notes() -> Iterator[list[str]]:
    """Collect the ``note_compile`` states of the block (``Backend.fit`` wraps each fit in it).

    Yields
    ------
    list of str
        The states noted so far, filled as the block runs; notes stop when the block ends.
    """
    global _compile_notes
    _compile_notes = []
    try:
        yield _compile_notes
    finally:
        _compile_notes = None


def check_timings(timings: dict[str, float]) -> dict[str, float]:
    """``timings`` as floats, or MixbenchError naming a phase outside TIMING_PHASES or a bad value.

    Raises
    ------
    MixbenchError
        A phase name not in ``TIMING_PHASES`` (a backend bug: the row would drop it), or a
        negative or non-finite number of seconds.
    """
    unknown = sorted(set(timings) - set(TIMING_PHASES))
    if unknown:
        raise MixbenchError(f"timings: unknown phase(s) {', '.join(unknown)}; known: {', '.join(TIMING_PHASES)}")
    out = {}
    for phase, seconds in timings.items():
        seconds = float(seconds)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise MixbenchError(f"timings[{phase!r}]: must be a finite number of seconds >= 0, got {seconds!r}")
        out[phase] = seconds
    return out

def chain_seconds(per_chain, cores: int) -> float:
    """Wall seconds of a phase whose per-chain durations are ``per_chain``: the one rule for chains.

    Parameters
    ----------
    per_chain : array_like, shape (chains,)
        Seconds each chain spent in the phase, by its own clock.
    cores : int
        Chains the engine ran at once (1: one after another).

    Returns
    -------
    float
        With a core per chain the phase lasts as long as its slowest chain; with fewer cores the
        chains queue and their total work is shared by the cores (sum / cores; exact for one core,
        an estimate between the two when chains queue behind a few workers).

    Raises
    ------
    ValueError
        ``cores`` < 1 or no chain.
    """
    per_chain = np.asarray(per_chain, float)
    if cores < 1 or per_chain.size == 0:
        raise ValueError(f"chain_seconds: need cores >= 1 and at least one chain, got {cores} and {per_chain.size}")
    if cores >= per_chain.size:
        return float(per_chain.max())
    return float(per_chain.sum() / cores)

# Told the phase a fit enters (a stopwatch's) and None when it leaves it: a worker tells its run,
# whose progress line then says what each cell is doing (Stan compiling for a minute, say).
_phase_listener: Callable[[str | None], None] | None = None


def set_phase_listener(listener: Callable[[str | None], None] | None) -> None:
    """Call ``listener(phase)`` when a ``stopwatch`` block starts and ``listener(None)`` when it ends.

    Parameters
    ----------
    listener : callable or None
        Takes a phase name (one of ``TIMING_PHASES``) or None; None stops telling.
    """
    global _phase_listener
    _phase_listener = listener


# Engines build and compile code lazily, often inside the first call of a function, so a phase's
# wall time can contain compilation. Backends report each span of building or compiling
# (record_compile: PyTensor functions built or loaded, Numba's compiler at work, JAX's traces and
# compiles), and the stopwatch timing a phase other than compile moves their union to "compile".
# Spans are collected for the thread running the innermost stopwatch only.
_compile_spans: list[tuple[float, float]] | None = None
_compile_thread: int | None = None
# The phases compile spans move out of: a fit's phases of engine work (a run's own clocks, such
# as the whole fit's, keep theirs).
_TIMED_WORK = frozenset(TIMING_PHASES) - {"compile", "compile_wait"}


def record_compile(start: float, end: float) -> None:
    """Report that this thread built or compiled code from ``start`` to ``end`` (``time.perf_counter``
    seconds): a stopwatch running in this thread moves the span out of its phase into "compile".
    Outside a stopwatch the report is dropped."""
    if _compile_spans is not None and threading.get_ident() == _compile_thread:
        _compile_spans.append((start, end))


def _union_length(spans: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of the spans (nested or overlapping spans count once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@contextmanager
def stopwatch(timings: dict[str, float], phase: str):
    """Add the wall time of the block, in seconds (``time.perf_counter``), to ``timings[phase]``,
    less the compile spans reported in it (``record_compile``), which go to ``timings["compile"]``
    when ``phase`` is one of a fit's phases of engine work (``TIMING_PHASES`` but compile and
    compile_wait); such a phase notes the fit cold when it compiled and warm when it did not
    (``note_compile``). A block running engine work asynchronously (JAX) must wait for its results.

    Parameters
    ----------
    timings : dict of str to float
        Updated in place, also when the block raises.
    phase : str
        One of ``TIMING_PHASES`` for a fit; a run's own clocks (``t_fit``, ...) name theirs.
    """
    global _compile_spans, _compile_thread
    if _phase_listener is not None:
        _phase_listener(phase)
    outer = _compile_spans, _compile_thread
    spans: list[tuple[float, float]] = []
    _compile_spans, _compile_thread = spans, threading.get_ident()
    start = time.perf_counter()
    try:
        yield
    finally:
        wall = time.perf_counter() - start
        _compile_spans, _compile_thread = outer
        compiled = 0.0
        if phase in _TIMED_WORK:
            note_compile("cold" if spans else "warm")
            compiled = min(_union_length(spans), wall)
            if compiled:
                timings["compile"] = timings.get("compile", 0.0) + compiled
        timings[phase] = timings.get(phase, 0.0) + wall - compiled
        if _phase_listener is not None:
            _phase_listener(None)
