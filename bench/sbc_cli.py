"""``mixbench sbc``: simulation-based calibration of backend x method lines (bench.sbc) on the
harness's cells (bench.harness.run_grid: isolated workers, resume, time limits, Dask), then the
SBC report (bench.sbc_report)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from models.errors import MixbenchError

DEFAULT_SCENARIO = "lines-K2-D1-sep4-wmin0.5-sr1"


def _edges(text: str) -> list[float]:
    try:
        edges = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MixbenchError(f"--sep-bands: expected numbers like 1,2,4,inf, got {text!r}") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0 or any(map(math.isnan, edges)):
        raise MixbenchError(f"--sep-bands: give at least two increasing edges >= 0 (e.g. 2,inf), got {text!r}")
    return edges


def _spec_field(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise MixbenchError(f"--spec: expected FIELD=VALUE, got {text!r}")
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value.strip()


def add_sbc_parser(sub) -> None:
    from bench.cli import _add_executor_options, _add_fit_settings, _csv_list, _positive_float, _positive_int, _seeds

    sbc = sub.add_parser("sbc", help="simulation-based calibration of backend x method lines",
                         description="Simulate data sets from the model's prior (restricted to a separation band "
                                     "and a smallest weight), fit each once per backend x method line as cells "
                                     "(isolated, resumable), rank label-invariant test quantities of the truth among "
                                     "the thinned draws, and report ECDF-PIT plots, per-quantity verdicts, failed "
                                     "and flagged shares, cost, and which line to run per band (bench/sbc.py).")
    sbc.add_argument("--scenario", default=DEFAULT_SCENARIO,
                     help=f"the model (its spec and priors) whose prior the data come from (default {DEFAULT_SCENARIO}: "
                          "two lines, no intercepts, shared sigma ~ Uniform(0, 10))")
    sbc.add_argument("--backends", metavar="NAME,NAME", type=_csv_list, default=["numpyro", "pymc"],
                     help="backends (default numpyro,pymc)")
    sbc.add_argument("--methods", metavar="LINE,LINE", type=_csv_list,
                     default=["nuts", "advi-meanfield", "advi-fullrank", "pathfinder"],
                     help="method lines as in sweep (nuts:ordering=slope) (default nuts,advi-meanfield,advi-fullrank,pathfinder)")
    sbc.add_argument("--spec", dest="sbc_spec", metavar="FIELD=VALUE", action="append", default=[],
                     help="a spec field for every line, repeatable, the value as JSON or text: K=3, intercept=true, "
                          "sigma=per-component, sigma_prior='{\"family\": \"halfnormal\", \"scale\": 2}' "
                          "(the truth is drawn from the prior, so any field may change)")
    sbc.add_argument("--sims", metavar="SEEDS", type=_seeds, default=list(range(100)),
                     help="data sets: a list 0,1,2 or a range 0-99 (default 0-99); each seeds its prior draw, data and fit")
    sbc.add_argument("--N", type=_positive_int, default=100, help="observations per data set (default 100)")
    sbc.add_argument("--sep-bands", metavar="EDGES", default="2,inf",
                     help="separation bands, one region (difficulty point) between each pair of edges: 1,2,4,inf "
                          "(default 2,inf)")
    sbc.add_argument("--min-weight", metavar="W", type=float, default=0.2,
                     help="every prior draw's weights at least this (default 0.2): no empty component")
    sbc.add_argument("--max-draws", metavar="INT", type=_positive_int, default=1000,
                     help="at most this many thinned draws ranked per data set (default 1000)")
    sbc.add_argument("--alpha", metavar="X", type=_positive_float, default=0.05,
                     help="test level, Bonferroni-split over a line's quantities (default 0.05)")
    _add_fit_settings(sbc.add_argument_group("fit settings (defaults: mixbench run's)"))
    runner = sbc.add_argument_group("running")
    runner.add_argument("--out", metavar="DIR", type=Path, default=Path("results") / "sbc",
                        help="output directory (default results/sbc); rerunning resumes")
    runner.add_argument("--jobs", metavar="INT", type=_positive_int, default=1, help="cells run in parallel (default 1)")
    _add_executor_options(runner)
    runner.add_argument("--time-limit", metavar="SECONDS", type=_positive_float, default=600.0,
                        help="a cell still running after this is stopped and recorded as timeout (default 600)")
    runner.add_argument("--retry-failed", action="store_true", help="rerun failed, crashed and timed-out cells")
    runner.add_argument("--fresh", action="store_true", help="discard earlier rows in --out instead of resuming")
    runner.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure")
    sbc.set_defaults(handler=cmd_sbc)


def sbc_cells_from_args(args) -> list:
    """The cells, every argument checked before any runs (MixbenchError, one line)."""
    from backends.base import METHODS, FitSettings
    import numpy as np

    from bench.harness import check_fit_size
    from bench.preflight import check_backend_name, check_engine_names
    from bench.sbc import Region, check_sbc_spec, draw_in_region, plan_sbc_cells
    from bench.sweep import parse_method_line
    from models.priors import check_spec_fields
    from models.scenarios import get_scenario

    for name in args.backends:
        check_backend_name(name)
    lines = [parse_method_line(text, METHODS) for text in args.methods]
    if len({line.label for line in lines}) != len(lines):
        raise MixbenchError("--methods: a method line is repeated")
    spec = check_spec_fields(dict(_spec_field(text) for text in args.sbc_spec), "--spec")
    settings = {name[4:]: value for name, value in vars(args).items() if name.startswith("set_") and value is not None}
    fit_settings = FitSettings.from_dict(settings)
    check_engine_names(args.backends, settings)
    base = get_scenario(args.scenario).spec
    edges = _edges(args.sep_bands)
    regions = [Region(lo, hi, args.min_weight) for lo, hi in zip(edges, edges[1:])]
    for line in lines:
        try:
            fitted = base.overridden({**spec, **line.spec})
        except MixbenchError as exc:
            raise MixbenchError(f"--spec/--methods {line.label}: {exc}") from None
        check_sbc_spec(fitted)
        if args.min_weight * fitted.K > 1:
            raise MixbenchError(f"--min-weight: {fitted.K} weights of at least {args.min_weight:g} sum to more than 1")
        check_fit_size(fitted.K, args.N, line.method, fit_settings)
        for region in regions:  # an empty region fails here, not in every cell
            draw_in_region(fitted, region, np.random.default_rng(0))
    return plan_sbc_cells(args.scenario, regions, args.backends, lines, args.sims, args.N, settings, spec,
                          args.max_draws)


def cmd_sbc(args) -> int:
    from backends import compile_rank
    from bench.bytecode import ensure_bytecode
    from bench.cli import Progress, _writing_under
    from bench.executor_choice import make_executor
    from bench.executors import LOGS_DIR
    from bench.harness import CELLS_FILE, RunOptions, run_grid
    from bench.sbc_report import write_sbc_report

    cells = sorted(sbc_cells_from_args(args), key=lambda cell: compile_rank(cell.backend))
    executor = make_executor(args.executor, jobs=args.jobs, scheduler=args.scheduler)
    ensure_bytecode()
    _writing_under.append(args.out)
    options = RunOptions(out_dir=args.out, time_limit=args.time_limit, retry_failed=args.retry_failed,
                         fresh=args.fresh)
    start = time.perf_counter()
    print(f"sbc: {len(cells)} cells into {args.out}", file=sys.stderr, flush=True)
    result = run_grid(cells, options, executor, Progress(len(cells), log_dir=args.out / LOGS_DIR))
    print(f"sbc: finished in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    ids = {c.id for c in cells}
    path = write_sbc_report([r for r in result if r["cell_id"] in ids], args.out, args.alpha)
    print(f"report: {path}")
    print(f"rows: {args.out / CELLS_FILE}")
    if result.unwritten:
        print(f"mixbench sbc: error: {len(result.unwritten)} row(s) could not be written to {args.out / CELLS_FILE}; "
              "free space and rerun to run those cells again", file=sys.stderr)
        return 1
    return 0
