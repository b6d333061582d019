"""A sweep's tables and findings: where the seeds of each point land, and where each method breaks.

The rows of a sweep (bench.run.sweep plans it) become, per sweep point and method line, landing
frequencies with Wilson intervals (bench.report.frequencies); the tables and the findings' sweep
section of the report (bench.report.document) are made here.
"""

from __future__ import annotations

import pandas as pd

from bench.report.findings import Sentence, SetupFindings
from bench.report.frequencies import LEVEL, breaking_points, landing_frequencies, share_text, varied_axes
from bench.report.tables import Table
from models.families import AXES


def _axis_label(axis: str) -> str:
    return f"{axis} ({AXES[axis].text})"


def _fixed_text(freq, varied: list[str]) -> str:
    fixed = [a for a in ("K", "D", "sep", "w_min", "sigma_ratio", "N") if a in freq and a not in varied]
    parts = [f"{a} = {', '.join(f'{float(v):g}' for v in sorted(freq[a].dropna().unique()))}" for a in fixed]
    return f" Fixed: {'; '.join(parts)}." if parts else ""


def sweep_tables(frame) -> list[Table]:
    """The frequencies per point x line (where the seeds land; switching and cost) and the
    breaking points, when the rows hold a sweep. Axis values are shown as text, so the tables
    split (bench.report.tables.split_wide) after them."""
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
    """The findings' sweep section (bench.report.findings.SetupFindings): per line and setting of the
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
