"""The SBC report: per region (difficulty point) x backend x method line x test quantity, whether
the PIT values of the truth are uniform, and which method to run at each difficulty point.

Uniformity is judged by arviz-stats' ``uniformity_test`` with its default ``pot_c`` method (the
pointwise order tests combined by the Cauchy combination, Tesso & Vehtari 2025, the test
arviz-plots' ``plot_ecdf_pit`` reports), one p-value per quantity. A line is called
miscalibrated at a point when a quantity's p-value is below ``alpha`` / (number of quantities)
(Bonferroni over the quantities, so a calibrated line is wrongly called so at most ``alpha`` of
the time). The figures draw the ECDF of the PIT values minus the uniform CDF (the Δ-ECDF) with
the simultaneous band of Säilynoja, Bürkner & Vehtari (2022), "Graphical test for discrete
uniformity and its applications in goodness-of-fit evaluation and multiple sample comparison"
(arviz-stats' ``ecdf_pit``, envelope probability ``1 - alpha``).

The ranks are those of the data sets whose fit ended ok with draws in the region: a method that
fails or is flagged on the hard data sets and is calibrated on the rest is *conditionally*
calibrated, which is not calibration. The failed and flagged shares stand beside every verdict.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

ALPHA = 0.05
LOW_POWER_SIMS = 40
"""Below this many data sets a line that passes is "not rejected", never "calibrated": the test's
power was measured at 40 data sets (tests/test_sbc.py's slow test: a posterior sd halved is caught
in 0.975 of repeats, a one-sd shift in all), and falls fast below it."""
LINE_KEYS = ["region", "backend", "line"]
# Outside the central 90% posterior interval, the truth should be 10% of the time.
OUTER = 0.05


def pit_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One record per ranked data set x quantity: region, sep_min, backend, line, sim, quantity, pit."""
    records = [{"region": r["region"], "sep_min": r.get("sep_min"), "backend": r["backend"], "line": r["line"],
                "sim": r["sim"], "quantity": q, "pit": float(u)}
               for r in rows if r.get("status") == "ok" for q, u in (r.get("sbc_pit") or {}).items()]
    return pd.DataFrame(records, columns=["region", "sep_min", "backend", "line", "sim", "quantity", "pit"])


def uniformity_p(pit: np.ndarray) -> float:
    """arviz-stats' pot_c uniformity test p-value of PIT values in (0, 1) (module docstring)."""
    import arviz_stats.accessors  # noqa: F401  (registers the .azstats accessor)

    pit = np.asarray(pit, float)
    if pit.size < 2:
        return math.nan
    return float(xr.DataArray(pit, dims=["sim"]).azstats.uniformity_test(dim="sim")[0].values)


def verdict(pit: np.ndarray, p: float, threshold: float) -> str:
    """'calibrated', or 'miscalibrated: <shape>' when p < threshold, the shape read off the PIT
    values: the truth ranking high (u > 1/2 on average: the draws sit below it) or low, beyond 3
    standard errors of a uniform's mean; else the truth outside the central 90% interval more (too
    narrow) or less (too wide) often than 10%, beyond 3 binomial standard errors."""
    if not math.isfinite(p):
        return "too few data sets"
    if p >= threshold:
        return "calibrated" if len(pit) >= LOW_POWER_SIMS else f"not rejected ({len(pit)} data sets: too few to call)"
    n = len(pit)
    shift = (np.mean(pit) - 0.5) / math.sqrt(1 / 12 / n)
    outside = np.mean((pit < OUTER) | (pit > 1 - OUTER))
    spread = (outside - 2 * OUTER) / math.sqrt(2 * OUTER * (1 - 2 * OUTER) / n)
    if abs(shift) > 3 and abs(shift) >= abs(spread):
        return "miscalibrated: draws " + ("below" if shift > 0 else "above") + " the truth"
    if spread > 3:
        return "miscalibrated: too narrow"
    if spread < -3:
        return "miscalibrated: too wide"
    return "miscalibrated: non-uniform"


def calibration_table(pits: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Per region x backend x line x quantity: data sets ranked, the pot_c p-value, the verdict,
    the share of data sets whose truth lay outside the central 90% interval (0.10 expected) and
    the mean PIT (0.5 expected)."""
    counts = pits.groupby(LINE_KEYS)["quantity"].nunique()
    out = []
    for key, group in pits.groupby([*LINE_KEYS, "quantity"], sort=True):
        n_quantities = int(counts.loc[key[:3]])
        u = group["pit"].to_numpy()
        p = uniformity_p(u)
        out.append({**dict(zip([*LINE_KEYS, "quantity"], key)), "sep_min": group["sep_min"].iloc[0],
                    "data sets": len(u), "p": p, "verdict": verdict(u, p, alpha / n_quantities),
                    "outside 90%": float(np.mean((u < OUTER) | (u > 1 - OUTER))), "mean PIT": float(np.mean(u))})
    return pd.DataFrame(out)


def fit_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per region x backend x line: data sets, the shares failed (not ok, or no draw in the
    region) and flagged (ok with a health flag), landed in the truth's mode, and the cost."""
    frame = pd.DataFrame(rows)
    out = []
    for key, group in frame.groupby(LINE_KEYS, sort=True):
        ok = group[(group["status"] == "ok") & (group.get("sbc_L", pd.Series(0, index=group.index)).fillna(0) > 0)]
        flagged = ok["flags"].fillna("").astype(str).str.len() > 0 if "flags" in ok else pd.Series(False, index=ok.index)
        phases = [c for c in ("t_warmup", "t_sampling", "t_optimisation", "t_warmup_and_sampling") if c in group]
        cost = group.loc[ok.index, phases].apply(pd.to_numeric, errors="coerce").sum(axis=1, min_count=1)
        out.append({**dict(zip(LINE_KEYS, key)), "sep_min": group["sep_min"].iloc[0], "data sets": len(group),
                    "failed": 1 - len(ok) / len(group), "flagged": float(flagged.mean()) if len(ok) else math.nan,
                    "truth's mode": float((ok["mode"] == "truth").mean()) if len(ok) else math.nan,
                    "median s to fit": float(cost.median()) if cost.notna().any() else math.nan,
                    "cell s (sum)": float(pd.to_numeric(group["time_cell"], errors="coerce").sum()),
                    "draws ranked (median)": float(ok["sbc_L"].median()) if len(ok) else math.nan,
                    "kept in region (median)": float(ok["sbc_kept"].median()) if len(ok) else math.nan})
    return pd.DataFrame(out)


def advice_table(calibration: pd.DataFrame, fits: pd.DataFrame, landing: float = 0.1) -> pd.DataFrame:
    """Item 5 of issue 26: per difficulty point (region) and line, calibration, landing and cost
    together, and which line to run there: the cheapest line with every quantity calibrated, no
    failed fit, and a share of data sets in the truth's mode at most ``landing`` below the best
    line's at that point (the truth's mode is judged by absolute tolerances, bench.score.metrics, so on
    small noisy data sets even an exact posterior misses it: the best line sets the bar); when no
    line is, the best-calibrated one (largest smallest p-value), said so."""
    worst = calibration.groupby(LINE_KEYS).agg(min_p=("p", "min"), quantities=("quantity", "nunique"),
                                                rejected=("verdict", lambda v: int((v != "calibrated").sum())))
    table = fits.set_index(LINE_KEYS).join(worst, how="left").reset_index()
    table["calibrated"] = (table["rejected"] == 0) & table["min_p"].notna()
    table["run this"] = ""
    for _, group in table.groupby("region", sort=False):
        lands = group["truth's mode"] >= group["truth's mode"].max() - landing
        good = group[group["calibrated"] & lands & (group["failed"] == 0)]
        if len(good):
            table.loc[good["median s to fit"].idxmin(), "run this"] = "yes: calibrated, lands, cheapest"
        elif (group["data sets"] < LOW_POWER_SIMS).all():
            table.loc[group.index, "run this"] = f"too few data sets to choose (fewer than {LOW_POWER_SIMS})"
        elif group["min_p"].notna().any():
            table.loc[group["min_p"].idxmax(), "run this"] = "none passes; best calibrated"
    table = table.sort_values(["sep_min", "region", "backend", "line"])
    return table[["region", "backend", "line", "data sets", "rejected", "quantities", "min_p", "truth's mode",
                  "failed", "flagged", "median s to fit", "run this"]]


# ---------------------------------------------------------------------------------------------
# Figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_ecdf(pits: pd.DataFrame, region: str, path: Path, alpha: float = ALPHA) -> Path:
    """Δ-ECDF of the PIT values per line (rows) and quantity (columns) at one region, with the
    simultaneous band (arviz-stats ecdf_pit) at 1 - alpha / (quantities), the verdicts' level; a
    curve leaving it is drawn red (the band is a graphical test of its own, Säilynoja et al. 2022,
    so it can disagree with pot_c near the threshold)."""
    from arviz_stats.ecdf_utils import ecdf_pit

    plt = _plt()
    part = pits[pits["region"] == region]
    lines = sorted(set(zip(part["backend"], part["line"])))
    quantities = sorted(part["quantity"].unique(), key=lambda q: (q != "loglik", q))
    level = 1 - alpha / len(quantities)
    fig, axes = plt.subplots(len(lines), len(quantities), figsize=(2.3 * len(quantities), 1.9 * len(lines)),
                             squeeze=False, sharex=True)
    for i, (backend, line) in enumerate(lines):
        for j, quantity in enumerate(quantities):
            ax = axes[i][j]
            u = part[(part["backend"] == backend) & (part["line"] == line) & (part["quantity"] == quantity)]["pit"]
            if len(u) >= 2:
                x, ecdf, lower, upper = ecdf_pit(np.sort(u.to_numpy()), level, 1000,
                                                 rng=np.random.default_rng(0))
                ax.fill_between(x, lower - x, upper - x, color="0.85", step="post")
                outside = bool(np.any((ecdf < lower) | (ecdf > upper)))
                ax.step(x, ecdf - x, where="post", color="tab:red" if outside else "tab:blue", lw=1)
            ax.axhline(0, color="0.5", lw=0.5)
            if i == 0:
                ax.set_title(quantity, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{backend.rpartition(':')[2]}\n{line}", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.suptitle(f"SBC Δ-ECDF of PIT values, {region} (grey: simultaneous {level:.1%} band; red: leaves it)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_calibration_vs_difficulty(calibration: pd.DataFrame, path: Path) -> Path:
    """The smallest p-value over the quantities per line against the region's lower separation,
    on a log scale, with the Bonferroni threshold."""
    plt = _plt()
    worst = calibration.groupby([*LINE_KEYS, "sep_min"], as_index=False).agg(min_p=("p", "min"),
                                                                             q=("quantity", "nunique"))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (backend, line), group in worst.groupby(["backend", "line"]):
        group = group.sort_values("sep_min")
        ax.plot(group["sep_min"], np.maximum(group["min_p"], 1e-12), marker="o", label=f"{backend} / {line}")
    ax.axhline(ALPHA / max(int(worst["q"].max()), 1), color="k", ls="--", lw=0.8, label="threshold (Bonferroni)")
    ax.set_yscale("log")
    ax.set_xlabel("separation band: lower edge (harder to the left)")
    ax.set_ylabel("smallest uniformity p-value")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sbc_report(rows: list[dict[str, Any]], out_dir: Path, alpha: float = ALPHA) -> Path:
    """``sbc.md`` and its figures in ``out_dir``; returns the markdown's path."""
    from bench.report.document import markdown_table

    out_dir = Path(out_dir)
    pits = pit_frame(rows)
    fits = fit_table(rows)
    parts = ["# Simulation-based calibration\n",
             "Each data set is simulated from the model's prior restricted to its region (separation band, "
             "smallest weight), fitted once; the PIT of each test quantity of the truth among the fit's thinned "
             "draws (inside the region) should be uniform. Only fits that ended ok with draws in the region are "
             "ranked: calibration conditional on the fit succeeding is not calibration, so read each verdict "
             "beside the failed and flagged shares.\n",
             "## Fits and cost\n", markdown_table(fits)]
    if pits.empty:
        parts.append("\nNo fit was ranked.\n")
    else:
        calibration = calibration_table(pits, alpha)
        parts += [f"\n## Calibration per quantity\n\np: arviz-stats' pot_c uniformity test; a quantity is called "
                  f"miscalibrated when p < {alpha:g} / (quantities of its line). outside 90%: share of data sets whose "
                  "truth lay outside the fit's central 90% interval (0.10 expected).\n",
                  markdown_table(calibration.drop(columns="sep_min")),
                  "\n## Which method to run at each difficulty point\n",
                  "calibrated: no quantity rejected; lands: a share of data sets in the truth's mode at most 0.1 "
                  "below the best line's at that point; the cheapest line that is both, with no failed fit, is the "
                  "one to run.\n",
                  markdown_table(advice_table(calibration, fits))]
        figures = [figure_calibration_vs_difficulty(calibration, out_dir / "sbc-calibration-vs-difficulty.png")]
        for number, region in enumerate(sorted(pits["region"].unique())):
            figures.append(figure_ecdf(pits, region, out_dir / f"sbc-ecdf-{number}.png", alpha))
        parts += ["\n## Figures\n", *[f"![{p.stem}]({p.name})\n" for p in figures]]
    path = out_dir / "sbc.md"
    path.write_text("\n".join(parts))
    return path
