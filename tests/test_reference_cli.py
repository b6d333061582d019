"""`mixbench reference` and `mixbench run` on a data file without a truth: one reference, one
labelling for every row, modes, W1, PSIS-LOO and flags in the rows and the report."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.run.references
import bench.reference.make
import bench.reference.posterior
from bench.cli import main
from bench.run.harness import read_rows
from models import get_scenario

ROOT = Path(__file__).resolve().parents[1]
SPEC_ARGS = ["--K", "2", "--intercept", "--sigma", "per-component"]
REF_ARGS = ["--reference-method", "nuts", "--reference-chains", "2", "--reference-warmup", "300", "--reference-draws", "500"]


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
    monkeypatch.setattr(bench.reference.posterior, "references_dir", lambda: directory)
    return directory


def test_reference_then_run_share_one_labelling(tmp_path, data_file, references, capsys):
    assert main(["reference", "--data", str(data_file), *SPEC_ARGS, "--method", "nuts", "--chains", "2",
                 "--warmup", "300", "--draws", "500"]) == 0
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
    assert main(["reference", "--data", str(data_file), *SPEC_ARGS, "--method", "nuts", "--chains", "2",
                 "--warmup", "300", "--draws", "500"]) == 0
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


QUICK = "tests.fake_backends:QuickBackend"
REAL_MAKE = bench.reference.make.make_reference


def fake_make(backend: str, calls: Path, problem, settings, **kwargs):
    """A reference NUTS run by a fake backend (tests.test_reference), keeping the settings it was
    asked for (so the cache keys are the real ones); each call adds a line to ``calls``. Module
    level: the reference cell's worker gets it by name."""
    import dataclasses

    with open(calls, "a") as fh:
        fh.write(f"{settings.draws}\n")
    fake = dataclasses.replace(settings, method="nuts", backend=backend, chains=4, warmup=0, ess_min=100,
                               draws=min(settings.draws, 1000))
    made = REAL_MAKE(problem, fake, **kwargs)
    made.info["made_by"]["settings"] = settings.to_dict()  # it stands in for the run asked for
    return made


def _fake_reference(monkeypatch, backend: str, calls: Path) -> None:
    """Reference cells (bench.run.references) make their reference with ``fake_make``."""
    monkeypatch.setattr(bench.run.references, "make_reference", functools.partial(fake_make, backend, calls))


def _made(calls: Path) -> int:
    """How many references the fake made, in whatever process it ran."""
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_a_reference_that_fails_its_checks_stops_nothing(tmp_path, data_file, references, monkeypatch, capsys):
    """The default run (--reference auto) on data whose reference fails: exit 0, every cell's row,
    the provisional reference's failed checks and cause in the console and report, no claim that
    any fit reached it. A later accepted reference (made with more draws) replaces it in later runs."""
    calls = tmp_path / "calls"
    _fake_reference(monkeypatch, "tests.test_reference:SwitchingBackend", calls)
    run_dir = tmp_path / "run"
    args = ["run", "--data", str(data_file), *SPEC_ARGS, "--backends", QUICK, "--seeds", "0,1", "--chains", "2",
            "--draws", "100", "--out", str(run_dir)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "provisional reference (failed: R-hat" in captured.err
    assert "modes: chains sit in several real modes" in captured.err and "Fix: more draws will not merge" in captured.err
    assert "a provisional reference posterior (it failed its checks): one labelling for every row" in captured.out
    rows = read_rows(run_dir / "cells.jsonl")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    assert {r["reference_status"] for r in rows} == {"provisional"}
    assert all(r["reference_failed"].startswith("R-hat") for r in rows)
    report = (run_dir / "report.md").read_text()
    assert "The reference posterior is provisional: it failed R-hat" in report
    assert "Cause (modes)" in report and "scored against a provisional reference posterior" in report
    assert "reached the reference" not in report.lower() and "reached the reference" not in captured.out.lower()
    assert _made(calls) == 1

    # `mixbench reference --draws 2000` then makes an accepted one (here a fake that passes) ...
    _fake_reference(monkeypatch, "tests.test_reference:PoorModeBackend", calls)
    assert main(["reference", "--data", str(data_file), *SPEC_ARGS, "--draws", "2000"]) == 0
    assert "accepted" in capsys.readouterr().out and _made(calls) == 2
    # ... and the same default run uses it, not the provisional one it made first, and makes none.
    assert main(args) == 0
    assert _made(calls) == 2
    rows = [r for r in read_rows(run_dir / "cells.jsonl") if r.get("reference_status") == "accepted"]
    assert len(rows) == 2 and "provisional" not in capsys.readouterr().err


def test_mixbench_reference_reuses_an_identical_accepted_reference(tmp_path, data_file, references, monkeypatch,
                                                                   capsys):
    calls = tmp_path / "calls"
    _fake_reference(monkeypatch, "tests.test_reference:PoorModeBackend", calls)
    args = ["reference", "--data", str(data_file), *SPEC_ARGS, "--draws", "1000"]
    assert main(args) == 0
    first = capsys.readouterr().out
    (made,) = list(references.iterdir())
    created = json.loads((made / "info.json").read_text())["created"]
    assert main(args) == 0
    again = capsys.readouterr().out
    assert _made(calls) == 1 and f"cached, not rerun: {made}" in again
    assert first.splitlines()[0] == again.splitlines()[0]  # the same description: what it found
    assert json.loads((made / "info.json").read_text())["created"] == created
    # Other settings are another reference: made.
    assert main([*args[:-1], "1200"]) == 0 and _made(calls) == 2


def test_without_a_reference_no_fit_is_said_to_reach_one(tmp_path, data_file, references, capsys):
    run_dir = tmp_path / "run"
    assert main(["run", "--data", str(data_file), *SPEC_ARGS, "--backends", QUICK, "--seeds", "0", "--chains", "2",
                 "--draws", "100", "--reference", "none", "--out", str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "where each fit landed is not judged" in report
    assert "reached the reference" not in report.lower() and "reached the" not in report.split("## ")[1].lower()
    assert not references.exists()  # none made, none read


@pytest.mark.slow
def test_the_default_run_on_an_over_fitted_k_runs_every_cell(tmp_path, references, capsys):
    """Real NumPyro reference (default settings): K = 3 fitted to two well separated lines of 20
    points each. The third component holds about two points and follows its prior, so the
    reference fails its checks; the run still exits 0 with every cell's row, names the cause and
    claims no landing."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, 40)
    y = np.where(np.arange(40) < 20, 3 * x + 4, -x - 4) + 0.3 * rng.standard_normal(40)
    path = tmp_path / "two-lines.csv"
    pd.DataFrame({"x": x, "y": y}).to_csv(path, index=False)
    run_dir = tmp_path / "run"
    assert main(["run", "--data", str(path), "--K", "3", "--intercept", "--sigma", "per-component",
                 "--backends", "numpyro", "--methods", "nuts,map", "--seeds", "0", "--chains", "2",
                 "--warmup", "300", "--draws", "300", "--out", str(run_dir)]) == 0
    err = capsys.readouterr().err
    rows = read_rows(run_dir / "cells.jsonl")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    assert {r["reference_status"] for r in rows} == {"provisional"}
    (made,) = list(references.iterdir())
    info = json.loads((made / "info.json").read_text())
    assert not info["accepted"] and info["status"] == "provisional" and info["causes"]
    # The empty component's weight, recomputed from the reference's own draws.
    pi = np.asarray(bench.reference.posterior.load_reference(made).posterior["pi"].mean(("chain", "draw")).values)
    (empty,) = [c for c in info["causes"] if c["cause"] == "empty_component"]
    assert f"about {pi.min() * 40:.1f} of 40 points" in empty["evidence"] and "--K 2" in empty["advice"]
    assert "empty_component:" in err and "provisional reference (failed:" in err
    report = (run_dir / "report.md").read_text()
    assert "The reference posterior is provisional" in report and "Cause (empty_component)" in report
    assert "reached the reference" not in report.lower()
