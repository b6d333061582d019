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
    referenced = bool(freq["posterior_n"].any() or freq["identifies_n"].any())
    for name in ("truth", "posterior", "biased", "other", "collapsed", "mixed", "failed"):
        if name in ("biased", "mixed", "failed") and not freq[f"{name}_k"].any() or name == "posterior" and not referenced:
            continue
        landed[name] = [share_text(r, name) for _, r in freq.iterrows()]
    if referenced:
        landed["truth's mode mass"] = freq["truth_mass"].values
    switching = keys.copy()
    for name in ("switch", "disagree"):
        switching[name] = [share_text(r, name) for _, r in freq.iterrows()]
    switching["slope err"] = freq["w_err"].values
    switching["s to fit"] = freq["s_to_fit"].values
    tables = [
        Table("sweep-landings", "Sweep: where the seeds land",
              f"Per sweep point and backend x method line: k/n seeds, the share and its Wilson {LEVEL:.0%} interval. "
              "truth: landed in the truth's mode; other: another mode; collapsed: components coincided or one "
              "emptied; mixed: chains in different modes; failed: no draws (failed, crashed, timed out)."
              + (" With a reference posterior: posterior: landed in the reference's mode (the method matches the "
                 "posterior); biased: in its mode but off in location or scale; other, collapsed and mixed are where "
                 "the reference placed the fits; truth's "
                 "mode mass: the reference's own share of draws in the truth's mode (median over data sets)."
                 if referenced else "") + fixed,
              landed),
        Table("sweep-switching", "Sweep: label switching and cost",
              f"switch: fits with a label switch within a chain (NUTS fits); disagree: fits whose chains hold "
              f"different labellings (fits of two chains or more); k/n, share, Wilson {LEVEL:.0%} interval. slope err: "
              "median largest slope error (relabelled); s to fit: median warm-up + sampling or optimisation seconds.",
              switching),
    ]
    if varied:
        tables.append(_breaking_table(freq, varied, fixed))
    return tables


def _held(points, axis: str) -> list[str]:
    return ["-" if h == "unknown" else "none" if h == "none" else f"{float(v):g}"
            for h, v in zip(points["held"], points["hardest_held"])]


def _broke(points) -> list[str]:
    return ["-" if h == "unknown" else "never" if h == "all" else f"{float(v):g}"
            for h, v in zip(points["held"], points["broke_at"])]


def _with_mass(texts, masses) -> list[str]:
    return [t if t == "-" or pd.isna(m) else f"{t}, mass {float(m):.2f}" for t, m in zip(texts, masses)]


def _references(freq, axis: str) -> pd.Series:
    """Per line (and setting of the other varied axes, in breaking_points' order): made (every
    reference accepted), none, or the settings where one was provisional or could not be made."""
    others = [a for a in varied_axes(freq) if a != axis]
    out = []
    for _, group in freq.groupby(["backend", "line", *others], sort=True, dropna=False):
        gaps = ["{} at {} {}".format(status, axis, ", ".join(f"{float(v):g}" for v in sorted(group[group["reference"] == status][axis])))
                for status in ("provisional", "failed") if (group["reference"] == status).any()]
        out.append("none" if (group["reference"] == "none").all() else "; ".join(gaps) or "made")
    return pd.Series(out)


def _breaking_table(freq, varied: list[str], fixed: str) -> Table:
    """Breaking points along the first varied axis: with a reference posterior, where the posterior
    stops identifying the truth (the reference against the truth) and where the method misses the
    posterior (the fit against the reference), beside the fit against the truth; without one, the
    last only, and the table says so."""
    axis = varied[0]
    harder = "smaller" if AXES[axis].harder == "lower" else "larger"
    truth = breaking_points(freq, axis)
    out = pd.DataFrame({other: [f"{float(v):g}" for v in truth[other]] for other in varied[1:]})
    if truth["fits_held"].astype(bool).any() or truth["fits_broke"].astype(bool).any():
        # The fit (or fits, with a data set per seed) at the hardest setting held, else where it
        # broke: the findings and the per-fit tables name it.
        out.insert(0, "fit", [h or b for h, b in zip(truth["fits_held"], truth["fits_broke"])])
    out.insert(len(out.columns) - len(varied[1:]), "backend", truth["backend"].values)
    out.insert(len(out.columns) - len(varied[1:]), "line", truth["line"].values)
    out["reference made"] = _references(freq, axis).values
    referenced = bool(freq["posterior_n"].any() or freq["identifies_n"].any())
    if referenced:
        ident = breaking_points(freq, axis, share="identifies")
        post = breaking_points(freq, axis, share="posterior")
        out[f"truth identified to {axis}"] = _held(ident, axis)
        out["identified there"] = _with_mass(ident["identifies_there"], ident["mass_held"])
        out[f"not identified at {axis}"] = _broke(ident)
        out["identified at stop"] = _with_mass(ident["identifies_at_break"], ident["mass_broke"])
        out[f"posterior matched to {axis}"] = _held(post, axis)
        out["matched there"] = post["posterior_there"].values
        out[f"misses posterior at {axis}"] = _broke(post)
        out["matched at miss"] = post["posterior_at_break"].values
    out[f"hardest {axis} held"] = _held(truth, axis)
    out["truth there"] = truth["truth_there"].values
    out[f"broke at {axis}"] = _broke(truth)
    out["truth at break"] = truth["truth_at_break"].values
    walk = (f"Walking {_axis_label(axis)} from easiest to hardest ({harder} is harder), each column pair names the "
            f"hardest setting where a share stayed at least 90% before the first setting below 90%, with its k/n, "
            f"share and Wilson {LEVEL:.0%} interval, then where it fell (never: no setting fell below; none: the "
            "easiest already did; -: not counted). ")
    two_way = ("The posterior identifies the truth: the data sets whose reference posterior holds at least half its "
               "draws in the truth's mode (mass: the reference's share of draws there, median over data sets): the "
               "data's information. The method matches the posterior: the seeds whose fit landed in the reference's "
               "mode: the method's own failure is where this falls. Only accepted references count: settings "
               "whose reference was provisional (it failed its checks) or could not be made (reference made) count "
               "against the truth only. " if referenced else
               "No accepted reference posterior (--reference none"
               + (", or each was provisional or could not be made: reference made"
                  if freq["reference"].isin(("failed", "provisional")).any() else "")
               + "): only the fits against the truth, so a breaking point here is the data's and the method's "
               "together. ")
    return Table("sweep-breaking", "Sweep: breaking points",
                 walk + two_way + "held / truth: the fits' seeds in the truth's mode, against the truth apart." + fixed,
                 out.reset_index(drop=True))


def _truth_clause(point, axis: str) -> str:
    """Where the fits held against the truth: 'held to sep = 2 (...) and broke at 1 (...)'."""
    if point["held"] == "all":
        return (f"kept at least 90% of seeds in the truth's mode down to the hardest {axis} tried, "
                f"{float(point['hardest_held']):g} ({point['truth_there']})")
    if point["held"] == "none":
        return (f"fell below 90% of seeds in the truth's mode already at the easiest {axis}, "
                f"{float(point['broke_at']):g} ({point['truth_at_break']})")
    return (f"held to {axis} = {float(point['hardest_held']):g} ({point['truth_there']}) and broke at "
            f"{float(point['broke_at']):g} ({point['truth_at_break']})")


def _method_clause(point, axis: str) -> str:
    """Where the fits stopped landing in the reference's mode."""
    if point["held"] == "unknown":
        return "no fit was placed against a reference posterior"
    if point["held"] == "all":
        return f"matches the posterior at every {axis} ({point['posterior_there']} at {axis} {float(point['hardest_held']):g})"
    if point["held"] == "none":
        return f"misses the posterior from the easiest {axis}, {float(point['broke_at']):g} ({point['posterior_at_break']})"
    return (f"matches the posterior to {axis} = {float(point['hardest_held']):g} ({point['posterior_there']}) and "
            f"misses it from {float(point['broke_at']):g} ({point['posterior_at_break']})")


def _data_clause(point, axis: str) -> str:
    """Where the reference posterior stopped putting its mass at the truth's mode."""
    if point["held"] == "unknown":
        return "no reference posterior was made"
    if point["held"] == "all":
        return (f"the posterior identifies the truth at every {axis} (reference: truth's mode mass "
                f"{point['mass_held']:.2f} at {axis} {float(point['hardest_held']):g})")
    where = "already at the easiest" if point["held"] == "none" else "at"
    return (f"the posterior stops identifying the truth {where} {axis} {float(point['broke_at']):g} (reference: "
            f"truth's mode mass {point['mass_broke']:.2f}; {point['identifies_at_break']} data sets)")


def sweep_findings(frame):
    """The findings' sweep section (bench.report.findings.SetupFindings): per line and setting of the
    other varied axes, where the method stops matching the reference posterior and where that
    posterior stops identifying the truth (with a reference), and where its fits held against the
    truth, naming the breaking-point table and the fits at those settings."""
    freq = landing_frequencies(frame)
    varied = varied_axes(freq) if not freq.empty else []
    if not varied:
        return []
    axis = varied[0]
    truth = breaking_points(freq, axis)
    referenced = bool(freq["posterior_n"].any() or freq["identifies_n"].any())
    post = breaking_points(freq, axis, share="posterior") if referenced else None
    ident = breaking_points(freq, axis, share="identifies") if referenced else None
    gaps = _references(freq, axis)
    sentences = []
    for i, point in truth.iterrows():
        where = ", ".join(f"{a} = {float(point[a]):g}" for a in varied[1:])
        name = f"{point['backend']} / {point['line']}" + (f" ({where})" if where else "")
        if referenced and post.loc[i, "held"] != "unknown":
            text = (f"{name}: {_method_clause(post.loc[i], axis)}; {_data_clause(ident.loc[i], axis)}. Against the "
                    f"truth its fits {_truth_clause(point, axis)}."
                    + ("" if gaps[i] == "made" else f" Reference {gaps[i]}: counted against the truth only there."))
        else:
            # References made but none accepted (provisional or failed) are said as such, not as none.
            made = "no reference posterior" if gaps[i] in ("none", "made") else f"references {gaps[i]}"
            text = f"{name} {_truth_clause(point, axis)} ({made}: against the truth only)."
        fits = tuple(f for f in f"{point['fits_held']} {point['fits_broke']}".split() if f)
        sentences.append(Sentence(text, "sweep-breaking", fits))
    title = f"Sweep: where each method breaks along {axis} (k/n seeds, share, Wilson {LEVEL:.0%} interval)"
    return [SetupFindings(title, tuple(sentences))]
