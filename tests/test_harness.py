"""The harness keeps every finished row whatever happens to the other cells, and resumes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import get_context
from pathlib import Path

import pytest

from bench.executors import LocalProcessExecutor
from bench.harness import Cell, RowStore, RunOptions, make_grid, read_rows, run_grid
from tests.fake_backends import MARKER_ENV, executions

FAKE = "tests.fake_backends:"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "executions.txt"
    monkeypatch.setenv(MARKER_ENV, str(path))
    return path


def quick_cells(seeds, **kw):
    return make_grid(["forum-small"], [FAKE + "QuickBackend"], ["nuts"], seeds,
                     settings={"chains": 2, "draws": 100}, n=200, **kw)


def test_raising_timed_out_and_killed_cells_are_rows_and_others_survive(tmp_path, marker):
    cells = [
        *quick_cells([0]),
        Cell("forum-small", FAKE + "RaisingBackend", "nuts", 0, n=200),
        Cell("forum-small", FAKE + "SleepingBackend", "nuts", 0, n=200),
        Cell("forum-small", FAKE + "DyingBackend", "nuts", 0, n=200),
        *quick_cells([1]),
    ]
    rows = {r["backend"]: r for r in run_grid(cells, RunOptions(tmp_path, time_limit=40.0), LocalProcessExecutor(jobs=2))}
    assert len(read_rows(tmp_path / "cells.jsonl")) == 5

    raised = rows[FAKE + "RaisingBackend"]
    assert raised["status"] == "failed"
    assert raised["error"] == "RuntimeError: the engine blew up"
    assert "Traceback" in raised["traceback"]

    slept = rows[FAKE + "SleepingBackend"]
    assert slept["status"] == "timeout" and "time limit of 40 s" in slept["error"]

    died = rows[FAKE + "DyingBackend"]
    assert died["status"] == "crashed" and "killed by signal 9" in died["error"]

    quick = [r for r in read_rows(tmp_path / "cells.jsonl") if r["backend"] == FAKE + "QuickBackend"]
    assert sorted(r["seed"] for r in quick) == [0, 1]
    assert all(r["status"] == "ok" and r["t_sampling"] == pytest.approx(0.03) for r in quick)


def test_unsupported_pair_is_a_row_with_its_reason(tmp_path, marker):
    cell = Cell("forum-small", FAKE + "QuickBackend", "map", 0, n=200)
    (row,) = run_grid([cell], RunOptions(tmp_path))
    assert row["status"] == "unsupported" and row["reason"] == "quick only runs nuts"
    assert executions(marker) == []


def test_rerun_resumes_running_only_missing_cells(tmp_path, marker):
    run_grid(quick_cells([0, 1]), RunOptions(tmp_path))
    assert sorted(executions(marker)) == ["quick:0", "quick:1"]
    rows = run_grid(quick_cells([0, 1, 2, 3]), RunOptions(tmp_path))
    assert sorted(executions(marker)) == ["quick:0", "quick:1", "quick:2", "quick:3"]
    assert sorted(r["seed"] for r in rows) == [0, 1, 2, 3]


def test_changed_settings_make_new_cells(tmp_path, marker):
    run_grid(quick_cells([0]), RunOptions(tmp_path))
    changed = make_grid(["forum-small"], [FAKE + "QuickBackend"], ["nuts"], [0],
                        settings={"chains": 2, "draws": 50}, n=200)
    run_grid(changed, RunOptions(tmp_path))
    assert executions(marker) == ["quick:0", "quick:0"]


def test_run_killed_midway_keeps_finished_rows_and_resumes(tmp_path, marker):
    script = textwrap.dedent(f"""
        from pathlib import Path
        from bench.harness import Cell, RunOptions, make_grid, run_grid
        fake = "tests.fake_backends:"
        cells = make_grid(["forum-small"], [fake + "QuickBackend"], ["nuts"], [0, 1],
                          settings={{"chains": 2, "draws": 100}}, n=200)
        cells.append(Cell("forum-small", fake + "SleepingBackend", "nuts", 0, n=200))
        cells += make_grid(["forum-small"], [fake + "QuickBackend"], ["nuts"], [2],
                           settings={{"chains": 2, "draws": 100}}, n=200)
        run_grid(cells, RunOptions(Path({str(tmp_path)!r}), time_limit=None))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and "sleeping:0" not in executions(marker):
            time.sleep(0.2)
        assert "sleeping:0" in executions(marker), "the run never reached its third cell"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, cells included, dies at once
        proc.wait()
    finished = read_rows(tmp_path / "cells.jsonl")
    assert sorted(r["seed"] for r in finished) == [0, 1] and all(r["status"] == "ok" for r in finished)

    run_grid(quick_cells([0, 1, 2]), RunOptions(tmp_path))
    assert executions(marker).count("quick:2") == 1
    assert executions(marker).count("quick:0") == 1


def _append_rows(path, writer, count):
    store = RowStore(Path(path))
    for i in range(count):
        store.append({"cell_id": f"{writer}-{i}", "status": "ok", "payload": "x" * 5000})


def test_two_writers_never_corrupt_the_rows_file(tmp_path):
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_append_rows, args=(tmp_path, w, 200)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    lines = (tmp_path / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 400
    assert {json.loads(line)["cell_id"] for line in lines} == {f"{w}-{i}" for w in "ab" for i in range(200)}


def test_a_torn_last_line_is_skipped(tmp_path):
    store = RowStore(tmp_path)
    store.append({"cell_id": "a", "status": "ok"})
    with open(store.path, "a") as fh:
        fh.write('{"cell_id": "b", "sta')
    assert [r["cell_id"] for r in store.read()] == ["a"]
