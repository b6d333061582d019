"""Throughput of the three executors on one grid: cells per hour and seconds spent compiling.

    uv run pytest bench/benchmarks/test_throughput.py --benchmark-json=results/throughput.json

The grid: pymc, numpyro and stan x nuts, advi-meanfield, pathfinder and map x MIXBENCH_THROUGHPUT_SEEDS
seeds (default 10) on forum-small at the default fit settings, run three times: by the
one-process-per-cell executor (fresh), the warm local executor (warm) and a Dask LocalCluster
(dask), each with MIXBENCH_THROUGHPUT_JOBS workers (default 2). Each executor is one benchmark
(one round: the grid is the repetition); its extra_info holds cells, cells_per_hour,
compile_seconds (the rows' t_compile summed), how many compiles were cold and warm, and the
statuses. ``<out>/throughput.md`` puts the three side by side.

``test_cold_grid``: the grid of issue 24 (forum N = 1e4, five methods, three backends, MIXBENCH_COLD_SEEDS
seeds, default 2) run by ``mixbench run`` from empty caches; ``engine_ratio`` is its wall seconds over
the fits' seconds per worker (target ``ENGINE_RATIO_TARGET``), and ``per_worker`` where each worker's
wall seconds went (``wall_split``), printed at the end of the run.

Before any executor is timed, one cell per (backend, method) runs once, so the disk stores (JAX
programs, PyTensor functions, nutpie and CmdStan builds) hold every program: each executor
starts from the same disk, and what differs is only what stays in a worker's memory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.run.executors import LocalProcessExecutor, WarmProcessExecutor
from bench.run.harness import RunOptions, make_grid, run_grid, to_jsonable

BACKENDS = ("pymc", "numpyro", "stan")
METHODS = ("nuts", "advi-meanfield", "pathfinder", "map")
SEEDS = int(os.environ.get("MIXBENCH_THROUGHPUT_SEEDS", "10"))
JOBS = int(os.environ.get("MIXBENCH_THROUGHPUT_JOBS", "2"))
EXECUTORS = ("fresh", "warm", "dask")


def grid(seeds: int):
    return make_grid(["forum-small"], BACKENDS, METHODS, range(seeds))


def executor(kind: str):
    if kind == "fresh":
        return LocalProcessExecutor(jobs=JOBS)
    if kind == "warm":
        return WarmProcessExecutor(jobs=JOBS)
    from bench.run.dask_executor import DaskExecutor

    return DaskExecutor(jobs=JOBS)


@pytest.fixture(scope="session")
def disk_stores_filled(mixbench_out):
    run_grid(grid(1), RunOptions(mixbench_out / "fill-disk-stores", time_limit=None), LocalProcessExecutor(jobs=JOBS))


# Where a cell's seconds go, summed over the grid's rows (bench.report.costs.harness_overhead_table's columns).
PARTS = {"fit": "t_fit", "compile": "t_compile", "compile_wait": "t_compile_wait", "scoring": "time_metrics",
         "startup": "t_startup", "backend_import": "t_backend_import", "data": "t_data", "cell": "time_total"}


def _total(rows: list[dict], column: str) -> float:
    return sum(float(r[column]) for r in rows if isinstance(r.get(column), (int, float)))


# Issue 24, item 5: the cold grid's wall time within 10% of the engines' fit seconds per worker.
ENGINE_RATIO_TARGET = 1.10
# The fit's own phases, what an engine computes (backends.timing.TIMING_PHASES less compile,
# compile_wait and extraction, which the split gives apart).
ENGINE_PHASES = ("t_warmup", "t_sampling", "t_warmup_and_sampling", "t_optimisation", "t_overhead")


def wall_split(rows: list[dict], seconds: float, jobs: int) -> dict[str, float]:
    """Where the workers' wall seconds went, per worker (the parts add up to ``seconds``): the
    engines' phases (fit), compile, waiting for another process's build, extraction into draws,
    scoring, the rest of the cells' time (start-up, hand-over, data, saving draws), and outside
    the cells (the run's start-up and planning, worker starts before their first cell, report,
    a worker idle while another finishes)."""
    parts = {"fit": sum(_total(rows, column) for column in ENGINE_PHASES), "compile": _total(rows, "t_compile"),
             "compile_wait": _total(rows, "t_compile_wait"), "extraction": _total(rows, "t_extraction"),
             "scoring": _total(rows, "time_metrics")}
    cells = _total(rows, "time_total")
    parts["other_in_cells"] = cells - sum(parts.values())
    parts["outside_cells"] = seconds * jobs - cells
    return {name: value / jobs for name, value in parts.items()}


def split_line(record: dict) -> str:
    split = ", ".join(f"{name.replace('_', ' ')} {value:.1f}" for name, value in record["per_worker"].items())
    return (f"{record['executor']}: {record['cells']} cells in {record['wall_seconds']:.0f} s on {record['jobs']} "
            f"workers; wall / fit seconds per worker {record['engine_ratio']:.2f} (target "
            f"{ENGINE_RATIO_TARGET:.2f}), over the engines' phases alone per worker "
            f"{record['wall_seconds'] / record['per_worker']['fit']:.2f}; per worker, s: {split}")


def summarise(kind: str, rows: list[dict], seconds: float, jobs: int = JOBS) -> dict:
    """The grid's figures. ``engine_ratio``: wall seconds over the engines' fit seconds (the
    rows' t_fit summed, compile included, waiting for another build not) divided by the workers: 1.0 when the suite adds nothing
    and the workers are never idle (issue 24 asks for at most 1.1). ``*_seconds``: each part
    summed over the cells; ``outside_fit_seconds``: the cells' own time (time_total) less their fits.
    A cell's stacked row (bench.score.stacked_rows) repeats its timings and is not counted."""
    rows = [r for r in rows if not r.get("stacked_from")]
    compile_states = [r.get("compile") for r in rows]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    parts = {f"{name}_seconds": _total(rows, column) for name, column in PARTS.items()}
    # A cell waiting for another process's build is idle, not fitting (the wait is inside t_fit).
    engine_seconds = parts["fit_seconds"] - parts["compile_wait_seconds"]
    fit_per_worker = engine_seconds / jobs
    return {
        "executor": kind, "jobs": jobs, "seeds": SEEDS, "cells": len(rows), "wall_seconds": seconds,
        "cells_per_hour": 3600 * len(rows) / seconds,
        "compile_cold": compile_states.count("cold"), "compile_warm": compile_states.count("warm"),
        **parts,
        "engine_seconds": engine_seconds, "fit_seconds_per_worker": fit_per_worker,
        "engine_ratio": seconds / fit_per_worker if fit_per_worker > 0 else float("nan"),
        "engine_ratio_target": ENGINE_RATIO_TARGET,
        "outside_fit_seconds": parts["cell_seconds"] - parts["fit_seconds"],
        "per_worker": wall_split(rows, seconds, jobs),
        "statuses": statuses,
    }


def write_table(out: Path, record: dict) -> None:
    path = out / "throughput.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[record["executor"]] = record
    path.write_text(json.dumps(records, indent=1))
    lines = ["| executor | workers | cells | wall s | cells/hour | fit s / workers | wall / that | compile s (sum) "
             "| waiting s | scoring s | startup s | import s | cold | warm | statuses |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for kind in (*EXECUTORS, *sorted(set(records) - set(EXECUTORS))):
        if kind in records:
            r = records[kind]
            lines.append(f"| {kind} | {r['jobs']} | {r['cells']} | {r['wall_seconds']:.0f} | {r['cells_per_hour']:.0f} "
                         f"| {r['fit_seconds_per_worker']:.0f} | {r['engine_ratio']:.2f} | {r['compile_seconds']:.1f} "
                         f"| {r['compile_wait_seconds']:.1f} | {r['scoring_seconds']:.1f} | {r['startup_seconds']:.1f} "
                         f"| {r['backend_import_seconds']:.1f} | {r['compile_cold']} | {r['compile_warm']} | "
                         + ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items())) + " |")
    lines += ["", *(f"- {split_line(r)}" for r in records.values() if "per_worker" in r)]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("kind", EXECUTORS)
def test_throughput(benchmark, kind, mixbench_out, disk_stores_filled):
    cells = grid(SEEDS)
    out = mixbench_out / f"throughput-{kind}"

    def run():
        start = time.perf_counter()
        rows = run_grid(cells, RunOptions(out, time_limit=None, fresh=True), executor(kind))
        return rows, time.perf_counter() - start

    benchmark.group = f"throughput: {len(cells)} cells, {JOBS} workers"
    rows, seconds = benchmark.pedantic(run, rounds=1, iterations=1)
    record = summarise(kind, list(rows), seconds)
    benchmark.extra_info.update(to_jsonable(record))
    write_table(mixbench_out, record)
    assert record["cells"] == len(cells)
    assert record["statuses"].get("crashed", 0) == 0 and record["statuses"].get("timeout", 0) == 0
    if kind != "fresh":
        assert record["compile_warm"] > 0  # workers were reused
    else:
        assert record["compile_warm"] == 0  # every cell in a new process


# The cold grid of issue 24, item 5, reduced by default to two seeds (MIXBENCH_COLD_SEEDS).
COLD_SEEDS = int(os.environ.get("MIXBENCH_COLD_SEEDS", "2"))
COLD_GRID = ["--scenario", "forum", "--N", os.environ.get("MIXBENCH_COLD_N", "10000"),
             "--backends", "pymc,numpyro,stan", "--methods", "nuts,advi-meanfield,advi-fullrank,pathfinder,map",
             "--reference", "none", "--no-report"]


def cold_environment(root: Path) -> dict[str, str]:
    """The environment with every compile cache empty: mixbench's stores and httpstan's
    (XDG_CACHE_HOME), PyTensor's compiledir and Numba's cache under ``root``."""
    env = {**os.environ, "XDG_CACHE_HOME": str(root / "cache"), "NUMBA_CACHE_DIR": str(root / "numba"),
           "PYTENSOR_FLAGS": f"base_compiledir={root / 'pytensor'}"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # then mixbench's own jax store, under XDG_CACHE_HOME
    return env


def test_cold_grid(benchmark, mixbench_out, capsys):
    """``mixbench run`` of the cold grid from empty caches, one process as a user runs it: its
    wall seconds against the engines' fit seconds per worker, and where the rest went."""
    exe = shutil.which("mixbench") or str(Path(sys.executable).with_name("mixbench"))
    out = mixbench_out / "cold-grid"
    with tempfile.TemporaryDirectory(prefix="mixbench-cold-") as root:
        command = [exe, "run", *COLD_GRID, "--seeds", f"0-{COLD_SEEDS - 1}", "--jobs", str(JOBS), "--out", str(out),
                   "--fresh"]
        env = cold_environment(Path(root))

        def run():
            start = time.perf_counter()
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - start

        benchmark.group = "cold grid"
        seconds = benchmark.pedantic(run, rounds=1, iterations=1)
    rows = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines() if line.strip()]
    record = summarise("cold grid", rows, seconds) | {"seeds": COLD_SEEDS, "load_1min_after": os.getloadavg()[0]}
    benchmark.extra_info.update(to_jsonable(record))
    write_table(mixbench_out, record)
    with capsys.disabled():
        print(f"\n{split_line(record)}")
    assert record["cells"] == 15 * COLD_SEEDS
    assert record["compile_cold"] > 0
