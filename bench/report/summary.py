"""The table ``mixbench run`` prints: relabelled posterior means against the truth, and the time split."""

from __future__ import annotations

import math

import pandas as pd

TIME_COLUMNS = {"t_compile": "compile s", "t_warmup": "warm-up s", "t_sampling": "sampling s",
                "t_optimisation": "optimise s", "time_cell": "cell s"}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def summary_frame(rows: list[dict]) -> pd.DataFrame:
    """One line per cell (backend, method, seed) plus a 'truth' line when the truth is known."""
    records, truth = [], {}
    for row in sorted(rows, key=lambda r: (r.get("backend", ""), r.get("method", ""), r.get("seed", 0))):
        record = {"backend": row.get("backend"), "method": row.get("method"), "seed": row.get("seed"),
                  "status": row.get("status")}
        for key, value in row.items():
            if key.startswith("mean."):
                record[key[5:]] = value
            elif key.startswith("truth."):
                truth[key[6:]] = value
        for key, label in TIME_COLUMNS.items():
            if row.get(key) is not None and not (isinstance(row[key], float) and math.isnan(row[key])):
                record[label] = row[key]
        records.append(record)
    frame = pd.DataFrame(records)
    if truth:
        frame = pd.concat([pd.DataFrame([{"backend": "truth", "method": "", "seed": "", "status": "", **truth}]),
                           frame], ignore_index=True)
    family_order = {"w": 0, "b": 1, "sigma": 2, "pi": 3}
    params = sorted((c for c in frame.columns if c not in ("backend", "method", "seed", "status", *TIME_COLUMNS.values())),
                    key=lambda c: (family_order.get(c.split("[")[0], 9), c))
    ordered = ["backend", "method", "seed", "status", *params, *[c for c in TIME_COLUMNS.values() if c in frame]]
    return frame[ordered]


KEY_COLUMNS = ("backend", "method", "seed", "status")


def summary_text(frame: pd.DataFrame, width: int = 100) -> str:
    """The summary as text no wider than ``width`` characters where it can be: the columns after
    the key columns (backend, method, seed, status) go into as many blocks as needed, each block
    a table that repeats the key columns, blocks separated by a blank line. A single column too
    wide for ``width`` gets a block of its own."""
    text = frame.map(_fmt)
    size = {c: max(len(str(c)), *(len(v) for v in text[c])) + 2 for c in text.columns}
    keys = [c for c in KEY_COLUMNS if c in text]
    room = width - sum(size[c] for c in keys)
    blocks: list[list[str]] = [[]]
    used = 0
    for column in (c for c in text.columns if c not in keys):
        if blocks[-1] and used + size[column] > room:
            blocks.append([])
            used = 0
        blocks[-1].append(column)
        used += size[column]
    return "\n\n".join(text[keys + block].to_string(index=False) for block in blocks)


def labelling_target_text(rows: list[dict]) -> str:
    """What the rows' components were relabelled to, in words (bench.score.columns.ROW_FIELDS: reference_source)."""
    sources = sorted({str(r.get("reference_source")) for r in rows if r.get("status") == "ok"})
    if sources == ["truth"]:
        return "the truth"
    if sources == ["reference"]:
        if any(r.get("reference_status") == "provisional" for r in rows if r.get("status") == "ok"):
            return "a provisional reference posterior (it failed its checks): one labelling for every row"
        return "the reference posterior: one labelling for every row"
    if not sources:
        return "their target"
    return "each fit's own pivot (" + ", ".join(sources) + "): components need not line up across rows"


def print_summary(rows: list[dict], cells=None) -> None:
    if not rows:
        print("no rows")
        return
    frame = summary_frame(rows)
    print()
    print(f"Posterior means (components relabelled to {labelling_target_text(rows)}) and time split:")
    print(summary_text(frame))
    problems = [r for r in rows if r.get("status") != "ok"]
    for row in problems:
        print(f"  {row['backend']}/{row['method']}/seed {row['seed']}: {row['status']}: "
              f"{row.get('error') or row.get('reason')}")
