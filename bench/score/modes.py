"""Fits scored against the reference's modes (bench.reference.modes): which mode each chain is in.

Each chain (an approximation's draws and a MAP or Laplace point count as one chain) lands in the
reference mode whose location its relabelled mean is nearest to, when within
``LAND_DISTANCE_SD`` of that mode's posterior sds for every scalar (components matched by
bench.score.relabel's assignment rule, so a fit's own labelling does not matter), else in none ("-").
A chain is also landed in ``HOP_SEGMENTS`` consecutive segments of its draws: when they land in
different modes the chain left its mode mid-run and is named by the modes it visited in order,
"A>B" (a segment in none between two modes is the hop itself and is left out; "A>-": it left A
for no mode found). Only a Markov chain has a run order: a population without one (VI draws,
Pathfinder's paths, SMC particles, a stacked mixture) is placed by the shares of its draws instead
(``population_label``): in the mode holding them, or spread over the modes each holding at least
``SPREAD_MIN_SHARE`` ("A+B"), or in none when most are in none. Each draw (evenly thinned to at most
``MAX_DRAWS``) lands as a chain's mean does (``land``). Degenerate modes (sigma collapsed on tied
points) are candidates too: a fit that found one is named so, with no mass. A mode holding less
than ``POOR_MASS`` of the posterior (by its bridge-sampling mass) is a poor mode, whatever its log
density.

The fit's landing (``mode``) follows from where its draws are (``fit_landing``), not from its
distance to the pooled reference mean, which for modes far apart is about 1 pooled sd wherever a
fit sits: mixed when its chains are in different places; else other when its log-density gap
exceeds the tolerance (bench.score.landing) or under half its draws are in weighted modes that
are not poor; else reference when at least ``REACHED_SHARE`` of its draws are in such modes
and its marginals are within ``W1_BIASED_SD`` of its own mode's (W1 in that mode's sds); else
biased.

Row columns (``MODE_FIELDS``) and, per fit over its seeds, an answer such as
"numpyro / nuts: 4 of 4 chains in mode A (mass 0.93)" or "numpyro / map: 2 of 5 seeds in mode B
(mass 0.07, 16.5 nats lower)". ``own_mode_draws`` pairs each chain that stayed in one mode with
that mode's reference draws (the reference's per-draw mode labels, ``Reference.draw_modes``), for
the W1 to the fit's own mode (bench.score.metrics).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from bench.score.problem import thin_indices
from bench.score.relabel import assignment_costs, best_permutations, posterior_dataset

POOR_MASS = 0.05
"""A mode with less than this share of the posterior is a poor mode."""
LAND_DISTANCE_SD = 4.0
"""A chain's mean within this many of a mode's posterior sds, in every scalar, is in that mode."""
HOP_SEGMENTS = 4
"""A chain is landed in this many consecutive segments too, to see whether it left its mode."""
HOP = ">"
SPREAD = "+"
SPREAD_MIN_SHARE = 0.1
"""A population without run order spreads over every mode holding at least this share of its draws."""
REACHED_SHARE = 0.9
"""A fit with at least this share of its draws in weighted modes that are not poor reached the posterior."""
W1_BIASED_SD = 1.0
"""A fit whose marginal is further than this many of its mode's posterior sds (W1) from that mode's is biased."""
MAX_DRAWS = 1000

SCALE_FLOOR = 1e-6
GAP_SHOWN_NATS = 0.5  # a mode's log-density gap below this is not worth a word

MODE_FIELDS: dict[str, str] = {
    "ref_mode_chains": "the reference mode (A, B, ... by mass) each chain landed in, 'A;A;B;-' ('-': none); "
                       f"a chain whose {HOP_SEGMENTS} consecutive segments landed in different modes is named by "
                       "the modes it visited in order, 'A>B' (it left its mode mid-run); a population without run "
                       f"order (not MCMC) by the modes holding at least {SPREAD_MIN_SHARE} of its draws, 'A+B'",
    "chains_hopped": "chains that left their mode mid-run (their segments landed in different modes)",
    "ref_modes_covered": "the reference modes the chains covered",
    "ref_mass_covered": "posterior mass of the modes covered (bridge-sampling masses)",
    "chains_poor_mass": f"chains in a poor mode: one of posterior mass below {POOR_MASS} (or degenerate); a chain "
                        "that moved between modes is counted in chains_hopped instead",
    "ref_mode_masses": "each reference mode as name:mass:nats below the best mode ('-' mass: not weighted)",
    "ref_mode_shares": f"share of the fit's draws (pooled over chains, at most {MAX_DRAWS} evenly thinned) in each "
                       "reference mode, 'A:0.52;B:0.47;-:0.01' ('-': in none); empty without a modes reference",
}


def component_features(point: dict[str, Any], K: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, F) component-indexed scalars (slopes, intercept, per-component sigma, weight or centred
    softmax coefficients) and the
    shared ones (a shared sigma), of a canonical point."""
    blocks, shared = [], []
    for name in ("w", "b", "sigma", "pi", "gamma"):
        if name not in point:
            continue
        value = np.asarray(point[name], dtype=float)
        if name == "gamma":  # softmax coefficients compared centred, as bench.score.relabel does
            value = value - value.mean(axis=0, keepdims=True)
        if value.ndim >= 1 and value.shape[0] == K:
            blocks.append(value.reshape(K, -1))
        else:
            shared.append(value.reshape(-1))
    return (np.concatenate(blocks, axis=1) if blocks else np.zeros((K, 0)),
            np.concatenate(shared) if shared else np.zeros(0))


def scaled_distance(mean_a: dict, mean_b: dict, sd: dict, K: int) -> float:
    """max over every scalar of |a - b| / sd, components of b matched to a's by bench.score.relabel's
    rule (its assignment costs and per-draw assignment, with ``a`` as the reference point and
    each feature's sd pooled over components as the scale), so label copies are one mode."""
    fa, sa = component_features(mean_a, K)
    fb, sb = component_features(mean_b, K)
    fs, ss = component_features(sd, K)
    scale = np.maximum(np.sqrt((fs**2).mean(axis=0)), SCALE_FLOOR) if fs.size else fs
    perm, _ = best_permutations(assignment_costs(fb[None, None], fa, scale))
    gaps = [np.abs(fa - fb[perm[0, 0]]) / scale]
    if sa.size:
        gaps.append(np.abs(sa - sb) / np.maximum(ss, SCALE_FLOOR))
    return float(max(np.max(g) if g.size else 0.0 for g in gaps))


def candidate_modes(modes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Modes a fit can land in: weighted and degenerate ones with a location."""
    return [m for m in modes if m.get("status") in ("weighted", "degenerate") and m.get("location")]


def land(mean: dict[str, np.ndarray], modes: list[dict[str, Any]], K: int) -> str | None:
    """The name of the mode whose location ``mean`` (canonical names) is within LAND_DISTANCE_SD
    of, the nearest when several; None when none is."""
    best, name = math.inf, None
    for mode in candidate_modes(modes):
        location = {n: np.asarray(v, dtype=float) for n, v in mode["location"].items()}
        sd = {n: np.asarray(v, dtype=float) for n, v in mode["sd"].items()}
        point = {n: np.asarray(mean[n], dtype=float) for n in location}
        distance = scaled_distance(location, point, sd, K)
        if distance <= LAND_DISTANCE_SD and distance < best:
            best, name = distance, mode["name"]
    return name


def chain_label(chain: xr.Dataset, modes: list[dict[str, Any]], K: int) -> str:
    """One chain's landing (``chain``: its draws, dim ``draw``): a mode's name, "-" for none, or
    the modes its HOP_SEGMENTS consecutive segments visited in order, "A>B", when it hopped."""
    n = chain.sizes["draw"]
    bounds = np.linspace(0, n, min(HOP_SEGMENTS, n) + 1).round().astype(int)
    visits: list[str] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        name = land({v: chain[v].isel(draw=slice(lo, hi)).mean("draw").values for v in chain.data_vars}, modes, K)
        name = name or "-"
        if not visits or visits[-1] != name:
            visits.append(name)
    # A segment in none between two modes is the hop itself.
    visits = [v for i, v in enumerate(visits) if not (v == "-" and 0 < i < len(visits) - 1)]
    visits = [v for i, v in enumerate(visits) if i == 0 or visits[i - 1] != v]
    if len(visits) == 1:
        return visits[0]
    return HOP.join(visits)


def visited(label: str) -> list[str]:
    """The modes a chain label names ("A>B" and "A+B" -> ["A", "B"]; "-" -> [])."""
    return [n for n in label.replace(SPREAD, HOP).split(HOP) if n != "-"]


def draw_landings(ds: xr.Dataset, modes: list[dict[str, Any]], K: int) -> tuple[np.ndarray, np.ndarray]:
    """(mode name or "-" per draw, its chain) of at most MAX_DRAWS draws thinned evenly over the
    pooled (chain, draw) sample of ``ds``."""
    total = ds.sizes["chain"] * ds.sizes["draw"]
    keep = thin_indices(total, MAX_DRAWS)
    # NumPy, not xarray's stack, which cannot reshape the empty covariate axis of D = 0.
    values = {n: np.asarray(ds[n].transpose("chain", "draw", ...).values).reshape(total, *ds[n].shape[2:])[keep]
              for n in ds.data_vars}
    names = np.array([land({n: v[i] for n, v in values.items()}, modes, K) or "-" for i in range(keep.size)])
    return names, keep // ds.sizes["draw"]


def shares_of(names: np.ndarray) -> dict[str, float]:
    """Share of ``names`` (draws' modes) per name."""
    found, counts = np.unique(names, return_counts=True)
    return {str(n): float(c) / names.size for n, c in zip(found, counts)}


def mode_shares(draws: xr.DataTree, modes: list[dict[str, Any]]) -> dict[str, float]:
    """Share of the draws (canonical, any labelling) in each reference mode and in none (key "-"),
    pooled over chains, of at most MAX_DRAWS evenly thinned; empty without modes."""
    if not modes:
        return {}
    ds = posterior_dataset(draws)
    return shares_of(draw_landings(ds, modes, int(ds.sizes["component"]))[0])


def population_label(names: np.ndarray) -> str:
    """A population's landing from its draws' modes: "-" when most are in none, else the modes
    holding at least SPREAD_MIN_SHARE of them, "A" or spread "A+B"."""
    shares = shares_of(names)
    held = sorted(n for n, s in shares.items() if n != "-" and s >= SPREAD_MIN_SHARE)
    return "-" if shares.get("-", 0.0) > 0.5 or not held else SPREAD.join(held)


def parse_shares(text: Any) -> dict[str, float]:
    """``ref_mode_shares`` text 'A:0.5;-:0.5' as {name: share}; empty for a missing value."""
    if not isinstance(text, str) or not text:
        return {}
    return {item.rsplit(":", 1)[0]: float(item.rsplit(":", 1)[1]) for item in text.split(";")}


def fit_landing(labels: list[str], shares: dict[str, float], modes: list[dict[str, Any]],
                lp_gap: float, lp_gap_tol: float, w1_mode_sd: float = math.nan) -> dict[str, Any]:
    """The fit's ``mode`` and chain counts against a modes reference, from where its draws are.

    mixed: the chains (``labels``, ``ref_mode_chains``) visited different sets of modes, whichever
    modes they are (the same layout reads the same on every data set);
    other: ``lp_gap`` (nats, the chain furthest below; bench.score.landing) above ``lp_gap_tol``,
    or under half the draws (``shares``) in weighted modes of mass at least POOR_MASS ("good");
    reference: at least REACHED_SHARE of the draws in good modes and the W1 to the fit's own mode
    (``w1_mode_sd``, in that mode's sds; NaN: not measured) at most W1_BIASED_SD; biased: in good
    modes otherwise (off in location or scale, as bench.score.landing's biased).
    ``chains_on_target`` (reference, mixed) or ``chains_biased`` (biased) count the chains wholly
    in good modes, ``chains_other`` the rest.
    """
    good = {m["name"] for m in modes if m.get("status") == "weighted" and not _poor(m)}
    in_good = sum(s for n, s in shares.items() if n in good)
    places = {frozenset(visited(label)) for label in labels}
    good_chains = sum(bool(visited(label)) and set(visited(label)) <= good for label in labels)
    if len(places) > 1:
        mode = "mixed"
    elif not lp_gap <= lp_gap_tol or in_good < 0.5:
        mode = "other"
    else:
        mode = "reference" if in_good >= REACHED_SHARE and not w1_mode_sd > W1_BIASED_SD else "biased"
    on_target = good_chains if mode in ("reference", "mixed") else 0
    biased = good_chains if mode == "biased" else 0
    return {"mode": mode, "chains_on_target": on_target, "chains_biased": biased,
            "chains_other": len(labels) - on_target - biased}


def mode_columns(draws: xr.DataTree, modes: list[dict[str, Any]], ordered: bool = True) -> dict[str, Any]:
    """The MODE_FIELDS of one fit: ``draws`` its (relabelled) draws; empty without modes.
    ``ordered``: its chains are Markov chains (each landed by its run, ``chain_label``), else
    populations (``population_label``)."""
    if not modes:
        return {}
    ds = posterior_dataset(draws)
    K = int(ds.sizes["component"])
    draw_names, chain_of = draw_landings(ds, modes, K)
    names = [chain_label(ds.isel(chain=c), modes, K) if ordered else population_label(draw_names[chain_of == c])
             for c in range(ds.sizes["chain"])]
    shares = shares_of(draw_names)
    by_name = {m["name"]: m for m in modes}
    covered = sorted({n for label in names for n in visited(label)})
    return {
        "ref_mode_chains": ";".join(names),
        "chains_hopped": sum(HOP in label for label in names),
        "ref_modes_covered": ",".join(covered) or "-",
        "ref_mass_covered": float(sum(by_name[n].get("mass_bridge") or 0.0 for n in covered)),
        "chains_poor_mass": sum(label in by_name and _poor(by_name[label]) for label in names),
        "ref_mode_masses": ";".join(f"{m['name']}:{_mass_text(m)}:{m.get('lp_gap', math.nan):.3g}" for m in modes),
        "ref_mode_shares": ";".join(f"{n}:{s:.3g}" for n, s in sorted(shares.items())),
    }


def _poor(mode: dict[str, Any]) -> bool:
    mass = mode.get("mass_bridge")
    return mass is None or mass < POOR_MASS


def _mass_text(mode: dict[str, Any]) -> str:
    return "-" if mode.get("mass_bridge") is None else f"{mode['mass_bridge']:.3g}"


def _mass_se(mode: dict[str, Any], key: str) -> str:
    value = mode.get(f"mass_{key}")
    if value is None:
        return "-"
    se = mode[f"mass_{key}_se"]
    # A mode of mass below 0.001 would read 0.000 at three decimals: its size is the answer.
    return f"{value:.3f} +- {se:.3f}" if value >= 1e-3 else f"{value:.2g} +- {se:.2g}"


def _parse_masses(text: str) -> dict[str, tuple[str, float]]:
    out = {}
    for item in text.split(";"):
        name, mass, gap = item.split(":")
        out[name] = (mass, float(gap))
    return out


def fit_answer(label: str, rows: pd.DataFrame) -> str | None:
    """'label: 3 of 4 chains in mode A (mass 0.93), 1 in mode B (mass 0.07, 16.5 nats lower)' over
    the ok rows of one fit; None when the rows were not scored against modes."""
    if "ref_mode_chains" not in rows or not rows["ref_mode_chains"].map(lambda v: isinstance(v, str)).any():
        return None
    rows = rows[rows["ref_mode_chains"].map(lambda v: isinstance(v, str))]
    per_row = [text.split(";") for text in rows["ref_mode_chains"]]
    unit = "chains" if any(len(chains) > 1 for chains in per_row) else "seeds"
    landed = [n for chains in per_row for n in (chains if unit == "chains" else chains[:1])]
    masses = _parse_masses(rows["ref_mode_masses"].iloc[0])
    counts = pd.Series(landed).value_counts()
    parts = []
    for name in sorted(counts.index, key=lambda n: (n == "-", HOP in n, n)):
        n = int(counts[name])
        if name == "-":
            parts.append((n, "in none of the modes"))
        elif SPREAD in name:
            parts.append((n, f"spread over modes {_spread_text(name, rows)}"))
        elif HOP in name:
            path = ", then ".join("no mode" if v == "-" else f"mode {v}" for v in name.split(HOP))
            parts.append((n, f"moved between modes mid-run ({path})"))
        else:
            mass, gap = masses.get(name, ("-", math.nan))
            detail = f"mass {mass}" if mass != "-" else "degenerate, no mass: the posterior is improper there"
            if math.isfinite(gap) and gap >= GAP_SHOWN_NATS:
                detail += f", {gap:.3g} nats lower"
            parts.append((n, f"in mode {name} ({detail})"))
    parts = [f"{n} of {len(landed)} {unit} {what}" if i == 0 else f"{n} {what}" for i, (n, what) in enumerate(parts)]
    text = f"{label}: " + ", ".join(parts)
    if unit == "chains" and len(rows) > 0:
        covered = pd.to_numeric(rows["ref_mass_covered"], errors="coerce")
        text += f"; mass covered {covered.median():.3g}" + (" (median over seeds)" if len(rows) > 1 else "")
    return text


def _spread_text(label: str, rows: pd.DataFrame) -> str:
    """'A 0.5, B 0.5': each mode of a spread label with its share of the draws (median over the
    rows placed so)."""
    held = rows[rows["ref_mode_chains"].str.split(";").map(lambda chains: label in chains)]
    shares = [parse_shares(text) for text in held.get("ref_mode_shares", pd.Series(dtype=object)) if parse_shares(text)]
    return ", ".join(f"{n} {np.median([s.get(n, 0.0) for s in shares]):.2f}" if shares else n
                     for n in label.split(SPREAD))


def modes_table_lines(modes: list[dict[str, Any]]) -> list[str]:
    """The reference's modes table as text lines (``mixbench reference`` and the run's console)."""
    if not modes:
        return []
    lines = [f"{'mode':<5}{'status':<11}{'mass (bridge)':<18}{'mass (IS)':<18}{'mean lp':>10}{'gap':>8}  "
             "location; how found"]
    for m in modes:

        location = ", ".join(f"{n} {np.round(np.asarray(v, dtype=float), 3).tolist()}"
                             for n, v in m.get("location", {}).items() if np.size(v))
        extra = "; " + m["note"] if m.get("note") else ""
        if m.get("estimators_agree") is False:
            extra += "; the two mass estimators DISAGREE"
        lines.append(f"{m['name']:<5}{m['status']:<11}{_mass_se(m, 'bridge'):<17} {_mass_se(m, 'is'):<17} {m['lp_mean']:>10.2f}"
                     f"{m.get('lp_gap', math.nan):>8.2f}  {location}; {m.get('found_by', '')}{extra}")
    return lines


def reference_modes_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The reference's modes table of every data set in a run's rows (``reference_modes``), one
    row per mode: data set, mode, status, masses with their SEs, mean log density, how found."""
    if "reference_modes" not in frame:
        return pd.DataFrame()
    records = []
    seen = set()
    for _, row in frame.iterrows():
        modes = row.get("reference_modes")
        if not isinstance(modes, list) or row["scenario"] in seen:
            continue
        seen.add(row["scenario"])
        for m in modes:
            records.append({
                "data set": row["scenario"], "reference mode": m["name"], "mode status": m["status"],
                "mass (bridge)": _mass_se(m, "bridge"), "mass (IS)": _mass_se(m, "is"),
                "mode mean lp": round(float(m["lp_mean"]), 2), "nats below": round(float(m.get("lp_gap", math.nan)), 2),
                "poor": "-" if m["status"] == "unstable" else "yes" if _poor(m) else "no",
                "mode location": "; ".join(f"{n} {np.round(np.asarray(v, dtype=float), 3).tolist()}"
                                      for n, v in m.get("location", {}).items() if np.size(v)),
                "how found": m.get("found_by", "") + ("; " + m["note"] if m.get("note") else ""),
            })
    return pd.DataFrame(records)


def own_mode_draws(draws: xr.DataTree, reference_draws: xr.DataTree, draw_modes: np.ndarray,
                   chain_labels: list[str]) -> tuple[xr.DataTree, xr.DataTree] | None:
    """The fit's chains that stayed in one mode holding reference draws, and, chain for chain,
    draws of that mode from the reference, evenly thinned to one count for every chain (so the
    pooled reference mixes the chains' modes as the chains do); None when no chain qualifies.

    ``draws``: the fit's (relabelled) draws; ``reference_draws``: the reference's, in the same
    labelling, with ``draw_modes`` (chain, draw) the mode each came from (``Reference.draw_modes``);
    ``chain_labels``: the fit's ``ref_mode_chains`` split, one per chain.
    """
    labels = np.asarray(draw_modes).ravel()
    where = {c: np.flatnonzero(labels == name) for c, name in enumerate(chain_labels)
             if HOP not in name and name != "-"}
    where = {c: index for c, index in where.items() if index.size}
    if not where:
        return None
    count = min(index.size for index in where.values())
    picks = [index[np.linspace(0, index.size - 1, count).round().astype(int)] for index in where.values()]
    ref = posterior_dataset(reference_draws)
    sample = ref.sizes["chain"] * ref.sizes["draw"]
    out = {}
    for name, da in ref.data_vars.items():
        flat = np.asarray(da.values).reshape(sample, *da.shape[2:])
        out[name] = (da.dims, np.stack([flat[p] for p in picks]))
    coords = {n: c for n, c in ref.coords.items() if not set(c.dims) & {"chain", "draw"}}
    mode_ref = xr.Dataset(out, coords=coords)
    fit = posterior_dataset(draws).isel(chain=list(where))
    return xr.DataTree.from_dict({"posterior": fit}), xr.DataTree.from_dict({"posterior": mode_ref})
