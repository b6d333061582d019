"""Throughput of the three executors on one grid: cells per hour and seconds spent compiling.

    uv run pytest bench/benchmarks/test_throughput.py --benchmark-json=results/throughput.json

The grid: pymc, numpyro and stan x nuts, advi-meanfield, pathfinder and map x MIXBENCH_THROUGHPUT_SEEDS
seeds (default 10) on forum-small at the default fit settings, run three times: by the
one-process-per-cell executor (fresh), the warm local executor (warm) and a Dask LocalCluster
(dask), each with MIXBENCH_THROUGHPUT_JOBS workers (default 2). Each executor is one benchmark
(one round: the grid is the repetition); its extra_info holds cells, cells_per_hour,
compile_seconds (the rows' t_compile summed), how many compiles were cold and warm, and the
statuses. ``<out>/throughput.md`` puts the three side by side.

Before any executor is timed, one cell per (backend, method) runs once, so the disk stores (JAX
programs, PyTensor functions, nutpie and CmdStan builds) hold every program: each executor
starts from the same disk, and what differs is only what stays in a worker's memory.
"""

from __future__ import annotations

import json
import os
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


def summarise(kind: str, rows: list[dict], seconds: float) -> dict:
    compile_states = [r.get("compile") for r in rows]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    return {
        "executor": kind, "jobs": JOBS, "seeds": SEEDS, "cells": len(rows), "wall_seconds": seconds,
        "cells_per_hour": 3600 * len(rows) / seconds,
        "compile_seconds": sum(float(r["t_compile"]) for r in rows if isinstance(r.get("t_compile"), (int, float))),
        "compile_cold": compile_states.count("cold"), "compile_warm": compile_states.count("warm"),
        "startup_seconds": sum(float(r["t_startup"]) for r in rows if isinstance(r.get("t_startup"), (int, float))),
        "statuses": statuses,
    }


def write_table(out: Path, record: dict) -> None:
    path = out / "throughput.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    records[record["executor"]] = record
    path.write_text(json.dumps(records, indent=1))
    lines = ["| executor | workers | cells | wall s | cells/hour | compile s (sum) | cold | warm | statuses |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for kind in EXECUTORS:
        if kind in records:
            r = records[kind]
            lines.append(f"| {kind} | {r['jobs']} | {r['cells']} | {r['wall_seconds']:.0f} | {r['cells_per_hour']:.0f} "
                         f"| {r['compile_seconds']:.1f} | {r['compile_cold']} | {r['compile_warm']} | "
                         + ", ".join(f"{n} {s}" for s, n in sorted(r["statuses"].items())) + " |")
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
