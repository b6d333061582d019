"""pytest-benchmark suite options, the cell grid, and the report written when the session ends.

    pytest bench/ --scenario forum --backends pymc,numpyro,stan --methods nuts --seeds 0,1 \
        --benchmark-json=results/forum-bench.json

Each cell is one benchmark (pedantic, one round), grouped by scenario and method, with its harness
row in ``extra_info``; ``--benchmark-autosave`` and ``--benchmark-compare`` work as usual.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from backends.base import METHODS
from bench.cli import BACKEND_NAMES, check_backend_name
from bench.harness import Cell, make_grid
from models.errors import MixbenchError
from models.scenarios import DEFAULT_SCENARIO, SCENARIOS


def pytest_addoption(parser):
    group = parser.getgroup("mixbench", "mixbench benchmark grid")
    group.addoption("--scenario", default=DEFAULT_SCENARIO, help=f"scenario(s), comma-separated: {', '.join(SCENARIOS)}")
    group.addoption("--backends", default=",".join(BACKEND_NAMES), help="backends, comma-separated")
    group.addoption("--methods", default="nuts", help=f"methods, comma-separated: {', '.join(METHODS)}")
    group.addoption("--seeds", default="0", help="inference seeds, comma-separated")
    group.addoption("--n-obs", default=None,
                    help="data size override for the scenarios; comma-separated sizes give one cell per size")
    group.addoption("--cell-time-limit", type=float, default=1800.0, help="seconds per cell")
    group.addoption("--mixbench-out", default=None, help="where rows and the report go (default results/bench-<time>)")


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _grid(config) -> list[Cell]:
    scenarios = _split(config.getoption("--scenario"))
    backends = _split(config.getoption("--backends"))
    methods = _split(config.getoption("--methods"))
    for name in scenarios:
        if name not in SCENARIOS:
            raise pytest.UsageError(f"--scenario: unknown {name!r}; known: {', '.join(SCENARIOS)}")
    for name in backends:
        try:
            check_backend_name(name)
        except MixbenchError as exc:
            raise pytest.UsageError(f"--backends: {exc}") from None
    for name in methods:
        if name not in METHODS:
            raise pytest.UsageError(f"--methods: unknown {name!r}; known: {', '.join(METHODS)}")
    try:
        seeds = [int(s) for s in _split(config.getoption("--seeds"))]
    except ValueError:
        raise pytest.UsageError("--seeds: expected integers, e.g. 0,1,2") from None
    sizes = config.getoption("--n-obs")
    try:
        ns = [int(float(n)) for n in _split(sizes)] if sizes else [None]
    except ValueError:
        raise pytest.UsageError("--n-obs: expected integers, e.g. 1000,10000") from None
    return [cell for n in ns for cell in make_grid(scenarios, backends, methods, seeds, n=n)]


def pytest_generate_tests(metafunc):
    if "cell" in metafunc.fixturenames:
        cells = _grid(metafunc.config)
        metafunc.parametrize("cell", cells, ids=[f"{c.scenario_label}-{c.backend}-{c.method}-s{c.seed}" for c in cells])


@pytest.fixture(scope="session")
def mixbench_out(pytestconfig) -> Path:
    out = pytestconfig.getoption("--mixbench-out")
    if out is None:
        out = Path("results") / time.strftime("bench-%Y%m%d-%H%M%S")
        pytestconfig.option.mixbench_out = str(out)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def pytest_sessionfinish(session, exitstatus):
    out = session.config.getoption("--mixbench-out")
    if not out or not (Path(out) / "cells.jsonl").is_file():
        return
    from bench.report import write_report

    paths = write_report([Path(out)], Path(out))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"mixbench report: {paths['markdown']} (html: {paths['html']})")
