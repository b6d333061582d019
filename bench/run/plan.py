"""The cells a run or a sweep asks for, every option checked before any cell runs.

``mixbench run`` and ``mixbench sweep`` (bench.cli) parse their options into an
``argparse.Namespace``; the functions here turn one into cells (bench.run.harness.Cell) and refuse
bad input with one MixbenchError line (exit 2) before any cell runs: a name of no backend or
method, impossible settings, a K or a minibatch too large for N, draws that would not fit in
memory. The benchmark suite (bench/benchmarks/conftest.py) plans its grid with the same
functions from its pytest options.
"""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Any

from backends.base import METHODS, FitSettings
from backends.methods import method as method_named
from bench.reference.posterior import ReferenceSettings
from bench.run.harness import Cell, check_components, check_fit_size, load_cell_data, make_grid
from bench.run.preflight import check_backend_name, check_engine_names, check_memory
from bench.run.sweep import SWEEP_SETTINGS, parse_method_line, parse_override, parse_vary, plan_cells, sweep_points
from bench.score.problem import Problem
from models.datafile import data_digest, load_csv
from models.errors import MixbenchError
from models.prior_check import prior_scale_note
from models.priors import (
    check_spec_fields,
    load_spec_file,
    normal_prior_text,
    nu_text,
    pi_alpha_text,
    sigma_prior_text,
)
from models.scenarios import DEFAULT_SCENARIO, get_scenario
from models.spec import MixtureSpec
from models.standardize import Standardization


def reference_settings(options: Namespace) -> ReferenceSettings:
    """The reference posterior's settings from the ``--reference-*`` (``ref_*``) options.

    Parameters
    ----------
    options : argparse.Namespace
        With ``ref_backend``, ``ref_chains``, ``ref_warmup``, ``ref_draws``, ``ref_seed`` and
        ``ref_method``.

    Returns
    -------
    ReferenceSettings
    """
    return ReferenceSettings(backend=options.ref_backend, chains=options.ref_chains, warmup=options.ref_warmup,
                             draws=options.ref_draws, seed=options.ref_seed, method=options.ref_method)


def spec_overrides(options: Namespace) -> dict[str, Any]:
    """Spec fields from a spec file (``spec_file``), then from the options, which win.

    Parameters
    ----------
    options : argparse.Namespace
        ``K``, ``intercept``, ``sigma``, ``ordering``, ``likelihood`` and, where given, the prior
        options (``slope_prior``, ``intercept_prior``, ``sigma_prior``, ``pi_alpha``, ``errors``,
        ``shared``, ``nu``, ``weights``, ``gamma_prior``); None means not given.

    Returns
    -------
    dict
        The spec fields to override (models.priors.check_spec_fields checked them).

    Raises
    ------
    MixbenchError
        A spec file that cannot be read, or a field or prior text that is not valid.
    """
    spec = load_spec_file(options.spec_file) if getattr(options, "spec_file", None) is not None else {}
    spec.update({k: v for k, v in (("K", options.K), ("intercept", options.intercept), ("sigma", options.sigma),
                                   ("ordering", options.ordering), ("likelihood", options.likelihood)) if v is not None})
    if getattr(options, "slope_prior", None) is not None:
        spec["slope_prior"] = normal_prior_text("--slope-prior", options.slope_prior)
    if getattr(options, "intercept_prior", None) is not None:
        spec["intercept_prior"] = normal_prior_text("--intercept-prior", options.intercept_prior)
    if getattr(options, "sigma_prior", None) is not None:
        spec["sigma_prior"] = sigma_prior_text("--sigma-prior", options.sigma_prior)
    if getattr(options, "pi_alpha", None) is not None:
        spec["pi_alpha"] = pi_alpha_text("--pi-alpha", options.pi_alpha)
    if getattr(options, "gamma_prior", None) is not None:
        spec["gamma_prior"] = normal_prior_text("--gamma-prior", options.gamma_prior)
    for name in ("errors", "shared", "weights"):
        if getattr(options, name, None) is not None:
            spec[name] = getattr(options, name)
    if getattr(options, "nu", None) is not None:
        spec["nu"] = nu_text("--nu", options.nu)
    return check_spec_fields(spec, "spec")


def _given_settings(options: Namespace) -> dict[str, Any]:
    """The FitSettings fields given on the command line (their options are ``set_<field>``)."""
    return {name[4:]: value for name, value in vars(options).items() if name.startswith("set_") and value is not None}


def check_sizes(spec: MixtureSpec, sizes: list[int], methods: list[str], settings: dict[str, Any]) -> None:
    """The harness's size checks (K against N, minibatch against N) and the memory a fit's draws
    need, before any cell runs.

    Parameters
    ----------
    spec : MixtureSpec
        The spec as fitted.
    sizes : list of int
        The numbers of observations the cells fit.
    methods : list of str
        Method names (backends.methods).
    settings : dict
        FitSettings fields.

    Raises
    ------
    MixbenchError
        A size no fit of these methods can run with (bench.run.harness.check_fit_size,
        bench.run.preflight.check_memory).
    """
    fit_settings = FitSettings.from_dict(settings)
    for n in sizes:
        for method in methods:
            check_fit_size(spec.K, n, method, fit_settings)
            check_memory(spec, n, method, fit_settings)


def run_cells(options: Namespace) -> tuple[list[Cell], str]:
    """The cells of ``mixbench run``: one per scenario (or data file) x N x backend x method x seed.

    Parameters
    ----------
    options : argparse.Namespace
        ``mixbench run``'s options (bench.cli.build_parser): ``backends``, ``methods``, ``seeds``,
        ``scenario`` or ``data`` (with ``covariates``, ``response``), ``N``, ``data_seed``,
        ``standardize``, the spec and prior options and ``set_<field>`` FitSettings.

    Returns
    -------
    cells : list of Cell
        In grid order (bench.run.harness.make_grid).
    label : str
        The scenario's name or the data file's stem: the default results folder's name.

    Raises
    ------
    MixbenchError
        Any name, setting, size or data file that no cell could run with.
    """
    for name in options.backends:
        check_backend_name(name)
    for name in options.methods:
        method_named(name)  # MixbenchError naming the known methods
    settings = _given_settings(options)
    FitSettings.from_dict(settings)  # impossible settings fail here, before any cell runs
    check_engine_names(options.backends, settings)
    spec = spec_overrides(options)
    common = dict(settings=settings, spec=spec, data_seed=options.data_seed, standardize=options.standardize)
    if options.data is not None:
        if options.N:
            raise MixbenchError("--N: only applies to a built-in scenario (a data file's N is its number of rows)")
        dataset = load_csv(options.data, options.covariates, options.response)  # a malformed file fails now
        fitted = MixtureSpec.from_dict({"D": dataset.D, **spec})
        check_sizes(fitted, [dataset.N], options.methods, settings)
        scenario, label = str(options.data.resolve()), options.data.stem
        common.update(covariates=tuple(dataset.covariates), response=options.response,
                      data_digest=data_digest(options.data))
    else:
        if options.covariates is not None:
            raise MixbenchError("--covariates: only applies with --data")
        scenario = label = options.scenario or DEFAULT_SCENARIO
        built_in = get_scenario(scenario)
        fitted = built_in.spec.overridden(spec)
        check_sizes(fitted, options.N or [built_in.N], options.methods, settings)
        if options.N:
            # One cell per size: rows carry N, and the report draws the cost curve over N.
            cells = [cell for n in options.N
                     for cell in make_grid([scenario], options.backends, options.methods, options.seeds, n=n, **common)]
            return cells, label
    return make_grid([scenario], options.backends, options.methods, options.seeds, **common), label


def sweep_cells(options: Namespace) -> list[Cell]:
    """The cells of ``mixbench sweep``: every point of a scenario family x backend x method line x seed.

    Parameters
    ----------
    options : argparse.Namespace
        ``mixbench sweep``'s options: ``backends``, ``vary``, ``methods`` (method lines,
        bench.run.sweep.parse_method_line), ``sweep_spec``, ``seeds``, ``data_per_seed``,
        ``data_seed`` and ``set_<field>`` FitSettings.

    Returns
    -------
    list of Cell
        bench.run.sweep.plan_cells's grid.

    Raises
    ------
    MixbenchError
        No axis varied, a repeated method line, impossible settings, or a line's spec or size
        that fails at some point of the sweep.
    """
    for name in options.backends:
        check_backend_name(name)
    if not options.vary:
        raise MixbenchError("--vary: give at least one axis, e.g. --vary sep=0.5,1,2,4")
    lines = [parse_method_line(text, METHODS) for text in options.methods]
    if len({line.label for line in lines}) != len(lines):
        raise MixbenchError("--methods: a method line is repeated")
    spec = dict(parse_override(text, "--spec") for text in options.sweep_spec)
    settings = {**SWEEP_SETTINGS, **_given_settings(options)}
    FitSettings.from_dict(settings)  # impossible settings fail here, before any cell runs
    check_engine_names(options.backends, settings)
    points = sweep_points(parse_vary(options.vary))
    for point, n in points:
        for line in lines:
            try:  # the spec values of every line at every point (ordering=sideways fails here)
                fitted = get_scenario(point.name).spec.overridden({**spec, **line.spec})
            except MixbenchError as exc:
                raise MixbenchError(f"--spec/--methods {line.label}: {exc}") from None
            check_sizes(fitted, [n], [line.method], settings)
    return plan_cells(points, options.backends, lines, options.seeds, settings, spec,
                      data_per_seed=options.data_per_seed, data_seed=options.data_seed)


def data_prior_note(cells: list[Cell]) -> str | None:
    """The prior-scale check (models.prior_check.prior_scale_note) of a run's data file.

    Parameters
    ----------
    cells : list of Cell

    Returns
    -------
    str or None
        One line; None for built-in scenarios (their priors fit their data) and when the priors
        fit the data.
    """
    cell = next((c for c in cells if c.is_data_file), None)
    if cell is None:
        return None
    spec, dataset = load_cell_data(cell)
    if cell.standardize:
        dataset = Standardization.of(dataset, spec).dataset(dataset)
    return prior_scale_note(spec, dataset, standardized=cell.standardize)


def available_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the system has one.

    Returns
    -------
    int
        At least 1.
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def reference_problem(options: Namespace) -> tuple[Cell, Problem]:
    """The data set ``mixbench reference`` makes a reference for, as a cell and the problem it poses.

    Parameters
    ----------
    options : argparse.Namespace
        ``mixbench reference``'s options: ``scenario`` or ``data`` (with ``covariates``,
        ``response``), ``N``, ``data_seed``, ``standardize`` and the spec and prior options.

    Returns
    -------
    data : Cell
        A cell of the data set (no backend): what a reference cell loads (bench.run.references).
    problem : Problem
        Its spec, data and scale (bench.score.problem).

    Raises
    ------
    MixbenchError
        A malformed data file or spec, ``--covariates`` without ``--data``, or too few observations
        for K components (bench.run.harness.check_components).
    """
    spec = spec_overrides(options)
    if options.data is not None:
        dataset = load_csv(options.data, options.covariates, options.response)
        data = Cell(scenario=str(options.data.resolve()), backend="", method="nuts", spec=spec,
                    covariates=tuple(dataset.covariates), response=options.response,
                    standardize=options.standardize)
    else:
        if options.covariates is not None:
            raise MixbenchError("--covariates: only applies with --data")
        data = Cell(scenario=options.scenario or DEFAULT_SCENARIO, backend="", method="nuts", spec=spec,
                    n=options.N, data_seed=options.data_seed, standardize=options.standardize)
    spec_obj, dataset = load_cell_data(data)
    check_components(spec_obj.K, dataset.N)
    return data, Problem.make(spec_obj, dataset, standardize=options.standardize)
