"""Scenario families, landing frequencies with Wilson intervals, breaking points, and a small real
sweep end to end (rows, tables, phase diagram; resume after a kill)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from bench.report.frequencies import breaking_points, landing_frequencies, wilson_interval
from bench.run.sweep import parse_method_line, parse_vary, plan_cells, sweep_points
from models.errors import MixbenchError
from models.families import FamilyPoint, parse_point, point_params, separation
from models.scenarios import SCENARIOS, get_scenario
from tests.em import em_mixture

# ---------------------------------------------------------------------------------------------
# Families


def test_a_family_point_simulates_the_separation_and_weights_it_names():
    """Measured on large simulated data by EM (an independent maximum-likelihood fit), the
    separation and the smallest weight are the point's."""
    point = FamilyPoint(K=3, D=2, sep=3.0, w_min=0.15, sigma_ratio=2.0)
    data = get_scenario(point.name).simulate(seed=11, N=60_000)
    assert data.truth is not None and np.allclose(data.truth["pi"], [0.15, 0.425, 0.425])
    fit = em_mixture(data.x, data.y, K=3, intercept=False, shared_sigma=False, starts=3, iterations=400, seed=1)
    order = np.argsort(fit.params["w"][:, 0])
    measured = {name: np.asarray(value)[order] for name, value in fit.params.items()}
    # sd of the separation estimate at this N is well under 1%: 3% is a clear margin.
    assert separation(measured, D=2) == pytest.approx(3.0, rel=0.03)
    assert measured["pi"][0] == pytest.approx(0.15, abs=0.01)
    sigma = measured["sigma"]
    assert sigma.max() / sigma.min() == pytest.approx(2.0, rel=0.03)
    # The separation from the data directly: the RMS gap between the measured lines over the
    # simulated x, over the measured pooled sigma of the noisiest neighbours.
    gap = data.x @ (measured["w"][2] - measured["w"][1])
    pooled = math.sqrt((sigma[1] ** 2 + sigma[2] ** 2) / 2)
    assert math.sqrt(np.mean(gap ** 2)) / pooled == pytest.approx(3.0, rel=0.03)


@pytest.mark.parametrize("kwargs", [dict(), dict(K=4, D=3, sep=0.8, w_min=0.05, sigma_ratio=3.0),
                                    dict(K=5, sep=2.5, sigma_ratio=1.5)])
def test_a_family_point_has_its_separation_and_a_stable_name(kwargs):
    point = FamilyPoint(**kwargs)
    assert point.separation() == pytest.approx(point.sep, rel=1e-12)
    assert parse_point(point.name) == point
    assert get_scenario(point.name).spec == point.spec
    assert point_params(point.name) == point.params
    assert np.isclose(point.weights.sum(), 1.0) and point.weights.min() == pytest.approx(point.w_min)


def test_existing_scenarios_stay_named_points():
    assert list(SCENARIOS) == ["forum", "forum-small", "forum-outliers", "shared-slopes", "separated", "gmm3", "three-lines"]
    assert point_params("forum-small") == {}


@pytest.mark.parametrize("kwargs, message", [
    (dict(K=6), "K: must lie in [2, 5]"),
    (dict(K=2, w_min=0.6), "w_min: the smallest of 2 weights is at most 1/K"),
    (dict(sep=0.1), "sep: 0.1 needs sigma"),
    (dict(D=1.5), "D: must be an integer"),
])
def test_bad_family_points_are_one_line_errors(kwargs, message):
    with pytest.raises(MixbenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        FamilyPoint(**kwargs)


def test_sweep_arguments_are_checked():
    assert parse_vary(["sep=0.5,1", "N=200,1e3"]) == {"sep": [0.5, 1.0], "N": [200, 1000]}
    for bad, message in ((["sep=1", "sep=2"], "given twice"), (["nope=1"], "axis: unknown 'nope'"),
                         (["sep"], "expected AXIS=v1"), (["sep=1,1"], "repeated")):
        with pytest.raises(MixbenchError, match=message):
            parse_vary(bad)
    line = parse_method_line("nuts:ordering=slope", ("nuts", "pathfinder"))
    assert (line.method, line.spec, line.label) == ("nuts", {"ordering": "slope"}, "nuts ordering=slope")
    with pytest.raises(MixbenchError, match="'K' cannot be overridden"):
        parse_method_line("nuts:K=3", ("nuts",))
    points = sweep_points({"sep": [1.0, 4.0], "N": [200, 1000]})
    cells = plan_cells(points, ["numpyro"], [line], [0, 1], {"chains": 2}, {})
    assert len(cells) == 8 and {c.n for c in cells} == {200, 1000}
    assert {c.scenario for c in cells} == {"lines-K2-D1-sep1-wmin0.5-sr1", "lines-K2-D1-sep4-wmin0.5-sr1"}
    assert all(c.spec == {"ordering": "slope"} and c.data_seed == 0 for c in cells)
    assert [c.data_seed for c in plan_cells(points[:1], ["numpyro"], [line], [3, 4], {}, {}, data_per_seed=True)] == [3, 4]


# ---------------------------------------------------------------------------------------------
# Frequencies and Wilson intervals, by hand

Z = norm.ppf(0.95)  # 90% two-sided


def wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z ** 2 / (2 * n)) / (1 + Z ** 2 / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z ** 2 / (4 * n ** 2)) / (1 + Z ** 2 / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 10), (10, 10), (7, 10), (1, 3), (0, 1), (5, 5)])
def test_wilson_interval_is_the_hand_formula(k, n):
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)
    if k == 0:
        assert lo == pytest.approx(0.0, abs=1e-15) and hi == pytest.approx(Z ** 2 / (n + Z ** 2))
    if k == n:
        assert lo == pytest.approx(n / (n + Z ** 2)) and hi == pytest.approx(1.0)


def test_wilson_interval_of_nothing_is_nan():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(4, 3)


def _row(sep, method, seed, mode, status="ok", spec=None, switches=0, disagree=False, chains=2, err=0.1, t=1.0):
    name = FamilyPoint(sep=sep).name
    return {"cell_id": f"{name}.numpyro.{method}.{seed}.{json.dumps(spec)}", "status": status, "backend": "numpyro",
            "method": method, "scenario": name, "seed": seed, **point_params(name), "N": 500,
            "cell": {"spec": spec or {}, "n": 500}, "mode": mode if status == "ok" else None,
            "label_switches": (switches if method == "nuts" else math.nan) if status == "ok" else math.nan,
            "n_chains": chains if method == "nuts" else 1, "chains_disagree": disagree if status == "ok" else None,
            "w_err_max": err if status == "ok" else math.nan, "t_warmup": t if method == "nuts" else math.nan,
            "t_sampling": t if method == "nuts" else math.nan, "t_optimisation": t if method != "nuts" else math.nan}


@pytest.fixture
def hand_rows():
    rows = []
    # sep 4: NUTS 10 of 10 in the truth (3 with a within-chain switch, 4 with chains disagreeing).
    rows += [_row(4, "nuts", s, "truth", switches=int(s < 3), disagree=s < 4, err=0.1 * (s + 1)) for s in range(10)]
    # sep 2: NUTS 9 truth + 1 mixed; sep 1: 0 truth: 6 other, 2 collapsed, 1 failed, 1 unsupported.
    rows += [_row(2, "nuts", s, "truth" if s < 9 else "mixed") for s in range(10)]
    rows += [_row(1, "nuts", s, "other" if s < 6 else "collapsed", status="ok" if s < 8 else "failed")
             for s in range(9)] + [_row(1, "nuts", 9, None, status="unsupported")]
    # ADVI: 10/10 at sep 4, 7/10 at sep 2 (breaks), 10/10 at sep 1 (past the break: not held).
    rows += [_row(4, "advi-fullrank", s, "truth") for s in range(10)]
    rows += [_row(2, "advi-fullrank", s, "truth" if s < 7 else "other") for s in range(10)]
    rows += [_row(1, "advi-fullrank", s, "truth") for s in range(10)]
    # Ordered NUTS: a line of its own; 10/10 everywhere.
    rows += [_row(sep, "nuts", s, "truth", spec={"ordering": "slope"}) for sep in (1, 2, 4) for s in range(10)]
    return pd.DataFrame(rows)


def test_frequencies_equal_hand_counts(hand_rows):
    freq = landing_frequencies(hand_rows).set_index(["sep", "line"])
    assert set(freq.index.get_level_values("line")) == {"nuts", "nuts ordering=slope", "advi-fullrank"}
    easy = freq.loc[(4.0, "nuts")]
    assert (easy["truth_k"], easy["truth_n"], easy["truth_frac"]) == (10, 10, 1.0)
    assert (easy["truth_lo"], easy["truth_hi"]) == pytest.approx(wilson_by_hand(10, 10))
    assert (easy["switch_k"], easy["switch_n"]) == (3, 10)
    assert (easy["disagree_k"], easy["disagree_n"]) == (4, 10)
    assert (easy["disagree_lo"], easy["disagree_hi"]) == pytest.approx(wilson_by_hand(4, 10))
    assert easy["w_err"] == pytest.approx(np.median(0.1 * np.arange(1, 11)))
    assert easy["s_to_fit"] == pytest.approx(2.0)  # warm-up + sampling
    mid = freq.loc[(2.0, "nuts")]
    assert (mid["truth_k"], mid["mixed_k"], mid["truth_n"]) == (9, 1, 10)
    hard = freq.loc[(1.0, "nuts")]  # the unsupported cell counts nowhere
    assert (hard["seeds"], hard["truth_k"], hard["other_k"], hard["collapsed_k"], hard["failed_k"]) == (9, 0, 6, 2, 1)
    assert (hard["truth_lo"], hard["truth_hi"]) == pytest.approx(wilson_by_hand(0, 9))
    assert (hard["other_lo"], hard["other_hi"]) == pytest.approx(wilson_by_hand(6, 9))
    assert (hard["switch_n"], hard["disagree_n"]) == (8, 8)  # ok NUTS fits only
    vi = freq.loc[(2.0, "advi-fullrank")]
    assert vi["switch_n"] == 0 and vi["disagree_n"] == 0 and math.isnan(vi["switch_lo"])
    assert vi["s_to_fit"] == pytest.approx(1.0)


def test_breaking_points_walk_from_easy_to_hard(hand_rows):
    points = breaking_points(landing_frequencies(hand_rows)).set_index("line")
    nuts = points.loc["nuts"]
    # 9/10 is 90%: held at sep 2; broke at sep 1 with 0/9.
    assert (nuts["held"], nuts["hardest_held"], nuts["broke_at"]) == ("at", 2.0, 1.0)
    lo, hi = wilson_by_hand(9, 10)
    assert nuts["truth_there"] == f"9/10 0.90 [{lo:.2f}, {hi:.2f}]"
    assert nuts["truth_at_break"].startswith("0/9 0.00")
    advi = points.loc["advi-fullrank"]  # 10/10 at sep 1 comes after the break at sep 2: not held
    assert (advi["hardest_held"], advi["broke_at"]) == (4.0, 2.0)
    ordered = points.loc["nuts ordering=slope"]
    assert ordered["held"] == "all" and ordered["hardest_held"] == 1.0 and math.isnan(ordered["broke_at"])


def test_a_line_broken_at_the_easiest_setting_holds_none(hand_rows):
    rows = hand_rows[hand_rows["method"] == "advi-fullrank"].copy()
    rows.loc[rows["sep"] == 4.0, "mode"] = "other"
    [point] = breaking_points(landing_frequencies(rows)).to_dict("records")
    assert (point["held"], point["broke_at"], point["truth_there"]) == ("none", 4.0, "-")


# ---------------------------------------------------------------------------------------------
# A small real sweep end to end

SWEEP = ["sweep", "--vary", "sep=1,4", "--vary", "w_min=0.2,0.5", "--vary", "N=200", "--backends", "numpyro",
         "--methods", "nuts,advi-fullrank", "--seeds", "0-2", "--warmup", "150", "--draws", "150",
         "--vi-iterations", "1500", "--vi-draws", "200", "--jobs", "2", "--reference", "none"]


def _sweep_process(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *SWEEP, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _rows(out) -> dict[str, dict]:
    path = out / "cells.jsonl"
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["cell_id"]] = row
    return rows


def test_a_small_real_sweep_end_to_end_and_resume_after_a_kill(tmp_path):
    out = tmp_path / "sweep"
    first = _sweep_process(out, "--no-report")
    # Waits for the condition (four rows, or the sweep ending early, which the assertion below
    # reports), however long a loaded machine takes: 24 cells cannot all finish before four do.
    while len(_rows(out)) < 4 and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, f"the sweep ended before it could be killed: {first.communicate()}"
    os.kill(first.pid, signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 143, err
    before = _rows(out)
    assert 4 <= len(before) < 24

    second = _sweep_process(out)
    stdout, err = second.communicate(timeout=400)
    assert second.returncode == 0, err
    assert f"resuming: {len(before)} cells already finished, {24 - len(before)} to run" in err
    rows = _rows(out)
    assert len(rows) == 24 and all(r["status"] == "ok" for r in rows.values())
    # The cells finished before the kill were not run again: their rows are the same rows.
    assert all(rows[cell]["time_cell"] == row["time_cell"] for cell, row in before.items())
    for row in rows.values():  # the point's axes are columns of every row
        point = parse_point(row["scenario"])
        assert (row["sep"], row["w_min"], row["K"], row["D"], row["N"]) == (point.sep, point.w_min, 2, 1, 200)
    # Rows, tables and the phase diagram are written.
    report = (out / "report.md").read_text()
    for title in ("## Sweep: where the seeds land", "## Sweep: label switching and cost", "## Sweep: breaking points"):
        assert title in report
    assert "Sweep: breaking points" in stdout
    assert "### Sweep: where each method breaks along sep" in report  # the findings lead with it
    assert (out / "figures" / "sweep_phase.png").stat().st_size > 10_000
    assert (out / "figures" / "sweep_curves.png").is_file()
    assert 'id="fig-sweep-phase"' in (out / "report.html").read_text()
    # At the easy separation every seed of both methods lands in the truth's mode (the data are
    # far apart: slopes -2 and 2 with sigma 0.58).
    freq = landing_frequencies(pd.DataFrame(list(rows.values())))
    easy = freq[freq["sep"] == 4.0]
    assert len(easy) == 4 and (easy["truth_k"] == 3).all() and (easy["truth_n"] == 3).all()


def test_sweep_tables_show_shares_and_every_column_is_in_the_glossary(hand_rows):
    from bench.report.glossary import describe
    from bench.report.sweep_tables import sweep_tables

    tables = {t.key: t for t in sweep_tables(hand_rows)}
    assert set(tables) == {"sweep-landings", "sweep-switching", "sweep-breaking"}
    landed = tables["sweep-landings"].frame.set_index(["sep", "line"])
    lo, hi = wilson_by_hand(6, 9)
    assert landed.loc[("1", "nuts"), "other"] == f"6/9 0.67 [{lo:.2f}, {hi:.2f}]"
    assert landed.loc[("1", "nuts"), "seeds"] == 9
    breaking = tables["sweep-breaking"].frame.set_index("line")
    assert breaking.loc["nuts", "hardest sep held"] == "2" and breaking.loc["nuts", "broke at sep"] == "1"
    assert breaking.loc["nuts ordering=slope", "broke at sep"] == "never"
    assert "Fixed: K = 2; D = 1; w_min = 0.5; sigma_ratio = 1; N = 500." in tables["sweep-breaking"].text
    columns = {c for t in tables.values() for c in t.frame.columns}
    assert [c for c in columns if describe(c) is None] == []


@pytest.mark.parametrize("args, message", [
    ([], "--vary: give at least one axis"),
    (["--vary", "sep=0.1"], "sep: 0.1 needs sigma"),
    (["--vary", "sep=2", "--methods", "nuts,hmc"], "method: unknown 'hmc'"),
    (["--vary", "sep=2", "--methods", "nuts:ordering"], "expected FIELD=VALUE"),
    (["--vary", "sep=2", "--spec", "D=2"], "'D' cannot be overridden"),
    (["--vary", "sep=2", "--vary", "K=5", "--vary", "N=40"], "K: 5 components for N = 40 observations"),
    (["--vary", "sep=2", "--backends", "julia"], "backend: unknown 'julia'"),
])
def test_bad_sweep_arguments_are_one_line_errors(args, message, capsys, tmp_path):
    from bench.cli import main

    code = main(["sweep", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mixbench sweep: error:") and message in err[0]
    assert not (tmp_path / "out").exists()  # refused before any cell ran
