"""Every cell of the grid as a pytest-benchmark benchmark: one isolated fit, its row in extra_info."""

from __future__ import annotations

import pytest

from bench.run.executors import LocalProcessExecutor
from bench.run.harness import RowStore, RunOptions, to_jsonable
from bench.run.provenance import write_run_info


def run_isolated(cell, options: RunOptions) -> dict:
    """One cell in its own process under the time limit, exactly as ``mixbench run`` runs it."""
    rows: list[dict] = []
    LocalProcessExecutor(jobs=1).run([cell], options, rows.append)
    return rows[0]


def test_fit(benchmark, cell, mixbench_out, pytestconfig):
    options = RunOptions(out_dir=mixbench_out, time_limit=pytestconfig.option.time_limit,
                         save_draws=pytestconfig.option.save_draws)
    if not (mixbench_out / "run.json").exists():
        write_run_info(mixbench_out, [cell])
    benchmark.group = f"{cell.scenario_label}: {cell.method}"
    row = benchmark.pedantic(run_isolated, args=(cell, options), rounds=1, iterations=1)
    RowStore(mixbench_out).append(row)
    benchmark.extra_info.update(to_jsonable(row))
    if row["status"] in ("failed", "crashed", "timeout"):
        pytest.fail(f"{cell.id}: {row['status']}: {row.get('error')}", pytrace=False)

