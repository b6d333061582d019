"""Landing frequencies over the seeds of a sweep point, with Wilson intervals, and breaking points.

A sweep (bench.run.sweep) runs every point of a scenario family (models.families) x backend x method
x seed as ordinary cells. Here its rows become, per point and *line* (a backend x method, with
the spec fields the cell overrides, e.g. NUTS ordered by slope), the share of seeds

- ``truth``: landed in the truth's mode (row ``mode`` truth, or reference when a reference
  posterior placed it: bench.score.metrics, bench.score.landing);
- ``other``: landed in another mode; ``collapsed``: components coincided or one emptied;
  ``mixed``: chains landed in different modes; ``biased``: in a reference's mode but off in
  location or scale (bench.score.landing); ``failed``: no draws (failed, crashed, timed out);
- ``switch``: fits with a label switch within a chain (MCMC fits only: ``label_switches`` > 0);
- ``disagree``: fits whose chains' majority labellings differ (fits of two chains or more);
- ``posterior``: where an accepted reference posterior placed the fits (bench.score.landing), the
  fits in its mode (row ``mode`` reference), out of the ok fits that had one: "the method matches
  the posterior" (a provisional reference failed its checks: no fit is said to have reached it);
- ``identifies``: the data sets whose accepted reference posterior holds at least IDENTIFY_MASS of
  its draws in the truth's mode (row ``ref_truth_mass``, bench.score.metrics.reference_truth_mass),
  out of those with one: "the posterior identifies the truth". Beside it ``truth_mass``, the
  median of that mass over the point's data sets.

``truth`` is the fit's landing against the truth apart (row ``truth_mode``; rows written before it
existed: ``mode`` truth, or reference when a reference placed them).

Each share is k of n with its Wilson score interval at 90% (Wilson 1927; recommended over the
Wald interval by Brown, Cai & DasGupta 2001), computed by scipy.stats.binomtest. Unsupported
cells count in no denominator. Beside them: the median slope error and the median seconds to fit.

A *breaking point* walks one axis from its easiest to its hardest setting (models.families.AXES
says which direction is harder) and names the hardest setting reached with a share (by default
``truth``: seeds in the truth's mode; also ``posterior`` and ``identifies``) of at least 90% before
the first setting below it.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from scipy.stats import binomtest

from bench.report.tables import TARGET_MODES, col, num
from models.families import AXES

LEVEL = 0.9  # the Wilson intervals' confidence level
HOLD = 0.9  # the share of seeds in the truth's mode a setting must keep to count as not broken
# A data set's posterior identifies the truth when the truth's mode holds at least this share of it.
IDENTIFY_MASS = 0.5
SHARES = ("truth", "other", "collapsed", "mixed", "biased", "failed", "switch", "disagree", "posterior", "identifies")
# Which axis a breaking point walks and which the phase diagram's second axis is: the first
# varied axis in this order.
AXIS_ORDER = ("sep", "w_min", "sigma_ratio", "outliers", "gate", "K", "D", "N")
LINE_KEYS = ["backend", "line"]


def wilson_interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of a binomial share k / n at ``level``, via
    scipy.stats.binomtest(...).proportion_ci(method="wilson") (no continuity correction):

        (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n),  z = Phi^-1((1 + level) / 2)

    Brown, Cai & DasGupta (2001) recommend it for small n. (nan, nan) when n is 0. Raises
    ValueError when k is outside [0, n]."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= k <= n:
        raise ValueError(f"k: must lie in [0, n = {n}], got {k}")

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def line_label(row: pd.Series | dict) -> str:
    """The method and the spec fields the cell overrides: 'nuts', 'nuts ordering=slope'."""
    cell = row.get("cell")
    spec = cell.get("spec") if isinstance(cell, dict) else None
    extra = [f"{k}={v}" for k, v in sorted((spec or {}).items())]
    return " ".join([str(row.get("method")), *extra])


def axes_in(frame: pd.DataFrame) -> list[str]:
    """The family axes the rows carry as columns, in AXIS_ORDER (N only with a family axis)."""
    family = [a for a in AXIS_ORDER if a != "N" and a in frame and num(frame, a).notna().any()]
    return family + (["N"] if family and "N" in frame else [])


def varied_axes(frame: pd.DataFrame) -> list[str]:
    """The axes taking more than one value among the rows, in AXIS_ORDER."""
    return [a for a in axes_in(frame) if num(frame, a).dropna().nunique() > 1]


def sweep_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of family points (those with the family's axes), with ``line`` added."""
    if frame.empty or "sep" not in frame:
        return frame.iloc[0:0]
    rows = frame[num(frame, "sep").notna()].copy()
    rows["line"] = [line_label(row) for _, row in rows.iterrows()]
    # A cell's N is the data size it fitted (a failed cell may lack it: its cell's n then).
    n_cell = [c.get("n") if isinstance(c, dict) else None for c in col(rows, "cell")]
    rows["N"] = num(rows, "N").fillna(pd.Series(n_cell, index=rows.index, dtype=float))
    return rows


def _share(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "frac": k / n if n else math.nan, "lo": lo, "hi": hi}


def landing_frequencies(frame: pd.DataFrame) -> pd.DataFrame:
    """One record per sweep point x line: for each of SHARES its ``_k``, ``_n``, ``_frac``,
    ``_lo``, ``_hi`` (Wilson LEVEL interval), plus ``seeds`` (cells counted), ``w_err`` (median
    slope error, ok seeds), ``s_to_fit`` (median warm-up + sampling or optimisation seconds),
    ``truth_mass`` (median ``ref_truth_mass`` over the data sets with an accepted reference) and
    ``reference``: the worst of its rows' reference status (failed: making one failed; provisional:
    one failed its checks; accepted; none: none was asked for)."""
    rows = sweep_rows(frame)
    rows = rows[rows["status"] != "unsupported"] if len(rows) else rows
    if rows.empty:
        return pd.DataFrame()
    axes = axes_in(rows)
    records = []
    for key, group in rows.groupby([*axes, *LINE_KEYS], sort=True, dropna=False):
        record = dict(zip([*axes, *LINE_KEYS], key))
        ok = group[group["status"] == "ok"]
        modes = col(ok, "mode")
        n = len(group)
        counts = {"truth": int(_in_truth(ok).sum()), "other": int((modes == "other").sum()),
                  "collapsed": int((modes == "collapsed").sum()), "mixed": int((modes == "mixed").sum()),
                  "biased": int((modes == "biased").sum()),
                  "failed": n - len(ok)}
        for name, k in counts.items():
            record.update({f"{name}_{part}": v for part, v in _share(k, n).items()})
        switches = num(ok, "label_switches").dropna()
        record.update({f"switch_{part}": v for part, v in _share(int((switches > 0).sum()), len(switches)).items()})
        several = ok[num(ok, "n_chains") > 1]
        disagree = int((col(several, "chains_disagree") == True).sum())  # noqa: E712 (NaN-safe)
        record.update({f"disagree_{part}": v for part, v in _share(disagree, len(several)).items()})
        placed = ok[_accepted(ok)]
        record.update({f"posterior_{part}": v for part, v in
                       _share(int((col(placed, "mode") == "reference").sum()), len(placed)).items()})
        masses = _data_set_masses(group[_accepted(group)])
        record.update({f"identifies_{part}": v for part, v in
                       _share(int((masses >= IDENTIFY_MASS).sum()), len(masses)).items()})
        record["truth_mass"] = float(masses.median()) if len(masses) else math.nan
        status = col(group, "reference_status")
        record["reference"] = next((s for s in ("failed", "provisional", "accepted") if (status == s).any()), "none")
        record["seeds"] = n
        # The report's fit ids (bench.report.tables.assign_fit_ids) of the point's cells, when assigned.
        record["fits"] = " ".join(sorted(set(col(group, "fit").dropna().astype(str)), key=_fit_order))
        err = num(ok, "w_err_max").dropna()
        record["w_err"] = float(err.median()) if len(err) else math.nan
        phases = pd.concat([num(ok, f"t_{p}") for p in ("warmup", "sampling", "optimisation")], axis=1)
        cost = phases.sum(axis=1, min_count=1).dropna()
        record["s_to_fit"] = float(cost.median()) if len(cost) else math.nan
        records.append(record)
    return pd.DataFrame(records)


def _in_truth(rows: pd.DataFrame) -> pd.Series:
    """Rows whose fit landed in the truth's mode: ``truth_mode``, or for rows without it (written
    before it existed, or without a truth) ``mode`` truth or reference."""
    mode = col(rows, "mode").isin(TARGET_MODES)
    if "truth_mode" not in rows:
        return mode
    return rows["truth_mode"].eq("truth").where(rows["truth_mode"].notna(), mode)


def _accepted(rows: pd.DataFrame) -> pd.Series:
    """Rows an accepted reference posterior placed. A provisional one failed its checks: no fit is
    said to have reached it (bench.run.references), so its rows count against the truth only."""
    return col(rows, "reference_status") == "accepted"


def _data_set_masses(rows: pd.DataFrame) -> pd.Series:
    """``ref_truth_mass`` once per data set (cell's data seed) among rows that carry it."""
    mass = num(rows, "ref_truth_mass")
    seeds = pd.Series([c.get("data_seed") if isinstance(c, dict) else None for c in col(rows, "cell")],
                      index=rows.index)
    return mass[mass.notna()].groupby(seeds[mass.notna()].astype(str)).first()


def _fit_order(fit: str) -> tuple:
    return (int(fit[1:]),) if fit[1:].isdigit() else (0, fit)


def share_text(record: pd.Series | dict, name: str) -> str:
    """'9/10 0.90 [0.65, 0.98]'; '-' when nothing was counted."""
    n = record[f"{name}_n"]
    if not n:
        return "-"
    return f"{int(record[f'{name}_k'])}/{int(n)} {record[f'{name}_frac']:.2f} [{record[f'{name}_lo']:.2f}, {record[f'{name}_hi']:.2f}]"


def _easiest_first(values, axis: str) -> list:
    return sorted(values, reverse=AXES[axis].harder == "lower")


def breaking_points(freq: pd.DataFrame, axis: str | None = None, hold: float = HOLD, share: str = "truth") -> pd.DataFrame:
    """Per line and setting of the other varied axes: walking ``axis`` (default the first varied
    in AXIS_ORDER) from easiest to hardest, the hardest setting whose ``share`` (one of SHARES:
    truth, posterior, identifies) is at least ``hold`` before the first that falls below it, with
    its k/n and Wilson interval (``<share>_there``), and the setting where it broke with its share
    (``<share>_at_break``). ``held`` is 'all' when no setting fell below, 'none' when the easiest
    already did; settings where nothing was counted for the share (no reference) are passed over,
    and ``held`` is 'unknown' when none was counted. ``mass_held`` and ``mass_broke``: the median
    truth's-mode mass of the reference (``truth_mass``) at those settings."""
    if freq.empty:
        return pd.DataFrame()
    varied = [a for a in axes_in(freq) if freq[a].dropna().nunique() > 1]
    axis = axis or (varied[0] if varied else None)
    if axis is None:
        return pd.DataFrame()
    others = [a for a in varied if a != axis]
    records = []
    for key, group in freq.groupby([*LINE_KEYS, *others], sort=True, dropna=False):
        record = dict(zip([*LINE_KEYS, *others], key if isinstance(key, tuple) else (key,)))
        record["axis"] = axis
        held, broke, counted = None, None, False
        for value in _easiest_first(group[axis].unique(), axis):
            point = group[group[axis] == value].iloc[0]
            if not point[f"{share}_n"]:
                continue
            counted = True
            if point[f"{share}_frac"] >= hold:
                held = point
            else:
                broke = point
                break
        record["held"] = "unknown" if not counted else "all" if broke is None else ("none" if held is None else "at")
        record["hardest_held"] = held[axis] if held is not None else math.nan
        record[f"{share}_there"] = share_text(held, share) if held is not None else "-"
        record["broke_at"] = broke[axis] if broke is not None else math.nan
        record[f"{share}_at_break"] = share_text(broke, share) if broke is not None else "-"
        record["mass_held"] = held.get("truth_mass", math.nan) if held is not None else math.nan
        record["mass_broke"] = broke.get("truth_mass", math.nan) if broke is not None else math.nan
        record["fits_held"] = held["fits"] if held is not None else ""
        record["fits_broke"] = broke["fits"] if broke is not None else ""
        records.append(record)
    return pd.DataFrame(records)
