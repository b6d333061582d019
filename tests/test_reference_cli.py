"""`mixbench reference` and `mixbench run` on a data file without a truth: one reference, one
labelling for every row, modes, W1, PSIS-LOO and flags in the rows and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.reference
from bench.cli import main
from bench.harness import read_rows
from models import get_scenario

ROOT = Path(__file__).resolve().parents[1]
SPEC_ARGS = ["--K", "2", "--intercept", "--sigma", "per-component"]
REF_ARGS = ["--reference-chains", "2", "--reference-warmup", "300", "--reference-draws", "500"]


@pytest.fixture
def data_file(tmp_path) -> Path:
    data = get_scenario("separated").simulate(0, N=300)
    path = tmp_path / "lines.csv"
    pd.DataFrame({"x": data.x[:, 0], "y": data.y}).to_csv(path, index=False)
    return path


@pytest.fixture
def references(tmp_path, monkeypatch) -> Path:
    """References go to a temporary directory; the compile caches stay where they are."""
    directory = tmp_path / "references"
    monkeypatch.setattr(bench.reference, "references_dir", lambda: directory)
    return directory


def test_reference_then_run_share_one_labelling(tmp_path, data_file, references, capsys):
    assert main(["reference", "--data", str(data_file), *SPEC_ARGS, "--chains", "2", "--warmup", "300",
                 "--draws", "500"]) == 0
    out = capsys.readouterr().out
    assert "accepted" in out and str(references) in out
    (made,) = list(references.iterdir())
    info = json.loads((made / "info.json").read_text())
    assert info["made_by"]["kind"] == "nuts" and info["checks"]["rhat"]

    run_dir = tmp_path / "run"
    assert main(["run", "--data", str(data_file), *SPEC_ARGS, *REF_ARGS, "--backends", "numpyro",
                 "--methods", "nuts,map", "--seeds", "0", "--chains", "2", "--warmup", "200", "--draws", "200",
                 "--out", str(run_dir)]) == 0
    assert list(references.iterdir()) == [made]  # the cached reference was used, not remade
    printed = capsys.readouterr().out
    assert "relabelled to the reference posterior: one labelling for every row" in printed
    rows = [r for r in read_rows(run_dir / "cells.jsonl") if r["status"] == "ok"]
    assert len(rows) == 2
    assert {r["reference_source"] for r in rows} == {"reference"}
    assert {r["reference_name"] for r in rows} == {info["name"]}
    # Components line up across every row: slopes of component 0 about 1, of component 1 about -1.
    for r in rows:
        assert r["mean.w[0,0]"] == pytest.approx(1.0, abs=0.15) and r["mean.w[1,0]"] == pytest.approx(-1.0, abs=0.15)
        assert r["mode"] == "reference" and np.isfinite(r["w_w1_max"]) and np.isfinite(r["lp_gap"])
        assert "flags" in r
    nuts = [r for r in rows if r["method"] == "nuts"]
    assert all(np.isfinite(r["elpd_loo"]) for r in nuts)
    report = (run_dir / "report.md").read_text()
    assert "scored against the reference posterior (one labelling for every fit)" in report
    assert "| lp gap max |" in report and f"| {info['name']} |" in report


def test_a_reference_for_other_data_is_refused_by_run(tmp_path, data_file, references):
    assert main(["reference", "--data", str(data_file), *SPEC_ARGS, "--chains", "2", "--warmup", "300",
                 "--draws", "500"]) == 0
    (made,) = list(references.iterdir())
    other = tmp_path / "other.csv"
    frame = pd.read_csv(data_file)
    frame.loc[0, "y"] += 1.0
    frame.to_csv(other, index=False)
    result = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--data", str(other), *SPEC_ARGS,
                             "--backends", "numpyro", "--reference", str(made)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    err = result.stderr.strip()
    assert result.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "made for data digest" in err
