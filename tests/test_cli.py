"""The command line: one-line errors with a non-zero exit for bad input, and working commands."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_one_line_error(result, needle: str):
    assert result.returncode == 2, result
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err


@pytest.mark.parametrize("args, needle", [
    (["run", "--backends", "tensorflow"], "backend: unknown 'tensorflow'"),
    (["run", "--methods", "gibbs"], "method: unknown 'gibbs'"),
    (["run", "--scenario", "nope"], "scenario: unknown 'nope'"),
    (["run", "--K", "0"], "--K: must be at least 1"),
    (["run", "--K", "two"], "--K: not an integer"),
    (["run", "--seeds", "a,b"], "--seeds: not a seed list"),
    (["run", "--seeds", "5-2"], "--seeds: not a seed list"),
    (["run", "--chains", "0"], "--chains: must be at least 1"),
    (["run", "--target-accept", "1.5"], "settings.target_accept: must be in (0, 1)"),
    (["run", "--precision", "float16"], "settings.precision"),
    (["run", "--sigma", "each"], "--sigma: invalid choice"),
    (["run", "--ordering", "intercept"], "ordering: 'intercept' needs intercept=True"),
    (["run", "--covariates", "x"], "--covariates: only applies with --data"),
    (["run", "--scenario", "forum", "--data", "x.csv"], "not allowed with argument"),
    (["report", "does-not-exist"], "does-not-exist: not found"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(args, needle):
    assert_one_line_error(run_cli(*args), needle)


def test_malformed_data_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\nfoo,3\n")
    assert_one_line_error(run_cli("run", "--data", str(bad)), "column 'x' has a non-numeric value 'foo'")
    assert_one_line_error(run_cli("run", "--data", str(tmp_path / "absent.csv")), "not found")
    assert_one_line_error(run_cli("run", "--data", str(bad), "--response", "z"), "no response column 'z'")


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"benchmarks": 3}', "not a pytest-benchmark JSON file"),
    ('{"benchmarks": []}', "no cell rows found"),
])
def test_malformed_benchmark_json(tmp_path, content, needle):
    path = tmp_path / "bench.json"
    path.write_text(content)
    assert_one_line_error(run_cli("report", str(path)), needle)


def test_malformed_rows_file(tmp_path):
    (tmp_path / "cells.jsonl").write_text('["a list, not a row"]\n')
    assert_one_line_error(run_cli("report", str(tmp_path)), "line 1 is not a cell row")
    (tmp_path / "cells.jsonl").write_text("")
    assert_one_line_error(run_cli("report", str(tmp_path)), "no cell rows found")


def test_help_on_every_command():
    for args in (["--help"], ["run", "--help"], ["report", "--help"], ["list", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "usage: mixbench" in result.stdout


def test_run_with_a_plugged_in_backend_writes_rows_and_report(tmp_path, capsys):
    args = ["run", "--backends", "tests.fake_backends:QuickBackend", "--seeds", "0,1", "--N", "200",
            "--chains", "2", "--draws", "100", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Posterior means" in out and "truth" in out and "report.md" in out
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Recovered the truth on every seed: tests.fake_backends:QuickBackend / nuts (2 of 2" in text
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html
