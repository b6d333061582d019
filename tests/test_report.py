"""The report: built from a real pytest-benchmark session's JSON and from harness runs."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.report import load_inputs, write_report
from tests.fake_backends import MARKER_ENV

ROOT = Path(__file__).resolve().parents[1]
QUICK, RAISING = "tests.fake_backends:QuickBackend", "tests.fake_backends:RaisingBackend"


@pytest.fixture(scope="module")
def bench_session(tmp_path_factory):
    """A small pytest-benchmark session over the bench/ suite, run as a user would."""
    tmp = tmp_path_factory.mktemp("bench")
    json_path, out = tmp / "bench.json", tmp / "run"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_fits.py", "-q", "-p", "no:cacheprovider",
         "--backends", f"{QUICK},{RAISING}", "--methods", "nuts,map", "--seeds", "0,1", "--n-obs", "200",
         f"--benchmark-json={json_path}", f"--mixbench-out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, MARKER_ENV: ""},
    )
    return result, json_path, out


def test_benchmark_session_records_every_cell_with_its_row(bench_session):
    result, json_path, _ = bench_session
    # The raising cells fail their tests (after their rows are recorded); the others pass.
    assert "2 failed, 6 passed" in result.stdout, result.stdout[-2000:]
    data = json.loads(json_path.read_text())
    cells = {b["extra_info"]["cell_id"]: b for b in data["benchmarks"]}
    assert len(cells) == 8
    groups = {b["group"] for b in data["benchmarks"]}
    assert groups == {"forum-small: nuts", "forum-small: map"}
    statuses = sorted(b["extra_info"]["status"] for b in data["benchmarks"])
    assert statuses == ["failed"] * 2 + ["ok"] * 2 + ["unsupported"] * 4


def test_session_end_writes_the_report(bench_session):
    result, _, out = bench_session
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert "mixbench report:" in result.stdout


def test_report_from_the_saved_json_contains_every_cell(bench_session, tmp_path):
    _, json_path, _ = bench_session
    paths = write_report([json_path], tmp_path)
    frame, _, _ = load_inputs([json_path])
    assert len(frame) == 8
    text = paths["markdown"].read_text()
    # Ok cells in the recovery table; unsupported and failed ones, with reasons, in theirs.
    assert "truth x2" in text
    assert text.count("only runs nuts") == 4
    assert text.count("RuntimeError: the engine blew up") == 2
    html = paths["html"].read_text()
    assert html.count("<figure>") == 4 and "data:image/png;base64," in html
    assert (tmp_path / "figures" / "slope_traces.png").is_file()  # found through the rows' run_dir


def test_report_merges_several_inputs_latest_row_wins(bench_session, tmp_path):
    _, json_path, out = bench_session
    frame, environments, _ = load_inputs([json_path, out])
    assert len(frame) == 8  # the same cells from both sources, counted once
    assert len(environments) == 2
