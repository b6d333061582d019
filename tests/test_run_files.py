"""A results folder from someone else is data only: the report reads nothing outside the run
folders it is given, simulates no more than the bound, and escapes names in report.md; the data
a run fitted is kept in its folder, and rows of an edited data file's old content kept apart."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import bench.report.run_files
import bench.run.harness
from bench.report.document import write_report
from bench.report.run_files import DATA_DIR, MAX_SIMULATED, file_in_runs
from bench.run.harness import RunOptions, make_grid, run_grid

QUICK = "tests.fake_backends:QuickBackend"
HTML_NAME = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    cells = make_grid(["forum-small"], [QUICK], ["nuts"], [0], settings={"chains": 2, "draws": 100}, n=200)
    [row] = run_grid(cells, RunOptions(out))
    assert row["status"] == "ok"
    return out, row


def test_file_in_runs_stays_inside_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "draws").mkdir(parents=True)
    (run / "draws" / "a.npy").write_bytes(b"x")
    (tmp_path / "outside.npy").write_bytes(b"x")
    (run / "draws" / "link.npy").symlink_to(tmp_path / "outside.npy")
    assert file_in_runs("draws/a.npy", [run]) == (run / "draws" / "a.npy").resolve()
    for name in ("../outside.npy", "draws/../../outside.npy", str(tmp_path / "outside.npy"), "/etc/passwd",
                 "draws/link.npy", "draws/absent.npy", None, 3, ""):
        assert file_in_runs(name, [run]) is None, name


def test_a_hostile_results_folder_is_refused_item_by_item(good_run, tmp_path, monkeypatch):
    run_dir, good = good_run
    hostile = tmp_path / "hostile"
    shutil.copytree(run_dir, hostile)
    secret = tmp_path / "secret.csv"  # a CSV on the reader's disk, outside the folder
    secret.write_text("x,y\n" + "".join(f"{i / 100},{i / 50}\n" for i in range(200)))
    from models.datafile import data_digest

    outside_cell = {**good["cell"], "scenario": str(secret), "covariates": ["x"], "response": "y"}
    rows = [
        good,
        {**good, "cell_id": "big", "setup": "big", "N": 20_000_000, "cell": {**good["cell"], "n": 20_000_000}},
        {**good, "cell_id": "lie", "setup": "lie", "cell": {**good["cell"], "n": 20_000_000}},
        {**good, "cell_id": "nodigest", "setup": "nodigest", "cell": {**outside_cell, "data_digest": None}},
        {**good, "cell_id": "nocopy", "setup": "nocopy", "cell": {**outside_cell, "data_digest": data_digest(secret)}},
        {**good, "cell_id": "html", "setup": HTML_NAME, "backend": HTML_NAME},
        {**good, "cell_id": "escape", "setup": "escape", "slope_trace_file": "../../outside.npy"},
    ]
    (hostile / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(tmp_path / "outside.npy", np.zeros((2, 5, 2, 1)))

    simulated, read = [], []
    from models import datafile, scenarios

    simulate, load_csv = scenarios.Scenario.simulate, datafile.load_csv
    monkeypatch.setattr(scenarios.Scenario, "simulate",
                        lambda self, seed, N=None: simulated.append(N) or simulate(self, seed, N))
    def spy(path, *a, **k):
        read.append(Path(path))
        return load_csv(path, *a, **k)

    for module in (datafile, bench.report.run_files, bench.run.harness):  # every module that reads data files
        monkeypatch.setattr(module, "load_csv", spy)
    paths = write_report([hostile], tmp_path / "out")
    md = paths["markdown"].read_text()

    assert simulated and max(simulated) <= MAX_SIMULATED  # the good row's data was simulated again
    assert all(p.resolve().is_relative_to(hostile.resolve()) for p in read), read
    assert "N = 20,000,000 is more than the 1,000,000 points a report simulates again" in md
    assert "the row's N (200) is not the size its cell names (20000000)" in md
    assert "the row records no digest of its data file, so no file is read for it" in md
    assert f"the run folder holds no copy of its data file ({DATA_DIR}/{data_digest(secret)}.csv)" in md
    assert HTML_NAME not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert HTML_NAME not in paths["html"].read_text()


def test_a_data_file_run_keeps_its_data_and_reports_from_the_copy(tmp_path, monkeypatch, capsys):
    """``run --data`` copies the file into the run folder; the report draws its data figure from
    that copy, not from the original (moved away here)."""
    from bench.cli import main
    from models.datafile import data_digest

    data = tmp_path / "lines.csv"
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 200)
    y = np.where(rng.random(200) < 0.5, 3 * x, -x) + 0.1 * rng.normal(size=200)
    data.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(x, y)))
    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--backends", QUICK, "--chains", "2", "--draws", "100",
                 "--reference", "none", "--out", str(out), "--no-report"]) == 0
    copy = out / DATA_DIR / f"{data_digest(data)}.csv"
    assert copy.read_bytes() == data.read_bytes()
    data.rename(tmp_path / "moved.csv")
    md = write_report([out], out)["markdown"].read_text()
    assert "data_fits_1.png" in md and "No data figure" not in md


def test_rows_of_an_edited_data_file_are_kept_apart_from_the_new_ones(tmp_path, capsys):
    """Edit the data and rerun into the same folder: the new content's cell runs, the old row
    stays, and the report shows two setups of one seed each (not one fit with 2 of 2 seeds)."""
    from bench.cli import main
    from bench.report.document import load_inputs
    from models.datafile import data_digest

    data = tmp_path / "lines.csv"
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 200)
    data.write_text("x,y\n" + "".join(f"{a},{b}\n" for a, b in zip(x, 3 * x + 0.1 * rng.normal(size=200))))
    out = tmp_path / "run"
    args = ["run", "--data", str(data), "--backends", QUICK, "--chains", "2", "--draws", "100", "--reference", "none",
            "--out", str(out), "--no-report"]
    assert main(args) == 0
    old = data_digest(data)
    data.write_text(data.read_text() + "0.5,1.5\n")
    assert main(args) == 0
    new = data_digest(data)
    frame, _, _ = load_inputs([out])
    assert len(frame) == 2 and frame["fit"].nunique() == 2
    assert sorted(frame["setup"]) == sorted(f"chains=2, draws=100, data {d} (the data file changed between runs)"
                                            for d in (old, new))
    md = write_report([out], out)["markdown"].read_text()
    assert f"data {old}" in md and f"data {new}" in md
