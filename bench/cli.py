"""The command line: ``mixbench run``, ``mixbench sweep``, ``mixbench report``, ``mixbench compare``,
``mixbench list`` and ``mixbench reference``.

Every failure ends in one line on stderr and a non-zero exit, without a traceback (``--debug``
shows it): 2 for bad input (MixbenchError: arguments, data, an output or cache directory that
cannot be used), 1 for a failure while working (OSError: a full disk; rows that could not be
written) or an internal error, 128 + the signal number when SIGINT (130), SIGTERM (143) or SIGHUP
(129) stopped the command.
"""

from __future__ import annotations

import argparse
import gc
import sys
import textwrap
import time
import traceback
import warnings
from dataclasses import fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from backends import compile_rank
from backends.base import METHODS, FitSettings
from bench.reference.posterior import ReferenceSettings
from bench.report.compare import compare, summary_lines, write_comparison
from bench.report.document import markdown_table, write_report
from bench.report.run_files import keep_data_copy
from bench.report.sbc import write_sbc_report
from bench.report.summary import print_summary
from bench.report.sweep_tables import sweep_tables
from bench.run.availability import describe
from bench.run.bytecode import write_bytecode_as_imported
from bench.run.executor_choice import make_executor
from bench.run.executors import LOGS_DIR
from bench.run.harness import CELLS_FILE, RunInterrupted, RunOptions, prepare_out_dir, run_grid, stop_on_signals
from bench.run.plan import (
    available_cores,
    data_prior_note,
    reference_problem,
    reference_settings,
    run_cells,
    sweep_cells,
)
from bench.run.progress import Progress
from bench.run.references import attach_references, command_reference
from bench.run.sbc import DEFAULT_SCENARIO as SBC_SCENARIO
from bench.run.sbc import sbc_cells
from bench.run.sweep import SWEEP_REFERENCE, SWEEP_REFERENCE_METHOD, SWEEP_SETTINGS
from bench.score.modes import modes_table_lines
from models.errors import MixbenchError, MixbenchWarning
from models.families import AXES
from models.priors import NU_HELP, SIGMA_PRIOR_HELP
from models.spec import ERRORS, SHARED, WEIGHTS

BACKEND_NAMES = ("pymc", "numpyro", "stan")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's, without breaking lines inside hyphenated names (advi-minibatch-fullrank)."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text, width, indent):
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr and exit 2, without the usage dump."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

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


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return number


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
    "chains": "NUTS chains", "warmup": "NUTS warm-up iterations per chain", "draws": "NUTS draws per chain",
    "target_accept": "NUTS target acceptance rate", "max_treedepth": "NUTS maximum tree depth",
    "sampler": "NUTS implementation where a backend has several: pymc takes nutpie, pymc or numpyro; "
               "stan takes cmdstanpy or pystan",
    "precision": "floating-point precision", "vi_iterations": "VI and MAP optimisation iterations",
    "optimizer": "VI optimiser: adam, adagrad_window, sgd, ...", "learning_rate": "VI learning rate",
    "vi_tolerance": "VI convergence tolerance on the parameters", "vi_draws": "draws taken from a VI approximation",
    "batch_size": "minibatch size of the advi-minibatch-* methods",
    "map_starts": "seeded random starts of MAP and of Laplace's mode search; the best is kept",
    "advi_eta": "Stan ADVI step size eta",
    "pathfinder_paths": "Pathfinder paths (single-path when 1)",
    "pathfinder_resampling": "Pathfinder draws: psis (importance-resampled by PSIS weights, as Stan) "
                             "or none (every path's draws pooled with equal weight)",
}
# Where a default is not a plain value, what it means.
_SETTING_DEFAULT = {"sampler": "the backend's own: nutpie for pymc; cmdstanpy for stan where CmdStan is "
                               "installed, else pystan", "advi_eta": "Stan adapts it"}
_SETTING_METAVAR = {"sampler": "NAME", "precision": "{float64,float32}", "optimizer": "NAME", "advi_eta": "X",
                    "pathfinder_resampling": "{psis,none}"}


def _version() -> str:
    try:
        return version("mixbench")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_prior_options(group) -> None:
    """Every prior of the spec, a spec file, and --standardize (run and reference share them)."""
    group.add_argument("--spec", dest="spec_file", metavar="FILE", type=Path, default=None,
                       help="a TOML or JSON file of spec fields (priors included); the options here override it")
    group.add_argument("--slope-prior", default=None, metavar="MU,SD", help="Normal(MU, SD) prior on every slope (default 0,2)")
    group.add_argument("--intercept-prior", default=None, metavar="MU,SD", help="Normal(MU, SD) prior on every intercept (default 0,2)")
    group.add_argument("--sigma-prior", default=None, metavar="FAMILY:PARAMS", help=SIGMA_PRIOR_HELP)
    group.add_argument("--pi-alpha", default=None, metavar="A[,A2,...]", help="Dirichlet concentration(s) of the weights (default 1)")
    group.add_argument("--errors", default=None, choices=ERRORS,
                       help="error distribution of every component: normal (default) or student-t (robust mixture regression)")
    group.add_argument("--nu", default=None, metavar="NU|gamma:SHAPE,RATE", help=NU_HELP)
    group.add_argument("--shared", default=None, choices=SHARED,
                       help="coefficients shared by all components: none (default), slopes "
                            "(y = x . w + b_z + sigma_z eps: components differ in intercept and scale) or intercepts")
    group.add_argument("--weights", default=None, choices=WEIGHTS,
                       help="mixing weights: dirichlet (constant, default) or softmax (a regression on the covariates, "
                            "pi_k(x) = softmax(gamma_k0 + x . gamma_k), the last component the reference, gamma_K = 0)")
    group.add_argument("--gamma-prior", default=None, metavar="MU,SD",
                       help="Normal(MU, SD) prior on the softmax weights' coefficients (default 0,2.5: rstanarm's "
                            "for GLM coefficients, Gelman et al. 2008)")
    group.add_argument("--standardize", action="store_true",
                       help="fit centred and scaled x and y (priors then apply on that scale); report on the data's scale")


def _add_reference_options(group, prefix: str = "--reference-", method_default: str | None = None) -> None:
    defaults = ReferenceSettings()
    method_default = method_default or defaults.method
    group.add_argument(f"{prefix}method", dest="ref_method", choices=("modes", "nuts"), default=method_default,
                       help="modes: find the posterior's modes from many starts, sample each with NumPyro NUTS and "
                            "weight it by its mass (bridge and importance sampling); nuts: one multi-chain NUTS run "
                            f"with --{prefix.strip('-')}-backend (default {method_default})")
    group.add_argument(f"{prefix}backend", dest="ref_backend", choices=BACKEND_NAMES, default=defaults.backend,
                       help=f"backend of the reference's NUTS run with method nuts (default {defaults.backend})")
    group.add_argument(f"{prefix}chains", dest="ref_chains", type=_positive_int, default=defaults.chains,
                       help=f"reference NUTS chains (default {defaults.chains})")
    group.add_argument(f"{prefix}warmup", dest="ref_warmup", type=_positive_int, default=defaults.warmup,
                       help=f"reference NUTS warm-up iterations (default {defaults.warmup})")
    group.add_argument(f"{prefix}draws", dest="ref_draws", type=_positive_int, default=defaults.draws,
                       help=f"reference NUTS draws per chain (default {defaults.draws})")
    group.add_argument(f"{prefix}seed", dest="ref_seed", type=int, default=defaults.seed,
                       help=f"reference NUTS seed (default {defaults.seed})")


def _add_fit_settings(group, defaults_here: dict | None = None) -> None:
    """One option per FitSettings field (run and sweep share them); ``defaults_here`` are the
    command's own defaults where they differ from FitSettings'."""
    defaults = FitSettings()
    for f in fields(FitSettings):
        if f.name not in _SETTING_HELP:
            continue
        default = (defaults_here or {}).get(f.name, getattr(defaults, f.name))
        kind = {int: _positive_int, float: _positive_float}.get(type(getattr(defaults, f.name)), str)
        if f.name == "warmup":
            kind = int
        if f.name == "advi_eta":
            kind = _positive_float
        metavar = _SETTING_METAVAR.get(f.name, {int: "INT", float: "X"}.get(type(default), "VALUE"))
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"set_{f.name}", type=kind, default=None,
                           metavar=metavar,
                           help=f"{_SETTING_HELP[f.name]} (default {_SETTING_DEFAULT.get(f.name, default)})")


def _add_executor_options(group) -> None:
    """--executor and --scheduler (run and sweep share them)."""
    group.add_argument("--executor", choices=("warm", "fresh", "dask"), default=None,
                        help="warm (default): worker processes kept for the cells of one backend, compiled "
                             "programs reused; fresh: a new process per cell; dask: a Dask cluster (--scheduler, "
                             "or a LocalCluster of --jobs workers)")
    group.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                        help="send the cells to the Dask cluster of this scheduler (README: Running on a Dask cluster)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="mixbench", description="Bayesian mixtures of linear regressions in PyMC, "
                           "NumPyro and Stan: recovery, label switching and cost, measured.")
    parser.add_argument("--version", action="version", version=f"mixbench {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser, metavar="COMMAND")
    parser.set_defaults(subcommands=sub.choices)

    run = sub.add_parser("run", help="fit a grid of scenarios x backends x methods x seeds",
                         description="Fit every cell of a grid, write each row as it finishes, then the report.")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--scenario", metavar="NAME", default=None,
                        help="built-in scenario (default forum-small; mixbench list shows them all)")
    source.add_argument("--data", metavar="FILE.csv", type=Path, default=None,
                        help="fit a CSV file instead: a header row, then numbers; covariate columns and a "
                             "response column (README: Your own data). Before fitting, a response whose mean or "
                             "sd is more than 5 prior-predictive sds from the priors' (or below a sigma prior's "
                             "1%% quantile) is named in one line with the fix; the run goes on")
    run.add_argument("--covariates", metavar="COL,COL", type=_csv_list, default=None,
                     help="with --data: the covariate columns, in order (default every column but the response)")
    run.add_argument("--response", metavar="COL", default="y", help="with --data: the response column (default y)")
    run.add_argument("--backends", metavar="NAME,NAME", type=_csv_list, default=list(BACKEND_NAMES),
                     help=f"backends, comma-separated (default {','.join(BACKEND_NAMES)}); a plug-in backend "
                          "as package.module:Class")
    run.add_argument("--methods", metavar="NAME,NAME", type=_csv_list, default=["nuts"],
                     help=f"methods, comma-separated, from {', '.join(METHODS)} (default nuts)")
    run.add_argument("--seeds", metavar="SEEDS", type=_seeds, default=[0],
                     help="inference seeds: a list 0,1,2 or a range 0-9 (default 0)")
    run.add_argument("--N", metavar="N[,N...]", type=_positive_ints, default=None,
                     help="data size of a built-in scenario (default the scenario's own); several, e.g. "
                          "1000,10000,100000, fit each and draw the cost curve over N")
    run.add_argument("--data-seed", metavar="SEED", type=int, default=0,
                     help="seed of the simulated data set (default 0)")
    spec = run.add_argument_group("model (default: the scenario's; for --data, K = 2, no intercepts, shared sigma)")
    spec.add_argument("--K", metavar="K", type=_positive_int, default=None, help="mixture components")
    spec.add_argument("--intercept", action=argparse.BooleanOptionalAction, default=None,
                      help="give each component an intercept")
    spec.add_argument("--sigma", choices=("shared", "per-component"), default=None,
                      help="one noise scale for all components, or one each")
    spec.add_argument("--ordering", choices=("none", "intercept", "slope"), default=None,
                      help="order the components by intercept or by first slope, which removes label switching "
                           "(intercept needs --intercept)")
    spec.add_argument("--likelihood", choices=("mixture", "forum-original", "forum-batch-lse", "forum-log-sigma"),
                      default=None,
                      help="mixture: the correct likelihood; forum-original: the forum thread's as posted (both "
                           "bugs); forum-batch-lse, forum-log-sigma: one bug each (default mixture)")
    _add_prior_options(spec)
    ref = run.add_argument_group("reference posterior (labelling target, modes, W1; mixbench reference makes one)")
    ref.add_argument("--reference", default="auto", metavar="auto|make|none|PATH",
                     help="auto (default): the cached reference, made now for data without a truth; make: made "
                          "now if not cached, with a truth too; none; or a reference directory or a draws file "
                          "(.nc/.csv/posteriordb .json.zip)")
    _add_reference_options(ref)
    settings = run.add_argument_group("fit settings")
    _add_fit_settings(settings)
    settings.add_argument("--no-total-size", dest="set_minibatch_total_size", action="store_const", const=False,
                          default=None, help="minibatch ADVI without total_size, the forum thread's bug "
                                             "(default: with total_size)")
    runner = run.add_argument_group("running")
    runner.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help="output directory (default results/<scenario or data file name>); rerunning resumes")
    runner.add_argument("--jobs", metavar="INT", type=_positive_int, default=None,
                        help="cells run in parallel, each in its own process (default: the cores this "
                             "process may use, at most the number of cells); with --executor dask and no "
                             "--scheduler, the LocalCluster's workers")
    _add_executor_options(runner)
    runner.add_argument("--time-limit", metavar="SECONDS", type=_positive_float, default=1800.0,
                        help="a cell still running after this is stopped and recorded as timeout (default 1800)")
    runner.add_argument("--save-draws", action="store_true", help="save each cell's draws as netCDF under DIR/draws")
    runner.add_argument("--retry-failed", action="store_true",
                        help="rerun failed, crashed and timed-out cells (default: keep their rows)")
    runner.add_argument("--fresh", action="store_true", help="discard earlier rows in --out instead of resuming")
    runner.add_argument("--no-report", action="store_true", help="skip writing report.md and report.html (default: write them)")
    runner.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure")

    report = sub.add_parser("report", help="build the report from harness runs or pytest-benchmark JSON",
                            description="Build report.md, report.html and figures/ from results: merge "
                                        "several inputs; runs that share cells keep both runs' rows, labelled by run.")
    report.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                        help="run directories, cells.jsonl files or pytest-benchmark JSON files")
    report.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help="report directory (default: the first run directory, or the JSON file's directory)")
    report.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure")

    compare = sub.add_parser("compare", help="what changed between two runs, cell by cell, beyond the noise",
                             description="Match the cells of two runs (scenario, N, backend, method, seed) and "
                                         "say what changed: recovery error, W1, landings, ESS/s, time per phase. "
                                         "A change is called only when it exceeds the spread across seeds (the "
                                         "rule is printed). Writes compare.md, compare.html and compare.png.")
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="the baseline: a run directory, cells.jsonl or "
                                                                   "pytest-benchmark JSON")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="the run compared with it")
    compare.add_argument("--out", metavar="DIR", type=Path, default=None,
                         help="where the comparison is written (default RUN_B's directory)")
    compare.add_argument("--fail-if-worse", metavar="FRACTION", type=_non_negative_float, default=None,
                         help="exit 1 when a change is called worse by more than this fraction of RUN_A's value "
                              "(0.1: 10%%; 0: any called change), for CI")
    compare.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure")

    _add_sweep_parser(sub)
    _add_sbc_parser(sub)

    sub.add_parser("list", help="scenarios, backends and methods, and what this machine can run",
                   description="List scenarios, backends and methods with what is available here.")

    reference = sub.add_parser("reference", help="make (or import) the reference posterior of a data set",
                               description="Make a data set's reference posterior (by default of its modes, "
                                           "each sampled by NUTS and weighted by its mass; --method nuts: one long "
                                           "multi-chain NUTS run), check it, print its modes table and cache it by "
                                           "data digest and spec; or turn user-supplied draws into one.")
    rsource = reference.add_mutually_exclusive_group()
    rsource.add_argument("--scenario", metavar="NAME", default=None, help="built-in scenario (default forum-small)")
    rsource.add_argument("--data", metavar="FILE.csv", type=Path, default=None,
                         help="a CSV file: covariate columns and a response column")
    reference.add_argument("--covariates", metavar="COL,COL", type=_csv_list, default=None,
                           help="with --data: the covariate columns (default every column but the response)")
    reference.add_argument("--response", metavar="COL", default="y", help="with --data: the response column (default y)")
    reference.add_argument("--N", type=_positive_int, default=None,
                           help="data size of a built-in scenario (default the scenario's own)")
    reference.add_argument("--data-seed", metavar="SEED", type=int, default=0,
                           help="seed of the simulated data set (default 0)")
    rspec = reference.add_argument_group("model (as for run)")
    rspec.add_argument("--K", type=_positive_int, default=None, help="mixture components")
    rspec.add_argument("--intercept", action=argparse.BooleanOptionalAction, default=None,
                       help="give each component an intercept")
    rspec.add_argument("--sigma", choices=("shared", "per-component"), default=None,
                       help="one noise scale for all components, or one each")
    rspec.add_argument("--ordering", choices=("none", "intercept", "slope"), default=None,
                       help="order the components by intercept or by first slope")
    rspec.add_argument("--likelihood", choices=("mixture", "forum-original", "forum-batch-lse", "forum-log-sigma"),
                       default=None, help="the likelihood (default mixture; see run --help)")
    _add_prior_options(rspec)
    rmake = reference.add_argument_group("how it is made")
    _add_reference_options(rmake, prefix="--")
    rmake.add_argument("--draws-file", metavar="FILE", type=Path, default=None,
                       help="use these draws (netCDF with a posterior group, CSV with columns w[k,d], b[k], "
                            "sigma or sigma[k], pi[k] and an optional chain column, or posteriordb's .json.zip) "
                            "instead of running NUTS")
    rmake.add_argument("--out", metavar="DIR", type=Path, default=None,
                       help="write the reference here (default: the cache)")
    return parser


def _add_sbc_parser(sub) -> None:
    sbc = sub.add_parser("sbc", help="simulation-based calibration of backend x method lines",
                         description="Simulate data sets from the model's prior (restricted to a separation band "
                                     "and a smallest weight), fit each once per backend x method line as cells "
                                     "(isolated, resumable), rank label-invariant test quantities of the truth among "
                                     "the thinned draws, and report ECDF-PIT plots, per-quantity verdicts, failed "
                                     "and flagged shares, cost, and which line to run per band (bench/run/sbc.py).")
    sbc.add_argument("--scenario", default=SBC_SCENARIO,
                     help=f"the model (its spec and priors) whose prior the data come from (default {SBC_SCENARIO}: "
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


def _add_sweep_parser(sub) -> None:
    sweep = sub.add_parser("sweep", help="landing frequencies over a scenario family's difficulty axes",
                           description="Fit every point of a scenario family (the product of the --vary axes) x "
                                       "backends x method lines x seeds as cells (isolated, resumable), then report "
                                       "landing frequencies with Wilson 90% intervals, breaking points, phase "
                                       "diagrams and frequency curves.")
    sweep.add_argument("--family", choices=("lines",), default="lines",
                       help="scenario family (lines: K regression lines, no intercepts; README: Where each method "
                            "breaks)")
    sweep.add_argument("--vary", metavar="AXIS=V1,V2", action="append", default=[],
                       help="an axis and its values, repeatable; one value fixes it. Axes: "
                            + "; ".join(f"{a.name}: {a.text} (default {'1/K' if a.name == 'w_min' else a.default})"
                                        for a in AXES.values()))
    sweep.add_argument("--backends", metavar="NAME,NAME", type=_csv_list, default=["numpyro", "stan"],
                       help="backends, comma-separated (default numpyro,stan)")
    sweep.add_argument("--methods", metavar="LINE,LINE", type=_csv_list,
                       default=["nuts", "nuts:ordering=slope", "advi-fullrank", "pathfinder"],
                       help="method lines: a method, optionally with spec overrides after a colon "
                            "(nuts:ordering=slope; several joined by ';') (default "
                            "nuts,nuts:ordering=slope,advi-fullrank,pathfinder)")
    sweep.add_argument("--spec", dest="sweep_spec", metavar="FIELD=VALUE", action="append", default=[],
                       help="a spec override for every line, repeatable: ordering, sigma, likelihood, pi_alpha, "
                            "errors, nu, weights")
    sweep.add_argument("--seeds", metavar="SEEDS", type=_seeds, default=list(range(10)),
                       help="inference seeds: a list 0,1,2 or a range 0-9 (default 0-9)")
    data = sweep.add_mutually_exclusive_group()
    data.add_argument("--data-seed", metavar="SEED", type=int, default=0,
                      help="seed of each point's one simulated data set, shared by every seed (default 0)")
    data.add_argument("--data-per-seed", action="store_true",
                      help="each seed fits its own data set (data seed = seed): frequencies over data sets and "
                           "inference together (each data set is a setup of its own in the report)")
    sweep.add_argument("--reference", choices=("none", "auto", "make"), default=SWEEP_REFERENCE,
                       help=f"reference posterior per data set (default {SWEEP_REFERENCE}: the cached one, else made "
                            "now, before the fits, one data set at a time): every fit is placed against it and "
                            "against the truth apart, so the breaking points tell where the posterior stops "
                            "identifying the truth from where the method misses the posterior. Cost: one per point x "
                            "data set x line spec (ordering=slope is a spec of its own); at N = 200, K = 2 a NUTS "
                            f"reference ({SWEEP_REFERENCE_METHOD}, the default here) took 1.0-2.2 s in the sweep's "
                            "worker (2-3 NUTS fit cells), a modes reference 24-34 s (bench/run/sweep.py). A "
                            "provisional reference (failed its checks) places no fit. auto: only cached ones (a "
                            "sweep's data have a truth); none: against the truth only")
    _add_reference_options(sweep, method_default=SWEEP_REFERENCE_METHOD)
    changed = ", ".join(f"{k} {v}" for k, v in SWEEP_SETTINGS.items())
    settings = sweep.add_argument_group("fit settings (defaults: mixbench run's" + (f", except {changed})" if changed else ")"))
    _add_fit_settings(settings, SWEEP_SETTINGS)
    runner = sweep.add_argument_group("running")
    runner.add_argument("--out", metavar="DIR", type=Path, default=None,
                        help="output directory (default results/sweep-<family>); rerunning resumes")
    runner.add_argument("--jobs", metavar="INT", type=_positive_int, default=1,
                        help="cells run in parallel (default 1); with --executor dask and no --scheduler, the LocalCluster's workers")
    _add_executor_options(runner)
    runner.add_argument("--time-limit", metavar="SECONDS", type=_positive_float, default=600.0,
                        help="a cell still running after this is stopped and recorded as timeout (default 600)")
    runner.add_argument("--retry-failed", action="store_true",
                        help="rerun failed, crashed and timed-out cells (default: keep their rows)")
    runner.add_argument("--fresh", action="store_true", help="discard earlier rows in --out instead of resuming")
    runner.add_argument("--no-report", action="store_true", help="skip writing report.md and report.html")
    runner.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of a failure")


def cmd_run(args) -> int:
    cells, label = run_cells(args)
    note = data_prior_note(cells)
    if note:
        print(f"mixbench run: {note}", file=sys.stderr)  # the run goes on: a warning, not a refusal
    # The longest cold compile first (Stan), so that it overlaps the other cells (stable: within
    # a backend the grid's order stays).
    cells = sorted(cells, key=lambda cell: compile_rank(cell.backend))
    jobs = args.jobs or max(1, min(available_cores(), len(cells)))
    executor = make_executor(args.executor, jobs=jobs, scheduler=args.scheduler)
    write_bytecode_as_imported()  # before any worker starts: the cells read what another wrote
    out_dir = args.out or Path("results") / label
    _writing_under.append(out_dir)
    cells = attach_references(cells, args.reference, reference_settings(args), executor, prepare_out_dir(out_dir),
                              args.time_limit, say=_say, progress=Progress(1, log_dir=out_dir / LOGS_DIR))
    options = RunOptions(out_dir=out_dir, time_limit=args.time_limit, save_draws=args.save_draws,
                         retry_failed=args.retry_failed, fresh=args.fresh, notes=(note,) if note else ())
    if args.data is not None:
        # The run folder keeps the data its rows were fitted to: its report reads nothing outside it.
        keep_data_copy(args.data, prepare_out_dir(out_dir), cells[0].data_digest)
    ids = {c.id for c in cells}
    progress = Progress(len(cells), log_dir=out_dir / LOGS_DIR)
    result = run_grid(cells, options, executor, progress)
    rows = [r for r in result if r["cell_id"] in ids]
    print_summary(rows, cells)
    if result.unwritten:
        print(f"mixbench run: error: {len(result.unwritten)} row(s) could not be written to {out_dir / CELLS_FILE}; "
              "free space and rerun to run those cells again", file=sys.stderr)
        return 1
    if not args.no_report:
        paths = write_report([out_dir], out_dir)
        print(f"\nreport: {paths['markdown']}  (html: {paths['html']})")
    print(f"rows: {out_dir / CELLS_FILE}")
    return 0


def cmd_sweep(args) -> int:
    cells = sweep_cells(args)
    executor = make_executor(args.executor, jobs=args.jobs, scheduler=args.scheduler)
    write_bytecode_as_imported()
    out_dir = args.out or Path("results") / f"sweep-{args.family}"
    _writing_under.append(out_dir)
    if args.reference != "none":
        cells = attach_references(cells, args.reference, reference_settings(args), executor, prepare_out_dir(out_dir),
                                  args.time_limit, say=_say, progress=Progress(1, log_dir=out_dir / LOGS_DIR))
    options = RunOptions(out_dir=out_dir, time_limit=args.time_limit, retry_failed=args.retry_failed,
                         fresh=args.fresh)
    start = time.perf_counter()
    print(f"sweep: {len(cells)} cells into {out_dir}", file=sys.stderr, flush=True)
    result = run_grid(cells, options, executor, Progress(len(cells), log_dir=out_dir / LOGS_DIR))
    print(f"sweep: finished in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    if result.unwritten:
        print(f"mixbench sweep: error: {len(result.unwritten)} row(s) could not be written to {out_dir / CELLS_FILE}; "
              "free space and rerun to run those cells again", file=sys.stderr)
        return 1


    ids = {c.id for c in cells}
    for table in sweep_tables(pd.DataFrame([r for r in result if r["cell_id"] in ids])):
        if table.key == "sweep-breaking":
            print(f"\n{table.title}\n\n{markdown_table(table.frame)}")
    if not args.no_report:
        paths = write_report([out_dir], out_dir)
        print(f"report: {paths['markdown']}  (html: {paths['html']})")
    print(f"rows: {out_dir / CELLS_FILE}")
    return 0


def cmd_report(args) -> int:
    for path in args.paths:
        if not path.exists():
            raise MixbenchError(f"{path}: not found")
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else args.paths[0].parent)
    _writing_under.append(out)
    prepare_out_dir(out)
    paths = write_report(args.paths, out)
    print(f"report: {paths['markdown']}  (html: {paths['html']})")
    return 0


def cmd_reference(args) -> int:
    data, problem = reference_problem(args)
    reference, reused = command_reference(data, problem, reference_settings(args), args.out, args.draws_file,
                                          progress=Progress(1))
    print(reference.describe())
    print("\n".join(modes_table_lines(reference.modes)))
    if reused:
        print(f"cached, not rerun: {reference.path} (made {reference.info.get('created')})")
        return 0
    for line in reference.lacks():
        print(line)
    print(f"written: {reference.path}")
    if not reference.accepted:
        print("provisional: runs use it as the labelling target and to measure W1 and landings against, "
              "each named provisional, and keep looking for an "
              "accepted one", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args) -> int:
    comparison = compare(args.run_a, args.run_b)
    out = args.out or (args.run_b if args.run_b.is_dir() else args.run_b.parent)
    _writing_under.append(out)
    prepare_out_dir(out)
    paths = write_comparison(comparison, out)
    print("\n".join(summary_lines(comparison)))
    print(f"comparison: {paths['markdown']}  (html: {paths['html']})")
    if args.fail_if_worse is not None:
        worse = comparison.worse_beyond(args.fail_if_worse)
        if worse:
            print(f"mixbench compare: {len(worse)} change(s) worse by more than {args.fail_if_worse:.0%}",
                  file=sys.stderr)
            return 1
    return 0


def cmd_list(args) -> int:
    print(describe())
    return 0


# The directory the command writes into, once known: an OSError raised by a write on an open file
# (a full disk) carries no file name, and the line should still say where.
def cmd_sbc(args) -> int:
    cells = sorted(sbc_cells(args), key=lambda cell: compile_rank(cell.backend))
    executor = make_executor(args.executor, jobs=args.jobs, scheduler=args.scheduler)
    write_bytecode_as_imported()
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


_writing_under: list[Path] = []


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _os_error_text(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    if exc.filename:
        return f"{exc.filename}: {text}"
    return f"{_writing_under[-1]}: {text} (while writing there)" if _writing_under else text


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        # Said by the subcommand's parser, so the error names it ("mixbench run: error: ...").
        args.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    _writing_under.clear()
    handler = {"run": cmd_run, "report": cmd_report, "list": cmd_list, "reference": cmd_reference,
               "compare": cmd_compare, "sweep": cmd_sweep, "sbc": cmd_sbc}[args.command]
    prefix = f"mixbench {args.command}"

    def fail(message: str, code: int, after_progress: bool = False) -> int:
        if getattr(args, "debug", False):
            traceback.print_exc()
        try:
            start = "\n" if after_progress and sys.stderr.isatty() else ""  # end a live progress line
            print(f"{start}{prefix}: {message}", file=sys.stderr, flush=True)
        except OSError:  # the terminal is gone (SIGHUP): the exit code still says it
            pass
        return code

    with warnings.catch_warnings():
        warnings.simplefilter("default", MixbenchWarning)
        shown = warnings.showwarning
        said: set[str] = set()

        def one_line_warnings(message, category, filename, lineno, file=None, line=None):
            # mixbench's own warnings as one line each, each said once however many places meet
            # the same damaged file; any other as Python shows it.
            if issubclass(category, MixbenchWarning):
                if str(message) not in said:
                    said.add(str(message))
                    print(f"mixbench: warning: {message}", file=sys.stderr, flush=True)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = one_line_warnings
        try:
            with stop_on_signals():
                return handler(args)
        except MixbenchError as exc:
            return fail(f"error: {exc}", 2)
        except RunInterrupted as exc:
            if exc.rows_file is not None:
                detail = (f": {exc.kept} cell(s) finished and kept in {exc.rows_file}, "
                          f"{len(exc.stopped)} stopped; rerun to resume")
            else:
                detail = "; finished cells are kept, rerun to resume" if args.command == "run" else ""
            return fail(f"interrupted by {exc.signal_name}{detail}", exc.exit_code, after_progress=True)
        except KeyboardInterrupt:
            return fail("interrupted; finished cells are kept, rerun to resume", 130)
        except OSError as exc:
            return fail(f"error: {_os_error_text(exc)}", 1)
        except Exception as exc:  # noqa: BLE001 - a bug: still one line, the traceback on --debug
            first = (str(exc).strip().splitlines() or [""])[0]
            return fail(f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", 1)


def entry() -> None:
    """The ``mixbench`` command: ``main()``, then exit with its code.

    Before exiting, every object left is moved out of the cyclic garbage collector's reach
    (``gc.freeze``): the interpreter's last collection at exit walks every object the run's
    imports made and took 0.4-0.5 s of every command's 0.9 s
    teardown (measured with py-spy on a one-cell run). Files and processes are closed by then
    (context managers, ``atexit``); only unreachable cycles go unfinalised, as the process ends.
    Not in ``main``, which tests call in process."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
