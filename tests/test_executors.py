"""The warm local executor and the Dask executor keep every promise of the fresh-process one:
the same rows for raising, timed-out and dying cells, a killed worker costs only its cell, a
rerun resumes; warm workers reuse what a backend compiled without changing its draws; a run goes
through a real ``dask scheduler`` with two ``dask worker`` processes."""

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from bench.run import executors
from bench.run.dask_executor import DaskExecutor
from bench.run.executor_choice import make_executor
from bench.run.executors import LocalProcessExecutor, WarmProcessExecutor
from bench.run.harness import Cell, RunOptions, make_grid, read_rows, run_grid
from models.errors import MixbenchError
from tests.fake_backends import MARKER_ENV, PIDS_ENV, RELEASE_ENV, alive, execution_pid, executions, wait_until

FAKE = "tests.fake_backends:"
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def quick(seeds):
    return make_grid(["forum-small"], [FAKE + "QuickBackend"], ["nuts"], seeds,
                     settings={"chains": 2, "draws": 100}, n=200)


def misbehaving_grid():
    return [*quick([0]),
            Cell("forum-small", FAKE + "RaisingBackend", "nuts", 0, n=200),
            Cell("forum-small", FAKE + "SleepingBackend", "nuts", 0, n=200),
            Cell("forum-small", FAKE + "DyingBackend", "nuts", 0, n=200),
            *quick([1, 2])]


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "executions.txt"
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv(MARKER_ENV, str(path))
    monkeypatch.setenv(PIDS_ENV, str(pids))
    return path


# What must match between executors: everything a row says about its cell's outcome. Timings,
# process ids and the executors' own bookkeeping differ by nature.
COMPARED = ("status", "error", "reason", "compile", "rhat_max", "ess_bulk_min", "w_err_max", "mean.w[0,0]",
            "mean.w[1,0]", "slope_trace_file")


def outcome(rows):
    """What each row says, the error of a crashed cell to its common start (how a worker's death
    is seen differs: a process's exit code, or Dask's report of a lost worker)."""
    out = {r["cell_id"]: {k: r.get(k) for k in COMPARED} for r in rows}
    for row in out.values():
        if row["status"] == "crashed":
            assert row["error"].startswith("cell process died (") and row["error"].endswith("before writing its row")
            row["error"] = "cell process died"
    return out


@pytest.fixture(scope="module")
def fresh_rows(tmp_path_factory):
    """The oracle: the fresh-process executor's rows for the misbehaving grid."""
    out = tmp_path_factory.mktemp("fresh")
    return outcome(run_grid(misbehaving_grid(), RunOptions(out, time_limit=12.0), LocalProcessExecutor(jobs=2)))


@pytest.mark.parametrize("kind", ["warm", "dask"])
def test_executor_gives_exactly_the_fresh_process_rows(kind, tmp_path, fresh_rows):
    executor = WarmProcessExecutor(jobs=2) if kind == "warm" else DaskExecutor(jobs=2)
    rows = run_grid(misbehaving_grid(), RunOptions(tmp_path, time_limit=12.0), executor)
    assert len(read_rows(tmp_path / "cells.jsonl")) == 6
    assert outcome(rows) == fresh_rows
    by_backend = {r["backend"].split(":")[1]: r for r in rows}
    raised = by_backend["RaisingBackend"]
    assert raised["status"] == "failed"  # Backend.fit's failure policy: the engine's message, its traceback
    assert raised["reason"] == "RuntimeError: the engine blew up second line of the engine's message"
    assert "Traceback" in raised["traceback"]
    assert by_backend["SleepingBackend"]["status"] == "timeout"
    assert by_backend["DyingBackend"]["status"] == "crashed"
    # Rows, slope traces and logs are all under the run's directory, written by this process.
    for row in rows:
        # (A Dask cell whose worker died or was restarted leaves no log: it was on the worker.)
        assert (tmp_path / "logs" / f"{row['cell_id']}.log").is_file() or row["status"] == "crashed" or \
            (kind == "dask" and row["status"] == "timeout")
    for row in [r for r in rows if r["status"] == "ok"]:
        trace = np.load(tmp_path / row["slope_trace_file"])
        assert trace.shape == (2, 100, 2, 1)
    if kind == "warm":
        # Three quick cells on two workers: whichever worker took the first kept its backend's
        # next cells while it was free, counting them 1, 2, ...
        ok = [r for r in rows if r["status"] == "ok"]
        served: dict[int, list[int]] = {}
        for row in ok:
            served.setdefault(row["worker_pid"], []).append(row["worker_cell"])
        assert all(sorted(counts) == list(range(1, len(counts) + 1)) for counts in served.values())
        assert max(r["worker_cell"] for r in ok) >= 2


@pytest.mark.parametrize("kind", ["warm", "dask"])
def test_a_killed_worker_loses_only_its_cell_and_a_rerun_resumes(kind, tmp_path, marker):
    cells = [*quick([0]), Cell("forum-small", FAKE + "SleepingBackend", "nuts", 0, n=200), *quick([1])]
    executor = WarmProcessExecutor(jobs=2) if kind == "warm" else DaskExecutor(jobs=2)
    killed = []

    def kill_the_sleeper():
        if wait_until(lambda: "sleeping:0" in executions(marker), timeout=120):
            pid = execution_pid(marker, "sleeping:0")
            os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
            killed.append(pid)

    killer = threading.Thread(target=kill_the_sleeper)
    killer.start()
    rows = {r["cell_id"]: r for r in run_grid(cells, RunOptions(tmp_path, time_limit=None), executor)}
    killer.join()
    assert killed, "the sleeping cell never started"
    statuses = sorted((r["backend"].split(":")[1], r["seed"], r["status"]) for r in rows.values())
    assert statuses == [("QuickBackend", 0, "ok"), ("QuickBackend", 1, "ok"), ("SleepingBackend", 0, "crashed")]
    assert "died" in rows[cells[1].id]["error"]

    run_grid([*cells, *quick([2])], RunOptions(tmp_path, time_limit=None), executor)
    assert sorted(executions(marker)) == ["quick:0", "quick:1", "quick:2", "sleeping:0"]
    assert len(read_rows(tmp_path / "cells.jsonl")) == 4


def test_warm_worker_reuses_its_compile_and_draws_equal_a_cold_run(tmp_path):
    """NumPyro NUTS, two seeds in one warm worker: the second reuses the first's programs (warm)
    and its draws are exactly those of the same seed in a fresh process (cold)."""
    settings = {"chains": 1, "warmup": 100, "draws": 100}
    cells = make_grid(["forum-small"], ["numpyro"], ["nuts"], [0, 1], settings=settings, n=200)
    warm = {r["seed"]: r for r in run_grid(cells, RunOptions(tmp_path / "warm"), WarmProcessExecutor(jobs=1))}
    cold = {r["seed"]: r for r in run_grid(cells[1:], RunOptions(tmp_path / "cold"), LocalProcessExecutor(jobs=1))}
    assert [warm[0]["status"], warm[1]["status"], cold[1]["status"]] == ["ok", "ok", "ok"]
    assert (warm[0]["compile"], warm[1]["compile"], cold[1]["compile"]) == ("cold", "warm", "cold")
    assert warm[0]["worker_pid"] == warm[1]["worker_pid"] and warm[1]["worker_cell"] == 2
    assert warm[1]["t_compile"] < warm[0]["t_compile"]
    # A reused worker's start-up is only its cell's hand-over, part of the cell's total.
    assert 0 <= warm[1]["t_startup"] < 0.5 * warm[1]["time_cell"]
    assert warm[1]["t_startup"] + warm[1]["time_cell"] <= warm[1]["time_total"]
    warm_trace = np.load(tmp_path / "warm" / warm[1]["slope_trace_file"])
    cold_trace = np.load(tmp_path / "cold" / cold[1]["slope_trace_file"])
    np.testing.assert_array_equal(warm_trace, cold_trace)
    assert not np.array_equal(warm_trace, np.load(tmp_path / "warm" / warm[0]["slope_trace_file"]))


def test_a_data_file_reaches_a_dask_worker_as_content_checked_by_its_digest(tmp_path):
    """The worker reads the cell's data from what the client sent, not from the client's path:
    the file is gone from disk before the cell runs, and the rows match a local run's."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    y = np.where(rng.random(200) < 0.5, 2 * x, -2 * x) + 0.3 * rng.normal(size=200)
    data = tmp_path / "mine.csv"
    data.write_text("x,y\n" + "\n".join(f"{a:.6f},{b:.6f}" for a, b in zip(x, y)) + "\n")
    cell = Cell(str(data), FAKE + "QuickBackend", "nuts", 0, settings={"chains": 2, "draws": 50})
    files = cell.files()
    assert files == {str(data): data.read_bytes()}
    data.rename(tmp_path / "moved.csv")
    row = cell.execute_with_files(files, tmp_path / "out")
    assert row["status"] == "ok" and row["N"] == 200 and row["scenario"] == "mine"
    edited = {str(data): files[str(data)].replace(b"x,y", b"x,y", 1) + b"0.1,0.2\n"}
    row = cell.execute_with_files(edited, tmp_path / "out")
    assert row["status"] == "failed" and "changed since the run was planned" in row["error"]


@pytest.mark.parametrize("kind", ["warm", "fresh"])
def test_the_progress_hears_what_a_cell_is_compiling(kind, tmp_path, monkeypatch):
    release = tmp_path / "release"
    monkeypatch.setenv(RELEASE_ENV, str(release))
    doing = []

    def progress(event, info):
        if event == "tick":
            doing.append(info["doing"])
            if info["doing"] == "compile":
                release.touch()  # the cell's compile ends once the run has heard of it

    cells = [Cell("forum-small", FAKE + "CompilingBackend", "nuts", 0, n=200, settings={"chains": 2, "draws": 100})]
    rows = run_grid(cells, RunOptions(out_dir=tmp_path / "out"), make_executor(kind), progress)
    assert [r["status"] for r in rows] == ["ok"]
    assert "compile" in doing


@pytest.mark.parametrize("kind", ["warm", "fresh"])
def test_a_finished_cell_process_ends_by_itself_whatever_threads_it_leaves(kind, tmp_path, monkeypatch):
    # A process still alive when the run kills it was waited for first (5 s, 10 s): at the end of
    # every run and whenever a warm worker retired, with the dispatch loop held.
    states = []
    original = executors._kill

    def kill(proc):
        states.append(proc.exitcode)
        original(proc)

    monkeypatch.setattr(executors, "_kill", kill)
    cells = [Cell("forum-small", FAKE + "LingeringThreadBackend", "nuts", seed, n=200,
                  settings={"chains": 2, "draws": 100}) for seed in (0, 1)]
    rows = run_grid(cells, RunOptions(out_dir=tmp_path / "out"), make_executor(kind, jobs=1))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(code == 0 for code in states), states
    assert states or kind == "fresh"  # a fresh process that has ended is not killed at all
def test_a_free_worker_takes_other_work_while_another_builds_the_program_its_cell_needs(tmp_path, monkeypatch):
    """Two cells of one program (two shapes of a backend with one program, as Stan's methods) and
    a cell of another backend, two warm workers: while the first compiles, the second takes the
    other backend's cell, not the second cell of the program (it would wait for the build); the
    deferred cell still runs once nothing else is pending."""
    release = tmp_path / "release"
    monkeypatch.setenv(RELEASE_ENV, str(release))
    compiling = [Cell("forum-small", FAKE + "CompilingBackend", "nuts", 0, n=200, settings={"chains": 2, "draws": d})
                 for d in (100, 50)]
    quick_cell = quick([0])[0]
    assert compiling[0].shape != compiling[1].shape and compiling[0].program == compiling[1].program
    assert quick_cell.program == quick_cell.shape != compiling[0].program
    started, finished = [], []

    def progress(event, info):
        if event == "start":
            started.append(info["cell_id"])
        elif event == "done":
            finished.append(info["cell_id"])
        # The build ends once the other backend's cell is done, or once the second cell of the
        # program starts before it (the old order: fail at once rather than wait 120 s).
        if finished[-1:] == [quick_cell.id] or compiling[1].id in started:
            release.touch()

    rows = run_grid([*compiling, quick_cell], RunOptions(out_dir=tmp_path / "out"), WarmProcessExecutor(jobs=2),
                    progress)
    assert sorted(r["cell_id"] for r in rows if r["status"] == "ok") == sorted(c.id for c in [*compiling, quick_cell])
    assert started == [compiling[0].id, quick_cell.id, compiling[1].id]
    assert finished.index(quick_cell.id) < finished.index(compiling[0].id)


@pytest.mark.parametrize("kind", ["warm", "fresh"])
def test_a_freed_place_takes_the_next_cell_without_waiting_on_the_busy_ones(kind, tmp_path, monkeypatch):
    """Two places, one held by a cell that "compiles" until the next quick cell has started: the
    quick cell's place must take that next cell as soon as its row is in, not after waiting the
    poll interval (an hour here) on the busy place; before, every cell of a 2-job grid paid 0.2 s.
    Were it to wait, the compile would fail at its own 120 s bound, never released."""
    release = tmp_path / "release"
    monkeypatch.setenv(RELEASE_ENV, str(release))
    compiling = Cell("forum-small", FAKE + "CompilingBackend", "nuts", 0, n=200, settings={"chains": 2, "draws": 100})
    first, second = quick([0, 1])
    events = []

    def progress(event, info):
        if event in ("start", "done"):
            events.append((event, info["cell_id"]))
        if ("start", second.id) in events:
            release.touch()

    executor = (WarmProcessExecutor(jobs=2, poll_interval=3600) if kind == "warm"
                else LocalProcessExecutor(jobs=2, poll_interval=3600))
    rows = run_grid([compiling, first, second], RunOptions(out_dir=tmp_path / "out"), executor, progress)
    assert sorted(r["status"] for r in rows) == ["ok"] * 3, [r.get("reason") or r.get("error") for r in rows]
    assert events.index(("start", second.id)) < events.index(("done", compiling.id)), events


def test_next_cell_defers_a_program_being_built_only_while_other_work_waits():
    from types import SimpleNamespace

    from bench.run.executors import next_cell

    def cell(name, backend, program):
        return SimpleNamespace(name=name, backend=backend, shape=name, program=program)

    stan_nuts, stan_advi = cell("stan-nuts", "stan", "stan"), cell("stan-advi", "stan", "stan")
    pymc_nuts, pymc_map = cell("pymc-nuts", "pymc", "pymc-nuts"), cell("pymc-map", "pymc", "pymc-map")
    pending = [stan_advi, pymc_nuts, pymc_map]
    assert next_cell(pending, None, {"stan-nuts"}).name == "stan-advi"  # nothing being built
    assert next_cell(pending, None, {"stan-nuts"}, {"stan"}).name == "pymc-nuts"
    assert next_cell(pending, pymc_nuts, {"stan-nuts"}, {"stan"}).name == "pymc-nuts"
    assert next_cell(pending, None, {"stan-nuts"}, {"stan", "pymc-nuts"}).name == "pymc-map"
    assert next_cell([stan_advi], None, {"stan-nuts"}, {"stan"}).name == "stan-advi"  # nothing else: it waits
    assert next_cell([stan_nuts, stan_advi], stan_nuts, set(), {"stan"}).name == "stan-nuts"


def test_make_executor_names_and_refusals():
    assert isinstance(make_executor(), WarmProcessExecutor)
    assert isinstance(make_executor("fresh", jobs=3), LocalProcessExecutor)
    executor = make_executor(None, scheduler="tcp://127.0.0.1:8786")
    assert isinstance(executor, DaskExecutor) and executor.address == "tcp://127.0.0.1:8786"
    with pytest.raises(MixbenchError, match="does not go with --executor fresh"):
        make_executor("fresh", scheduler="tcp://127.0.0.1:8786")


def test_busy_workers_are_never_taken_for_gone_whatever_the_client_cached(monkeypatch):
    """The executor asks the scheduler which workers exist, not the client's cached identity: the
    client's own periodic refresh (no per-worker entries) can land between scheduler_info's fetch
    and its read, and a busy worker then looked gone (its cell became a crashed row)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        expected = set(cluster.scheduler.workers)
        fetch = client._update_scheduler_info

        async def fetch_then_periodic_refresh(n_workers=0):
            await fetch(n_workers=n_workers)
            await fetch(n_workers=0)  # the client's periodic refresh, landing in between

        monkeypatch.setattr(client, "_update_scheduler_info", fetch_then_periodic_refresh)
        assert set(client.scheduler_info(n_workers=-1)["workers"]) != expected  # the race, reproduced
        assert DaskExecutor._workers(client) == expected


def test_cli_refuses_an_unreachable_scheduler_in_one_line(tmp_path, monkeypatch, capsys):
    from bench.cli import main
    from bench.run import dask_executor

    monkeypatch.setattr(dask_executor, "CONNECT_TIMEOUT", 2.0)
    code = main(["run", "--backends", FAKE + "QuickBackend", "--reference", "none", "--N", "200",
                 "--scheduler", f"tcp://127.0.0.1:{free_port()}", "--out", str(tmp_path), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "cannot connect to a Dask scheduler" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_real_grid_through_dask_scheduler_and_two_dask_workers(tmp_path):
    """``dask scheduler`` and two ``dask worker`` processes on the loopback address, as the README
    starts them; ``mixbench run --scheduler`` sends a small real grid (NumPyro NUTS, two seeds)."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([BIN / "dask", "worker", address, "--nthreads", "1", "--host", "127.0.0.1",
                                           "--no-dashboard"], cwd=ROOT, env=env, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout=60) as client:  # both workers up before the grid, so both take cells
            client.wait_for_workers(2, timeout=120)
        out = tmp_path / "run"
        run = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--scheduler", address,
                              "--backends", "numpyro", "--methods", "nuts,map", "--seeds", "0,1", "--N", "200",
                              "--chains", "1", "--warmup", "100", "--draws", "100", "--map-starts", "2",
                              "--reference", "none", "--out", str(out), "--no-report"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        rows = read_rows(out / "cells.jsonl")
        assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), [(r["cell_id"], r.get("error")) for r in rows]
        assert {r["worker"].rsplit(":", 1)[0] for r in rows} == {"tcp://127.0.0.1"}
        assert len({r["worker_pid"] for r in rows}) == 2  # both workers took cells
        assert all(r["worker_pid"] not in {p.pid for p in procs} for r in rows)  # nannies' children
        for row in rows:
            assert (out / row["slope_trace_file"]).is_file() and (out / "logs" / f"{row['cell_id']}.log").is_file()
        nuts = sorted((r for r in rows if r["method"] == "nuts"), key=lambda r: r["seed"])
        assert nuts[0]["w_err_max"] < 0.5 and nuts[1]["w_err_max"] < 0.5
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert not any(alive(p.pid) for p in procs)
