"""Difficulty sweeps: every point of a scenario family x backends x method lines x seeds, as cells.

``mixbench sweep --vary sep=0.5,1,2,4 --vary N=200,1000 --methods nuts,nuts:ordering=slope,...``
plans the grid here and runs it through bench.run.harness.run_grid like ``mixbench run``: each cell
isolated, its row written as it finishes, resume after a kill, any executor. A cell is an
ordinary Cell whose scenario is the family point's name (models.families), with N as ``Cell.n``,
so a sweep's rows are ordinary rows with the point's axes as columns (bench.run.harness.cell_ids).

A *method line* is a method with optional spec overrides after a colon:
``nuts:ordering=slope`` is NUTS on the spec ordered by first slope; ``;`` separates several
overrides. Spec overrides for every line go in ``--spec FIELD=VALUE``. So "unordered vs ordered"
is two lines of one sweep, and every other line stays unordered.

Fit settings default to those of ``mixbench run`` (SWEEP_SETTINGS says why and what they cost).

Every data set gets a reference posterior by default (SWEEP_REFERENCE "make": the cached one, else
made before the fits by bench.run.references.attach_references, one data set at a time, in the
executor's worker). Each fit is then placed against the reference (row ``mode``,
bench.score.landing) and against the truth apart (``truth_mode``), and the reference itself
against the truth (``ref_truth_mass``), all from the fit's one relabelling to the truth
(bench.score.metrics): the breaking points (bench.report.sweep_tables) tell "the posterior no
longer identifies the truth" (the data's information) from "the method misses the posterior" (the
method's failure). ``--reference none`` scores against the truth only.

The cost: one reference per point x data set (``--data-per-seed``: per seed) x line spec (a line
that overrides the spec, e.g. ordering=slope, poses another posterior), made one at a time before
the fits. Measured at N = 200, K = 2, sep 1, 2 and 4 (two cores shared, load 1.7-4.0), as the
sweep makes them (a reference cell in the warm worker, NumPyro's compile cache warm; the row's
time, e.g. ``mixbench sweep --vary sep=1,2 --vary N=200 --methods advi-fullrank --seeds 0
--data-seed S --reference-method M``): ``nuts`` (4 chains x (1000 + 1000) NumPyro NUTS draws)
1.0-2.2 s per data set (9 references, data seeds 0, 5, 11 and 13), the time of 2-3 of the sweep's NUTS fit cells (median 0.7 s); ``modes``
(12 exploring chains, MAP and Pathfinder starts, each mode sampled and weighted by bridge
sampling) 24-34 s (4 references, data seeds 12 and 14). Through ``mixbench reference``, a process
of its own each: 10-16 s and 45-65 s. Every reference found one mode; 8 of the 9 NUTS references
and all 4 modes references passed their checks (the ninth: R-hat 1.013 > 1.01, sep 1, data seed
13). SWEEP_REFERENCE_METHOD is therefore ``nuts``: sound at such points at a fifteenth of the
cost. A provisional reference places no fit (its settings count against the truth only, and the
report says where): ``--reference-method modes`` or more reference draws then, and wherever the
posterior has several modes of real mass (K >= 3, small weights).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from bench.run.harness import Cell
from models.errors import MixbenchError
from models.families import DEFAULT_N, FamilyPoint, check_axis

# The fit settings of `mixbench run` (2 chains x (1000 + 1000) NUTS draws, 10000 VI iterations,
# 1000 VI draws), so a sweep's rows compare with a run's. Measured on two cores shared with other
# jobs (load average 3-7), --jobs 2, the README's sweep with 3 seeds (192 cells, N = 200 and 1000)
# took 180 s at 500 + 500 draws and 5000 VI iterations and 358 s at these: a cell at N <= 1000
# costs mostly its process start and, once per program shape, NumPyro's compile. The 640 cells of
# its 10-seed version: about 20 minutes, and 2-3 more for the report.
SWEEP_SETTINGS: dict[str, Any] = {}
# The reference posterior a sweep makes per data set by default, and how (the module's docstring
# says what it costs and why NUTS).
SWEEP_REFERENCE = "make"
SWEEP_REFERENCE_METHOD = "nuts"
# Spec fields a line or --spec may override: the family point owns K, D, intercepts and the truth.
OVERRIDABLE = ("ordering", "sigma", "likelihood", "pi_alpha", "errors", "nu", "weights")


@dataclass(frozen=True)
class MethodLine:
    method: str
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join([self.method, *(f"{k}={v}" for k, v in sorted(self.spec.items()))])


def parse_override(text: str, where: str) -> tuple[str, Any]:
    """One ``FIELD=VALUE`` spec override of a sweep (a field of ``OVERRIDABLE``): (field, value).
    Raises MixbenchError naming ``where`` on any other text."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise MixbenchError(f"{where}: expected FIELD=VALUE, got {text!r}")
    if name not in OVERRIDABLE:
        raise MixbenchError(f"{where}: {name!r} cannot be overridden in a sweep; allowed: {', '.join(OVERRIDABLE)} "
                            "(the family point sets K, D and the truth)")
    if name == "nu":
        from models.priors import nu_text

        return name, nu_text(where, value)
    if name == "pi_alpha":
        try:
            value = float(value)
        except ValueError:
            raise MixbenchError(f"{where}: pi_alpha must be a number, got {value!r}") from None
    return name, value


def parse_method_line(text: str, methods: tuple[str, ...]) -> MethodLine:
    """'nuts' or 'nuts:ordering=slope;sigma=per-component'. Raises MixbenchError on an unknown
    method or a malformed override."""
    method, _, rest = text.partition(":")
    method = method.strip()
    if method not in methods:
        raise MixbenchError(f"method: unknown {method!r}; known: {', '.join(methods)}")
    spec = dict(parse_override(part, f"method {text!r}") for part in rest.split(";") if part.strip()) if rest else {}
    return MethodLine(method, spec)


def parse_vary(texts: list[str]) -> dict[str, list]:
    """['sep=0.5,1', 'N=200,1000'] -> {'sep': [0.5, 1.0], 'N': [200, 1000]}, each value checked
    (models.families.check_axis). Raises MixbenchError on an unknown axis, a repeated axis, a
    malformed item or an out-of-range value."""
    axes: dict[str, list] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise MixbenchError(f"--vary: expected AXIS=v1,v2,..., got {text!r}")
        if name in axes:
            raise MixbenchError(f"--vary: axis {name!r} given twice")
        items = [v.strip() for v in values.split(",") if v.strip()]
        checked = [check_axis(name, v) for v in items]
        if len(set(checked)) != len(checked):
            raise MixbenchError(f"--vary {name}: a value is repeated in {values!r}")
        axes[name] = checked
    return axes


def sweep_points(axes: dict[str, list], fixed: dict[str, Any] | None = None) -> list[tuple[FamilyPoint, int]]:
    """Every (family point, N) of the product of the axes, other axes at ``fixed`` or their
    defaults. Raises MixbenchError for a point the family refuses (a weight above 1/K, a
    separation too small for the sigma prior)."""
    fixed = dict(fixed or {})
    names = list(axes)
    out = []
    for values in itertools.product(*(axes[n] for n in names)):
        chosen = {**fixed, **dict(zip(names, values))}
        N = int(chosen.pop("N", DEFAULT_N))
        kwargs = {k: v for k, v in chosen.items() if k in ("K", "D", "sep", "w_min", "sigma_ratio", "outliers", "gate")}
        out.append((FamilyPoint(**kwargs), N))
    return out


def plan_cells(points: list[tuple[FamilyPoint, int]], backends: list[str], lines: list[MethodLine],
               seeds: list[int], settings: dict[str, Any], spec: dict[str, Any], data_per_seed: bool = False,
               data_seed: int = 0) -> list[Cell]:
    """One cell per point x backend x line x seed. By default every seed fits the point's one
    data set (``data_seed``), as in every run of the harness: seeds vary inference only, and a
    frequency says how often a method, started afresh, lands in the truth's mode on that data.
    With ``data_per_seed`` each seed fits its own data set (data seed = inference seed), so a
    frequency counts data and inference together."""
    cells = []
    for point, N in points:
        if point.K * 10 > N:
            raise MixbenchError(f"N: {N} observations leave fewer than 10 per component at K = {point.K}")
        for backend, line, seed in itertools.product(backends, lines, seeds):
            cells.append(Cell(scenario=point.name, backend=backend, method=line.method, seed=int(seed),
                              settings=dict(settings), spec={**spec, **line.spec}, n=N,
                              data_seed=int(seed) if data_per_seed else data_seed))
    return cells


# ---------------------------------------------------------------------------------------------
# The report's sweep tables
