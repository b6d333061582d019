"""Where a fit landed, told by the reference posterior: its mode, a log-density gap, a distance.

Every chain (an approximation's draws and a MAP point count as one chain) is placed against the
reference posterior (bench.reference.posterior), both relabelled to the same target:

- reference: every relabelled posterior mean lies within ``mode_distance_sd`` reference posterior
  sds of the reference's mean. A single point (MAP, a Laplace mode) must do more, since a point
  at the mode has no spread to excuse a miss: its log density within ``point_lp_gap_nats`` of
  the best optimum known for the data set (the reference's highest draw, or the point itself when
  higher) and its distance within ``point_distance_sd`` reference sds. Checked first: a chain
  where the reference is is in its mode even when the components sit close enough to read as
  collapsed (a poorly separated posterior);
- collapsed: otherwise, components coincide or one has emptied (``metrics.is_collapsed``), as
  without a reference;
- biased: in the reference's mode (every relabelled component at most a third as far, in
  reference sds, from its own reference component's location as from any other's, and none
  collapsed) but off in
  location or scale beyond those limits: an accuracy finding, not another mode;
- other: anywhere else.

Beside the class each chain gets

- its distance: max over every scalar of |chain mean - reference mean| / reference sd;
- its log-density gap, in nats: the reference's mean log density minus the chain's (over evenly
  thinned draws), or, for a single point (MAP), the reference's highest draw's minus the
  point's: a point at the reference's mode is at least as high as every draw. Positive: below.

A chain in another mode whose gap exceeds the tolerance max(lp_gap_nats, lp_gap_sd x sd of the
reference's log densities) sits in a poorer mode (``chains_below``); one that far above means the
reference missed a better mode (``chains_above``). Log densities are the oracle's
(bench.score.problem): label-invariant, so no labelling enters the gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from bench.score.problem import Problem
from bench.score.relabel import decode_perm, perm_codes, perm_label, posterior_dataset

NAN = float("nan")

LANDING_FIELDS: dict[str, str] = {
    "lp_mean": "mean log density (log prior + log likelihood, nats) of the fit's draws, thinned evenly, "
               "pooled over chains; the point's own for MAP",
    "lp_gap": "the reference's mean log density (its highest draw's, for a single point) minus the fit's, "
              "for the chain furthest below (nats; > 0: below the reference)",
    "lp_gap_chains": "the same gap for every chain, 'g0;g1;...'",
    "ref_distance_sd": "largest |relabelled mean - reference mean| / reference sd over every scalar, for the "
                       "chain furthest away",
    "chains_biased": "chains (a point counts as one) in the reference's mode but off in location or scale: "
                     "beyond mode_distance_sd reference sds (a point: beyond point_lp_gap_nats below the best "
                     "optimum or point_distance_sd sds away); NaN without a reference",
    "chains_below": "chains in another mode more than the gap tolerance below the reference (a poorer mode)",
    "chains_above": "chains in another mode more than the gap tolerance above the reference (the reference "
                    "missed a better mode)",
    "lp_gap_tol": "the gap tolerance used: max(lp_gap_nats, lp_gap_sd x sd of the reference's log densities)",
    "point_lp": "MAP and Laplace: the point's log density (log prior + log likelihood, nats; Laplace's mode is "
                "that of the density with the Jacobian)",
    "point_mode": "MAP and Laplace: where the point landed, judged as a point (reference only within "
                  "point_lp_gap_nats of the best optimum and point_distance_sd reference sds); the report "
                  "lowers reference to biased when another fit of the same data found an optimum more than "
                  "point_lp_gap_nats higher",
    "point_lp_gap": "MAP and Laplace: the reference's highest draw's log density minus the point's (nats)",
    "point_distance_sd": "MAP and Laplace: largest |point - reference mean| / reference sd over every scalar",
}


@dataclass(frozen=True)
class ReferenceSummary:
    """What placing a fit needs from the reference: moments of its relabelled draws and its lp."""

    mean: dict[str, np.ndarray]
    sd: dict[str, np.ndarray]
    lp_mean: float
    lp_max: float
    lp_sd: float

    @classmethod
    def of(cls, relabelled: xr.DataTree, lp: np.ndarray) -> "ReferenceSummary":
        ds = posterior_dataset(relabelled)
        mean = {n: np.asarray(ds[n].mean(("chain", "draw")).values, dtype=float) for n in ds.data_vars}
        sd = {n: np.asarray(ds[n].std(("chain", "draw")).values, dtype=float) for n in ds.data_vars}
        finite = np.asarray(lp, dtype=float)[np.isfinite(lp)]
        return cls(mean, sd, float(finite.mean()), float(finite.max()), float(finite.std()))


@dataclass(frozen=True)
class Landing:
    """Where one chain landed."""

    chain: int
    mode: str  # reference, biased, collapsed or other
    permutation: str
    majority_frac: float
    distance_sd: float
    lp_mean: float
    lp_gap: float


def distance_sd(mean: dict, ref: ReferenceSummary, floor: float) -> float:
    """max over every scalar of |mean - reference mean| / reference sd (sd floored)."""
    worst = 0.0
    for name, ref_mean in ref.mean.items():
        if name not in mean or np.size(ref_mean) == 0:
            continue
        gap = np.abs(np.asarray(mean[name], dtype=float) - ref_mean)
        scale = np.maximum(ref.sd[name], floor)
        worst = max(worst, float(np.max(gap / scale)))
    return worst


def components_matched(mean: dict, ref: ReferenceSummary, floor: float) -> bool:
    """Every component's location (slopes, intercept) at most a third as far, in reference sds,
    from its own reference component's as from any other's: the chain holds the reference's
    partition. A third, not a half: lines between the reference's (another mode) sit about
    halfway."""
    blocks, ref_blocks, scales = [], [], []
    for name in ("w", "b"):
        if name in ref.mean and np.size(ref.mean[name]):
            K = np.shape(ref.mean[name])[0]
            blocks.append(np.asarray(mean[name], dtype=float).reshape(K, -1))
            ref_blocks.append(np.asarray(ref.mean[name], dtype=float).reshape(K, -1))
            scales.append(np.maximum(np.asarray(ref.sd[name], dtype=float).reshape(K, -1), floor))
    if not blocks:
        return True
    loc, ref_loc, sd = (np.concatenate(b, axis=1) for b in (blocks, ref_blocks, scales))
    dist = np.sqrt((((loc[:, None, :] - ref_loc[None]) / sd[None]) ** 2).sum(axis=-1))  # (k, j)
    K = loc.shape[0]
    if K < 2:
        return True
    own = dist[np.arange(K), np.arange(K)]
    others = np.where(np.eye(K, dtype=bool), np.inf, dist).min(axis=1)
    return bool(np.all(own <= others / 3))


def place_chains(relabelled: xr.DataTree, permutations: np.ndarray, raw: xr.DataTree, problem: Problem,
                 ref: ReferenceSummary, settings, collapsed_fn, lp: np.ndarray | None = None) -> list[Landing]:
    """A Landing per chain. ``collapsed_fn(mean, sd)`` says whether components coincide. ``lp``:
    the log densities (chain, draws) of evenly thinned draws when already evaluated; else at most
    ``settings.lp_draws_per_chain`` per chain are."""
    ds = posterior_dataset(relabelled)
    if lp is None:
        lp, _ = problem.draw_log_densities(raw, per_chain=settings.lp_draws_per_chain)
    codes = perm_codes(permutations)
    K = permutations.shape[-1]
    single = ds.sizes["chain"] * ds.sizes["draw"] == 1
    out = []
    for c in range(ds.sizes["chain"]):
        chain = ds.isel(chain=c)
        mean = {n: np.asarray(chain[n].mean("draw").values, dtype=float) for n in chain.data_vars}
        sd = {n: np.asarray(chain[n].std("draw").values, dtype=float) for n in chain.data_vars}
        finite_lp = lp[c][np.isfinite(lp[c])]
        lp_mean = float(finite_lp.mean()) if finite_lp.size else -math.inf
        gap = (ref.lp_max if single else ref.lp_mean) - lp_mean
        dist = distance_sd(mean, ref, settings.relabel_scale_floor)
        if single:
            on_mode = max(gap, 0.0) <= settings.point_lp_gap_nats and dist <= settings.point_distance_sd
        else:
            on_mode = dist <= settings.mode_distance_sd
        if not all(np.all(np.isfinite(v)) for v in mean.values()):
            mode = "other"
        elif on_mode:
            # The reference decides first: a poorly separated posterior's components sit close, and
            # a chain that matches it there matches the posterior, however near its components are.
            mode = "reference"
        elif collapsed_fn(mean, sd):
            mode = "collapsed"
        elif components_matched(mean, ref, settings.relabel_scale_floor):
            mode = "biased"
        else:
            mode = "other"
        values, counts = np.unique(codes[c], return_counts=True)
        top = int(np.argmax(counts))
        out.append(Landing(chain=c, mode=mode, permutation=perm_label(decode_perm(values[top], K)),
                           majority_frac=float(counts[top] / codes.shape[1]), distance_sd=dist,
                           lp_mean=lp_mean, lp_gap=float(gap)))
    return out


def gap_tolerance(ref: ReferenceSummary, settings) -> float:
    return max(settings.lp_gap_nats, settings.lp_gap_sd * ref.lp_sd)


def landing_summary(landings: list[Landing], ref: ReferenceSummary, settings,
                    excluded: set[int] = frozenset()) -> dict[str, Any]:
    """The LANDING_FIELDS and the mode columns of the row. ``excluded`` chains (degenerate ones)
    are never counted above the reference."""
    tol = gap_tolerance(ref, settings)
    kinds = {land.mode for land in landings}
    lps = [land.lp_mean for land in landings]
    return {
        "mode": kinds.pop() if len(kinds) == 1 else "mixed",
        "chains_on_target": sum(land.mode == "reference" for land in landings),
        "chains_biased": sum(land.mode == "biased" for land in landings),
        "chains_collapsed": sum(land.mode == "collapsed" for land in landings),
        "chains_other": sum(land.mode == "other" for land in landings),
        "lp_mean": float(np.mean(lps)) if lps else NAN,
        "lp_gap": max(land.lp_gap for land in landings),
        "lp_gap_chains": ";".join(f"{land.lp_gap:.4g}" for land in landings),
        "ref_distance_sd": max(land.distance_sd for land in landings),
        "chains_below": sum(land.mode not in ("reference", "biased") and land.lp_gap > tol for land in landings),
        "chains_above": sum(land.mode != "reference" and land.lp_gap < -tol and land.chain not in excluded
                            for land in landings),
        "lp_gap_tol": tol,
    }


def points_against_best_optimum(frame, gap_nats: float):
    """Rows (a pandas DataFrame of harness rows) with each MAP and Laplace point judged against the
    best optimum any fit of the same data set found, not only against the reference's highest
    draw: a point more than ``gap_nats`` below the highest ``point_lp`` of the ok rows of its
    (scenario, setup), rows holding a degenerate component left out, has not reached the mode.
    Its ``point_mode`` reference becomes biased (and a MAP's ``mode`` with it: its one chain
    moves from ``chains_on_target`` to ``chains_biased``), and ``biased`` joins its flags.

    Adds ``point_gap_best`` (nats below that best optimum; NaN for rows without a point) and
    ``point_best`` (the row that found it: 'backend / method seed s'). The frame is returned
    unchanged when no row has a point.
    """
    import pandas as pd

    if frame.empty or "point_lp" not in frame:
        return frame
    frame = frame.copy()
    lp = pd.to_numeric(frame["point_lp"], errors="coerce")
    lp = lp.where(np.isfinite(lp))  # a point off the support has no optimum to compare
    flags = frame["flags"].fillna("").astype(str) if "flags" in frame else pd.Series("", index=frame.index)
    degenerate = (flags.str.contains("degenerate-component")
                  | (pd.to_numeric(frame.get("chains_degenerate"), errors="coerce").fillna(0) > 0))
    sound = (frame["status"] == "ok") & lp.notna() & ~degenerate
    keys = [frame["scenario"], frame["setup"]]
    best = lp.where(sound).groupby(keys).transform("max")
    where = lp.where(sound).groupby(keys).transform(lambda s: s.idxmax() if s.notna().any() else np.nan)
    has_point = (frame["status"] == "ok") & lp.notna() & best.notna()
    frame["point_gap_best"] = (best - lp).where(has_point)
    frame["point_best"] = [f"{frame.at[int(i), 'backend']} / {frame.at[int(i), 'method']} seed {frame.at[int(i), 'seed']}"
                           if ok and pd.notna(i) else None for ok, i in zip(has_point, where)]
    lowered = has_point & (frame["point_gap_best"] > gap_nats) & (frame.get("point_mode") == "reference")
    for i in frame.index[lowered]:
        frame.at[i, "point_mode"] = "biased"
        if frame.at[i, "mode"] == "reference" and frame.at[i, "method"] == "map":
            frame.at[i, "mode"] = "biased"
            frame.at[i, "chains_on_target"] = frame.at[i, "chains_on_target"] - 1
            frame.at[i, "chains_biased"] = frame.at[i, "chains_biased"] + 1
        names = [f for f in flags[i].split(",") if f]
        frame.at[i, "flags"] = ",".join(names + ["biased"]) if "biased" not in names else flags[i]
    return frame
