"""The comparison report: findings, figures, tables and a glossary from harness rows or
pytest-benchmark JSON.

Inputs are any mix of run directories (``cells.jsonl`` + ``run.json``), ``cells.jsonl`` files and
pytest-benchmark JSON files (each benchmark's ``extra_info`` is a harness row). Output: ``report.md``,
a self-contained ``report.html`` (figures embedded) and ``figures/*.png``.

The report opens with the findings in words (bench.report.findings), then the figures (bench.report.figures),
the tables (bench.report.tables, bench.report.costs), the glossary (bench.report.glossary) and the versions.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

import pandas as pd

from bench.report.costs import cost_record, cost_sections
from bench.report.figures import Figure, report_figures
from bench.report.mode_share_table import mode_share_table
from bench.report.findings import SetupFindings, findings
from bench.report.glossary import WORDS, glossary_for
from bench.report.sweep_figures import sweep_figures
from bench.report.sweep_tables import sweep_findings, sweep_tables
from bench.report.tables import (
    CELL_KEYS,
    Table,
    assign_fit_ids,
    col,
    environment_table,
    fit_summary,
    flagged_table,
    fmt,
    means_table,
    problems_table,
    report_tables,
    split_wide,
)
from bench.run.harness import CELLS_FILE, read_rows, read_run_info
from bench.score.landing import points_against_best_optimum
from bench.score.settings import MetricSettings
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

    rows, costs = [], []
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info") or {}
        if "cell_id" not in extra:
            # Another kind of benchmark (gradient cost, compile cache): bench/report/costs.py's sections.
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
    """All rows, the environments recorded, and run directories.

    Within one input the latest row of a cell wins. Inputs that share cells are different runs
    of them: every row of every input then keeps its run's label (``run``: the directory or file
    name) in its setup, so both runs' rows stay, side by side, instead of one overwriting the other.
    """
    inputs: list[tuple[str, list[dict]]] = []
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
        inputs.append((_run_label(path, [label for label, _ in inputs]), found))
    seen: dict[str, int] = {}
    for _, found in inputs:
        for cell_id in {row["cell_id"] for row in found}:
            seen[cell_id] = seen.get(cell_id, 0) + 1
    overlap = any(count > 1 for count in seen.values())
    rows: dict[str, dict] = {}
    for label, found in inputs:
        for row in found:
            if overlap:
                setup = row.get("setup") or "default"
                row = {**row, "run": label, "cell_id": f"{label}/{row['cell_id']}",
                       "setup": f"run {label}" if setup == "default" else f"{setup}, run {label}"}
            rows[row["cell_id"]] = row
    if not rows and not any(env.get("cost_records") for env in environments):
        raise MixbenchError(f"no cell rows found in {', '.join(map(str, paths))}")
    # Cost benchmarks alone (no cells) still make a report: an empty frame with the keys.
    frame = (pd.DataFrame(list(rows.values())) if rows
             else pd.DataFrame({c: pd.Series(dtype=object) for c in ["cell_id", "status", *CELL_KEYS]}))
    setups = col(frame, "setup").astype(object)
    frame["setup"] = setups.where(setups.notna(), "default")
    frame = _split_by_target(_split_by_data(frame))
    # Only now are the rows of one data set together: each point meets the best optimum of them all.
    frame = points_against_best_optimum(frame, MetricSettings().point_lp_gap_nats)
    return assign_fit_ids(frame), environments, run_dirs


def _run_label(path: Path, taken: list[str]) -> str:
    """A run's name in a merged report: its directory's name (a rows file's directory, a JSON
    file's stem), made unique among the inputs with #2, #3, ..."""
    base = path.name if path.is_dir() else path.parent.name if path.suffix == ".jsonl" else path.stem
    label, number = base, 1
    while label in taken:
        number += 1
        label = f"{base}#{number}"
    return label


def _split_by_data(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of one data file fitted to different contents (the file was edited between runs:
    its digest, models.datafile.data_digest, differs) are different setups, never seeds of one
    fit: say which content in it."""
    if frame.empty or "cell" not in frame:
        return frame
    digest = frame["cell"].map(lambda c: c.get("data_digest") if isinstance(c, dict) else None)
    frame = frame.copy()
    for _, group in frame.groupby(["scenario", "setup"]):
        kinds = digest[group.index].dropna().astype(str)
        if kinds.nunique() > 1:
            frame.loc[kinds.index, "setup"] = [
                (f"{s}, " if s != "default" else "") + f"data {d} (the data file changed between runs)"
                for s, d in zip(frame.loc[kinds.index, "setup"], kinds)]
    return frame


def _split_by_target(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of one setup scored against different targets (a reference posterior, the fits' own
    pivots: runs before and after a reference existed) are different setups: say which in it."""
    if frame.empty or "reference_source" not in frame:
        return frame
    name = col(frame, "reference_name")
    source = col(frame, "reference_source").astype(object)
    target = name.where(name.notna(), source.map(lambda s: "own pivot" if s in ("map", "chain0") else s))
    ok = frame["status"] == "ok"
    frame = frame.copy()
    for _, group in frame[ok].groupby(["scenario", "setup"]):
        kinds = target[group.index].dropna().astype(str)
        if kinds.nunique() > 1:
            frame.loc[kinds.index, "setup"] = [f"{s}, scored against {k}" if s != "default" else f"scored against {k}"
                                               for s, k in zip(frame.loc[kinds.index, "setup"], kinds)]
    return frame


# ---------------------------------------------------------------------------------------------
# Assembling


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _headline(frame: pd.DataFrame, paths: list[Path]) -> str:
    scenarios = ", ".join(sorted(frame["scenario"].dropna().astype(str).unique())) or "no cells"
    counts = frame["status"].value_counts().to_dict()
    states = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return (f"{len(frame)} cells on {scenarios}" + (f": {states}" if states else "")
            + f". From {', '.join(map(str, paths))}; written {time.strftime('%Y-%m-%d %H:%M')}.")


def build_report(paths: list[Path], fig_dir: Path):
    """Everything the report shows: (headline, findings, figures, notes, tables, environment)."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    frame, environments, run_dirs = load_inputs(paths)
    fits = fit_summary(frame) if len(frame) else pd.DataFrame()
    tables = report_tables(fits, frame)

    tables = sweep_tables(frame) + tables  # a sweep's frequencies and breaking points lead

    cost_tables, cost_figures = cost_sections(frame, environments, fig_dir)
    tables += [Table(_slug(title), title, text, table) for title, text, table in cost_tables]
    if len(frame):
        tables += [t for t in (flagged_table(frame), mode_share_table(frame), means_table(frame), problems_table(frame))
                   if not t.empty]
    tables = [part for table in tables for part in split_wide(table)]
    figures, notes = report_figures(frame, run_dirs, fig_dir) if len(frame) else ([], [])
    figures = (sweep_figures(frame, fig_dir) if len(frame) else []) + figures
    figures += [Figure(_slug(title), title, "", path) for title, path in cost_figures]

    # Notes on a whole run (models/prior_check.py's prior-scale check) follow the headline.
    run_notes = list(dict.fromkeys(note for env in environments for note in env.get("notes") or ()))
    headline = " ".join([_headline(frame, paths), *(f"Warning: {note}" for note in run_notes)])
    return (headline, sweep_findings(frame) + findings(fits, tuple(run_notes)), figures, notes, tables,
            environment_table(frame, environments))


def _glossary_tables(tables: list[Table]) -> tuple[pd.DataFrame, list[tuple[str, pd.DataFrame]]]:
    """Every column the tables show, and the words the cells use (modes, statuses, ...)."""
    columns = [c for table in tables for c in table.frame.columns]
    words = [(group, pd.DataFrame(list(entries.items()), columns=["word", "meaning"])) for group, entries in WORDS.items()]
    return pd.DataFrame(glossary_for(columns), columns=["column", "meaning"]), words


# ---------------------------------------------------------------------------------------------
# Markdown


def markdown_text(text) -> str:
    """Text from rows (names, errors) made inert in Markdown, as report.html escapes it: Markdown
    renders HTML it contains."""
    return html.escape(str(text), quote=False)


def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    cells = frame.map(fmt).astype(str).map(lambda s: markdown_text(s).replace("|", "\\|").replace("\n", " "))
    lines = ["| " + " | ".join(markdown_text(str(c)).replace("|", "\\|") for c in frame.columns) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _markdown(headline, found: list[SetupFindings], figures, notes, tables, environment, glossary, words,
              titles: dict[str, str]) -> str:
    md = ["# mixbench report", "", markdown_text(headline), "", "## Findings", ""]
    if not found:
        md += ["_No fits: the inputs hold cost benchmarks only._", ""]
    for setup in found:
        md += [f"### {markdown_text(setup.title)}", ""]
        md += [markdown_text(f"- {s.text} ({titles.get(s.table, s.table)}: {', '.join(s.fits)})") for s in setup.sentences]
        md.append("")
    md += ["## Figures", ""]
    for figure in figures:
        md += [f"![{markdown_text(figure.title)}]({FIGURES_DIR}/{figure.path.name})", ""]
        if figure.caption:
            md += [f"_{markdown_text(figure.caption)}_", ""]
    md += [f"_{markdown_text(note)}_\n" for note in notes]
    for table in tables:
        md += [f"## {markdown_text(table.title)}", ""] + ([markdown_text(table.text), ""] if table.text else []) + [markdown_table(table.frame)]
    md += ["## Glossary", "", markdown_table(glossary)]
    for group, frame in words:
        md += [f"### {group.capitalize()}", "", markdown_table(frame)]
    md += ["## Versions and machine", "", markdown_table(environment.frame)]
    return "\n".join(md)


# ---------------------------------------------------------------------------------------------
# HTML


def html_table(table: Table) -> str:
    """A table whose rows carry ids ``<table key>-<fit id>`` (the first row of each fit), so the
    findings can link to them; numbers right-aligned and kept on one line."""
    frame = table.frame
    if frame.empty:
        return "<p><em>none</em></p>"
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    head = "".join(f'<th class="{"num" if n else "txt"}">{html.escape(str(c))}</th>' for c, n in zip(frame.columns, numeric))
    rows, seen = [], set()
    for record in frame.itertuples(index=False):
        fit = getattr(record, "fit", None) if "fit" in frame.columns else None
        anchor = ""
        if isinstance(fit, str) and fit not in seen:
            seen.add(fit)
            anchor = f' id="{table.key}-{html.escape(fit)}"'
        cells = "".join(f'<td class="{"num" if n else "txt"}">{html.escape(fmt(v))}</td>'
                        for v, n in zip(record, numeric))
        rows.append(f"<tr{anchor}>{cells}</tr>")
    return (f'<table class="tbl" id="{table.key}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _html(headline, found: list[SetupFindings], figures, notes, tables, environment, glossary, words,
          titles: dict[str, str]) -> str:
    keys = {t.key for t in tables}
    body = ["<h1>mixbench report</h1>", f'<p class="headline">{html.escape(headline)}</p>', "<h2>Findings</h2>"]
    if not found:
        body.append("<p><em>No fits: the inputs hold cost benchmarks only.</em></p>")
    for setup in found:
        body.append(f"<h3>{html.escape(setup.title)}</h3><ul class=\"findings\">")
        for s in setup.sentences:
            links = ", ".join(f'<a href="#{s.table}-{f}">{f}</a>' if s.table in keys else f for f in s.fits)
            body.append(f'<li>{html.escape(s.text)} <span class="refs">({html.escape(titles.get(s.table, s.table))}: '
                        f"{links})</span></li>")
        body.append("</ul>")
    body.append("<h2>Figures</h2>")
    for figure in figures:
        data = base64.b64encode(figure.path.read_bytes()).decode()
        body.append(f'<figure id="fig-{figure.key}"><img alt="{html.escape(figure.title)}" '
                    f'src="data:image/png;base64,{data}"><figcaption><strong>{html.escape(figure.title)}.</strong> '
                    f"{html.escape(figure.caption)}</figcaption></figure>")
    body += [f"<p><em>{html.escape(note)}</em></p>" for note in notes]
    for table in tables:
        text = f"<p>{html.escape(table.text)}</p>" if table.text else ""
        body.append(f"<h2>{html.escape(table.title)}</h2>{text}{html_table(table)}")
    body.append("<h2>Glossary</h2>" + html_table(Table("glossary", "", "", glossary)))
    for group, frame in words:
        body.append(f"<h3>{html.escape(group.capitalize())}</h3>" + html_table(Table(_slug(group), "", "", frame)))
    body.append("<h2>Versions and machine</h2>" + html_table(environment))
    return HTML_PAGE.format(body="\n".join(body))


def write_report(paths: list[Path], out_dir: Path) -> dict[str, Path]:
    """Build report.md, report.html and figures/ in ``out_dir`` from the given results."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    headline, found, figures, notes, tables, environment = build_report(list(map(Path, paths)), fig_dir)
    glossary, words = _glossary_tables([*tables, environment])
    titles = {t.key: t.title for t in tables}
    parts = (headline, found, figures, notes, tables, environment, glossary, words, titles)
    md_path = out_dir / "report.md"
    md_path.write_text(_markdown(*parts))
    html_path = out_dir / "report.html"
    html_path.write_text(_html(*parts))
    return {"markdown": md_path, "html": html_path, "figures": fig_dir}


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mixbench report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222;
        line-height: 1.45; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #ddd; }}
h3 {{ margin-bottom: 0.3em; }}
.headline {{ color: #444; }}
ul.findings li {{ margin: 0.35em 0; }}
.refs {{ color: #666; font-size: 0.85em; white-space: nowrap; }}
table.tbl {{ border-collapse: collapse; margin: 0.5em 0 1.2em; font-size: 0.85em; max-width: 100%; }}
table.tbl th, table.tbl td {{ border-bottom: 1px solid #e3e3e3; padding: 0.25em 0.6em; vertical-align: top; }}
table.tbl th {{ background: #f3f3f3; text-align: left; }}
table.tbl th.num {{ text-align: right; }}
table.tbl td.num {{ text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }}
table.tbl td.txt {{ overflow-wrap: break-word; hyphens: manual; }}
tr:target {{ background: #fff3c4; }}
figure {{ margin: 1.2em 0; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ color: #555; font-size: 0.9em; max-width: 60em; }}
</style></head><body>
{body}
</body></html>
"""
