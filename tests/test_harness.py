"""The harness keeps every finished row whatever happens to the other cells or to the run itself,
resumes, and leaves no process behind."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from bench.run.executors import LocalProcessExecutor
from bench.run.harness import Cell, RowStore, RunOptions, execute_cell, make_grid, read_rows, run_grid, run_lock
from models.errors import MixbenchError, MixbenchWarning
from tests.fake_backends import MARKER_ENV, PIDS_ENV, alive, executions, recorded_pids, wait_until

FAKE = "tests.fake_backends:"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """Counts the cells that really ran; afterwards, asserts that none of their processes (nor
    any process they started) outlives the test."""
    path = tmp_path / "executions.txt"
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv(MARKER_ENV, str(path))
    monkeypatch.setenv(PIDS_ENV, str(pids))
    yield path
    survivors = lambda: [pid for pid in recorded_pids(pids) if alive(pid)]  # noqa: E731
    assert wait_until(lambda: not survivors(), timeout=60), f"cell processes outlived the test: {survivors()}"


def quick_cells(seeds, **kw):
    return make_grid(["forum-small"], [FAKE + "QuickBackend"], ["nuts"], seeds,
                     settings={"chains": 2, "draws": 100}, n=200, **kw)


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MixbenchWarning)
        return fn(*args, **kwargs)


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
    # Backend.fit's failure policy: the engine's message on one line, its traceback kept.
    assert raised["reason"] == "RuntimeError: the engine blew up second line of the engine's message"
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
    assert row["status"] == "unsupported" and row["reason"] == "method 'map' is not implemented by the quick backend (it runs: nuts)"
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


@pytest.mark.parametrize("executor, before", [("LocalProcessExecutor", [0, 1]), ("WarmProcessExecutor", [0, 1, 2])])
def test_run_killed_midway_keeps_finished_rows_resumes_and_takes_its_cell_with_it(tmp_path, marker, executor, before):
    # ``before``: the quick cells that finish before the sleeper starts. A warm worker serves its
    # backend's cells first, so with one worker the quick cells all run before the sleeper.
    script = textwrap.dedent(f"""
        from pathlib import Path
        from bench.run.executors import {executor}
        from bench.run.harness import Cell, RunOptions, make_grid, run_grid
        fake = "tests.fake_backends:"
        cells = make_grid(["forum-small"], [fake + "QuickBackend"], ["nuts"], [0, 1],
                          settings={{"chains": 2, "draws": 100}}, n=200)
        cells.append(Cell("forum-small", fake + "SpawningSleeperBackend", "nuts", 0, n=200))
        cells += make_grid(["forum-small"], [fake + "QuickBackend"], ["nuts"], [2],
                           settings={{"chains": 2, "draws": 100}}, n=200)
        if __name__ == "__main__":
            run_grid(cells, RunOptions(Path({str(tmp_path)!r}), time_limit=None), {executor}())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, start_new_session=True)
    try:
        assert wait_until(lambda: "spawning-sleeper:0" in executions(marker), timeout=120), \
            "the run never reached its third cell"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run dies at once, with no chance to clean up
        proc.wait()
    # The cell (in a session of its own) and the process it started notice and go too.
    cell_pids = recorded_pids(Path(os.environ[PIDS_ENV]))[-2:]
    assert wait_until(lambda: not any(alive(pid) for pid in cell_pids), timeout=60), cell_pids
    finished = read_rows(tmp_path / "cells.jsonl")
    assert sorted(r["seed"] for r in finished) == before and all(r["status"] == "ok" for r in finished)

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


# -- cells.jsonl: a torn last line is repaired, every line is checked --------------------------

def row(cell_id: str, **extra) -> dict:
    return {"cell_id": cell_id, "status": "ok", "backend": "b", "method": "nuts", "scenario": "s", **extra}


def test_append_after_a_torn_line_moves_the_fragment_aside_and_keeps_the_new_row(tmp_path):
    store = RowStore(tmp_path)
    store.append(row("a"))
    with open(store.path, "a") as fh:
        fh.write('{"cell_id": "b", "sta')  # the machine died mid-write
    with pytest.warns(MixbenchWarning, match=r"line 2 was cut off mid-write .* moved to cells.jsonl.damaged"):
        store.append(row("c"))
    # Before the repair "c" was written onto the fragment and both were lost.
    assert [r["cell_id"] for r in no_warnings(store.read)] == ["a", "c"]
    assert (tmp_path / "cells.jsonl.damaged").read_text() == '{"cell_id": "b", "sta\n'


def test_a_whole_last_row_missing_only_its_newline_is_kept(tmp_path):
    store = RowStore(tmp_path)
    store.path.write_text(json.dumps(row("a")))
    no_warnings(store.append, row("b"))
    assert [r["cell_id"] for r in no_warnings(store.read)] == ["a", "b"]


def test_torn_last_row_is_run_again_and_the_next_rows_are_kept(tmp_path, marker):
    run_grid(quick_cells([0, 1]), RunOptions(tmp_path))
    path = tmp_path / "cells.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    torn_seed = json.loads(lines[-1])["seed"]
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    with pytest.warns(MixbenchWarning, match="line 2 was cut off mid-write"):
        rows = run_grid(quick_cells([0, 1, 2]), RunOptions(tmp_path))
    assert sorted(executions(marker)) == sorted(["quick:0", "quick:1", f"quick:{torn_seed}", "quick:2"])
    assert sorted(r["seed"] for r in rows) == [0, 1, 2]
    assert sorted(r["seed"] for r in no_warnings(read_rows, path)) == [0, 1, 2]


def test_every_line_is_checked_and_unreadable_ones_are_named_by_number(tmp_path):
    rng = np.random.default_rng(5)
    garbage = bytes(b for b in rng.integers(128, 256, 300).astype(np.uint8).tobytes() if b != 10)
    path = tmp_path / "cells.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps(row("a")).encode(), garbage, b'["a list"]', b'{"cell_id": "x", "status": "ok"}',
        b"{not json", json.dumps(row("b")).encode(), b"",
    ]))
    with pytest.warns(MixbenchWarning) as record:
        rows = read_rows(path)
    assert [r["cell_id"] for r in rows] == ["a", "b"]
    [message] = [str(w.message) for w in record]
    assert "skipped 4 unreadable line(s)" in message and "\n" not in message
    for text in ("line 2 (not UTF-8 text)", "line 3 (not a cell row)",
                 "line 4 (not a cell row (no backend, method, scenario))", "line 5 (not JSON)"):
        assert text in message


def test_a_row_that_cannot_be_written_does_not_abort_the_run(tmp_path, marker, monkeypatch):
    import bench.run.harness as harness

    real_write = harness._write_all
    calls = []

    def disk_full_once(fd, data):
        calls.append(data)
        if len(calls) == 1:  # half the line reaches the disk, then it is full
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(fd, data)

    monkeypatch.setattr(harness, "_write_all", disk_full_once)
    with pytest.warns(MixbenchWarning, match=r"the row of .*s0\..* could not be written \(No space left on device\)"):
        rows = run_grid(quick_cells([0, 1, 2]), RunOptions(tmp_path))
    assert sorted(executions(marker)) == ["quick:0", "quick:1", "quick:2"]  # the run went on
    assert [r["seed"] for r in rows.unwritten] == [0]
    assert sorted(r["seed"] for r in rows) == [0, 1, 2]  # in the run's answer, not on disk
    on_disk = no_warnings(read_rows, tmp_path / "cells.jsonl")  # and no half line left there
    assert sorted(r["seed"] for r in on_disk) == [1, 2]
    monkeypatch.setattr(harness, "_write_all", real_write)
    run_grid(quick_cells([0, 1, 2]), RunOptions(tmp_path))
    assert sorted(executions(marker)) == ["quick:0", "quick:0", "quick:1", "quick:2"]


def test_run_json_is_written_before_the_cells_and_a_full_disk_runs_none(tmp_path, marker, monkeypatch):
    """run.json is written before the first cell: afterwards it is whole beside the rows; one that
    cannot be written (a full disk) stops the run before any cell has run, so no cell's work is lost."""
    import bench.run.harness as harness

    cells = quick_cells([0, 1])
    run_grid(cells, RunOptions(tmp_path / "a"))
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["n_cells"] == 2 and info["environment"]["versions"]["numpy"] == np.__version__

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(harness, "write_run_info", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        run_grid(cells, RunOptions(tmp_path / "b"))
    assert sorted(executions(marker)) == ["quick:0", "quick:1"]  # run a's only
    assert not (tmp_path / "b" / "cells.jsonl").exists()


# -- one run per output directory ---------------------------------------------------------------

def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tmp_path, marker):
    with run_lock(tmp_path):
        with pytest.raises(MixbenchError, match=rf"another mixbench run \(pid {os.getpid()}\) is using it"):
            run_grid(quick_cells([0]), RunOptions(tmp_path))
    assert executions(marker) == []
    run_grid(quick_cells([0]), RunOptions(tmp_path))  # released: the next run goes ahead
    assert executions(marker) == ["quick:0"]


# -- the data's content is part of a cell's identity --------------------------------------------

def data_file(path: Path, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 60)
    y = np.where(rng.random(60) < 0.5, 3 * x, -x) + 0.1 * rng.standard_normal(60) + shift
    path.write_text("x,y\n" + "".join(f"{a:.6f},{b:.6f}\n" for a, b in zip(x, y)))
    return path


def test_edited_data_file_runs_again(tmp_path, marker):
    csv = data_file(tmp_path / "data.csv")

    def cells():
        return make_grid([str(csv)], [FAKE + "QuickBackend"], ["nuts"], [0], settings={"chains": 2, "draws": 50})

    out = tmp_path / "out"
    [first] = run_grid(cells(), RunOptions(out))
    run_grid(cells(), RunOptions(out))
    assert executions(marker) == ["quick:0"]  # unchanged: resumed, nothing to run
    data_file(csv, shift=1.0)
    rows = run_grid(cells(), RunOptions(out))
    assert executions(marker) == ["quick:0", "quick:0"]
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    assert first["cell"]["data_digest"] != cells()[0].data_digest


def test_data_file_changed_after_planning_is_a_failed_row_not_a_mislabelled_fit(tmp_path, marker):
    csv = data_file(tmp_path / "data.csv")
    [cell] = make_grid([str(csv)], [FAKE + "QuickBackend"], ["nuts"], [0])
    data_file(csv, shift=1.0)
    result = execute_cell(cell)
    assert result["status"] == "failed" and "changed since the run was planned" in result["error"]
    assert executions(marker) == []


# -- sizes no backend should be asked to fit ------------------------------------------------------

@pytest.mark.parametrize("method, spec, settings, match", [
    ("nuts", {"K": 21}, {}, r"K: 21 components for N = 200 observations .* at most 20"),
    ("advi-minibatch-meanfield", {}, {"batch_size": 500}, r"settings.batch_size: 500 is larger than the data \(N = 200\)"),
])
def test_impossible_sizes_are_failed_rows_before_any_backend_runs(tmp_path, marker, method, spec, settings, match):
    cell = Cell("forum-small", FAKE + "QuickBackend", method, 0, settings=settings, spec=spec, n=200)
    result = execute_cell(cell)
    assert result["status"] == "failed"
    assert re.search(match, result["error"]), result["error"]
    assert executions(marker) == []


# -- signals --------------------------------------------------------------------------------------

def _processes_in_session(sid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGINT, True), (signal.SIGHUP, True)],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_stops_the_run_cleanly(tmp_path, marker, capsys, signum, to_group):
    from bench.cli import main

    out = tmp_path / "out"
    args = ["run", "--backends", f"{FAKE}QuickBackend,{FAKE}SpawningSleeperBackend", "--N", "200",
            "--chains", "2", "--draws", "100", "--out", str(out), "--no-report", "--jobs", "1"]
    # One worker: the quick cell has finished when the sleeper starts (a run's default is a worker
    # per core, which would run both at once).
    # A session of its own, as a terminal gives a command: SIGINT and SIGHUP go to its whole
    # foreground group (the run and its fork server), SIGTERM (kill) to the run alone.
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: "spawning-sleeper:0" in executions(marker), timeout=120), \
            "the run never reached its second cell"
        # While it runs, a second run on the same output is refused, naming it.
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"mixbench run: error: output directory {out}: another mixbench run (pid {proc.pid}) "
                       "is using it; wait for it to finish or choose another --out")
        started = time.time()
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert time.time() - started < 15  # not the cell's 3600 s
    assert proc.returncode == 128 + signum
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    assert stderr.strip().splitlines()[-1] == (
        f"mixbench run: interrupted by {name}: 1 cell(s) finished and kept in {out / 'cells.jsonl'}, "
        "1 stopped; rerun to resume")
    [kept] = read_rows(out / "cells.jsonl")
    assert kept["backend"] == FAKE + "QuickBackend" and kept["status"] == "ok"
    # Nothing outlives the run: not the cell, not the process it started, not the fork server.
    cell_pids = recorded_pids(Path(os.environ[PIDS_ENV]))
    assert len(cell_pids) == 3 and not [pid for pid in cell_pids if alive(pid)]
    assert wait_until(lambda: not _processes_in_session(proc.pid), timeout=60), _processes_in_session(proc.pid)


def test_a_rebuilt_cache_entry_is_one_warning_in_the_row_and_on_the_terminal(tmp_path, marker, capsys):
    from bench.cli import main

    code = main(["run", "--backends", FAKE + "RebuildingBackend", "--N", "200", "--chains", "2", "--draws", "50",
                 "--out", str(tmp_path), "--no-report"])
    assert code == 0
    [result] = read_rows(tmp_path / "cells.jsonl")
    message = "cache entry /x/entry.pkl: failed to load (EOFError: torn); discarded, compiling it again"
    assert result["status"] == "ok" and result["warnings"] == [message]
    err = capsys.readouterr().err.splitlines()
    assert err.count(f"  warning: {message}") == 1
    [log] = (tmp_path / "logs").glob("*.log")
    assert log.read_text().count(message) == 1  # and in the cell's log, where engines' output goes
