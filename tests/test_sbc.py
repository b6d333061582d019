"""Simulation-based calibration (bench.run.sbc, bench.report.sbc, ``mixbench sbc``).

The oracle: a K = 1 regression with known sigma, whose posterior is normal in closed form
(tests/sbc_backends.py). Draws from it must pass; the same posterior with its sd halved, or
moved by one posterior sd, must fail, in the direction the verdict names.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from backends import get_backend
from backends.base import FitSettings
from bench.cli import main
from bench.run.sbc import Region, draw_in_region, draw_prior, sbc_ranks, simulate_data
from bench.report.sbc import pit_frame, uniformity_p, verdict
from models.families import separation
from models.scenarios import get_scenario

TWO_LINES = get_scenario("lines-K2-D1-sep4-wmin0.5-sr1").spec  # slopes N(0, 2), sigma U(0, 10), Dirichlet(1)
ONE_LINE = TWO_LINES.overridden({"K": 1})
FAKES = "tests.sbc_backends:"


def test_prior_draws_follow_the_prior():
    rng = np.random.default_rng(1)
    draws = [draw_prior(TWO_LINES, rng) for _ in range(4000)]
    slopes = np.array([d["w"][:, 0] for d in draws]).ravel()
    sigma = np.array([float(d["sigma"]) for d in draws])
    first_weight = np.array([d["pi"][0] for d in draws])
    assert stats.kstest(slopes, stats.norm(0, 2).cdf).pvalue > 0.01
    assert stats.kstest(sigma, stats.uniform(0, 10).cdf).pvalue > 0.01
    assert stats.kstest(first_weight, stats.uniform(0, 1).cdf).pvalue > 0.01  # Dirichlet(1, 1): Beta(1, 1)


def test_region_draws_lie_in_the_region_and_are_the_prior_restricted_to_it():
    region = Region(2.0, 4.0, 0.2)
    rng = np.random.default_rng(2)
    draws = [draw_in_region(TWO_LINES, region, rng)[0] for _ in range(200)]
    seps = np.array([separation(d, 1) for d in draws])
    assert ((seps >= 2) & (seps < 4)).all()
    assert min(d["pi"].min() for d in draws) >= 0.2
    # Rejection from the prior: the same region's share among plain prior draws, in the same
    # distribution (separation of the accepted ones against filtered plain ones).
    plain = [draw_prior(TWO_LINES, rng) for _ in range(4000)]
    kept = np.array([separation(d, 1) for d in plain if region.contains(d, 1)])
    assert stats.ks_2samp(seps, kept).pvalue > 0.01


def _pits(backend: str, sims: range, N: int = 30, draws: int = 100) -> dict[str, np.ndarray]:
    """PIT values per quantity over ``sims`` data sets of the one-line model, fitted by ``backend``."""
    fitter = get_backend(FAKES + backend)
    settings = FitSettings(chains=1, draws=draws)
    region = Region()
    rows = []
    for sim in sims:
        truth, _ = draw_in_region(ONE_LINE, region, np.random.default_rng([sim, 2018]))
        data = simulate_data(ONE_LINE, truth, N, seed=sim)
        fit = fitter.fit(ONE_LINE, data, "nuts", settings, seed=sim)
        ranks = sbc_ranks(ONE_LINE, data, truth, fit.draws, region, sim, max_draws=1000)
        rows.append({"status": "ok", "region": "all", "backend": backend, "line": "nuts", "sim": sim, **ranks})
    frame = pit_frame(rows)
    return {q: g["pit"].to_numpy() for q, g in frame.groupby("quantity")}


def _verdicts(pits: dict[str, np.ndarray], alpha: float = 0.05) -> dict[str, str]:
    return {q: verdict(u, uniformity_p(u), alpha / len(pits)) for q, u in pits.items()}


def test_exact_posterior_passes_and_independent_draws_are_not_thinned():
    pits = _pits("ExactConjugateBackend", range(100))
    assert set(pits) == {"loglik", "slope (1. smallest)", "sigma near x*", "y_pred at x*"}
    assert all(len(u) == 100 for u in pits.values())
    assert set(_verdicts(pits).values()) == {"calibrated"}


def test_a_posterior_too_narrow_by_half_is_caught_as_too_narrow():
    pits = _pits("NarrowBackend", range(100))
    found = _verdicts(pits)
    assert found["slope (1. smallest)"] == "miscalibrated: too narrow"
    # sd halved: the truth leaves the central 90% interval when |z| > 1.645 / 2, P = 0.41.
    outside = np.mean(np.abs(pits["slope (1. smallest)"] - 0.5) > 0.45)
    assert 0.25 < outside < 0.6


def test_a_posterior_shifted_by_one_sd_is_caught_as_shifted():
    pits = _pits("ShiftedBackend", range(100))
    assert _verdicts(pits)["slope (1. smallest)"] == "miscalibrated: draws above the truth"
    # The truth one sd below the draws' mean: its PIT is Phi(-1 + z) averaged over z ~ N(0, 1),
    # i.e. Phi(-1 / sqrt(2)) = 0.24 in expectation.
    assert abs(np.mean(pits["slope (1. smallest)"]) - stats.norm.cdf(-1 / np.sqrt(2))) < 0.08


@pytest.mark.slow
def test_false_alarm_rate_is_near_the_nominal_level_and_the_fakes_are_caught():
    """100 repeats of 40 exact data sets each (4000 fits): the share of repeats in which any of
    the 4 quantities is called miscalibrated at alpha = 0.05 (Bonferroni) is at most the nominal
    0.05 within 3 binomial standard errors; 40 repeats each of the narrow and shifted fakes are
    caught in most."""
    size = 40
    alarms = {}
    for backend, repeats in (("ExactConjugateBackend", 100), ("NarrowBackend", 40), ("ShiftedBackend", 40)):
        hits = [any(v != "calibrated" for v in _verdicts(_pits(backend, range(r * size, (r + 1) * size),
                                                                N=20, draws=60)).values())
                for r in range(repeats)]
        alarms[backend] = float(np.mean(hits))
    print(f"alarm rates over repeats of {size} data sets: {alarms}")
    assert alarms["ExactConjugateBackend"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 100)
    assert alarms["NarrowBackend"] > 0.8
    assert alarms["ShiftedBackend"] > 0.8


def test_mixbench_sbc_runs_cells_resumes_and_reports(tmp_path, capsys):
    out = tmp_path / "sbc"
    argv = ["sbc", "--backends", FAKES + "ExactConjugateBackend," + FAKES + "ShiftedBackend", "--methods", "nuts",
            "--spec", "K=1", "--sims", "0-29", "--N", "30", "--chains", "1", "--draws", "100", "--out", str(out)]
    assert main(argv) == 0
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 60
    report = (out / "sbc.md").read_text()
    assert "conditional on the fit succeeding is not calibration" in report
    assert "miscalibrated: draws above the truth" in report
    assert (out / "sbc-ecdf-0.png").stat().st_size > 0
    assert (out / "sbc-calibration-vs-difficulty.png").stat().st_size > 0
    capsys.readouterr()
    assert main(argv) == 0  # resume: every cell is finished, none runs again
    assert (out / "cells.jsonl").read_text().splitlines() == lines
    assert " started" not in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--sep-bands", "4,2"], "--sep-bands: give at least two increasing edges"),
    (["--spec", "likelihood=forum-original"], "sbc: likelihood 'forum-original' is not the model"),
    (["--spec", "colour=red"], "unknown spec field"),
    (["--min-weight", "0.6"], "--min-weight: 2 weights of at least 0.6"),
    (["--min-weight", "0.5"], "none of 1000 prior draws fell inside it"),  # both exactly 1/2: probability 0
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setattr("bench.run.sbc.REGION_TRIES", 1000)
    assert main(["sbc", "--backends", "numpyro", "--methods", "nuts", "--out", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_advice_picks_the_cheapest_calibrated_line_that_lands_per_difficulty_point():
    """Two difficulty points, three lines with known PITs, landings and costs: at the easy point
    the cheap calibrated line wins; at the hard one the cheap line is miscalibrated and the dear
    one is chosen; where no line is calibrated the best-calibrated is named as such."""
    import pandas as pd

    from bench.report.sbc import advice_table, calibration_table

    rng = np.random.default_rng(5)
    uniform = rng.uniform(size=200)
    narrow = np.where(rng.uniform(size=200) < 0.5, rng.uniform(0, 0.03, 200), rng.uniform(0.97, 1, 200))
    cases = {("easy", "cheap"): uniform, ("easy", "dear"): uniform, ("hard", "cheap"): narrow,
             ("hard", "dear"): uniform, ("none", "cheap"): narrow, ("none", "dear"): uniform ** 1.3}
    pits = pd.DataFrame([{"region": r, "sep_min": {"easy": 4, "hard": 2, "none": 1}[r], "backend": "b", "line": line,
                          "sim": i, "quantity": "q", "pit": u} for (r, line), us in cases.items() for i, u in enumerate(us)])
    fits = pd.DataFrame([{"region": r, "sep_min": {"easy": 4, "hard": 2, "none": 1}[r], "backend": "b", "line": line,
                          "data sets": 200, "failed": 0.0, "flagged": 0.0, "truth's mode": 0.95,
                          "median s to fit": 1.0 if line == "cheap" else 10.0} for (r, line) in cases])
    table = advice_table(calibration_table(pits), fits).set_index(["region", "line"])["run this"]
    assert table[("easy", "cheap")].startswith("yes") and table[("easy", "dear")] == ""
    assert table[("hard", "dear")].startswith("yes") and table[("hard", "cheap")] == ""
    assert table[("none", "dear")] == "none passes; best calibrated"


def test_a_handful_of_data_sets_is_never_called_calibrated_nor_chosen():
    """Five exact data sets pass the test (it has no power there): the verdict says too few, and no
    line is picked to run."""
    import pandas as pd

    from bench.report.sbc import LOW_POWER_SIMS, advice_table, calibration_table

    u = np.random.default_rng(2).uniform(size=5)
    pits = pd.DataFrame([{"region": "r", "sep_min": 2, "backend": "b", "line": "nuts", "sim": i, "quantity": "q",
                          "pit": v} for i, v in enumerate(u)])
    calibration = calibration_table(pits)
    assert calibration["verdict"].tolist() == ["not rejected (5 data sets: too few to call)"]
    fits = pd.DataFrame([{"region": "r", "sep_min": 2, "backend": "b", "line": "nuts", "data sets": 5, "failed": 0.0,
                          "flagged": 0.0, "truth's mode": 1.0, "median s to fit": 1.0}])
    (advice,) = advice_table(calibration, fits)["run this"]
    assert advice == f"too few data sets to choose (fewer than {LOW_POWER_SIMS})"
