"""The sweep's figures (bench.report.figures' conventions: PNG, labelled axes, the scale stated, legend
outside the axes):

- a phase diagram per backend x method line: the share of seeds landing in the truth's mode as a
  heat map over the first two varied axes, each cell labelled k/n and its Wilson 90% interval;
- frequency curves: that share against the first varied axis, one line per backend x method line
  with its Wilson band, one panel per setting of the second varied axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.figures import Figure, _plt, _save
from bench.report.frequencies import LEVEL, landing_frequencies, varied_axes
from models.families import AXES


def _ordered(values, axis: str) -> list:
    """Easiest first (left / bottom), so that difficulty grows to the right and upwards."""
    return sorted(values, reverse=AXES[axis].harder == "lower")


def _value_text(value) -> str:
    return f"{float(value):g}"


def figure_phase_diagrams(freq: pd.DataFrame, fig_dir: Path) -> list[Figure]:
    axes = varied_axes(freq)
    if len(axes) < 2:
        return []
    ax_x, ax_y = axes[0], axes[1]
    plt = _plt()
    lines = list(freq.groupby(["backend", "line"], sort=True))
    columns = min(len(lines), 3)
    rows_n = -(-len(lines) // columns)
    xs = _ordered(freq[ax_x].unique(), ax_x)
    ys = _ordered(freq[ax_y].unique(), ax_y)
    fig, grid = plt.subplots(rows_n, columns, figsize=(4.2 * columns + 1.2, 0.9 * len(ys) * rows_n + 1.6),
                             layout="constrained", squeeze=False)
    image = None
    for panel, ((backend, line), group) in zip(grid.flat, lines):
        share = np.full((len(ys), len(xs)), np.nan)
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                found = group[(group[ax_x] == x) & (group[ax_y] == y)]
                if found.empty:
                    continue
                r = found.iloc[0]
                share[i, j] = r["truth_frac"]
                text = f"{int(r['truth_k'])}/{int(r['truth_n'])}\n[{r['truth_lo']:.2f}, {r['truth_hi']:.2f}]"
                panel.text(j, i, text, ha="center", va="center", fontsize="x-small",
                           color="white" if r["truth_frac"] < 0.35 or r["truth_frac"] > 0.8 else "black")
        image = panel.imshow(share, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        panel.set_xticks(range(len(xs)), [_value_text(v) for v in xs], fontsize="small")
        panel.set_yticks(range(len(ys)), [_value_text(v) for v in ys], fontsize="small")
        panel.set_xlabel(f"{ax_x} (harder to the right)", fontsize="small")
        panel.set_ylabel(f"{ax_y} (harder upwards)", fontsize="small")
        panel.set_title(f"{backend} / {line}", fontsize="small")
    for panel in list(grid.flat)[len(lines):]:
        panel.set_visible(False)
    fig.colorbar(image, ax=grid, label="share of seeds in the truth's mode (0 to 1)", shrink=0.9)
    fig.suptitle("Phase diagram: where each method lands in the truth's mode", fontsize="medium")
    path = _save(fig, Path(fig_dir) / "sweep_phase.png")
    return [Figure("sweep-phase", "Sweep: phase diagrams",
                   f"Share of seeds landing in the truth's mode over {ax_x} and {ax_y}, per backend x method line; "
                   f"each cell: k/n seeds and the Wilson {LEVEL:.0%} interval. Easier settings at the bottom left.",
                   path)]


def figure_frequency_curves(freq: pd.DataFrame, fig_dir: Path) -> list[Figure]:
    axes = varied_axes(freq)
    if not axes:
        return []
    ax_x = axes[0]
    second = axes[1] if len(axes) > 1 else None
    plt = _plt()
    method_lines = sorted(freq["line"].unique())
    backends = sorted(freq["backend"].unique())
    seconds = _ordered(freq[second].unique(), second) if second else [None]
    columns = min(len(method_lines), 4)
    rows_n = -(-len(method_lines) // columns)
    fig, grid = plt.subplots(rows_n, columns, figsize=(3.8 * columns + 2.8, 3.3 * rows_n + 0.6),
                             layout="constrained", squeeze=False, sharey=True)
    xs = _ordered(freq[ax_x].unique(), ax_x)
    position = {x: i for i, x in enumerate(xs)}
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    series = [(b, v) for b in backends for v in seconds]
    # Series side by side around each x, so that equal shares do not hide each other.
    offsets = {key: (i - (len(series) - 1) / 2) * min(0.08, 0.4 / max(len(series), 1)) for i, key in enumerate(series)}
    handles = {}
    for panel, method_line in zip(grid.flat, method_lines):
        for (backend, value) in series:
            group = freq[(freq["line"] == method_line) & (freq["backend"] == backend)]
            if value is not None:
                group = group[group[second] == value]
            if group.empty:
                continue
            group = group.assign(_x=group[ax_x].map(position) + offsets[(backend, value)]).sort_values("_x")
            colour = colours[backends.index(backend) % len(colours)]
            style = styles[seconds.index(value) % len(styles)]
            lower = group["truth_frac"] - group["truth_lo"]
            upper = group["truth_hi"] - group["truth_frac"]
            handle = panel.errorbar(group["_x"], group["truth_frac"], yerr=[lower, upper], fmt="o", ls=style,
                                    color=colour, lw=1.3, ms=4, capsize=2, elinewidth=0.8)
            label = backend if value is None else f"{backend}, {second} = {_value_text(value)}"
            handles[label] = handle
        panel.axhline(0.9, color="0.4", lw=0.8, ls="--")
        panel.set_xticks(range(len(xs)), [_value_text(v) for v in xs], fontsize="small")
        panel.set_xlabel(f"{ax_x} (harder to the right)", fontsize="small")
        panel.set_ylim(-0.03, 1.03)
        panel.grid(alpha=0.3)
        panel.set_title(method_line, fontsize="small")
    for panel in list(grid.flat)[len(method_lines):]:
        panel.set_visible(False)
    for panel in grid[:, 0]:
        panel.set_ylabel("share of seeds in the truth's mode", fontsize="small")
    fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize="small")
    path = _save(fig, Path(fig_dir) / "sweep_curves.png")
    return [Figure("sweep-curves", "Sweep: landing frequency curves",
                   f"Share of seeds landing in the truth's mode against {ax_x}, one panel per method line, one "
                   f"series per backend{' and ' + second if second else ''}; bars: Wilson {LEVEL:.0%} intervals "
                   "(series set side by side); dashed: the 90% a setting must keep to count as held.", path)]


def sweep_figures(frame: pd.DataFrame, fig_dir: Path) -> list[Figure]:
    """Every sweep figure the rows allow (none when they hold no sweep)."""
    freq = landing_frequencies(frame)
    if freq.empty:
        return []
    return [*figure_phase_diagrams(freq, fig_dir), *figure_frequency_curves(freq, fig_dir)]
