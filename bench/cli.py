"""The command line: ``mixbench run``, ``mixbench report`` and ``mixbench list``."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import fields
from pathlib import Path

from backends.base import METHODS, FitSettings
from models.errors import MixbenchError

BACKEND_NAMES = ("pymc", "numpyro", "stan")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit 2, without the usage dump."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _csv_list(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _seeds(value: str) -> list[int]:
    """'0,1,2' or a range '0-9'."""
    try:
        if "-" in value and "," not in value and not value.startswith("-"):
            lo, hi = (int(v) for v in value.split("-", 1))
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        seeds = [int(v) for v in _csv_list(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seed list or range: {value!r} (use 0,1,2 or 0-9)") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError("seeds must be non-negative")
    return seeds


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _positive_ints(value: str) -> list[int]:
    """'1000,10000' (or '1e3,1e4') -> [1000, 10000]."""
    numbers = []
    for item in _csv_list(value):
        try:
            number = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {item!r}") from None
        if not number.is_integer() or number < 1:
            raise argparse.ArgumentTypeError(f"must be positive integers, got {item!r}")
        numbers.append(int(number))
    return numbers


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


# FitSettings fields exposed as --flags; types come from the dataclass defaults.
_SETTING_HELP = {
    "chains": "NUTS chains", "warmup": "NUTS warm-up iterations", "draws": "NUTS draws per chain",
    "target_accept": "NUTS target acceptance", "max_treedepth": "NUTS maximum tree depth",
    "sampler": "NUTS implementation: pymc backend nutpie|pymc|numpyro, stan backend cmdstanpy|pystan",
    "precision": "float64 (default) or float32", "vi_iterations": "VI/MAP optimisation iterations",
    "optimizer": "VI optimiser name (adam, adagrad_window, sgd, ...)", "learning_rate": "VI learning rate",
    "vi_tolerance": "VI convergence tolerance on parameters", "vi_draws": "draws taken from a VI approximation",
    "batch_size": "minibatch size for advi-minibatch-*",
    "map_starts": "seeded random starts of MAP and of Laplace's mode search; the best is kept",
    "advi_eta": "Stan ADVI step size eta (default: Stan adapts it)",
    "pathfinder_paths": "Pathfinder paths (single-path when 1)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mixbench", description=__doc__.strip().splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run = sub.add_parser("run", help="fit a grid of scenarios x backends x methods x seeds",
                         description="Fit every cell of a grid, write each row as it finishes, then the report.")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--scenario", default=None, help="built-in scenario (default forum-small; see `mixbench list`)")
    source.add_argument("--data", type=Path, default=None, help="a CSV file: covariate columns and a response column")
    run.add_argument("--covariates", type=_csv_list, default=None, help="data file covariate columns (default: all but the response)")
    run.add_argument("--response", default="y", help="data file response column (default y)")
    run.add_argument("--backends", type=_csv_list, default=list(BACKEND_NAMES), help="comma-separated (default all); a plug-in backend as module:Class")
    run.add_argument("--methods", type=_csv_list, default=["nuts"], help=f"comma-separated from: {', '.join(METHODS)} (default nuts)")
    run.add_argument("--seeds", type=_seeds, default=[0], help="inference seeds: 0,1,2 or 0-9 (default 0)")
    run.add_argument("--N", type=_positive_ints, default=None,
                     help="data size(s) for a built-in scenario: 2000 or 1000,10000,100000 (a cost curve over N)")
    run.add_argument("--data-seed", type=int, default=0, help="seed of the simulated data set (default 0)")
    spec = run.add_argument_group("spec overrides")
    spec.add_argument("--K", type=_positive_int, default=None, help="components (data files default to 2)")
    spec.add_argument("--intercept", action=argparse.BooleanOptionalAction, default=None, help="per-component intercepts")
    spec.add_argument("--sigma", choices=("shared", "per-component"), default=None)
    spec.add_argument("--ordering", choices=("none", "intercept", "slope"), default=None)
    spec.add_argument("--likelihood", choices=("mixture", "forum-original", "forum-batch-lse", "forum-log-sigma"), default=None)
    settings = run.add_argument_group("fit settings")
    defaults = FitSettings()
    for f in fields(FitSettings):
        if f.name not in _SETTING_HELP:
            continue
        default = getattr(defaults, f.name)
        kind = {int: _positive_int, float: _positive_float}.get(type(default), str)
        if f.name == "warmup":
            kind = int
        if f.name == "advi_eta":
            kind = _positive_float
        settings.add_argument(f"--{f.name.replace('_', '-')}", dest=f"set_{f.name}", type=kind, default=None,
                              help=f"{_SETTING_HELP[f.name]} (default {default})")
    settings.add_argument("--no-total-size", dest="set_minibatch_total_size", action="store_const", const=False,
                          default=None, help="minibatch ADVI without total_size (the forum thread's bug)")
    settings.add_argument("--no-pathfinder-resample", dest="set_pathfinder_resample", action="store_const",
                          const=False, default=None,
                          help="pool every Pathfinder path's draws instead of PSIS importance resampling")
    runner = run.add_argument_group("running")
    runner.add_argument("--out", type=Path, default=None, help="output directory (default results/<scenario>); rerunning resumes")
    runner.add_argument("--jobs", type=_positive_int, default=1, help="cells run in parallel (default 1)")
    runner.add_argument("--time-limit", type=_positive_float, default=1800.0, help="seconds per cell (default 1800)")
    runner.add_argument("--save-draws", action="store_true", help="save each cell's draws as netCDF")
    runner.add_argument("--retry-failed", action="store_true", help="rerun failed, crashed and timed-out cells")
    runner.add_argument("--fresh", action="store_true", help="discard earlier rows in --out instead of resuming")
    runner.add_argument("--no-report", action="store_true", help="skip the report")

    report = sub.add_parser("report", help="build the report from harness runs or pytest-benchmark JSON",
                            description="Build report.md, report.html and figures from results.")
    report.add_argument("paths", nargs="+", type=Path, help="run directories, cells.jsonl files or pytest-benchmark JSON files")
    report.add_argument("--out", type=Path, default=None, help="report directory (default: the first run directory)")

    sub.add_parser("list", help="scenarios, backends and methods, and what this machine can run",
                   description="List scenarios, backends and methods with what is available here.")
    return parser


def check_backend_name(name: str) -> None:
    """A registered backend, or a plug-in named 'package.module:Class' (see backends.get_backend)."""
    if name not in BACKEND_NAMES and ":" not in name:
        raise MixbenchError(f"backend: unknown {name!r}; known: {', '.join(BACKEND_NAMES)} (or module:Class)")


def _cells_from_args(args) -> tuple[list, str]:
    from bench.harness import make_grid
    from models.scenarios import DEFAULT_SCENARIO, get_scenario
    from models.spec import MixtureSpec

    for name in args.backends:
        check_backend_name(name)
    for name in args.methods:
        if name not in METHODS:
            raise MixbenchError(f"method: unknown {name!r}; known: {', '.join(METHODS)}")
    settings = {name[4:]: value for name, value in vars(args).items() if name.startswith("set_") and value is not None}
    FitSettings.from_dict(settings)  # impossible settings fail here, before any cell runs
    spec = {k: v for k, v in (("K", args.K), ("intercept", args.intercept), ("sigma", args.sigma),
                              ("ordering", args.ordering), ("likelihood", args.likelihood)) if v is not None}
    common = dict(settings=settings, spec=spec, data_seed=args.data_seed)
    if args.data is not None:
        from models.datafile import load_csv

        dataset = load_csv(args.data, args.covariates, args.response)  # a malformed file fails now
        MixtureSpec.from_dict({"D": dataset.D, **spec})
        scenario, label = str(args.data.resolve()), args.data.stem
        common.update(covariates=tuple(dataset.covariates), response=args.response)
    else:
        if args.covariates is not None:
            raise MixbenchError("--covariates: only applies with --data")
        scenario = label = args.scenario or DEFAULT_SCENARIO
        built_in = get_scenario(scenario)
        MixtureSpec.from_dict({**built_in.spec.to_dict(), **spec})
        if args.N:
            # One cell per size: rows carry N, and the report draws the cost curve over N.
            cells = [cell for n in args.N
                     for cell in make_grid([scenario], args.backends, args.methods, args.seeds, n=n, **common)]
            return cells, label
    return make_grid([scenario], args.backends, args.methods, args.seeds, **common), label


class Progress:
    """One status line naming the cell in flight and its time so far."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.live = stream.isatty()
        self.started = time.perf_counter()

    def __call__(self, event: str, info: dict) -> None:
        if event == "plan":
            self.total = info["todo"]
            if info["finished_before"]:
                print(f"resuming: {info['finished_before']} cells already finished, {info['todo']} to run",
                      file=self.stream, flush=True)
        elif event == "start" and not self.live:
            print(f"[{self.done + 1}/{self.total}] {info['cell_id']} ...", file=self.stream, flush=True)
        elif event == "tick" and self.live:
            width = shutil.get_terminal_size((100, 20)).columns
            text = f"[{self.done + 1}/{self.total}] {info['cell_id']}  {info['elapsed']:.0f} s"
            print("\r" + text[: width - 1].ljust(width - 1), end="", file=self.stream, flush=True)
        elif event == "done":
            self.done += 1
            status = info.get("status")
            detail = f": {info.get('error') or info.get('reason')}" if status != "ok" else ""
            line = f"[{self.done}/{self.total}] {info['cell_id']} {status} in {info.get('time_cell', 0):.1f} s{detail}"
            print(("\r" if self.live else "") + line, file=self.stream, flush=True)


def cmd_run(args) -> int:
    from bench.executors import LocalProcessExecutor
    from bench.harness import CELLS_FILE, RunOptions, run_grid
    from bench.summary import print_summary

    cells, label = _cells_from_args(args)
    out_dir = args.out or Path("results") / label
    if args.fresh and (out_dir / CELLS_FILE).exists():
        (out_dir / CELLS_FILE).unlink()
    options = RunOptions(out_dir=out_dir, time_limit=args.time_limit, save_draws=args.save_draws,
                         retry_failed=args.retry_failed)
    ids = {c.id for c in cells}
    progress = Progress(len(cells))
    rows = run_grid(cells, options, LocalProcessExecutor(jobs=args.jobs), progress)
    rows = [r for r in rows if r["cell_id"] in ids]
    print_summary(rows, cells)
    if not args.no_report:
        from bench.report import write_report

        paths = write_report([out_dir], out_dir)
        print(f"\nreport: {paths['markdown']}  (html: {paths['html']})")
    print(f"rows: {out_dir / CELLS_FILE}")
    return 0


def cmd_report(args) -> int:
    from bench.report import write_report

    for path in args.paths:
        if not path.exists():
            raise MixbenchError(f"{path}: not found")
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    paths = write_report(args.paths, out)
    print(f"report: {paths['markdown']}  (html: {paths['html']})")
    return 0


def cmd_list(args) -> int:
    from bench.availability import describe

    print(describe())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"run": cmd_run, "report": cmd_report, "list": cmd_list}[args.command]
    try:
        return handler(args)
    except MixbenchError as exc:
        print(f"mixbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mixbench {args.command}: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
