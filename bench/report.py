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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.harness import CELLS_FILE, RUN_FILE, read_rows
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
    rows = []
    for bench in data["benchmarks"]:
        extra = bench.get("extra_info") or {}
        if "cell_id" not in extra:
            continue  # another kind of benchmark (e.g. gradient cost): handled by its own table
        row = dict(extra)
        stats = bench.get("stats") or {}
        row.setdefault("time_benchmark", stats.get("mean"))
        rows.append(row)
    env = {"machine_info": data.get("machine_info"), "commit_info": data.get("commit_info"),
           "datetime": data.get("datetime")}
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
            if (path / RUN_FILE).is_file():
                environments.append(json.loads((path / RUN_FILE).read_text()))
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
    if not rows:
        raise MixbenchError(f"no cell rows found in {', '.join(map(str, paths))}")
    frame = pd.DataFrame(list(rows.values()))
    return frame, environments, run_dirs
