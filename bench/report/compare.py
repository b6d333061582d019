"""``mixbench compare RUN_A RUN_B``: what changed between two runs, cell by cell, with a verdict
that is called only when a change is larger than the runs' own noise.

A run is a run directory, a ``cells.jsonl`` file or a pytest-benchmark JSON file. Cells are
matched by what they are without the run: scenario, data size, backend, method and seed (and
their setup, when a run holds several setups of one backend and method), so two runs of the
same grid under different settings are compared seed by seed.

The verdict, per (scenario, backend, method) and metric, over the seeds both runs have:

    delta = mean(B) - mean(A);  spread = sd(A), run A's sample standard deviation across seeds
    called when the seeds do not overlap (every seed of B beyond every seed of A, strictly),
           |delta| > NOISE_FACTOR x spread  and  |delta| > MIN_RELATIVE x |mean(A)|

(and at least MIN_SEEDS seeds), "worse" or "better" by the metric's direction. Separation keeps
one outlying seed from making a call; the baseline's spread measures the noise a change has to
exceed (a worse setting often makes a run noisier too, so B's own spread would hide the change);
the relative floor keeps a metric constant across seeds (spread 0) from being called for a
rounding difference. With no change, complete separation of n seeds against n happens with
probability 2 / C(2n, n) (10% at 3 seeds, 3% at 4, 1e-5 at 10): use several seeds. The rule is
printed in every comparison.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.report.document import HTML_PAGE, load_benchmark_json, markdown_table, markdown_text
from bench.run.harness import CELLS_FILE, read_rows
from models.errors import MixbenchError

NOISE_FACTOR = 2.0
MIN_RELATIVE = 0.05
MIN_SEEDS = 3

# metric -> (what it is, +1 when higher is better, -1 when lower is better).
METRICS: dict[str, tuple[str, int]] = {
    "w_err_max": ("slope recovery error (max |mean - truth|)", -1),
    "b_err_max": ("intercept recovery error", -1),
    "sigma_err_max": ("sigma recovery error", -1),
    "pi_err_max": ("weight recovery error", -1),
    "w_w1_max": ("slope W1 to the reference posterior (max over slopes)", -1),
    "b_w1_max": ("intercept W1 to the reference posterior", -1),
    "sigma_w1_max": ("sigma W1 to the reference posterior", -1),
    "pi_w1_max": ("weight W1 to the reference posterior", -1),
    "chains_on_target": ("chains landing in the target's mode", +1),
    "chains_collapsed": ("chains landing collapsed", -1),
    "chains_other": ("chains landing elsewhere", -1),
    "label_switches": ("label switches within chains", -1),
    "ess_bulk_per_s": ("bulk ESS per second of sampling", +1),
    "ess_bulk_min": ("min bulk ESS", +1),
    "rhat_max": ("max R-hat", -1),
    "khat": ("PSIS k-hat", -1),
    "t_compile": ("seconds compiling", -1),
    "t_warmup": ("seconds of warm-up", -1),
    "t_sampling": ("seconds of sampling", -1),
    "t_optimisation": ("seconds of optimisation", -1),
    "t_extraction": ("seconds of extraction", -1),
    "time_total": ("seconds for the whole cell, process start to row", -1),
}
MATCH = ["scenario", "N", "backend", "method", "seed"]
GROUP = ["scenario", "N", "backend", "method"]


def rule_text() -> str:
    return (f"A change is called when, over the seeds both runs have, every seed of B lies beyond every seed "
            f"of A and |mean(B) - mean(A)| exceeds {NOISE_FACTOR:g} x run A's standard deviation across "
            f"those seeds and {MIN_RELATIVE:.0%} of |mean(A)|; with fewer than {MIN_SEEDS} seeds nothing is called.")


def load_run(path: Path) -> pd.DataFrame:
    """The rows of one run (a run directory, cells.jsonl or pytest-benchmark JSON), one per cell.
    Raises MixbenchError when it is none of these or holds no rows."""

    path = Path(path)
    if path.is_dir():
        if not (path / CELLS_FILE).is_file():
            raise MixbenchError(f"{path}: no {CELLS_FILE} in this directory")
        rows = read_rows(path / CELLS_FILE)
    elif path.suffix == ".jsonl" and path.is_file():
        rows = read_rows(path)
    elif path.suffix == ".json" and path.is_file():
        rows, _ = load_benchmark_json(path)
    elif not path.exists():
        raise MixbenchError(f"{path}: not found")
    else:
        raise MixbenchError(f"{path}: expected a run directory, a .jsonl rows file or a pytest-benchmark .json")
    if not rows:
        raise MixbenchError(f"{path}: no cell rows")
    frame = pd.DataFrame(rows)
    for column in [*MATCH, "setup"]:
        if column not in frame:
            frame[column] = None
    frame["setup"] = frame["setup"].fillna("default")
    return frame


def match(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The cells both runs have, side by side (columns suffixed _a and _b), and the match keys.
    The setup joins the keys when either run has several rows for one cell of MATCH."""
    keys = list(MATCH)
    if a.duplicated(MATCH).any() or b.duplicated(MATCH).any():
        keys.append("setup")
    for frame, name in ((a, "A"), (b, "B")):
        if frame.duplicated(keys).any():
            raise MixbenchError(f"run {name}: several rows for one cell even by setup; compare one grid with another")
    left, right = a.copy(), b.copy()
    for frame in (left, right):
        frame["N"] = frame["N"].astype(object).where(frame["N"].notna(), None)
    merged = left.merge(right, on=keys, suffixes=("_a", "_b"), how="inner")
    return merged, keys


@dataclass
class Verdict:
    scenario: str
    backend: str
    method: str
    N: object
    metric: str
    seeds: int
    mean_a: float
    mean_b: float
    delta: float
    spread: float
    call: str  # worse, better, same (within noise), n/a

    @property
    def relative(self) -> float:
        return self.delta / abs(self.mean_a) if self.mean_a else math.inf if self.delta else 0.0


def _numbers(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def verdicts(merged: pd.DataFrame) -> list[Verdict]:
    """One verdict per (scenario, N, backend, method) and metric present in both runs."""
    out = []
    ok = merged[(merged.get("status_a") == "ok") & (merged.get("status_b") == "ok")]
    for (scenario, n, backend, method), group in ok.groupby(GROUP, dropna=False, sort=True):
        for metric, (_, direction) in METRICS.items():
            if f"{metric}_a" not in group or f"{metric}_b" not in group:
                continue
            a, b = _numbers(group[f"{metric}_a"]), _numbers(group[f"{metric}_b"])
            both = np.isfinite(a) & np.isfinite(b)
            if not both.any():
                continue
            a, b = a[both], b[both]
            mean_a, mean_b = float(a.mean()), float(b.mean())
            delta = mean_b - mean_a
            spread = float(a.std(ddof=1)) if len(a) >= 2 else math.nan
            separated = b.min() > a.max() or b.max() < a.min()
            if len(a) < MIN_SEEDS:
                call = "n/a"
            elif separated and abs(delta) > NOISE_FACTOR * spread and abs(delta) > MIN_RELATIVE * abs(mean_a):
                call = "better" if delta * direction > 0 else "worse"
            else:
                call = "same"
            out.append(Verdict(str(scenario), str(backend), str(method), n, metric, int(both.sum()),
                               mean_a, mean_b, delta, spread, call))
    return out


@dataclass
class Comparison:
    label_a: str
    label_b: str
    keys: list[str]
    cells: pd.DataFrame  # per matched cell: ids, status in each run, the change of every metric
    verdicts: list[Verdict]
    only_a: int
    only_b: int
    setups: list[tuple[str, str]]  # (setup in A, setup in B) pairs that were compared

    def called(self, call: str) -> list[Verdict]:
        return [v for v in self.verdicts if v.call == call]

    def worse_beyond(self, threshold: float) -> list[Verdict]:
        """Changes called worse by more than ``threshold`` (a fraction of run A's mean)."""
        return [v for v in self.called("worse") if abs(v.relative) > threshold]


def compare(path_a: Path, path_b: Path) -> Comparison:
    """Compare two runs (see the module docstring). Raises MixbenchError when they share no cell."""
    a, b = load_run(path_a), load_run(path_b)
    merged, keys = match(a, b)
    if merged.empty:
        raise MixbenchError(f"{path_a} and {path_b}: no cell in common (matched by {', '.join(keys)})")
    ids = [*keys] + [c for c in ("setup_a", "setup_b", "status_a", "status_b") if c in merged]
    cells = merged[ids].copy()
    for metric in METRICS:
        if f"{metric}_a" in merged and f"{metric}_b" in merged:
            change = _numbers(merged[f"{metric}_b"]) - _numbers(merged[f"{metric}_a"])
            if np.isfinite(change).any():  # a metric neither run measured is left out
                cells[f"Δ {metric}"] = change
    setup_a = merged["setup_a"] if "setup_a" in merged else merged.get("setup")
    setup_b = merged["setup_b"] if "setup_b" in merged else merged.get("setup")
    setups = sorted({(str(x), str(y)) for x, y in zip(setup_a, setup_b)})
    return Comparison(_label(path_a), _label(path_b), keys, cells.sort_values(keys).reset_index(drop=True),
                      verdicts(merged), len(a) - len(merged), len(b) - len(merged), setups)


def _label(path: Path) -> str:
    path = Path(path)
    return path.name if path.is_dir() else path.stem if path.suffix == ".json" else path.parent.name


# ---------------------------------------------------------------------------------------------
# Output


def verdict_table(comparison: Comparison, calls: tuple[str, ...] | None = None) -> pd.DataFrame:
    rows = [{"scenario": v.scenario, "backend": v.backend, "method": v.method, "metric": v.metric,
             "seeds": v.seeds, "A": v.mean_a, "B": v.mean_b, "B - A": v.delta, "change": f"{v.relative:+.0%}"
             if math.isfinite(v.relative) else "from 0", "spread (sd of A)": v.spread, "verdict": v.call}
            for v in comparison.verdicts if calls is None or v.call in calls]
    return pd.DataFrame(rows)


def summary_lines(comparison: Comparison) -> list[str]:
    worse, better = comparison.called("worse"), comparison.called("better")
    lines = [f"A = {comparison.label_a}, B = {comparison.label_b}: {len(comparison.cells)} cells matched by "
             f"{', '.join(comparison.keys)}" + (f" ({comparison.only_a} only in A, {comparison.only_b} only in B)"
                                                if comparison.only_a or comparison.only_b else "") + "."]
    changed = [(x, y) for x, y in comparison.setups if x != y]
    if changed:
        lines.append("Setups compared: " + "; ".join(f"{x} -> {y}" for x, y in changed) + ".")
    lines.append(rule_text())
    for word, found in (("Worse", worse), ("Better", better)):
        for v in found:
            lines.append(f"{word}: {v.scenario} / {v.backend} / {v.method}: {v.metric} ({METRICS[v.metric][0]}) "
                         f"{_num(v.mean_a)} -> {_num(v.mean_b)} ("
                         + (f"{v.relative:+.0%}" if math.isfinite(v.relative) else "from 0")
                         + f"; spread of A {_num(v.spread)}, {v.seeds} seeds)")
    if not worse and not better:
        lines.append("No change beyond the noise.")
    return lines


def _num(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3g}"


def figure(comparison: Comparison, path: Path) -> Path | None:
    """Every verdict as its change in units of the noise (delta / run A's spread), one row per
    (backend, method, metric), coloured by the call: the threshold lines are the rule's."""
    found = [v for v in comparison.verdicts if v.call != "n/a" and math.isfinite(v.spread)]
    if not found:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def z(v):
        signed = v.delta * METRICS[v.metric][1]  # > 0: better
        return signed / v.spread if v.spread > 0 else math.copysign(10 * NOISE_FACTOR, signed) if signed else 0.0

    colours = {"worse": "#c0392b", "better": "#27ae60", "same": "#7f8c8d"}
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(found) + 1.5))
    ys = np.arange(len(found))
    ax.scatter([max(min(z(v), 10 * NOISE_FACTOR), -10 * NOISE_FACTOR) for v in found], ys,
               c=[colours[v.call] for v in found], s=18, zorder=3)
    for x in (-NOISE_FACTOR, NOISE_FACTOR):
        ax.axvline(x, color="#999", linestyle="--", linewidth=0.8)
    ax.axvline(0, color="#333", linewidth=0.6)
    ax.set_yticks(ys, [f"{v.backend} / {v.method}: {v.metric}" for v in found], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"B - A in run A's sd across seeds (> 0 better; calls need beyond ±{NOISE_FACTOR:g}; "
                  "clipped at ±20)", fontsize=8)
    ax.set_title(f"{comparison.label_a} -> {comparison.label_b}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(comparison: Comparison, out_dir: Path) -> dict[str, Path]:
    """compare.md, compare.html (figure embedded) and compare.png in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_path = figure(comparison, out_dir / "compare.png")
    called = verdict_table(comparison, ("worse", "better"))
    everything = verdict_table(comparison)
    title = f"mixbench compare: {comparison.label_a} -> {comparison.label_b}"
    md = [f"# {markdown_text(title)}", "", *[f"- {markdown_text(line)}" for line in summary_lines(comparison)], ""]
    if fig_path is not None:
        md += [f"![changes in units of the noise]({fig_path.name})", ""]
    md += ["## Changes called", "", markdown_table(called), "## Every metric", "", markdown_table(everything),
           "## Cell by cell (B - A)", "", markdown_table(comparison.cells)]
    md_path = out_dir / "compare.md"
    md_path.write_text("\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1><ul>"] + [f"<li>{html.escape(line)}</li>" for line in summary_lines(comparison)]
    body.append("</ul>")
    if fig_path is not None:
        data = base64.b64encode(fig_path.read_bytes()).decode()
        body.append(f'<figure><img alt="changes in units of the noise" src="data:image/png;base64,{data}"></figure>')
    for heading, frame in (("Changes called", called), ("Every metric", everything),
                           ("Cell by cell (B - A)", comparison.cells)):
        body.append(f"<h2>{html.escape(heading)}</h2>" + (frame.to_html(index=False, na_rep="", float_format=_num)
                                                           if not frame.empty else "<p><em>none</em></p>"))
    html_path = out_dir / "compare.html"
    page = HTML_PAGE.format(body="\n".join(body)).replace("<title>mixbench report</title>", f"<title>{html.escape(title)}</title>")
    html_path.write_text(page)
    return {"markdown": md_path, "html": html_path, "figure": fig_path}
