"""Difficulty sweeps: every point of a scenario family x backends x method lines x seeds, as cells.

``mixbench sweep --vary sep=0.5,1,2,4 --vary N=200,1000 --methods nuts,nuts:ordering=slope,...``
plans the grid here and runs it through bench.harness.run_grid like ``mixbench run``: each cell
isolated, its row written as it finishes, resume after a kill, any executor. A cell is an
ordinary Cell whose scenario is the family point's name (models.families), with N as ``Cell.n``,
so a sweep's rows are ordinary rows with the point's axes as columns (bench.harness.cell_ids).

A *method line* is a method with optional spec overrides after a colon:
``nuts:ordering=slope`` is NUTS on the spec ordered by first slope; ``;`` separates several
overrides. Spec overrides for every line go in ``--spec FIELD=VALUE``. So "unordered vs ordered"
is two lines of one sweep, and every other line stays unordered.

Fit settings default to those of ``mixbench run`` (SWEEP_SETTINGS says why and what they cost).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.findings import Sentence, SetupFindings
from bench.frequencies import LEVEL, breaking_points, landing_frequencies, share_text, varied_axes
from bench.harness import Cell
from bench.tables import Table
from models.errors import MixbenchError
from models.families import AXES, DEFAULT_N, FamilyPoint, check_axis

# The fit settings of `mixbench run` (2 chains x (1000 + 1000) NUTS draws, 10000 VI iterations,
# 1000 VI draws), so a sweep's rows compare with a run's. Measured on two cores shared with other
# jobs (load average 3-7), --jobs 2, the README's sweep with 3 seeds (192 cells, N = 200 and 1000)
# took 180 s at 500 + 500 draws and 5000 VI iterations and 358 s at these: a cell at N <= 1000
# costs mostly its process start and, once per program shape, NumPyro's compile. The 640 cells of
# its 10-seed version: about 20 minutes, and 2-3 more for the report.
SWEEP_SETTINGS: dict[str, Any] = {}
# Spec fields a line or --spec may override: the family point owns K, D, intercepts and the truth.
OVERRIDABLE = ("ordering", "sigma", "likelihood", "pi_alpha", "errors", "nu", "weights")


@dataclass(frozen=True)
class MethodLine:
    method: str
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join([self.method, *(f"{k}={v}" for k, v in sorted(self.spec.items()))])


def _override(text: str, where: str) -> tuple[str, Any]:
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
    spec = dict(_override(part, f"method {text!r}") for part in rest.split(";") if part.strip()) if rest else {}
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


def _axis_label(axis: str) -> str:
    return f"{axis} ({AXES[axis].text})"


def _fixed_text(freq, varied: list[str]) -> str:
    fixed = [a for a in ("K", "D", "sep", "w_min", "sigma_ratio", "N") if a in freq and a not in varied]
    parts = [f"{a} = {', '.join(f'{float(v):g}' for v in sorted(freq[a].dropna().unique()))}" for a in fixed]
    return f" Fixed: {'; '.join(parts)}." if parts else ""


def sweep_tables(frame) -> list[Table]:
    """The frequencies per point x line (where the seeds land; switching and cost) and the
    breaking points, when the rows hold a sweep. Axis values are shown as text, so the tables
    split (bench.tables.split_wide) after them."""
    freq = landing_frequencies(frame)
    if freq.empty:
        return []
    varied = varied_axes(freq)
    keys = pd.DataFrame({a: [f"{float(v):g}" for v in freq[a]] for a in varied})
    keys["backend"] = freq["backend"].values
    keys["line"] = freq["line"].values
    fixed = _fixed_text(freq, varied)
    landed = keys.assign(seeds=freq["seeds"].astype(int).values)
    for name in ("truth", "other", "collapsed", "mixed", "failed"):
        if name in ("mixed", "failed") and not freq[f"{name}_k"].any():
            continue
        landed[name] = [share_text(r, name) for _, r in freq.iterrows()]
    switching = keys.copy()
    for name in ("switch", "disagree"):
        switching[name] = [share_text(r, name) for _, r in freq.iterrows()]
    switching["slope err"] = freq["w_err"].values
    switching["s to fit"] = freq["s_to_fit"].values
    tables = [
        Table("sweep-landings", "Sweep: where the seeds land",
              f"Per sweep point and backend x method line: k/n seeds, the share and its Wilson {LEVEL:.0%} interval. "
              "truth: landed in the truth's mode; other: another mode; collapsed: components coincided or one "
              "emptied; mixed: chains in different modes; failed: no draws (failed, crashed, timed out)." + fixed,
              landed),
        Table("sweep-switching", "Sweep: label switching and cost",
              f"switch: fits with a label switch within a chain (NUTS fits); disagree: fits whose chains hold "
              f"different labellings (fits of two chains or more); k/n, share, Wilson {LEVEL:.0%} interval. slope err: "
              "median largest slope error (relabelled); s to fit: median warm-up + sampling or optimisation seconds.",
              switching),
    ]
    if varied:
        axis = varied[0]
        points = breaking_points(freq, axis)
        harder = "smaller" if AXES[axis].harder == "lower" else "larger"
        out = pd.DataFrame({other: [f"{float(v):g}" for v in points[other]] for other in varied[1:]})
        if points["fits_held"].astype(bool).any() or points["fits_broke"].astype(bool).any():
            # The fit (or fits, with a data set per seed) at the hardest setting held, else where it
            # broke: the findings and the per-fit tables name it.
            out.insert(0, "fit", [h or b for h, b in zip(points["fits_held"], points["fits_broke"])])
        out.insert(len(out.columns) - len(varied[1:]), "backend", points["backend"].values)
        out.insert(len(out.columns) - len(varied[1:]), "line", points["line"].values)
        out[f"hardest {axis} held"] = [("none" if h == "none" else f"{float(v):g}")
                                       for h, v in zip(points["held"], points["hardest_held"])]
        out["truth there"] = points["truth_there"].values
        out[f"broke at {axis}"] = [("never" if h == "all" else f"{float(v):g}")
                                   for h, v in zip(points["held"], points["broke_at"])]
        out["truth at break"] = points["truth_at_break"].values
        tables.append(Table("sweep-breaking", "Sweep: breaking points",
                            f"Walking {_axis_label(axis)} from easiest to hardest ({harder} is harder): the hardest "
                            f"setting where at least 90% of seeds still landed in the truth's mode, before the first "
                            f"setting below 90%, with its k/n, share and Wilson {LEVEL:.0%} interval; then where it "
                            "broke. never: no setting fell below; none: the easiest already did." + fixed,
                            out.reset_index(drop=True)))
    return tables


def sweep_findings(frame):
    """The findings' sweep section (bench.findings.SetupFindings): per line and setting of the
    other varied axes, where it held and where it broke, naming the breaking-point table and the
    fits at those settings."""
    freq = landing_frequencies(frame)
    varied = varied_axes(freq) if not freq.empty else []
    if not varied:
        return []
    axis = varied[0]
    sentences = []
    for _, point in breaking_points(freq, axis).iterrows():
        where = ", ".join(f"{a} = {float(point[a]):g}" for a in varied[1:])
        name = f"{point['backend']} / {point['line']}" + (f" ({where})" if where else "")
        if point["held"] == "all":
            text = (f"{name} kept at least 90% of seeds in the truth's mode down to the hardest {axis} tried, "
                    f"{float(point['hardest_held']):g} ({point['truth_there']}).")
        elif point["held"] == "none":
            text = (f"{name} fell below 90% of seeds in the truth's mode already at the easiest {axis}, "
                    f"{float(point['broke_at']):g} ({point['truth_at_break']}).")
        else:
            text = (f"{name} held to {axis} = {float(point['hardest_held']):g} ({point['truth_there']}) and broke at "
                    f"{float(point['broke_at']):g} ({point['truth_at_break']}).")
        fits = tuple(f for f in f"{point['fits_held']} {point['fits_broke']}".split() if f)
        sentences.append(Sentence(text, "sweep-breaking", fits))
    title = f"Sweep: where each method breaks along {axis} (k/n seeds, share, Wilson {LEVEL:.0%} interval)"
    return [SetupFindings(title, tuple(sentences))]
