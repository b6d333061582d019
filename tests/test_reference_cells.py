"""Reference fits run as cells (bench.run.references): in an executor's worker, never in the
process that plans the run, under the run's time limit; a reference cell that crashes or runs
too long is one line naming its log, and every fit still runs, without a reference (issue 23:
never stop a run for want of one)."""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

import bench.reference.make
import bench.reference.posterior
import bench.run.references
from bench.cli import main
from bench.run.harness import read_rows
from models import get_scenario

QUICK = "tests.fake_backends:QuickBackend"
RUN = ["run", "--scenario", "separated", "--backends", QUICK, "--N", "200", "--seeds", "0", "--chains", "2", "--draws", "100",
       "--reference", "make", "--no-report", "--jobs", "1"]


@pytest.fixture
def references(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "references"
    monkeypatch.setattr(bench.reference.posterior, "references_dir", lambda: directory)
    return directory


def made_where(pid_file: Path, problem, settings, progress=None):
    """A reference by a fake NUTS backend (tests.test_reference), recording the process that made it."""
    pid_file.write_text(str(os.getpid()))
    fake = dataclasses.replace(settings, method="nuts", backend="tests.test_reference:PoorModeBackend", chains=4,
                               warmup=0, ess_min=100)
    return bench.reference.make.make_reference(problem, fake, progress=progress)


def crash(problem, settings, progress=None):
    os.kill(os.getpid(), signal.SIGKILL)


def hang(problem, settings, progress=None):
    time.sleep(3600)


def test_the_reference_is_made_in_a_worker_and_every_cell_uses_it(tmp_path, references, monkeypatch, capsys):
    pid_file = tmp_path / "pid"
    monkeypatch.setattr(bench.run.references, "make_reference", functools.partial(made_where, pid_file))
    assert main([*RUN, "--out", str(tmp_path / "run")]) == 0
    assert int(pid_file.read_text()) != os.getpid()
    (made,) = list(references.iterdir())  # written into the cache by this process, nothing else there
    assert (made / "info.json").is_file()
    (row,) = read_rows(tmp_path / "run" / "cells.jsonl")
    assert row["status"] == "ok" and row["reference_status"] == "accepted"
    err = capsys.readouterr().err
    assert f"at {made}" in err
    # The progress lines count the reference cell on its own, then the run's cells.
    assert f"[1/1] reference-{made.name} ok in " in err and "[1/1] separated" in err


@pytest.mark.parametrize("make, status, extra", [(crash, "crashed", []), (hang, "timeout", ["--time-limit", "3"])],
                         ids=["crash", "time-limit"])
def test_a_reference_cell_that_dies_is_one_line_and_every_fit_runs_without_it(tmp_path, references, monkeypatch,
                                                                               capsys, make, status, extra):
    monkeypatch.setattr(bench.run.references, "make_reference", make)
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out), *extra]) == 0
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("reference: not made: ")]
    assert f"reference posterior of separated: {status}: " in line and f"(its log: {out / 'logs'}" in line
    assert "Traceback" not in err
    assert not references.exists()  # nothing cached: a later run tries again
    (row,) = read_rows(out / "cells.jsonl")
    assert row["status"] == "ok" and row["reference_status"] == "failed" and status in row["reference_failed"]
    assert not row.get("reference_name")
    # The report says there was no reference and why, and claims no landing on one.
    assert main(["report", str(out)]) == 0
    text = next(out.glob("report*.md")).read_text() if list(out.glob("report*.md")) else ""
    assert text and "reference not made" not in text  # simulated: scored against its truth
    assert "reached the reference" not in text


def test_data_without_truth_whose_reference_dies_reports_why_and_judges_no_landing(tmp_path, references, monkeypatch,
                                                                                   capsys):
    data = get_scenario("separated").simulate(0, N=200)
    path = tmp_path / "lines.csv"
    pd.DataFrame({"x": data.x[:, 0], "y": data.y}).to_csv(path, index=False)
    monkeypatch.setattr(bench.run.references, "make_reference", crash)
    out = tmp_path / "run"
    assert main(["run", "--data", str(path), "--K", "2", "--intercept", "--sigma", "per-component",
                 "--backends", QUICK, "--seeds", "0", "--chains", "2", "--draws", "100", "--out", str(out),
                 "--jobs", "1"]) == 0  # the default --reference auto: made for data without a truth
    (row,) = read_rows(out / "cells.jsonl")
    assert row["status"] == "ok" and row["reference_status"] == "failed"
    text = "\n".join(p.read_text() for p in out.glob("report*.md"))
    assert "none (reference not made)" in text and "The reference posterior was not made (" in text
    assert "reached the reference" not in text


def broken(problem, settings, progress=None):
    raise ValueError("a bug in the reference maker")


def test_a_reference_maker_that_raises_leaves_its_traceback_in_the_log_the_line_names(tmp_path, references,
                                                                                       monkeypatch, capsys):
    monkeypatch.setattr(bench.run.references, "make_reference", broken)
    out = tmp_path / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("reference: not made: ")]
    assert "failed: ValueError: a bug in the reference maker" in line
    log = Path(line.split("(its log: ")[1].split(")")[0])
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text
