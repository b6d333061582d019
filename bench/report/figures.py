"""The report's figures, each a PNG with labelled axes, its scale stated, and its legend outside
the axes.

- the data with each fit's components (one panel per fit);
- where the seeds land, with Wilson 90% intervals for the share of seeds in each mode;
- VI quality: PSIS k-hat per seed against the 0.5 and 0.7 thresholds;
- anytime: error of the running posterior mean against wall time (PPL Bench's view);
- the time split (compile apart from the rest), slope traces, the recovery error per seed.

Every function takes the report's frame (rows with ``fit`` ids, bench.report.tables.assign_fit_ids) and
returns a list of ``Figure`` (none when the data do not allow it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from backends.methods import Kind, kind_of
from bench.report.frequencies import LEVEL, wilson_interval
from bench.report.run_files import cell_data, file_in_runs
from bench.report.tables import KHAT_BAD, col, num
from bench.run.harness import load_slope_trace
from bench.score.relabel import permutations_for

MODE_COLOURS = {"truth": "tab:green", "reference": "tab:green", "collapsed": "tab:red", "other": "tab:orange",
                "mixed": "tab:purple"}
MAX_POINTS = 2000  # data points drawn per panel
DPI = 100


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    caption: str
    path: Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


def _ok(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "ok"] if len(frame) else frame


def _setups(frame: pd.DataFrame):
    """(scenario, setup, rows) per data set, in fit-id order."""
    if frame.empty:
        return []
    order = frame.assign(_n=frame["fit"].str[1:].astype(int)).sort_values("_n")
    return [(s, u, order[(order["scenario"] == s) & (order["setup"] == u)])
            for s, u in order[["scenario", "setup"]].drop_duplicates().itertuples(index=False)]


def _setup_title(scenario: str, setup: str) -> str:
    return scenario if setup == "default" else f"{scenario} [{setup}]"


def _fits(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    return sorted(rows.groupby("fit"), key=lambda kv: int(kv[0][1:]))


# ---------------------------------------------------------------------------------------------
# The data and each fit's components


def _softmax(eta: np.ndarray) -> np.ndarray:
    return np.exp(eta - np.logaddexp.reduce(eta))


def point_from_row(row: pd.Series, prefix: str, K: int, D: int) -> dict[str, np.ndarray] | None:
    """Parameters from a row's flat ``mean.*`` (posterior means, relabelled) or ``truth.*``
    columns: w (K, D), b (K,) zeros without intercepts, sigma (K,), pi (K,) (under softmax weights
    the weights at x = 0, softmax(gamma[:, 0])). None if absent."""
    def value(name):
        v = row.get(f"{prefix}{name}")
        return float(v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else None

    w = np.array([[value(f"w[{k},{j}]") for j in range(D)] for k in range(K)], dtype=float).reshape(K, D)
    b = np.array([value(f"b[{k}]") if value(f"b[{k}]") is not None else 0.0 for k in range(K)])
    shared = value("sigma")
    sigma = np.full(K, shared) if shared is not None else np.array([value(f"sigma[{k}]") for k in range(K)], float)
    pi = np.array([value(f"pi[{k}]") for k in range(K)], dtype=float)
    if np.isnan(pi).any():  # softmax weights (models/spec.py): the weights at x = 0
        pi = _softmax(np.array([value(f"gamma[{k},0]") for k in range(K)], dtype=float))
    if np.isnan(w).any() or np.isnan(sigma).any() or np.isnan(pi).any():
        return None
    return {"w": w, "b": b, "sigma": sigma, "pi": pi}


def component_lines(point: dict[str, np.ndarray], x_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intercepts, slopes) of each component's line against the first covariate, the other
    covariates held at their means ``x_mean`` (shape (D,)): b_k + sum_{j>0} w_kj mean(x_j), w_k0."""
    w, b = point["w"], point["b"]
    offset = b + w[:, 1:] @ np.asarray(x_mean, dtype=float)[1:]
    return offset, w[:, 0]


def _load_data(rows: pd.DataFrame, run_dirs: list[Path]):
    found = [(c, n) for c, n in zip(col(rows, "cell"), col(rows, "N")) if isinstance(c, dict)]
    if not found:
        return None, "the rows do not record their cell"
    return cell_data(*found[0], run_dirs)


def figure_data_fits(frame: pd.DataFrame, run_dirs: list[Path], fig_dir: Path) -> tuple[list[Figure], list[str]]:
    """Per data set: the data and every ok seed's posterior-mean components, one panel per fit."""
    figures, notes = [], []
    for index, (scenario, setup, rows) in enumerate(_setups(_ok(frame)), start=1):
        loaded, why = _load_data(rows, run_dirs)
        if loaded is None:
            notes.append(f"No data figure for {_setup_title(scenario, setup)}: {why}.")
            continue
        spec, dataset = loaded
        K, D = spec.K, spec.D
        fits = _fits(rows)
        ncols = min(4, len(fits))
        nrows = math.ceil(len(fits) / ncols)
        plt = _plt()
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols + 0.6, 2.4 * nrows + 1.2), squeeze=False,
                                 sharex=True, sharey=True, layout="constrained")
        rng = np.random.default_rng(0)
        shown = rng.choice(dataset.N, size=min(MAX_POINTS, dataset.N), replace=False)
        x, y = dataset.x[shown], dataset.y[shown]
        x_mean = dataset.x.mean(axis=0) if D else np.zeros(0)
        names = list(dataset.covariates or [f"x{j}" for j in range(D)])
        response = next((c.get("response") for c in col(rows, "cell") if isinstance(c, dict)), None) or "y"
        truth = dataset.truth
        colours = [f"C{k}" for k in range(K)]
        grid = np.linspace(dataset.y.min(), dataset.y.max(), 300) if D == 0 else None
        if D:
            xs = np.linspace(dataset.x[:, 0].min(), dataset.x[:, 0].max(), 2)
        for ax, (fit_id, group) in zip(axes.flat, fits):
            if D == 0:
                ax.hist(dataset.y, bins=60, density=True, color="0.85")
            else:
                ax.scatter(x[:, 0], y, s=3, color="0.6", alpha=0.5, linewidths=0, rasterized=True)
            for _, row in group.iterrows():
                point = point_from_row(row, "mean.", K, D)
                if point is None:
                    continue
                if D == 0:
                    for k in range(K):
                        ax.plot(grid, point["pi"][k] * norm.pdf(grid, point["b"][k], point["sigma"][k]),
                                color=colours[k], lw=1.3)
                else:
                    offsets, slopes = component_lines(point, x_mean)
                    for k in range(K):
                        ax.plot(xs, offsets[k] + slopes[k] * xs, color=colours[k], lw=1.3)
            if truth is not None:
                true_point = {"w": np.asarray(truth["w"], float).reshape(K, D),
                              "b": np.asarray(truth.get("b", np.zeros(K)), float),
                              "sigma": np.broadcast_to(np.asarray(truth["sigma"], float), (K,)),
                              "pi": (np.asarray(truth["pi"], float) if "pi" in truth
                                     else _softmax(np.asarray(truth["gamma"], float)[:, 0]))}
                for k in range(K):
                    if D == 0:
                        ax.plot(grid, true_point["pi"][k] * norm.pdf(grid, true_point["b"][k], true_point["sigma"][k]),
                                color="black", lw=0.9, ls="--")
                    else:
                        offsets, slopes = component_lines(true_point, x_mean)
                        ax.plot(xs, offsets[k] + slopes[k] * xs, color="black", lw=0.9, ls="--")
            landed = col(group, "mode").value_counts()
            ax.set_title(f"{group['fit_label'].iloc[0]}\n" + ", ".join(f"{m} {n}/{len(group)}" for m, n in landed.items()),
                         fontsize="small")
        for ax in axes.flat[len(fits):]:
            ax.set_visible(False)
        for ax in axes[-1, :]:
            ax.set_xlabel(f"{names[0]} (data units)" if D else f"{response} (data units)")
        for ax in axes[:, 0]:
            ax.set_ylabel(f"{response} (data units)" if D else f"density (per unit of {response})")
        handles = [plt.Line2D([], [], color=colours[k], lw=1.3, label=f"component {k}") for k in range(K)]
        if truth is not None:
            handles.append(plt.Line2D([], [], color="black", lw=0.9, ls="--", label="truth"))
        point_note = (f"{len(shown):,} of {dataset.N:,} points" if D else f"histogram of all {dataset.N:,} y")
        handles.append(plt.Line2D([], [], color="0.6", marker="o", ls="", label=f"data ({point_note})"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), fontsize="small")
        held = "; lines at the other covariates' means" if D > 1 else ""
        what = ("each component's line y = b_k + w_k x (posterior means, one line per seed)" if D
                else "each component's weighted density pi_k Normal(b_k, sigma_k) (posterior means, one curve per seed)")
        fig.suptitle(f"The data and the fits: {_setup_title(scenario, setup)}", fontsize="medium")
        path = _save(fig, Path(fig_dir) / f"data_fits_{index}.png")
        sources = set(col(rows, "reference_source").dropna().astype(str))
        if truth is not None:
            labelled = "Components are relabelled to the truth (dashed), so colours match across panels."
        elif sources == {"reference"}:
            labelled = ("Components are relabelled to the reference posterior's labelling, so colours match across "
                        "panels.")
        else:
            labelled = "Each fit is relabelled to its own reference point, so colours match within a panel only."
        caption = f"{_setup_title(scenario, setup)}: the data ({point_note}) with {what}{held}. {labelled}"
        figures.append(Figure(f"data-fits-{index}", f"The data and the fits: {_setup_title(scenario, setup)}",
                              caption, path))
    return figures, notes


# ---------------------------------------------------------------------------------------------
# Landings with Wilson intervals


def figure_landings(frame: pd.DataFrame, fig_dir: Path) -> list[Figure]:
    ok = _ok(frame)
    ok = ok[col(ok, "mode").notna()]
    if ok.empty:
        return []
    modes = [m for m in MODE_COLOURS if m in set(ok["mode"])]
    fits = _fits(ok)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, (0.32 + 0.12 * len(modes)) * len(fits) + 1.4), layout="constrained")
    step = 0.7 / max(len(modes), 1)
    for i, (_, group) in enumerate(fits):
        n = len(group)
        for j, mode in enumerate(modes):
            k = int((group["mode"] == mode).sum())
            lo, hi = wilson_interval(k, n)
            y = i + (j - (len(modes) - 1) / 2) * step
            ax.errorbar(k / n, y, xerr=[[k / n - lo], [hi - k / n]], fmt="o", color=MODE_COLOURS[mode], ms=5,
                        capsize=2, lw=1, label=mode if i == 0 else None)
            ax.annotate(f"{k}/{n}", (hi, y), xytext=(4, 0), textcoords="offset points", va="center",
                        fontsize="x-small", color="0.3")
    ax.set_yticks(range(len(fits)), [g["fit_label"].iloc[0] for _, g in fits], fontsize="small")
    ax.set_ylim(len(fits) - 0.5, -0.5)
    ax.set_xlim(-0.02, 1.12)
    ax.set_xlabel(f"share of seeds landing in the mode (point: k of n seeds; bar: Wilson {LEVEL:.0%} interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="mode", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title("Where the seeds land", fontsize="medium")
    path = _save(fig, Path(fig_dir) / "landings.png")
    fewest = min(len(group) for _, group in fits)
    low, _ = wilson_interval(fewest, fewest)
    return [Figure("landings", "Where the seeds land",
                   f"Share of each fit's seeds per mode with its Wilson {LEVEL:.0%} interval. With few seeds "
                   f"the intervals are wide: {fewest} of {fewest} seeds in one mode is consistent with a share as "
                   f"low as {low:.2f}.", path)]


# ---------------------------------------------------------------------------------------------
# VI quality


def figure_vi_quality(frame: pd.DataFrame, fig_dir: Path) -> list[Figure]:
    ok = _ok(frame)
    khat = num(ok, "khat")
    ok = ok.assign(_k=khat)[khat.notna()]
    if ok.empty:
        return []
    fits = _fits(ok)
    finite = ok["_k"][np.isfinite(ok["_k"])]
    lo = min(-0.2, float(finite.min()) - 0.1) if len(finite) else -0.2
    lo = max(lo, -1.0)
    hi = 1.5
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 0.45 * len(fits) + 1.6), layout="constrained")
    ax.axvspan(lo, 0.5, color="tab:green", alpha=0.06)
    ax.axvspan(KHAT_BAD, hi, color="tab:red", alpha=0.06)
    ax.axvspan(0.5, KHAT_BAD, color="tab:orange", alpha=0.08, label=f"0.5 to {KHAT_BAD}: usable, with care")
    ax.axvline(0.5, color="tab:green", ls="--", lw=1, label="0.5: good below")
    ax.axvline(KHAT_BAD, color="tab:red", ls="--", lw=1, label=f"{KHAT_BAD}: not the posterior at or above")
    for i, (_, group) in enumerate(fits):
        values = group["_k"].to_numpy()
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        for v, dy in zip(values, jitter):
            if v > hi:
                ax.plot(hi, i + dy, marker=">", color="black", ms=6)
                ax.annotate("inf" if np.isinf(v) else f"{v:.3g}", (hi, i + dy), xytext=(-8, 0),
                            textcoords="offset points", ha="right", va="center", fontsize="x-small")
            elif v < lo:
                ax.plot(lo, i + dy, marker="<", color="black", ms=6)
                ax.annotate("-inf (q = p)" if np.isinf(v) else f"{v:.3g}", (lo, i + dy), xytext=(8, 0),
                            textcoords="offset points", va="center", fontsize="x-small")
            else:
                ax.plot(v, i + dy, marker="o", color="black", ms=5)
    ax.set_yticks(range(len(fits)), [g["fit_label"].iloc[0] for _, g in fits], fontsize="small")
    ax.set_ylim(len(fits) - 0.5, -0.5)
    ax.set_xlim(lo, hi)
    ax.set_xlabel(f"PSIS k-hat (one dot per seed; linear scale, values beyond {hi} drawn at the edge with their value)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title("Approximation quality: PSIS k-hat", fontsize="medium")
    path = _save(fig, Path(fig_dir) / "vi_quality.png")
    return [Figure("vi-quality", "Approximation quality (k-hat)",
                   "PSIS k-hat of each seed's approximation (Yao et al. 2018): below 0.5 the draws can stand for "
                   f"the posterior; at {KHAT_BAD} or more they cannot, whatever the recovery error says.", path)]


# ---------------------------------------------------------------------------------------------
# Anytime: error against wall time


def running_error(w: np.ndarray, target: np.ndarray) -> np.ndarray:
    """max |running posterior mean - target| over slopes after each draw, chains pooled:
    w (chain, draw, K, D) raw slopes, relabelled per draw to ``target`` (K, D) by the metrics'
    rule (bench.score.relabel.permutations_for, on the slopes the trace holds); returns (draw,)."""
    perms = permutations_for(np.asarray(w, dtype=float), np.asarray(target, dtype=float))[0]
    relabelled = np.take_along_axis(w, perms[..., None], axis=-2)
    sums = np.cumsum(relabelled.sum(axis=0), axis=0)  # (draw, K, D)
    counts = w.shape[0] * np.arange(1, w.shape[1] + 1)
    means = sums / counts[:, None, None]
    return np.abs(means - target[None]).reshape(w.shape[1], -1).max(axis=1)


def _trace_file(row: pd.Series, run_dirs: list[Path]) -> Path | None:
    return file_in_runs(row.get("slope_trace_file"), run_dirs)


def _log_ticks(axis) -> None:
    """Labels at 1, 2 and 5 of each decade, as plain numbers: a range inside one or two decades
    otherwise shows a single '10^0'."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_formatter(NullFormatter())


def figure_anytime(frame: pd.DataFrame, run_dirs: list[Path], fig_dir: Path) -> tuple[list[Figure], list[str]]:
    """Error (with a truth), else PSIS-LOO elpd or W1 (final values) against wall time; and notes
    on the data sets that have none of these."""
    figures, notes = [], []
    for index, (scenario, setup, rows) in enumerate(_setups(_ok(frame)), start=1):
        truth = (col(rows, "reference_source") == "truth").all()
        if truth:
            measure, ylabel, log_y = "w_err_max", "max slope error of the posterior mean (log scale)", True
            what = "The largest slope error of the posterior mean"
        elif num(rows, "elpd_loo").notna().any():
            measure, ylabel, log_y = "elpd_loo", "PSIS-LOO elpd of y, nats (higher is better)", False
            what = "PSIS-LOO elpd (expected log predictive density of y)"
        elif num(rows, "w_w1_max").notna().any():
            measure, ylabel, log_y = "w_w1_max", "max slope W1 distance to the reference (log scale)", True
            what = "The largest slope W1 distance to the reference posterior"
        else:
            notes.append(f"No anytime figure for {_setup_title(scenario, setup)}: without a truth it plots the "
                         "PSIS-LOO elpd or the W1 distance to a reference posterior, and these rows carry neither.")
            continue
        plt = _plt()
        fig, ax = plt.subplots(figsize=(8.5, 4.6), layout="constrained")
        drawn = False
        for c, (fit_id, group) in enumerate(_fits(rows)):
            colour = f"C{c % 10}"
            label = group["fit_label"].iloc[0]
            for _, row in group.iterrows():
                start = _float(row.get("t_warmup")) if _finite(row.get("t_warmup")) else 0.0
                if measure == "w_err_max" and kind_of(row["method"]) is Kind.MCMC and _finite(row.get("t_sampling")):
                    trace = _trace_file(row, run_dirs)
                    target = _truth_w(row)
                    # None (with a warning) when the file is damaged.
                    w = load_slope_trace(trace) if trace is not None and target is not None else None
                    if w is not None:
                        w = w.astype(float)
                        errors = running_error(w, target)
                        times = start + float(row["t_sampling"]) * np.arange(1, len(errors) + 1) / len(errors)
                        keep = np.unique(np.geomspace(1, len(errors), 200).astype(int) - 1)
                        ax.plot(times[keep], np.maximum(errors[keep], 1e-6), color=colour, lw=1, alpha=0.8,
                                label=label)
                        label, drawn = None, True
                        continue
                value = _float(row.get(measure))
                elapsed = sum(float(v) for v in (row.get("t_warmup"), row.get("t_sampling"), row.get("t_optimisation"))
                              if _finite(v))
                if math.isfinite(value) and elapsed > 0:
                    ax.plot(elapsed, max(value, 1e-6) if log_y else value, marker="o", ls="", color=colour,
                            label=label)
                    label, drawn = None, True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        if log_y:
            ax.set_yscale("log")
        _log_ticks(ax.xaxis)
        if log_y:
            _log_ticks(ax.yaxis)
        ax.set_xlabel("wall time after compiling, s (log scale): warm-up + sampling, or optimisation")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
        ax.set_title(f"Anytime: {_setup_title(scenario, setup)}", fontsize="medium")
        path = _save(fig, Path(fig_dir) / f"anytime_{index}.png")
        how = ("NUTS: the running posterior mean after each draw (lines, one per seed; chains pooled, each draw "
               "relabelled to the truth); other methods: their final fit (dots)." if measure == "w_err_max"
               else "Each seed's final fit (dots).")
        figures.append(Figure(f"anytime-{index}", f"Anytime: {_setup_title(scenario, setup)}",
                              f"{what} against wall time, as PPL Bench plots it; "
                              f"compile time is left out (its cold and warm values are in Cost: time). {how}",
                              path))
    return figures, notes


def _finite(value) -> bool:
    return math.isfinite(_float(value))


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _truth_w(row: pd.Series) -> np.ndarray | None:
    K, D = int(_float(row.get("K"))), int(_float(row.get("D")))
    values = [[_float(row.get(f"truth.w[{k},{j}]")) for j in range(D)] for k in range(K)]
    w = np.array(values, dtype=float).reshape(K, D)
    return None if D == 0 or np.isnan(w).any() else w


# ---------------------------------------------------------------------------------------------
# Time split, traces, recovery error


def figure_time_split(frame: pd.DataFrame, fig_dir: Path) -> list[Figure]:
    ok = _ok(frame)
    phases = ["t_warmup", "t_sampling", "t_optimisation", "t_extraction"]
    if ok.empty:
        return []
    values = ok[["fit_label", "fit"]].assign(t_compile=num(ok, "t_compile"), **{p: num(ok, p) for p in phases})
    med = values.groupby(["fit", "fit_label"])[["t_compile", *phases]].median().fillna(0.0)
    med = med.reset_index().assign(_n=lambda d: d["fit"].str[1:].astype(int)).sort_values("_n")
    phases = [p for p in phases if med[p].any()]
    if not phases and not med["t_compile"].any():
        return []
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 0.42 * len(med) + 1.8), sharey=True, layout="constrained",
                                      gridspec_kw={"width_ratios": [1, 2]})
    labels = list(med["fit_label"])
    y = np.arange(len(med))
    left.barh(y, med["t_compile"], color="tab:purple", label="compile")
    left.set_xlabel("compile, s (linear)")
    left.xaxis.set_major_locator(_plt().MaxNLocator(3))  # a narrow panel: few labels, none overlapping
    start = np.zeros(len(med))
    colours = {"t_warmup": "tab:blue", "t_sampling": "tab:cyan", "t_optimisation": "tab:orange",
               "t_extraction": "tab:gray"}
    for phase in phases:
        right.barh(y, med[phase], left=start, color=colours[phase], label=phase[2:].replace("optimisation", "optimise"))
        start += med[phase].to_numpy()
    right.set_xlabel("the rest, s (linear; its own scale)")
    left.set_yticks(y, labels, fontsize="small")
    left.invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color="tab:purple", label="compile")]
    handles += [plt.Rectangle((0, 0), 1, 1, color=colours[p], label=p[2:]) for p in phases]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize="small")
    fig.suptitle("Where the time goes (medians over seeds)", fontsize="medium")
    path = _save(fig, Path(fig_dir) / "time_split.png")
    return [Figure("time-split", "Where the time goes",
                   "Compile on its own axis, so one cold compile does not hide the rest; warm-up, sampling, "
                   "optimisation and the conversion of the draws on the other.", path)]


def _trace_candidate(frame: pd.DataFrame, run_dirs: list[Path]):
    """A NUTS cell whose chains disagree, else one that switches, else any NUTS cell with traces."""
    ok = _ok(frame)
    nuts = ok[(ok["method"].map(kind_of) == Kind.MCMC) & col(ok, "slope_trace_file").notna()]
    if nuts.empty:
        return None
    ranked = [
        (nuts[col(nuts, "chains_disagree") == True], "chains in opposite labellings"),  # noqa: E712
        (nuts[num(nuts, "label_switches") > 0], "label switches within a chain"),
        (nuts, "no disagreement or switching in this run"),
    ]
    for subset, why in ranked:
        for _, row in subset.iterrows():
            trace = _trace_file(row, run_dirs)
            if trace is not None:
                return row, trace, why
    return None


def figure_traces(frame: pd.DataFrame, run_dirs: list[Path], fig_dir: Path) -> list[Figure]:
    found = _trace_candidate(frame, run_dirs)
    if found is None:
        return []
    row, trace_file, why = found
    w = load_slope_trace(trace_file)  # (chain, draw, component, covariate), raw labels; None if damaged
    if w is None or w.shape[-1] == 0:
        return []
    plt = _plt()
    fig, axes = plt.subplots(w.shape[0], 1, figsize=(8.5, 1.5 * w.shape[0] + 1.2), sharex=True, squeeze=False,
                             layout="constrained")
    for chain, ax in enumerate(axes[:, 0]):
        for k in range(w.shape[2]):
            ax.plot(w[chain, :, k, 0], lw=0.6, color=f"C{k}", label=f"w[{k},0] as sampled")
        ax.set_ylabel(f"chain {chain}\nslope")
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    axes[-1, 0].set_xlabel("draw (after warm-up)")
    fig.suptitle(f"Raw slope traces, {row['fit_label']}, seed {row['seed']}: {why}", fontsize="medium")
    path = _save(fig, Path(fig_dir) / "slope_traces.png")
    return [Figure("traces", "Slope traces",
                   f"The first slope of each component as sampled (raw labels), {row['fit_label']} seed {row['seed']}: "
                   f"{why}.", path)]


def figure_recovery(frame: pd.DataFrame, fig_dir: Path) -> list[Figure]:
    ok = _ok(frame)
    err = num(ok, "w_err_max")
    if ok.empty or err.notna().sum() == 0:
        return []
    ok = ok.assign(err=err).dropna(subset=["err"])
    fits = _fits(ok)
    positive = ok["err"][ok["err"] > 0]
    log = len(positive) and positive.max() / max(positive.min(), 1e-12) > 30
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(fits) + 1.6), layout="constrained")
    for i, (_, group) in enumerate(fits):
        colours = [MODE_COLOURS.get(m, "black") for m in col(group, "mode")]
        ax.scatter(group["err"].clip(lower=1e-6) if log else group["err"], np.full(len(group), i), c=colours,
                   s=22, zorder=3)
    ax.set_yticks(range(len(fits)), [g["fit_label"].iloc[0] for _, g in fits], fontsize="small")
    ax.set_ylim(len(fits) - 0.5, -0.5)
    if log:
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0)
    ax.grid(axis="x", which="both", alpha=0.3)
    scale = "log scale: the errors span more than a factor of 30" if log else "linear scale from 0"
    ax.set_xlabel(f"max |posterior mean - truth| over slopes, relabelled; one dot per seed ({scale})")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=m) for m, c in MODE_COLOURS.items()
               if m in set(col(ok, "mode"))]
    ax.legend(handles=handles, title="landed", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title("Slope recovery error", fontsize="medium")
    path = _save(fig, Path(fig_dir) / "recovery_error.png")
    return [Figure("recovery", "Slope recovery error",
                   f"Each seed's slope error, coloured by where it landed ({scale}).", path)]


def report_figures(frame: pd.DataFrame, run_dirs: list[Path], fig_dir: Path) -> tuple[list[Figure], list[str]]:
    """Every figure the data allow, in reading order, and notes on figures left out."""
    data_figures, notes = figure_data_fits(frame, run_dirs, fig_dir)
    anytime, anytime_notes = figure_anytime(frame, run_dirs, fig_dir)
    notes += anytime_notes
    figures = [*data_figures, *figure_landings(frame, fig_dir), *figure_vi_quality(frame, fig_dir),
               *anytime, *figure_time_split(frame, fig_dir),
               *figure_recovery(frame, fig_dir), *figure_traces(frame, run_dirs, fig_dir)]
    return figures, notes

