"""pytest-benchmark suite options, the cell grid, and the report written when the session ends.

    uv run pytest bench/benchmarks/test_fits.py --scenario forum --backends pymc,numpyro,stan --methods nuts \
        --seeds 0-1 --benchmark-json=results/forum-bench.json

The grid options are those of ``mixbench run``, copied from its parser: the same names, the same
forms (``--seeds 0-9`` or ``0,1,2``, ``--N 1000,10000``), the same defaults and checks, and the
grid is built by the same function, so a command moves between the two unchanged. Options that
only make sense for ``mixbench run`` (``--jobs``, ``--executor``, ``--scheduler``, ``--retry-failed``,
``--fresh``, ``--no-report``) are left out; ``--out`` defaults to ``results/bench-<date>-<time>``.

Each cell is one benchmark (pedantic, one round), grouped by scenario and method, with its harness
row in ``extra_info``; ``--benchmark-autosave`` and ``--benchmark-compare`` work as usual.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pytest

from bench.cli import build_parser
from bench.run.harness import Cell
from bench.run.plan import reference_settings, run_cells
from bench.run.references import attach_references
from models.errors import MixbenchError

# dests of `mixbench run` options a benchmark session has no use for.
RUN_ONLY = {"help", "jobs", "retry_failed", "fresh", "no_report", "debug",  # pytest has its own --debug
            "executor", "scheduler"}  # each benchmark is one cell in its own process (bench/benchmarks/test_fits.py)
# Earlier names of this suite's options, still accepted, not shown.
OLD_NAMES = {"N": "--n-obs", "time_limit": "--cell-time-limit", "out": "--mixbench-out"}
HELP = {"out": "where rows and the report go (default results/bench-<date>-<time>)"}


def run_options() -> list[argparse.Action]:
    """The options of ``mixbench run`` (argparse actions), less the run-only ones."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices["run"]._actions if a.option_strings and a.dest not in RUN_ONLY]


def pytest_addoption(parser):
    group = parser.getgroup("mixbench", "mixbench grid (the options of mixbench run; see mixbench run --help)")
    for action in run_options():
        attrs = {"dest": action.dest, "default": action.default, "help": HELP.get(action.dest, action.help)}
        if isinstance(action, argparse.BooleanOptionalAction):
            attrs["action"] = argparse.BooleanOptionalAction
            names = [s for s in action.option_strings if not s.startswith("--no-")]
        elif isinstance(action, argparse._StoreConstAction):  # store_true/false are store_const too
            attrs.update(action="store_const", const=action.const)
            names = action.option_strings
        else:
            attrs.update(type=action.type, choices=action.choices, metavar=action.metavar)
            names = action.option_strings
        group.addoption(*names, **attrs)
        if action.dest in OLD_NAMES:
            group.addoption(OLD_NAMES[action.dest], dest=action.dest, type=action.type, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)


def pytest_configure(config):
    from bench.run.bytecode import ensure_bytecode

    ensure_bytecode()


def _grid(config) -> list[Cell]:
    options = config.option
    if options.scenario is not None and options.data is not None:
        raise pytest.UsageError("--scenario and --data: give one or the other")
    try:
        cells, _ = run_cells(options)
        # As mixbench run: every cell of a data set shares its reference posterior.
        return attach_references(cells, options.reference, reference_settings(options),
                                 say=lambda text: print(text, file=sys.stderr, flush=True))
    except MixbenchError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_generate_tests(metafunc):
    if "cell" in metafunc.fixturenames:
        cells = _grid(metafunc.config)
        metafunc.parametrize("cell", cells, ids=[f"{c.scenario_label}-{c.backend}-{c.method}-s{c.seed}"
                                                 + (f"-N{c.n}" if c.n is not None else "") for c in cells])


@pytest.fixture(scope="session")
def mixbench_out(pytestconfig) -> Path:
    out = pytestconfig.option.out
    if out is None:
        out = Path("results") / time.strftime("bench-%Y%m%d-%H%M%S")
        pytestconfig.option.out = out
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def pytest_sessionfinish(session, exitstatus):
    out = getattr(session.config.option, "out", None)
    if not out or not (Path(out) / "cells.jsonl").is_file():
        return
    from bench.report.document import write_report

    paths = write_report([Path(out)], Path(out))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"mixbench report: {paths['markdown']} (html: {paths['html']})")
