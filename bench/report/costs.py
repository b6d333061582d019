"""The report's cost sections: gradient cost against N, the NUTS cost curve, cold and warm
compiles, and the time the harness adds around a fit.

Inputs are the harness rows (the report's frame) and the cost records that pytest-benchmark JSON
files carry besides cells: benchmarks whose ``extra_info["kind"]`` is one of ``COST_KINDS``
(``bench/benchmarks/test_gradient_cost.py``, ``bench/benchmarks/test_compile_cache.py``). ``cost_sections`` returns
tables and figures in the shape ``bench.report.document.write_report`` lays out; a section without data
is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from backends.methods import Kind, kind_of

COST_KINDS = ("gradient-cost", "compile-cache")
ENGINE_KEYS = ["backend", "engine", "precision"]

Table = tuple[str, str, pd.DataFrame]
Figure = tuple[str, Path]


def cost_record(benchmark: dict) -> dict[str, Any] | None:
    """A pytest-benchmark entry -> a flat cost record (extra_info + timing stats), or None when
    the entry is not a cost benchmark. Stats are seconds per call of the benchmarked function."""
    extra = benchmark.get("extra_info") or {}
    if extra.get("kind") not in COST_KINDS:
        return None
    stats = benchmark.get("stats") or {}
    record = dict(extra)
    record["name"] = benchmark.get("name")
    for key in ("median", "min", "max", "mean", "stddev", "rounds", "iterations"):
        record[f"stats_{key}"] = stats.get(key)
    return record


def _records(environments: list[dict], kind: str) -> pd.DataFrame:
    records = [r for env in environments for r in env.get("cost_records") or [] if r.get("kind") == kind]
    return pd.DataFrame(records)


def _num(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def _size_label(n) -> str:
    exponent = np.log10(float(n))
    return f"1e{exponent:.0f}" if float(exponent).is_integer() else f"{int(n):,}"


# ---------------------------------------------------------------------------------------------
# Gradient cost


def gradient_cost_table(records: pd.DataFrame) -> pd.DataFrame:
    """backend / engine / precision x (K, N): milliseconds per log density + gradient (median
    over rounds; over sessions, the median of the sessions' medians)."""
    if records.empty:
        return pd.DataFrame()
    frame = records.assign(ms=1e3 * _num(records, "stats_median"), N=_num(records, "N"), K=_num(records, "K"))
    frame = frame.dropna(subset=["ms", "N", "K"])
    if frame.empty:
        return pd.DataFrame()
    # Several sessions (JSON files) of one case: the median of their medians, so one session
    # disturbed by other load on a shared machine does not decide the number.
    table = frame.pivot_table(index=ENGINE_KEYS, columns=["K", "N"], values="ms", aggfunc="median")
    table = table.sort_index(axis=1)
    table.columns = [f"K={int(k)} N={_size_label(n)} ms" for k, n in table.columns]
    return table.reset_index()


def figure_gradient_cost(records: pd.DataFrame, path: Path) -> Path | None:
    if records.empty or "N" not in records:
        return None
    frame = records.assign(ms=1e3 * _num(records, "stats_median"), N=_num(records, "N"), K=_num(records, "K"))
    frame = frame.dropna(subset=["ms", "N", "K"])
    if frame.empty:
        return None
    frame = frame.groupby([*ENGINE_KEYS, "K", "N"], as_index=False)["ms"].median()
    ks = sorted(frame["K"].unique())
    plt = _plt()
    fig, axes = plt.subplots(1, len(ks), figsize=(5.5 * len(ks), 4.2), squeeze=False, sharey=True)
    for ax, K in zip(axes[0], ks):
        for key, group in frame[frame["K"] == K].groupby(ENGINE_KEYS):
            group = group.sort_values("N")
            ax.plot(group["N"], group["ms"], marker="o", label=" / ".join(map(str, key)))
        _log_log_against_n(ax)
        ax.set_title(f"K = {int(K)}")
    axes[0, 0].set_ylabel("ms per log density + gradient (log scale)")
    return _save_with_legend(fig, axes[0, -1], "Gradient cost against N", path)


def _log_log_against_n(ax) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (observations, log scale)")
    ax.grid(True, which="both", alpha=0.3)


def _save_with_legend(fig, legend_ax, title: str, path: Path) -> Path:
    legend_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# NUTS cost curve


def _nuts_cells(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty or "method" not in frame or "N" not in frame:
        return pd.DataFrame()
    ok = frame[(frame["status"] == "ok") & (frame["method"].map(kind_of) == Kind.MCMC)].copy()
    if ok.empty:
        return ok
    for column in ("engine", "precision"):
        if column not in ok:
            ok[column] = "-"
        ok[column] = ok[column].fillna("-")
    ok["N"] = _num(ok, "N")
    ok["run_s"] = _num(ok, "t_warmup") + _num(ok, "t_sampling")
    ok["ess_per_s"] = _num(ok, "ess_bulk_per_s")
    ok["grad_evals"] = _num(ok, "grad_evals")
    keys = ["scenario", *ENGINE_KEYS]
    sizes = ok.groupby(keys)["N"].transform("nunique")
    return ok[sizes >= 2]


def nuts_cost_curve_table(frame: pd.DataFrame) -> pd.DataFrame:
    """For every (scenario, backend, engine, precision) fitted at two or more N: medians over
    seeds of warm-up + sampling seconds, ESS (bulk) per second, and seconds per gradient."""
    cells = _nuts_cells(frame)
    if cells.empty:
        return pd.DataFrame()
    records = []
    for key, group in cells.groupby(["scenario", *ENGINE_KEYS, "N"], sort=True):
        record = dict(zip(["scenario", *ENGINE_KEYS, "N"], key))
        record["N"] = int(record["N"])
        record["fits"] = len(group)
        record["compile s"] = _num(group, "t_compile").median()
        record["warm-up + sampling s"] = group["run_s"].median()
        record["ESS bulk/s"] = group["ess_per_s"].median()
        record["grad evals"] = group["grad_evals"].median()
        record["ms/grad in NUTS"] = 1e3 * (group["run_s"] / group["grad_evals"]).median()
        records.append(record)
    return pd.DataFrame(records)


def figure_nuts_cost_curve(frame: pd.DataFrame, path: Path) -> Path | None:
    cells = _nuts_cells(frame)
    if cells.empty:
        return None
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, group in cells.groupby(["scenario", *ENGINE_KEYS]):
        med = group.groupby("N")[["run_s", "ess_per_s"]].median().sort_index()
        label = " / ".join(map(str, key))
        left.plot(med.index, med["run_s"], marker="o", label=label)
        right.plot(med.index, med["ess_per_s"], marker="o", label=label)
    for ax, ylabel in ((left, "warm-up + sampling, s (log scale)"),
                       (right, "bulk ESS per second of sampling (log scale)")):
        _log_log_against_n(ax)
        ax.set_ylabel(ylabel)
    return _save_with_legend(fig, right, "NUTS cost against N (medians over seeds)", path)


# ---------------------------------------------------------------------------------------------
# Compile caches


def compile_cache_table(records: pd.DataFrame) -> pd.DataFrame:
    """backend / engine / method: compile seconds with empty caches (cold) and with the caches
    the cold run left (warm), each in a fresh process; the whole process's seconds beside them.
    Medians when measured more than once. Records without a method (older runs) are NUTS."""
    if records.empty or "t_compile_cold" not in records:
        return pd.DataFrame()
    columns = {"t_compile_cold": "cold compile s", "t_compile_warm": "warm compile s",
               "t_process_cold": "cold process s", "t_process_warm": "warm process s"}
    frame = records.assign(**{label: _num(records, key) for key, label in columns.items()})
    methods = frame["method"] if "method" in frame else pd.Series("nuts", index=frame.index)
    frame = frame.assign(method=methods.where(methods.notna(), "nuts"))
    keys = ["backend", "engine", "method"]
    table = frame.groupby(keys, sort=True)[list(columns.values())].median()
    table["runs"] = frame.groupby(keys, sort=True).size()
    return table.reset_index()


# ---------------------------------------------------------------------------------------------
# Harness overhead


def harness_overhead_table(frame: pd.DataFrame) -> pd.DataFrame:
    """What the suite adds around each fit, medians over seeds (cells that recorded time_total).

    fit s: the backend's fit call, less its conversion of the draws (extraction). overhead s:
    everything else the cell cost, seen from the parent process: the worker's start and imports
    (startup), importing the backend, simulating the data, the conversion, the metrics, and
    handing the row back. The unattributed part of the backend call (the engine's own
    bookkeeping, e.g. pystan's HTTP exchange) is shown beside it, counted in the fit.
    """
    if frame.empty or "time_total" not in frame:
        return pd.DataFrame()
    ok = frame[(frame["status"] == "ok") & _num(frame, "time_total").notna() & _num(frame, "t_fit").notna()]
    if ok.empty:
        return pd.DataFrame()
    t = {name: _num(ok, name).fillna(0.0) for name in
         ("time_total", "t_fit", "t_startup", "t_backend_import", "t_data", "time_metrics", "time_cell",
          "t_compile", "t_compile_wait", "t_warmup", "t_sampling", "t_optimisation", "t_extraction")}
    fit = t["t_fit"] - t["t_extraction"]
    parts = pd.DataFrame({
        "scenario": ok["scenario"], "backend": ok["backend"], "method": ok["method"], "N": _num(ok, "N"),
        "total s": t["time_total"],
        "fit s": fit,
        "startup s": t["t_startup"],
        "backend import s": t["t_backend_import"],
        "data s": t["t_data"],
        "conversion s": t["t_extraction"],
        "waiting for a build s": t["t_compile_wait"],
        "metrics s": t["time_metrics"],
        "hand-over s": (t["time_total"] - t["t_startup"] - t["time_cell"]).clip(lower=0.0),
        "in fit, unattributed s": (fit - t["t_compile"] - t["t_compile_wait"] - t["t_warmup"] - t["t_sampling"]
                                   - t["t_optimisation"]).clip(lower=0.0),
    })
    parts["overhead s"] = parts["total s"] - parts["fit s"]
    parts["overhead %"] = 100.0 * parts["overhead s"] / parts["fit s"]
    keys = ["scenario", "backend", "method", "N"]
    table = parts.groupby(keys, sort=True).median().reset_index()
    table.insert(len(keys), "fits", parts.groupby(keys, sort=True).size().to_numpy())
    table["N"] = table["N"].astype("Int64")
    return table


# ---------------------------------------------------------------------------------------------
# The sections


def cost_sections(frame: pd.DataFrame, environments: list[dict], fig_dir: Path) -> tuple[list[Table], list[Figure]]:
    """Tables (title, text, table) and figures (title, path) for the report, data permitting."""
    gradients = _records(environments, "gradient-cost")
    compiles = _records(environments, "compile-cache")
    tables: list[Table] = [
        ("Gradient cost", "Milliseconds per log density + gradient (Jacobian included) at the truth, "
                          "in each engine's unconstrained space: the cost of one leapfrog step. "
                          "Median over pytest-benchmark rounds (bench/benchmarks/test_gradient_cost.py).",
         gradient_cost_table(gradients)),
        ("NUTS cost against N", "Cells fitted at several N: medians over seeds. ms/grad in NUTS is "
                                "(warm-up + sampling) / gradient evaluations.", nuts_cost_curve_table(frame)),
        ("Compile: cold and warm", "Seconds compiling the model in a fresh process with empty caches "
                                   "(cold), then in another fresh process with the caches the first left "
                                   "(warm) (bench/benchmarks/test_compile_cache.py).", compile_cache_table(compiles)),
        ("Harness overhead", "What the suite adds around a fit, seen from the parent process; "
                             "overhead % is relative to the fit (the backend call less its conversion).",
         harness_overhead_table(frame)),
    ]
    tables = [(title, text, table) for title, text, table in tables if not table.empty]
    figures = [
        ("Gradient cost against N", figure_gradient_cost(gradients, Path(fig_dir) / "gradient_cost.png")),
        ("NUTS cost against N", figure_nuts_cost_curve(frame, Path(fig_dir) / "nuts_cost_curve.png")),
    ]
    return tables, [(title, path) for title, path in figures if path is not None]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
