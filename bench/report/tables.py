"""The report's tables: one summary record per fit, the views of it the report shows, and one
number format for all of them.

A *fit* is a backend x method on one setup (scenario or data file, and whatever the cell changed
from its defaults), summarised over its seeds. Every fit gets an id (F1, F2, ...) that every table,
figure and finding uses, so a sentence of the findings can be traced to its table rows.

Columns that a results file may or may not carry (``flags``, the landing against a reference
posterior ``lp_gap`` / ``ref_distance_sd`` / ``chains_below``, ``elpd_loo``, the W1 distances) are
shown when present and left out when absent; rows without ``flags`` get the same flags worked out
here.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backends.base import METHODS
from bench.score.modes import POOR_MASS, fit_answer, reference_modes_frame
from bench.score.stacking import SUFFIX as STACKED_SUFFIX

CELL_KEYS = ["scenario", "setup", "backend", "method"]
FIT_KEYS = ["fit", "backend", "method"]  # the columns every per-fit table starts with
MODE_WORDS = ("truth", "reference", "biased", "collapsed", "other", "mixed")
TARGET_MODES = ("truth", "reference")
ESS_TARGET = 1000  # "seconds to 1000 effective draws"
# Health thresholds of the report's own flags (used where rows carry no flags column).
RHAT_LIMIT = 1.01  # Vehtari et al. (2021), Rank-normalization, folding, and localization, sec. 4
ESS_LIMIT = 400  # ibid.: bulk and tail ESS above 400 (100 per chain for 4 chains)
KHAT_BAD = 0.7  # Yao et al. (2018), Yes, but did it work?; bench.score.settings.MetricSettings.khat_bad
FAMILY_LABELS = {"w": "slope", "b": "intercept", "sigma": "sigma", "pi": "weight", "nu": "nu", "gamma": "gate"}
_BACKEND_ORDER = {"pymc": 0, "numpyro": 1, "stan": 2}


# ---------------------------------------------------------------------------------------------
# Frame helpers


def col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index, dtype=object)


def num(frame: pd.DataFrame, name: str) -> pd.Series:
    """A numeric column; "inf" strings (JSON has no infinity) become floats, the rest NaN."""
    values = col(frame, name)
    if values.dtype == object:
        values = values.map(lambda v: float(v) if isinstance(v, str) and v in ("inf", "-inf") else v)
    return pd.to_numeric(values, errors="coerce").astype(float)


def _sort_key(backend: str, method: str) -> tuple:
    method_rank = METHODS.index(method) if method in METHODS else len(METHODS)
    return (_BACKEND_ORDER.get(backend, 9), str(backend), method_rank, str(method))


def assign_fit_ids(frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``fit`` (F1, F2, ... by scenario, setup, backend, method) and ``fit_label``."""
    frame = frame.copy()
    if frame.empty:
        frame["fit"] = pd.Series(dtype=object)
        frame["fit_label"] = pd.Series(dtype=object)
        return frame
    keys = frame[CELL_KEYS].astype(str).drop_duplicates()
    ordered = sorted(keys.itertuples(index=False), key=lambda k: (k.scenario, k.setup, *_sort_key(k.backend, k.method)))
    ids = {tuple(k): f"F{i}" for i, k in enumerate(ordered, start=1)}
    frame["fit"] = [ids[tuple(k)] for k in frame[CELL_KEYS].astype(str).itertuples(index=False)]
    frame["fit_label"] = frame["fit"] + " " + frame["backend"].astype(str) + " / " + frame["method"].astype(str)
    return frame


def has_truth(rows: pd.DataFrame) -> bool:
    """Whether these rows were scored against a known truth (bench.score.metrics: reference_source)."""
    source = col(rows, "reference_source").dropna().astype(str)
    if len(source):
        return bool((source == "truth").all())
    return bool(col(rows, "data_file").isna().all())  # no scored rows: a simulated scenario has one


def row_flags(row: pd.Series) -> list[str]:
    """The health flags of one ok row: its ``flags`` column (bench.score.health) when the row carries
    one, else, for rows written before it, the same names worked out here: divergences, rhat
    (above 1.01), ess (bulk below 400), khat (0.7 or more), not-converged, nonfinite."""
    value = row.get("flags")
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v)]
    if isinstance(value, str):
        return [v.strip() for v in re.split(r"[,;]", value) if v.strip() and v.strip() != "-"]
    flags = []  # rows from before the flags column: the report's own
    numbers = {name: _float(row.get(name)) for name in ("divergences", "rhat_max", "ess_bulk_min", "khat",
                                                         "nonfinite_draws")}
    if numbers["divergences"] > 0:
        flags.append("divergences")
    if numbers["rhat_max"] > RHAT_LIMIT:
        flags.append("rhat")
    if numbers["ess_bulk_min"] < ESS_LIMIT:
        flags.append("ess")
    if numbers["khat"] >= KHAT_BAD:
        flags.append("khat")
    if row.get("converged") is False:
        flags.append("not-converged")
    if numbers["nonfinite_draws"] > 0:
        flags.append("nonfinite")
    return flags


def _float(value) -> float:
    if isinstance(value, str) and value in ("inf", "-inf"):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _counts_text(values) -> str:
    counts = Counter(str(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def _median(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.median()) if len(values) else math.nan


# ---------------------------------------------------------------------------------------------
# One record per fit


def _reference_status(ok: pd.DataFrame, truth: bool) -> dict:
    """A provisional reference (bench.reference.posterior: it failed its checks) as the fit's target, with
    what it failed and why; a reference whose fit failed (no target), with its error; nothing for an
    accepted one or none asked for."""
    status = col(ok, "reference_status")
    failed = ok[(status == "failed").to_numpy()]
    if len(failed):  # its fit failed, crashed or timed out (bench.run.references): no reference at all
        return {**({} if truth else {"target": "none (reference not made)"}),
                "reference_failed": failed.iloc[0].get("reference_failed")}
    provisional = ok[(status == "provisional").to_numpy()]
    if not len(provisional):
        return {}
    first = provisional.iloc[0]
    return {"target": "provisional reference", "reference_failed": first.get("reference_failed"),
            "reference_causes": first.get("reference_causes")}


def _target(ok: pd.DataFrame, truth: bool) -> str:
    """What a fit's landings were judged against: the truth; the reference posterior, also for simulated
    data where an accepted reference placed the fits (``mode`` is then its mode; ``truth_mode`` the
    truth's); or the labelling target of data without a truth."""
    if truth:
        accepted = len(ok) and (col(ok, "reference_status") == "accepted").all() and (col(ok, "mode") != "truth").all()
        return "reference" if accepted else "truth"
    return _counts_text(col(ok, "reference_source")).split(" x")[0]


def fit_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One record per fit id: its identity, landings, recovery, cost and health over its seeds.
    Medians over the ok seeds unless a name says otherwise."""
    records = []
    pointwise: dict[str, np.ndarray | None] = {}
    for fit_id, group in frame.groupby("fit", sort=False):
        ok = group[group["status"] == "ok"]
        first = group.iloc[0]
        truth = has_truth(ok if len(ok) else group)
        record = {
            "fit": fit_id, "scenario": first["scenario"], "setup": first["setup"],
            "backend": first["backend"], "method": first["method"],
            "engine": _counts_text(col(ok, "engine")).split(" x")[0] if len(ok) else "-",
            "precision": _counts_text(col(ok, "precision")).split(" x")[0] if len(ok) else "-",
            "N": _median(num(group, "N")),
            "cells": len(group), "seeds_ok": len(ok), "truth": bool(truth),
            "target": _target(ok, truth),
            "reference_name": _counts_text(col(ok, "reference_name")).split(" x")[0] if len(ok) else "-",
            **_reference_status(ok, truth),
            "not_ok": _counts_text(col(group[group["status"] != "ok"], "status")),
        }
        modes = col(ok, "mode")
        for mode in MODE_WORDS:
            record[f"landed_{mode}"] = int((modes == mode).sum())
        record["on_target"] = int(modes.isin(TARGET_MODES).sum())
        # Where a reference placed the fits of simulated data, the truth's landing is its own column.
        record["on_truth"] = (int((col(ok, "truth_mode") == "truth").sum())
                              if record["target"] == "reference" and truth else math.nan)
        record["labellings"] = _counts_text(col(ok, "permutation"))
        disagree = col(ok, "chains_disagree")
        record["seeds_disagree"] = int((disagree == True).sum())  # noqa: E712 (NaN-safe)
        record["switches"] = num(ok, "label_switches").sum(min_count=1)
        record["off_majority"] = num(ok, "off_majority_frac").mean()
        # Against a reference posterior (bench.score.landing): how far below it in log density, how far
        # from its mean in its sds, and how many seeds hold a chain in a poorer mode.
        gap = num(ok, "lp_gap")
        record["lp_gap_max"] = gap.max() if gap.notna().any() else math.nan
        # The other extreme: the chain furthest above the reference (most negative gap), which
        # lp_gap (the chain furthest below) leaves out.
        chain_gaps = [float(g) for text in col(ok, "lp_gap_chains") if isinstance(text, str) and text
                      for g in text.split(";")]
        record["lp_gap_min"] = min(chain_gaps) if chain_gaps else math.nan
        # A MAP or Laplace point against the best optimum any fit of the data found (bench.score.landing).
        below_best = num(ok, "point_gap_best")
        record["point_gap_best_max"] = below_best.max() if below_best.notna().any() else math.nan
        record["point_best"] = (col(ok, "point_best")[below_best.idxmax()] if below_best.notna().any()
                                else None)
        distance = num(ok, "ref_distance_sd")
        record["ref_distance_max"] = distance.max() if distance.notna().any() else math.nan
        below = num(ok, "chains_below")
        record["seeds_poorer"] = int((below > 0).sum()) if below.notna().any() else math.nan
        record["ref_modes_answer"] = fit_answer(f"{first['backend']} / {first['method']}", ok) or "-"
        for family, label in FAMILY_LABELS.items():
            record[f"{family}_err"] = _median(num(ok, f"{family}_err_max"))
            record[f"{family}_cover"] = num(ok, f"{family}_coverage").mean()
            record[f"{family}_w1"] = _median(num(ok, f"{family}_w1_max"))
            record[f"{family}_w1_floor"] = _median(num(ok, f"{family}_w1_floor"))
            record[f"{family}_w1_mode"] = _median(num(ok, f"{family}_w1_mode"))
        record["elpd_loo"] = _median(num(ok, "elpd_loo"))
        record["elpd_loo_se"] = _median(num(ok, "elpd_loo_se"))
        # Say where elpd_loo is a subsample's estimate (bench.score.predictive), and its subsampling se.
        loo_obs, n_obs = num(ok, "loo_obs"), num(ok, "N")
        subsampled = loo_obs.notna() & n_obs.notna() & (loo_obs < n_obs)
        record["loo_obs_of"] = (f"{int(loo_obs[subsampled].median())} of {int(n_obs[subsampled].median())}"
                                if subsampled.any() else "-")
        record["elpd_loo_subsample_se"] = _median(num(ok, "elpd_loo_subsample_se")[subsampled])
        pointwise[fit_id] = _median_seed_pointwise(ok)
        # Compile apart: the first cell of a setup compiles, later ones mostly load a cache, so
        # a median would mix the two; its range says which is which.
        compile_s = num(ok, "t_compile")
        record["t_compile_min"] = compile_s.min() if compile_s.notna().any() else math.nan
        record["t_compile_max"] = compile_s.max() if compile_s.notna().any() else math.nan
        for phase in ("warmup", "sampling", "optimisation"):
            record[f"t_{phase}"] = _median(num(ok, f"t_{phase}"))
        phases = pd.concat([num(ok, f"t_{p}") for p in ("warmup", "sampling", "optimisation")], axis=1)
        record["s_to_fit"] = _median(phases.sum(axis=1, min_count=1))
        rate = num(ok, "ess_bulk_per_s")
        record["s_to_ess"] = _median(num(ok, "t_warmup").fillna(0) + ESS_TARGET / rate.where(rate > 0))
        for name in ("grad_evals", "ess_bulk_min", "ess_bulk_per_s", "ess_tail_per_s", "ess_bulk_per_grad"):
            record[name] = _median(num(ok, name))
        record["rhat_max"] = num(ok, "rhat_max").max() if len(ok) else math.nan
        record["divergences"] = num(ok, "divergences").sum(min_count=1)
        khat = num(ok, "khat")
        record["khat"] = _median(khat)
        record["khat_worst"] = khat.max() if khat.notna().any() else math.nan
        record["seeds_khat_bad"] = int((khat >= KHAT_BAD).sum()) if khat.notna().any() else math.nan
        converged = col(ok, "converged")
        reported = converged[converged.map(lambda v: isinstance(v, (bool, np.bool_)))]
        record["converged"] = f"{int(reported.sum())} of {len(reported)}" if len(reported) else math.nan
        flags = Counter(flag for _, row in ok.iterrows() for flag in row_flags(row))
        record["flags"] = ", ".join(f"{f} x{n}" for f, n in sorted(flags.items())) if flags else "-"
        record["flag_counts"] = dict(flags)
        records.append(record)
    records.sort(key=lambda r: int(r["fit"][1:]))
    fits = pd.DataFrame(records)
    if len(fits):
        # elpd sums over observations (thousands of nats): the difference to the best fit of the
        # same data is what compares, as arviz-stats' compare shows it.
        # A fit with a degenerate component is never the best: its elpd is high only because
        # the likelihood is unbounded at tied points.
        # Nor is a stacked row: its weights were fitted on the same LOO densities it is scored by,
        # so its elpd is optimistic (Yao et al. 2022) and would win by construction.
        stacked = fits["method"].astype(str).str.endswith(STACKED_SUFFIX)
        sound = fits["elpd_loo"].where(~fits["flag_counts"].map(lambda f: "degenerate-component" in f) & ~stacked)
        best = sound.groupby([fits["scenario"], fits["setup"]]).transform("max")
        fits["elpd_loo_diff"] = fits["elpd_loo"] - best
        best_fit = sound.groupby([fits["scenario"], fits["setup"]]).transform(
            lambda s_: fits.loc[s_.idxmax(), "fit"] if s_.notna().any() else None)
        fits["elpd_loo_best"] = best_fit
        fits["elpd_loo_diff_se"] = [paired_elpd_se(pointwise.get(f), pointwise.get(b)) if isinstance(b, str) else math.nan
                                    for f, b in zip(fits["fit"], best_fit)]
    return fits


def _median_seed_pointwise(ok: pd.DataFrame) -> tuple[np.ndarray, float, float, np.ndarray | None] | None:
    """(pointwise elpd_loo, N, subsampling se, the difference estimator's approximations) of the
    seed whose elpd_loo is the median's (the lower middle one), None when no seed recorded it. The
    pointwise values are of every observation, or of the observations LOO subsampled
    (bench.score.predictive: the same ones for every fit of a data set) when fewer than N; the
    approximations are at those observations (``loo_approx_pointwise``), None where the row has
    none (not subsampled, or written before the column existed)."""
    elpd = num(ok, "elpd_loo")
    texts = col(ok, "elpd_loo_pointwise")
    usable = elpd.notna() & texts.map(lambda t: isinstance(t, str) and t != "")
    if not usable.any():
        return None
    ordered = elpd[usable].sort_values()
    pick = ordered.index[(len(ordered) - 1) // 2]
    values = np.array([float(v) for v in texts[pick].split(";")])
    n = _float(ok.at[pick, "N"]) if "N" in ok else math.nan
    sub_se = _float(ok.at[pick, "elpd_loo_subsample_se"]) if "elpd_loo_subsample_se" in ok else math.nan
    approx_text = ok.at[pick, "loo_approx_pointwise"] if "loo_approx_pointwise" in ok else None
    approx = (np.array([float(v) for v in approx_text.split(";")])
              if isinstance(approx_text, str) and approx_text != "" else None)
    return (values, (n if math.isfinite(n) else float(values.size)), (sub_se if math.isfinite(sub_se) else 0.0),
            approx if approx is not None and approx.shape == values.shape else None)


def paired_elpd_se(a, b) -> float:
    """Standard error of elpd_loo(a) - elpd_loo(b) for two ``_median_seed_pointwise`` results.

    From the pointwise differences d_i: sqrt(N var(d_i)) (Vehtari, Gelman & Gabry 2017, eq. 24;
    arviz-stats' ``compare`` dse). When LOO subsampled m < N observations (the same ones for both
    fits: bench.score.predictive seeds the subsample by the data) var(d_i) is estimated from them,
    as Magnusson et al. (2020) estimate the elpd's se from a simple random subsample, and the
    subsampling variance of the difference of the two difference estimators is added:
    N^2 (1 - m/N) var(d_i - (a_i - b_i)) / m over the subsample, with a_i, b_i each fit's
    approximation (its lpd; 0 for a stacked row), as arviz-stats' ``compare`` computes
    subsampling_dse for two ``loo_subsample`` results of one subsample (``_diff_srs_estimator``).
    The two fits' subsampling errors share the subsample, so they are not added in quadrature;
    only for rows without approximations (written before they were recorded) are they.
    0 for a fit against itself; NaN when either lacks pointwise values or they do not pair
    (different lengths or N)."""
    if a is None or b is None or np.shape(a[0]) != np.shape(b[0]) or a[1] != b[1]:
        return math.nan
    diff = np.asarray(a[0], dtype=float) - np.asarray(b[0], dtype=float)
    finite = np.isfinite(diff)
    valid = diff[finite]
    if not valid.size:
        return math.nan
    subsampled = np.size(a[0]) < a[1]
    n = a[1] if subsampled else valid.size
    subsampling = 0.0
    if subsampled and a is not b:
        if a[3] is not None and b[3] is not None and valid.size > 1:
            residual = (diff - (a[3] - b[3]))[finite]
            m = valid.size
            subsampling = n**2 * max(0.0, 1 - m / n) * float(np.var(residual, ddof=1)) / m
        else:
            subsampling = a[2] ** 2 + b[2] ** 2
    return float(np.sqrt(n * np.var(valid) + subsampling))


# ---------------------------------------------------------------------------------------------
# Views


@dataclass(frozen=True)
class Table:
    """A table of the report: ``key`` names its anchor (rows are ``key-F3``), ``frame`` holds the
    displayed columns under their displayed labels."""

    key: str
    title: str
    text: str
    frame: pd.DataFrame

    @property
    def empty(self) -> bool:
        return self.frame.empty


def _view(fits: pd.DataFrame, columns: list[tuple[str, str]], keep: list[str] | None = None) -> pd.DataFrame:
    """Select and relabel; value columns that are NaN (or "-") throughout are dropped."""
    keep = FIT_KEYS if keep is None else keep
    out = {}
    for name, label in columns:
        if name not in fits:
            continue
        values = fits[name]
        blank = values.isna() | values.astype(str).isin(["-", "nan"])
        if label in keep or not blank.all():
            out[label] = values
    frame = pd.DataFrame(out)
    values = [c for c in frame.columns if c not in keep]
    if not values:
        return pd.DataFrame()
    # A fit with nothing to show in this table (a NUTS fit among k-hats) is left out of it.
    filled = ~(frame[values].isna() | frame[values].astype(str).isin(["-", "nan"]))
    return frame[filled.any(axis=1)].reset_index(drop=True)


def _of(count_col: str, total_col: str, fits: pd.DataFrame) -> pd.Series:
    return fits[count_col].astype(int).astype(str) + " of " + fits[total_col].astype(int).astype(str)


def report_tables(fits: pd.DataFrame, frame: pd.DataFrame) -> list[Table]:
    """The per-fit tables, each narrow enough to read without scrolling."""
    if fits.empty:
        return []
    fits = fits.copy()
    fits["seeds"] = _of("seeds_ok", "cells", fits)
    fits["on target"] = _of("on_target", "seeds_ok", fits)
    key = [("fit", "fit"), ("backend", "backend"), ("method", "method")]
    tables = [
        Table("fits", "Fits", "What each fit id stands for: a backend x method on one setup, over its seeds. "
              "target: what the draws were relabelled against and scored with.",
              _view(fits, [*key, ("scenario", "scenario"), ("setup", "setup"), ("N", "N"), ("engine", "engine"),
                           ("precision", "precision"), ("seeds", "seeds ok"), ("target", "target"),
                           ("reference_name", "reference")])),
        Table("recovery", "Recovery", "Error of the relabelled posterior means against the truth: median over "
              "seeds of the largest error in each family. Fits without a truth have no row here.",
              _view(fits[fits["truth"]], [*key, ("on target", "on target"), ("w_err", "slope err"),
                                         ("b_err", "intercept err"), ("sigma_err", "sigma err"),
                                         ("pi_err", "weight err"), ("nu_err", "nu err"), ("gamma_err", "gate err")])),
        Table("coverage", "Recovery: interval coverage", "Share of the true values inside the central 90% "
              "interval (relabelled draws), mean over seeds.",
              _view(fits[fits["truth"]], [*key, ("w_cover", "slope cover"), ("b_cover", "intercept cover"),
                                         ("sigma_cover", "sigma cover"), ("pi_cover", "weight cover"),
                                         ("nu_cover", "nu cover"), ("gamma_cover", "gate cover")])),
        Table("modes", "Modes", "Seeds per landing mode and, against a reference posterior, how far below it "
              "in log density and how far from its mean the fits sit, and the seeds with a chain in a poorer mode.",
              _view(fits, [*key, ("seeds", "seeds ok"),
                           *[(f"landed_{m}", f"landed {m}") for m in MODE_WORDS if fits[f"landed_{m}"].any()],
                           ("lp_gap_max", "lp gap max"), ("ref_distance_max", "distance max sd"),
                           ("seeds_poorer", "seeds poorer mode"), ("ref_modes_answer", "reference modes")])),
        Table("reference-modes", "Reference modes", "The reference posterior's modes (bench.reference.modes): "
              "each mode's posterior mass by bridge sampling and by importance sampling, with standard errors, "
              f"its mean log density and how far below the best mode; poor: mass below {POOR_MASS}. Degenerate "
              "modes (a sigma collapsed on tied points) have no mass: the posterior is improper there.",
              reference_modes_frame(frame)),
        Table("switching", "Label switching", "The labellings the seeds reached, and switching between and "
              "within chains.",
              _view(fits, [*key, ("labellings", "labellings"), ("seeds_disagree", "chains disagree"),
                           ("switches", "switches"), ("off_majority", "off majority")])),
        Table("cost", "Cost: time", "Seconds. Compile apart, as its range over seeds: the first cell compiles, "
              "later ones mostly load what it cached. The rest are medians over seeds: s to fit is warm-up + "
              f"sampling or optimisation as run; s to {ESS_TARGET} ESS is warm-up + the sampling time {ESS_TARGET} "
              "bulk-effective draws take at the measured rate (NUTS).",
              _view(fits, [*key, ("t_compile_min", "compile s min"), ("t_compile_max", "compile s max"),
                           ("t_warmup", "warm-up s"), ("t_sampling", "sampling s"), ("t_optimisation", "optimise s"),
                           ("s_to_fit", "s to fit"), ("s_to_ess", f"s to {ESS_TARGET} ESS")])),
        Table("efficiency", "Cost: sampling efficiency", "NUTS only, medians over seeds; ESS of the slowest "
              "parameter, on relabelled draws (arviz-stats).",
              _view(fits[fits["ess_bulk_min"].notna()], [*key, ("grad_evals", "grad evals"), ("ess_bulk_min", "ESS bulk"),
                           ("ess_bulk_per_s", "ESS bulk/s"), ("ess_tail_per_s", "ESS tail/s"),
                           ("ess_bulk_per_grad", "ESS bulk/grad")])),
        Table("health", "Health", "R-hat over seeds (worst), divergences (sum), the optimiser's convergence, and "
              "the health flags raised, with how many seeds raised each.",
              _view(fits, [*key, ("seeds", "seeds ok"), ("rhat_max", "R-hat max"), ("divergences", "divergences"),
                           ("converged", "converged"), ("flags", "flags")])),
        Table("vi", "Approximation quality", "PSIS k-hat of the VI and Pathfinder draws (below 0.5 good, 0.7 or "
              "more: not usable as the posterior) and W1 distances to the reference posterior, where measured, "
              "each beside its noise floor (the W1 two exact samples of the fit's size have) and the W1 to the "
              "draws of the reference mode the fit's chains landed in (a reference made of modes).",
              _view(fits, [*key, ("khat", "k-hat"), ("khat_worst", "k-hat worst"),
                           ("seeds_khat_bad", "seeds k-hat bad"), ("w_w1", "slope W1"),
                           ("w_w1_floor", "slope W1 floor"), ("w_w1_mode", "slope W1 own mode"),
                           ("b_w1", "intercept W1"), ("b_w1_floor", "intercept W1 floor"),
                           ("b_w1_mode", "intercept W1 own mode"), ("sigma_w1", "sigma W1"),
                           ("sigma_w1_floor", "sigma W1 floor"), ("sigma_w1_mode", "sigma W1 own mode"),
                           ("pi_w1", "weight W1"), ("pi_w1_floor", "weight W1 floor"),
                           ("pi_w1_mode", "weight W1 own mode"), ("nu_w1", "nu W1"),
                           ("nu_w1_floor", "nu W1 floor"), ("gamma_w1", "gate W1"),
                           ("gamma_w1_floor", "gate W1 floor")])),
        Table("predictive", "Predictive fit", "PSIS-LOO expected log predictive density of y (arviz-stats), "
              "median over seeds, its difference to the best fit of the same data (never one with a degenerate "
              "component) and the standard error of that difference from the paired pointwise differences "
              "(the median seed of each fit; arviz-stats' compare dse). Where 'LOO observations' shows m of N, "
              "elpd_loo is estimated from a random subsample of m observations (arviz-stats' loo_subsample, "
              "Magnusson et al. 2020); its se includes the 'subsampling se'.",
              _view(fits, [*key, ("elpd_loo", "elpd_loo"), ("elpd_loo_se", "elpd_loo se"),
                           ("loo_obs_of", "LOO observations"), ("elpd_loo_subsample_se", "subsampling se"),
                           ("elpd_loo_diff", "elpd_loo - best"), ("elpd_loo_diff_se", "se of the difference")])),
    ]
    return [t for t in tables if not t.empty]


def flagged_table(frame: pd.DataFrame) -> Table:
    """Every ok cell with a health flag, one row each: where it landed and why it is flagged."""
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    flags = [", ".join(row_flags(row)) for _, row in ok.iterrows()]
    ok = ok.assign(_flags=flags)
    ok = ok[ok["_flags"] != ""]
    title = "Flagged fits"
    if ok.empty:
        return Table("flagged", title, "", pd.DataFrame())
    columns = {"mode": "mode", "lp_gap": "lp gap nats", "ref_distance_sd": "distance sd", "rhat_max": "R-hat max",
               "divergences": "divergences", "khat": "k-hat", "bound_params": "at a bound", "_flags": "flags"}
    out = ok[["fit", "backend", "method", "seed"]].copy()
    for name, label in columns.items():
        values = num(ok, name) if name in ("lp_gap", "ref_distance_sd", "rhat_max", "divergences", "khat") else col(ok, name)
        if values.notna().any() and not values.astype(str).isin(["", "nan"]).all():
            out[label] = values
    out = out.assign(_n=out["fit"].str[1:].astype(int)).sort_values(["_n", "seed"]).drop(columns="_n")
    return Table("flagged", title, "Every fit with a health flag, one row per seed (flag words in the glossary).",
                 out.reset_index(drop=True))


def means_table(frame: pd.DataFrame) -> Table:
    """Every ok cell's relabelled posterior means (the rows' mean.* columns), the truth first when
    known: one labelling for every row when the target is the truth or a reference posterior."""
    ok = frame[frame["status"] == "ok"] if len(frame) else frame
    params = [c for c in ok.columns if str(c).startswith("mean.")]
    if ok.empty or not params:
        return Table("means", "Posterior means", "", pd.DataFrame())
    order = {"w": 0, "b": 1, "sigma": 2, "pi": 3}
    params = sorted(params, key=lambda c: (order.get(c[5:].split("[")[0], 9), c))
    out = ok[["fit", "backend", "method", "seed", *params]].rename(columns={c: c[5:] for c in params})
    out = out.assign(_n=out["fit"].str[1:].astype(int)).sort_values(["_n", "seed"]).drop(columns="_n")
    truth = [c for c in ok.columns if str(c).startswith("truth.")]
    if truth:
        first = ok.iloc[0]
        line = {"fit": "", "backend": "truth", "method": "", "seed": "", **{c[6:]: first[c] for c in truth}}
        out = pd.concat([pd.DataFrame([line]), out], ignore_index=True)
    for column in out.columns[4:]:
        out[column] = pd.to_numeric(out[column], errors="coerce")
    shared = set(col(ok, "reference_source").dropna().astype(str)) <= {"truth", "reference"}
    text = ("Each seed's relabelled posterior means, on the data's scale. "
            + ("Every row shares one labelling (the truth's or the reference posterior's)." if shared else
               "Each fit is relabelled to its own pivot: components need not line up across rows."))
    return Table("means", "Posterior means", text, out.reset_index(drop=True))


def problems_table(frame: pd.DataFrame) -> Table:
    bad = frame[frame["status"] != "ok"]
    if bad.empty:
        return Table("problems", "Failed and unsupported cells", "", pd.DataFrame())
    why = col(bad, "error").where(col(bad, "error").notna(), col(bad, "reason"))
    out = pd.DataFrame({"fit": bad["fit"], "backend": bad["backend"], "method": bad["method"], "seed": bad["seed"],
                        "status": bad["status"], "why": why.astype(str)})
    out["_order"] = out["fit"].str[1:].astype(int)
    out = out.sort_values(["_order", "seed"]).drop(columns="_order").reset_index(drop=True)
    return Table("problems", "Failed and unsupported cells", "Every cell that did not produce draws, with its "
                 "reason.", out)


def environment_table(frame: pd.DataFrame, environments: list[dict]) -> Table:
    """Machine and versions: from run.json / benchmark machine_info, and every fit's own versions."""
    items: dict[str, str] = {}
    for env in environments:
        inner = env.get("environment", env)
        for key, value in (inner.get("machine") or {}).items():
            items[f"machine.{key}"] = str(value)
        for key, value in (inner.get("versions") or {}).items():
            items[key] = str(value)
        for key in ("pystan_stan_version", "cmdstan_version", "cmdstan_path"):
            if key in inner:
                items[key] = str(inner[key])
        info = inner.get("machine_info") or {}
        for key in ("node", "processor", "machine", "python_version", "system", "release"):
            if key in info:
                items[f"machine.{key}"] = str(info[key])
        cpu = info.get("cpu") or {}
        if cpu.get("brand_raw"):
            items["machine.cpu"] = str(cpu["brand_raw"])
    for versions in col(frame, "versions").dropna():
        if isinstance(versions, dict):
            for key, value in versions.items():
                items.setdefault(key, str(value))
    return Table("environment", "Versions and machine", "", pd.DataFrame(sorted(items.items()),
                                                                           columns=["what", "version / value"]))


def split_wide(table: Table, max_values: int = 7) -> list[Table]:
    """A table with more than ``max_values`` value columns as several tables that repeat its
    leading text columns, so none needs a scroll bar."""
    frame = table.frame
    if frame.empty:
        return [table]
    keys = []
    for column in frame.columns:
        if pd.api.types.is_numeric_dtype(frame[column]) and column not in ("N", "K"):
            break
        keys.append(column)
    values = [c for c in frame.columns if c not in keys]
    if len(values) <= max_values:
        return [table]
    parts = math.ceil(len(values) / max_values)
    size = math.ceil(len(values) / parts)
    chunks = [values[i:i + size] for i in range(0, len(values), size)]
    return [Table(f"{table.key}-{i}" if i > 1 else table.key, f"{table.title} ({i} of {len(chunks)})",
                  table.text if i == 1 else "", frame[keys + chunk]) for i, chunk in enumerate(chunks, start=1)]


# ---------------------------------------------------------------------------------------------
# Numbers


def fmt(value) -> str:
    """One format for every number in the report: positional, three significant digits,
    thousands separated from 1000 up (rounded to a whole number), never an exponent; NaN "-"."""
    if value is None:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        if abs(value) >= 1000 or float(value).is_integer():
            return f"{value:,.0f}"
        return np.format_float_positional(value, precision=3, unique=False, fractional=False, trim="-")
    return str(value)
