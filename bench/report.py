"""The comparison report: tidy tables and figures from harness rows or pytest-benchmark JSON.

Inputs are any mix of run directories (``cells.jsonl`` + ``run.json``), ``cells.jsonl`` files and
pytest-benchmark JSON files (each benchmark's ``extra_info`` is a harness row). Output: ``report.md``,
a self-contained ``report.html`` (figures embedded) and ``figures/*.png``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.harness import CELLS_FILE, load_slope_trace, read_rows, read_run_info
from models.errors import MixbenchError

FIGURES_DIR = "figures"


# ---------------------------------------------------------------------------------------------
# Loading


def load_benchmark_json(path: Path) -> tuple[list[dict], dict]:
    """Rows and environment from a pytest-benchmark JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise MixbenchError(f"results file {path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise MixbenchError(f"results file {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise MixbenchError(f"results file {path}: not a pytest-benchmark JSON file (no 'benchmarks' list)")
    from bench.costs import cost_record

    rows, costs = [], []
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info") or {}
        if "cell_id" not in extra:
            # Another kind of benchmark (gradient cost, compile cache): bench/costs.py's sections.
            record = cost_record(bench)
            if record is not None:
                costs.append(record)
            continue
        row = dict(extra)
        stats = bench.get("stats") or {}
        row.setdefault("time_benchmark", stats.get("mean"))
        rows.append(row)
    env = {"machine_info": data.get("machine_info"), "commit_info": data.get("commit_info"),
           "datetime": data.get("datetime"), "cost_records": costs}
    return rows, env


def load_inputs(paths: list[Path]) -> tuple[pd.DataFrame, list[dict], list[Path]]:
    """All rows (latest wins per cell id), the environments recorded, and run directories."""
    rows: dict[str, dict] = {}
    environments: list[dict] = []
    run_dirs: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            if not (path / CELLS_FILE).is_file():
                raise MixbenchError(f"{path}: no {CELLS_FILE} in this directory")
            run_dirs.append(path)
            found = read_rows(path / CELLS_FILE)
            info = read_run_info(path)  # a damaged run.json is skipped with a warning
            if info is not None:
                environments.append(info)
        elif path.suffix == ".jsonl":
            run_dirs.append(path.parent)
            found = read_rows(path)
        elif path.suffix == ".json":
            found, env = load_benchmark_json(path)
            environments.append(env)
        else:
            raise MixbenchError(f"{path}: expected a run directory, a .jsonl rows file or a pytest-benchmark .json")
        for row in found:
            rows[row["cell_id"]] = row
    if not rows and not any(env.get("cost_records") for env in environments):
        raise MixbenchError(f"no cell rows found in {', '.join(map(str, paths))}")
    # Cost benchmarks alone (no cells) still make a report: an empty frame with the keys.
    frame = (pd.DataFrame(list(rows.values())) if rows
             else pd.DataFrame({c: pd.Series(dtype=object) for c in ["cell_id", "status", *CELL_KEYS]}))
    setups = _col(frame, "setup").astype(object)
    frame["setup"] = setups.where(setups.notna(), "default")
    # Figures label a fit by backend / method, and its setup on wrapped lines when not the default.
    setup = frame["setup"].map(lambda s: "" if s == "default" else "\n" + "\n".join(textwrap.wrap(f"[{s}]", 48)))
    frame["fit"] = frame["backend"].astype(str) + " / " + frame["method"].astype(str) + setup
    return frame, environments, run_dirs


# ---------------------------------------------------------------------------------------------
# Tables

# Cells that differ only in seed are summarised together; "setup" names any other difference.
CELL_KEYS = ["scenario", "backend", "method", "setup"]


def _col(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index)


def _numeric(frame: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(_col(frame, name), errors="coerce")


def _counts(values: pd.Series) -> str:
    counts = values.dropna().astype(str).value_counts()
    return ", ".join(f"{name} x{n}" for name, n in counts.items()) if len(counts) else "-"


def _per_cell_group(frame: pd.DataFrame, summarise) -> pd.DataFrame:
    """One record per (scenario, backend, method) over the ok cells: the keys plus summarise(group)."""
    ok = frame[frame["status"] == "ok"]
    records = [{**dict(zip(CELL_KEYS, key)), **summarise(group)}
               for key, group in ok.groupby(CELL_KEYS, sort=True)]
    return pd.DataFrame(records)


def recovery_table(frame: pd.DataFrame) -> pd.DataFrame:
    """backend x method: errors of the relabelled posterior means, coverage of the 90% interval, mode."""
    table = _per_cell_group(frame, _recovery_record)
    if "elpd_loo (median)" in table:
        # elpd sums over observations (thousands of nats): differences to the best fit of the same
        # data are what compare, as loo_compare shows them.
        best = table.groupby("scenario")["elpd_loo (median)"].transform("max")
        table.insert(table.columns.get_loc("elpd_loo (median)") + 1, "elpd_loo - best", table["elpd_loo (median)"] - best)
    return table


def _recovery_record(group: pd.DataFrame) -> dict:
    record = {"fits": len(group), "labelled to": _counts(_col(group, "reference_source"))}
    for family, label in (("w", "slope"), ("b", "intercept"), ("sigma", "sigma"), ("pi", "weight")):
        err = _numeric(group, f"{family}_err_max")
        if err.notna().any():
            record[f"{label} err (median)"] = err.median()
            record[f"{label} cover"] = _numeric(group, f"{family}_coverage").mean()
    # Always present (NaN shows as '-'), so every group's record has the same columns in order.
    for family, label in (("w", "slope"), ("sigma", "sigma")):
        record[f"{label} W1 to ref (median)"] = _numeric(group, f"{family}_w1_max").median()
    record["elpd_loo (median)"] = _numeric(group, "elpd_loo").median()
    record["mode"] = _counts(_col(group, "mode"))
    record["flags"] = _flag_counts(group)
    return record


def _flag_counts(group: pd.DataFrame) -> str:
    """Each health flag with the number of fits raising it; 'none' when no fit raised any."""
    flags = _col(group, "flags").dropna().astype(str)
    names = pd.Series([f for text in flags for f in text.split(",") if f], dtype=object)
    return _counts(names) if len(names) else ("none" if len(flags) else "-")


def modes_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Where seeds land, chains that disagree, switches within chains."""
    return _per_cell_group(frame, _modes_record)


def _modes_record(group: pd.DataFrame) -> dict:
    disagree = _col(group, "chains_disagree")
    return {
        "seeds": len(group),
        "landed in": _counts(_col(group, "mode")),
        "labellings": _counts(_col(group, "permutation")),
        "seeds with chains disagreeing": int((disagree == True).sum()),  # noqa: E712 (NaN-safe)
        "within-chain switches": _numeric(group, "label_switches").sum(min_count=1),
        "draws off majority": _numeric(group, "off_majority_frac").mean(),
        "lp gap max (nats)": _numeric(group, "lp_gap").max(),
        "distance max (ref sd)": _numeric(group, "ref_distance_sd").max(),
        "seeds in a poorer mode": int((_numeric(group, "chains_below") > 0).sum()),
        "flags": _flag_counts(group),
    }


COST_COLUMNS = {
    "t_compile": "compile s", "t_warmup": "warm-up s", "t_sampling": "sampling s",
    "t_optimisation": "optimise s", "grad_evals": "grad evals", "ess_bulk_per_s": "ESS bulk/s",
    "ess_tail_per_s": "ESS tail/s", "ess_bulk_per_grad": "ESS bulk/grad", "rhat_max": "R-hat max",
    "divergences": "divergences", "khat": "k-hat",
}


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Medians over seeds of the time split, gradient evaluations, ESS rates and diagnostics."""
    table = _per_cell_group(frame, _cost_record)
    order = [*CELL_KEYS, "engine", "precision", *COST_COLUMNS.values()]
    return table[[c for c in order if c in table.columns]]


def _cost_record(group: pd.DataFrame) -> dict:
    record = {"engine": _counts(_col(group, "engine")).split(" x")[0],
              "precision": _counts(_col(group, "precision")).split(" x")[0]}
    for column, label in COST_COLUMNS.items():
        values = _numeric(group, column)
        if values.notna().any():
            record[label] = values.median()
    return record


def flagged_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every ok fit with a health flag, one row each: where it landed and why it is flagged."""
    ok = frame[(frame["status"] == "ok") & (_col(frame, "flags").fillna("").astype(str) != "")]
    if ok.empty:
        return pd.DataFrame()
    columns = {"mode": "mode", "lp_gap": "lp gap (nats)", "ref_distance_sd": "distance (ref sd)",
               "rhat_max": "R-hat max", "divergences": "divergences", "khat": "k-hat",
               "bound_params": "at a bound", "flags": "flags"}
    out = ok[CELL_KEYS + ["seed"]].copy()
    for column, label in columns.items():
        out[label] = _col(ok, column)
    return out.sort_values(CELL_KEYS + ["seed"]).reset_index(drop=True)


def means_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every ok fit's relabelled posterior means (columns mean.*), one row each, the truth first
    when known: every row shares one labelling when the labelling target is the truth or the
    reference posterior."""
    ok = frame[frame["status"] == "ok"]
    params = [c for c in ok.columns if str(c).startswith("mean.")]
    if ok.empty or not params:
        return pd.DataFrame()
    order = {"w": 0, "b": 1, "sigma": 2, "pi": 3}
    params = sorted(params, key=lambda c: (order.get(c[5:].split("[")[0], 9), c))
    out = ok[CELL_KEYS + ["seed", "reference_source"] + params].rename(
        columns={"reference_source": "labelled to", **{c: c[5:] for c in params}})
    out = out.sort_values(CELL_KEYS + ["seed"]).reset_index(drop=True)
    truth = [c for c in ok.columns if str(c).startswith("truth.")]
    if truth:
        first = ok.iloc[0]
        line = {"scenario": first["scenario"], "backend": "truth", "method": "", "setup": "", "seed": "",
                "labelled to": "", **{c[6:]: first[c] for c in truth}}
        out = pd.concat([pd.DataFrame([line]), out], ignore_index=True)
    return out


def problems_table(frame: pd.DataFrame) -> pd.DataFrame:
    bad = frame[frame["status"] != "ok"]
    if bad.empty:
        return pd.DataFrame()
    why = _col(bad, "error").where(_col(bad, "error").notna(), _col(bad, "reason"))
    out = bad[CELL_KEYS + ["seed", "status"]].copy()
    out["why"] = why.astype(str)
    return out.sort_values(CELL_KEYS + ["seed"]).reset_index(drop=True)


def environment_table(frame: pd.DataFrame, environments: list[dict]) -> pd.DataFrame:
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
    for versions in _col(frame, "versions").dropna():
        if isinstance(versions, dict):
            for key, value in versions.items():
                items.setdefault(key, str(value))
    return pd.DataFrame(sorted(items.items()), columns=["what", "version / value"])


# ---------------------------------------------------------------------------------------------
# Figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_time_split(frame: pd.DataFrame, path: Path) -> Path | None:
    ok = frame[frame["status"] == "ok"]
    phases = [p for p in ("t_compile", "t_warmup", "t_sampling", "t_optimisation", "t_extraction") if p in ok]
    if ok.empty or not phases:
        return None
    numeric = ok[["fit"]].assign(**{p: _numeric(ok, p) for p in phases})
    med = numeric.groupby("fit")[phases].median().fillna(0.0)
    phases = [p for p in phases if med[p].any()]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(med) + 1.5))
    left = np.zeros(len(med))
    labels = list(med.index)
    for phase in phases:
        ax.barh(labels, med[phase].to_numpy(), left=left, label=phase[2:])
        left += med[phase].to_numpy()
    ax.set_xlabel("seconds (median over seeds)")
    ax.set_title("Where the time goes")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def figure_landings(frame: pd.DataFrame, path: Path) -> Path | None:
    ok = frame[(frame["status"] == "ok") & _col(frame, "mode").notna()]
    if ok.empty:
        return None
    table = ok.groupby("fit")["mode"].value_counts().unstack(fill_value=0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(table) + 1.5))
    left = np.zeros(len(table))
    labels = list(table.index)
    colours = {"truth": "tab:green", "reference": "tab:green", "collapsed": "tab:red", "other": "tab:orange",
               "mixed": "tab:purple"}
    for mode in table.columns:
        ax.barh(labels, table[mode].to_numpy(), left=left, label=mode, color=colours.get(mode))
        left += table[mode].to_numpy()
    ax.set_xlabel("seeds")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title("Which mode each seed lands in")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _trace_candidate(frame: pd.DataFrame, run_dirs: list[Path]) -> tuple[pd.Series, Path, str] | None:
    """A NUTS cell whose chains disagree, else one that switches, else any NUTS cell with traces."""
    nuts = frame[(frame["status"] == "ok") & (frame["method"] == "nuts") & _col(frame, "slope_trace_file").notna()]
    if nuts.empty:
        return None
    ranked = [
        (nuts[_col(nuts, "chains_disagree") == True], "chains in opposite labellings"),  # noqa: E712
        (nuts[_numeric(nuts, "label_switches") > 0], "label switches within a chain"),
        (nuts, "no disagreement or switching in this run"),
    ]
    for subset, why in ranked:
        for _, row in subset.iterrows():
            recorded = [Path(row["run_dir"])] if isinstance(row.get("run_dir"), str) else []
            for run_dir in [*run_dirs, *recorded]:
                trace = run_dir / row["slope_trace_file"]
                if trace.is_file():
                    return row, trace, why
    return None


def figure_traces(frame: pd.DataFrame, run_dirs: list[Path], path: Path) -> Path | None:
    found = _trace_candidate(frame, run_dirs)
    if found is None:
        return None
    row, trace_file, why = found
    w = load_slope_trace(trace_file)  # (chain, draw, component, covariate), raw labels; None if damaged
    if w is None or w.shape[-1] == 0:
        return None
    plt = _plt()
    fig, axes = plt.subplots(w.shape[0], 1, figsize=(8, 1.8 * w.shape[0] + 0.8), sharex=True, squeeze=False)
    for chain, ax in enumerate(axes[:, 0]):
        for k in range(w.shape[2]):
            ax.plot(w[chain, :, k, 0], lw=0.6, label=f"w[{k},0]")
        ax.set_ylabel(f"chain {chain}")
    axes[0, 0].legend(loc="upper right", fontsize="small", ncols=w.shape[2])
    axes[-1, 0].set_xlabel("draw")
    fig.suptitle(f"Raw slope traces, {row['backend']} / nuts / seed {row['seed']} ({row['scenario']}): {why}",
                 fontsize="medium")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def figure_recovery(frame: pd.DataFrame, path: Path) -> Path | None:
    ok = frame[frame["status"] == "ok"]
    err = _numeric(ok, "w_err_max")
    if ok.empty or err.notna().sum() == 0:
        return None
    ok = ok.assign(err=err).dropna(subset=["err"])
    groups = list(ok.groupby("fit"))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(groups) + 1.5))
    for i, (_, group) in enumerate(groups):
        ax.scatter(group["err"].clip(lower=1e-4), np.full(len(group), i), alpha=0.7)
    ax.set_yticks(range(len(groups)), [label for label, _ in groups])
    ax.set_xscale("log")
    ax.set_xlabel("max |posterior mean - truth| over slopes (relabelled), one dot per seed")
    ax.set_title("Slope recovery error")
    ax.invert_yaxis()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# Writing


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if value == 0:
            return "0"
        magnitude = abs(value)
        return f"{value:.3g}" if magnitude < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    cells = frame.map(_fmt).astype(str).map(lambda s: s.replace("|", "\\|"))
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    table = frame.map(_fmt).to_html(index=False, escape=True, border=0, classes="tbl")
    return f'<div class="scroll">{table}</div>'


SECTIONS = (
    ("Recovery", "Errors of the relabelled posterior means against the truth (median over seeds of the "
                 "max over components; without a truth, none), coverage of the 90% interval, W1 to the "
                 "reference posterior, PSIS-LOO elpd, where each fit landed and its health flags. 'labelled "
                 "to' names the labelling target: truth or reference (one labelling shared by every fit of "
                 "the data set), or a fit's own pivot (map, chain0: components need not line up).",
     recovery_table),
    ("Posterior means", "Each fit's relabelled posterior means on the data's scale.", means_table),
    ("Modes and label switching", "Which mode each seed reached, its labelling, chains whose majority "
                                  "labellings disagree, switches within chains, and, against the reference "
                                  "posterior, the largest log-density gap (reference minus fit, nats) and "
                                  "distance (in reference posterior sds).", modes_table),
    ("Flagged fits", "Every ok fit with a health flag (see ROW_FIELDS.flags): a fit in a poorer mode, a chain "
                     "that never moved, a parameter at a prior bound, ...", flagged_table),
    ("Cost", "Medians over seeds. ESS on relabelled draws, per second of sampling and per gradient.",
     cost_table),
)


def write_report(paths: list[Path], out_dir: Path) -> dict[str, Path]:
    """Build report.md, report.html and figures/ in ``out_dir`` from the given results."""
    frame, environments, run_dirs = load_inputs(paths)
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = [
        ("Time split", figure_time_split(frame, fig_dir / "time_split.png")),
        ("Seed landings", figure_landings(frame, fig_dir / "landings.png")),
        ("Slope traces", figure_traces(frame, run_dirs or [out_dir], fig_dir / "slope_traces.png")),
        ("Recovery error", figure_recovery(frame, fig_dir / "recovery_error.png")),
    ]
    figures = [(title, p) for title, p in figures if p is not None]
    tables = [(title, text, fn(frame)) for title, text, fn in SECTIONS]
    from bench.costs import cost_sections

    cost_tables, cost_figures = cost_sections(frame, environments, fig_dir)
    tables += cost_tables
    figures += cost_figures
    tables.append(("Failed and unsupported cells", "Every cell that did not produce draws, with its reason.",
                   problems_table(frame)))
    tables.append(("Versions and machine", "", environment_table(frame, environments)))
    scenarios = ", ".join(sorted(frame["scenario"].dropna().astype(str).unique()))
    counts = frame["status"].value_counts().to_dict()
    summary = (f"{len(frame)} cells on {scenarios}: "
               + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))

    md = ["# mixbench report", "", summary, ""]
    for title, text, table in tables:
        md += [f"## {title}", "", text, "", markdown_table(table)]
    md += ["## Figures", ""]
    md += [f"![{title}]({FIGURES_DIR}/{p.name})\n" for title, p in figures]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(md))

    body = [f"<h1>mixbench report</h1><p>{html.escape(summary)}</p>"]
    for title, text, table in tables:
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text)}</p>{html_table(table)}")
    body.append("<h2>Figures</h2>")
    for title, p in figures:
        data = base64.b64encode(p.read_bytes()).decode()
        body.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{html.escape(title)}</figcaption></figure>")
    html_path = out_dir / "report.html"
    html_path.write_text(HTML_PAGE.format(body="\n".join(body)))
    return {"markdown": md_path, "html": html_path, "figures": fig_dir}


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mixbench report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table.tbl {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
table.tbl th, table.tbl td {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; }}
table.tbl th {{ background: #f3f3f3; }}
.scroll {{ overflow-x: auto; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #666; font-size: 0.9em; }}
</style></head><body>
{body}
</body></html>
"""
