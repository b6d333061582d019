"""The fit's clock (backends/timing.py): compile spans reported inside a phase move to compile."""

import threading
import time

import pytest

from backends.timing import compile_notes, record_compile, stopwatch


def _busy(seconds: float) -> float:
    """Wait until ``seconds`` have passed on the stopwatch's clock; returns the start."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        pass
    return start


def test_compile_spans_in_a_phase_move_to_compile_once_and_only_this_threads():
    timings: dict[str, float] = {}
    with compile_notes() as notes:
        record_compile(0.0, 5.0)  # outside a stopwatch: dropped
        with stopwatch(timings, "extraction"):
            start = _busy(0.03)
            record_compile(start, start + 0.01)
            record_compile(start + 0.005, start + 0.015)  # overlapping: the union counts
            other = threading.Thread(target=record_compile, args=(start, start + 0.03))
            other.start()
            other.join()  # another thread's compile is not this phase's
        with stopwatch(timings, "optimisation"):
            pass
        record_compile(0.0, 5.0)
    assert timings["compile"] == pytest.approx(0.015)
    assert timings["extraction"] >= 0.03 - 0.015
    assert notes == ["cold", "warm"]


def test_spans_inside_the_compile_phase_stay_compile():
    timings: dict[str, float] = {}
    with stopwatch(timings, "compile"):
        start = _busy(0.01)
        record_compile(start, start + 0.01)
    wall = timings["compile"]
    assert wall >= 0.01 and set(timings) == {"compile"}
    with stopwatch(timings, "sampling"):
        pass
    assert timings["compile"] == wall and "sampling" in timings  # no span: nothing moved


def test_a_clock_outside_the_fit_phases_keeps_its_compile_spans():
    """A run's own clock (the whole fit's, in a row that also says "compile": "cold") counts
    everything, builds included."""
    row: dict = {"compile": "cold"}
    with stopwatch(row, "t_fit"):
        start = _busy(0.01)
        record_compile(start, start + 0.01)
    assert row["compile"] == "cold" and row["t_fit"] >= 0.01
