"""A fit's landing against a modes reference follows from where its draws are
(bench.score.modes.fit_landing), not from its distance to the pooled reference mean."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from backends.base import canonical_datatree
from bench.score.health import health
from bench.score.metrics import _w1_in_sds
from bench.score.modes import fit_answer, fit_landing, mode_columns, parse_shares
from bench.score.settings import MetricSettings
from tests.test_reference_modes import AT, FORUM_SPEC, MODE_SD, _forum_modes

# A third mode, poor (mass 0.02), and a place in none of the modes; each > 40 mode sds from the others.
AT = {**AT, "C": {"w": [[-2.0], [3.0]], "sigma": 0.1, "pi": [0.5, 0.5]},
      "none": {"w": [[-1.0], [1.0]], "sigma": 0.1, "pi": [0.5, 0.5]}}
MODES = _forum_modes() + [{**_forum_modes()[0], "name": "C", "mass_bridge": 0.02, "lp_gap": 4.0,
                           "location": AT["C"]}]
AT_REF = {"lp_gap": 0.0, "lp_gap_tol": 10.0}


def placed(fit, ordered: bool, landing: dict | None = None) -> dict:
    """The mode columns and, with a landing (lp_gap, lp_gap_tol), the fit's landing from them, as
    bench.score.metrics scores a row."""
    cols = mode_columns(fit, MODES, ordered=ordered)
    if landing:
        cols.update(fit_landing(cols["ref_mode_chains"].split(";"), parse_shares(cols["ref_mode_shares"]), MODES,
                                landing["lp_gap"], landing["lp_gap_tol"]))
    return cols


def draws(*blocks: tuple[str, int], chains: int = 1, seed: int = 0):
    """``chains`` chains, each of the blocks (place, draws) one after another."""
    rng = np.random.default_rng(seed)
    arrays = {n: np.concatenate([np.asarray(AT[place][n], dtype=float)[None, None]
                                 + MODE_SD[n] * rng.standard_normal((chains, size) + np.shape(AT[place][n]))
                                 for place, size in blocks], axis=1) for n in MODE_SD}
    arrays["pi"] = arrays["pi"] / arrays["pi"].sum(-1, keepdims=True)
    return canonical_datatree(FORUM_SPEC, arrays)


def two_chains(first: str, second: str):
    a, b = (draws((place, 200), seed=s) for s, place in enumerate((first, second)))
    return canonical_datatree(FORUM_SPEC, {n: np.concatenate([a.posterior[n].values, b.posterior[n].values])
                                           for n in MODE_SD})


def test_a_fit_wholly_in_a_weighted_mode_reached_the_reference():
    cols = placed(draws(("A", 300)), False, AT_REF)
    assert (cols["mode"], cols["ref_mode_chains"], cols["ref_mode_shares"]) == ("reference", "A", "A:1")
    assert (cols["chains_on_target"], cols["chains_other"]) == (1, 0)


def test_most_draws_in_no_mode_with_a_25_nat_gap_is_other_whatever_the_pooled_distance():
    """The trial's Stan ADVI seed: 95% of the draws in no mode, 5% in B, 24.9 nats below."""
    fit = draws(("none", 950), ("B", 50))
    cols = placed(fit, False, {"lp_gap": 25.0, "lp_gap_tol": 10.0})
    assert (cols["mode"], cols["ref_mode_chains"], cols["ref_mode_shares"]) == ("other", "-", "-:0.95;B:0.05")
    assert (cols["chains_on_target"], cols["chains_other"]) == (0, 1)
    # Either rule alone is enough: the draws in no mode, or the gap with every draw in A.
    assert placed(fit, False, AT_REF)["mode"] == "other"
    assert placed(draws(("A", 300)), False, {"lp_gap": 25.0, "lp_gap_tol": 10.0})["mode"] == "other"


def test_draws_mostly_in_a_poor_mode_are_other_and_a_minority_outside_good_modes_is_biased():
    assert placed(draws(("C", 300)), False, AT_REF)["mode"] == "other"
    # A third in A, two thirds in the poor mode C.
    assert placed(draws(("A", 100), ("C", 200)), False, AT_REF)["mode"] == "other"
    cols = placed(draws(("A", 240), ("none", 60)), False, AT_REF)  # 80% in A
    assert (cols["mode"], cols["chains_biased"], cols["chains_on_target"]) == ("biased", 1, 0)
    cols = placed(draws(("A", 285), ("none", 15)), False, AT_REF)  # 95% in A
    assert cols["mode"] == "reference"


def test_chains_in_different_modes_are_mixed_and_flagged():
    cols = placed(two_chains("A", "B"), True, AT_REF)
    assert (cols["ref_mode_chains"], cols["mode"], cols["chains_on_target"]) == ("A;B", "mixed", 2)
    flags = health(cols, None, None, None, mcmc=False, single_point=False, converged=None,
                   settings=MetricSettings())["flags"]
    assert "mixed-modes" in flags.split(",")
    # The same layout with a poor mode (C, mass 0.02) reads the same: mixed, though half the
    # draws are in a poor mode.
    cols = placed(two_chains("A", "C"), True, AT_REF)
    assert (cols["ref_mode_chains"], cols["ref_mode_shares"], cols["mode"]) == ("A;C", "A:0.5;C:0.5", "mixed")
    cols = placed(two_chains("B", "B"), True, AT_REF)
    assert (cols["ref_mode_chains"], cols["mode"]) == ("B;B", "reference")


def test_a_population_spread_over_two_modes_is_placed_by_its_shares_never_as_moved_mid_run():
    fit = draws(("A", 250), ("B", 250))
    cols = placed(fit, False, AT_REF)
    assert (cols["ref_mode_chains"], cols["ref_mode_shares"], cols["mode"]) == ("A+B", "A:0.5;B:0.5", "reference")
    assert cols["chains_hopped"] == 0 and cols["ref_modes_covered"] == "A,B"
    rows = pd.DataFrame({k: [cols[k]] for k in ("ref_mode_chains", "ref_mode_shares", "ref_mass_covered",
                                                "ref_mode_masses")})
    text = fit_answer("stan / pathfinder", rows)
    assert text == "stan / pathfinder: 1 of 1 seeds spread over modes A 0.50, B 0.50"
    assert "mid-run" not in text and "none" not in text
    # The same draws as a Markov chain: A then B is a move mid-run.
    assert mode_columns(fit, MODES, ordered=True)["ref_mode_chains"] == "A>B"


def test_a_fit_in_its_mode_whose_marginals_miss_it_by_over_one_sd_is_biased():
    """The trial's real2 Pathfinder: 98% of its draws in A, its W1 to A's draws 1.3 of A's sds."""
    assert fit_landing(["A"], {"A": 0.98, "-": 0.02}, MODES, 1.3, 10.0, w1_mode_sd=1.3)["mode"] == "biased"
    assert fit_landing(["A"], {"A": 0.98, "-": 0.02}, MODES, 1.3, 10.0, w1_mode_sd=0.2)["mode"] == "reference"
    # The W1 in sds: the mode's own draws shifted by 1.5 of their sds are 1.5 sds away (W1 of a shift
    # is the shift), and every family counts (here sigma alone is moved).
    mode = draws(("A", 400), seed=3)
    sd = float(mode.posterior["sigma"].std())
    moved = mode.copy(deep=True)
    moved.posterior["sigma"] = moved.posterior["sigma"] + 1.5 * sd
    assert _w1_in_sds(moved, mode) == pytest.approx(1.5)
    assert _w1_in_sds(mode, mode) == 0.0
