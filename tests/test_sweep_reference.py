"""Sweeps against each data set's reference posterior (issue 26, item 4): the reference's own landing
against the truth, the fit's landing against the truth apart, the default reference planned for every
data set, and the breaking points that tell "the posterior no longer identifies the truth" from "the
method misses the posterior"."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from backends.base import Fit, canonical_datatree
from bench.reference.posterior import Reference, canonical_relabel
from bench.report.frequencies import breaking_points, landing_frequencies
from bench.report.sweep_tables import sweep_findings, sweep_tables
from bench.score.metrics import evaluate, reference_truth_mass
from bench.score.problem import Problem
from bench.score.settings import MetricSettings
from models import Dataset, get_scenario
from models.errors import MixbenchError
from models.families import FamilyPoint
from tests.test_landing import scattered as landing_scattered
from tests.test_sweep import _row, wilson_by_hand

FORUM = get_scenario("forum-small")  # K = 2, D = 1, shared sigma: slopes 3 / -1 (the truth)
SPEC = FORUM.spec
SD = {"w": 0.01, "sigma": 0.004, "pi": 0.03}
FAST = MetricSettings(loo_max_obs=50)


def scattered(centre, chains, draws, seed, swap=()):
    """Draws around ``centre`` (sds SD); chains in ``swap`` hold the components' labels reversed."""
    return landing_scattered(centre, chains, draws, SD, seed, swap)


def shifted(by: float) -> dict:
    """The truth with both slopes moved by ``by``: a place the truth tolerances (0.3) tell apart."""
    return {**FORUM.truth, "w": np.asarray(FORUM.truth["w"], float) + by}


# ---------------------------------------------------------------------------------------------
# The reference's own landing against the truth


def test_a_nuts_references_truth_mass_is_the_share_of_its_chains_at_the_truth():
    """Two chains at the truth (one in the other labelling), two 0.6 away in both slopes: half the
    draws, whatever the labels."""
    post = {k: np.concatenate([a, b]) for (k, a), b in
            zip(scattered(FORUM.truth, 2, 200, 1, swap=(1,)).items(), scattered(shifted(0.6), 2, 200, 2).values())}
    assert reference_truth_mass(canonical_datatree(SPEC, post), FORUM.truth, None) == pytest.approx(0.5)


def test_a_modes_references_truth_mass_is_the_mass_of_the_modes_at_the_truth():
    """Each chain holds 70 draws of mode A (at the truth; chain 1's in the other labelling) and 30 of
    mode B (0.5 away): the truth's mode mass is 0.7 at the default tolerance (0.3) and 1 when the
    tolerance takes B in (0.7)."""
    a, b = scattered(FORUM.truth, 2, 70, 3, swap=(1,)), scattered(shifted(0.5), 2, 30, 4)
    draws = canonical_datatree(SPEC, {k: np.concatenate([a[k], b[k]], axis=1) for k in a})
    modes = np.array([["A"] * 70 + ["B"] * 30] * 2)
    assert reference_truth_mass(draws, FORUM.truth, modes) == pytest.approx(0.7)
    assert reference_truth_mass(draws, FORUM.truth, modes, MetricSettings(truth_location_atol=0.7)) == pytest.approx(1.0)
    # Grouped by chain instead, each chain's mean sits 0.15 from the truth: every draw counts.
    assert reference_truth_mass(draws, FORUM.truth, None) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def problem():
    data = FORUM.simulate(0, N=300)
    return Problem.make(SPEC, Dataset(x=data.x, y=data.y))


def _reference(problem, centre) -> Reference:
    draws = canonical_datatree(SPEC, scattered(centre, 4, 300, 5, swap=(2,)))
    lp, _ = problem.draw_log_densities(draws, per_chain=300)
    relabelled, _ = canonical_relabel(draws, lp, SPEC)
    tree = xr.DataTree.from_dict({"posterior": relabelled["posterior"].to_dataset(),
                                  "sample_stats": xr.Dataset({"lp": (("chain", "draw"), lp)})})
    return Reference(tree, {"name": "hand-built", "accepted": True})


def _nuts(centre, seed):
    return Fit(backend="t", method="nuts", status="ok", timings={"sampling": 1.0},
               draws=canonical_datatree(SPEC, scattered(centre, 2, 300, seed, swap=(1,))))


def test_a_fit_is_placed_against_the_reference_and_the_truth_apart(problem):
    """A posterior away from the truth (slopes 0.5 off): the fit that matches it lands in the
    reference's mode and out of the truth's, and the reference holds none of its mass at the truth.
    With the reference at the truth, all three say truth."""
    off = evaluate(_nuts(shifted(0.5), 7), truth=FORUM.truth, reference=_reference(problem, shifted(0.5)),
                   problem=problem, settings=FAST)
    assert (off["mode"], off["truth_mode"], off["ref_truth_mass"]) == ("reference", "other", 0.0)
    assert off["reference_source"] == "truth"  # one relabelling, to the truth, read by both
    at = evaluate(_nuts(FORUM.truth, 8), truth=FORUM.truth, reference=_reference(problem, FORUM.truth),
                  problem=problem, settings=FAST)
    assert (at["mode"], at["truth_mode"], at["ref_truth_mass"]) == ("reference", "truth", 1.0)
    alone = evaluate(_nuts(shifted(0.5), 7), truth=FORUM.truth, problem=problem, settings=FAST)
    assert (alone["mode"], alone["truth_mode"]) == ("other", "other") and math.isnan(alone["ref_truth_mass"])


# ---------------------------------------------------------------------------------------------
# A reference stored in a labelling other than the truth's (a nearly collapsed pivot)

WIDE = {"w": 0.8, "sigma": 0.004, "pi": 0.03}  # slopes 5 sds apart: a poorly identified posterior
PIVOT = (1, 17)  # the reference draw made nearly collapsed and used as canonical_relabel's pivot


def _flipped_reference(problem) -> tuple[Reference, dict]:
    """A reference whose draws sit around the truth, stored by canonical_relabel against a nearly
    collapsed pivot (slopes 1.05 / 0.95), as a poorly separated posterior's highest-lp draw can be:
    its draws are labelled by noise, so its means are nowhere near the truth's in any one
    permutation. Returns it and its draws in the labelling they were drawn in (the truth's)."""
    post = scattered_wide(FORUM.truth, 4, 300, 5)
    post["w"][PIVOT] = [[1.05], [0.95]]
    swapped = {k: v.copy() for k, v in post.items()}
    for name in ("w", "pi"):
        swapped[name][2] = swapped[name][2][:, ::-1]
    lp, _ = problem.draw_log_densities(canonical_datatree(SPEC, swapped), per_chain=300)
    pivot_lp = np.zeros_like(lp)
    pivot_lp[PIVOT] = 1.0
    relabelled, _ = canonical_relabel(canonical_datatree(SPEC, swapped), pivot_lp, SPEC)
    tree = xr.DataTree.from_dict({"posterior": relabelled["posterior"].to_dataset(),
                                  "sample_stats": xr.Dataset({"lp": (("chain", "draw"), lp)})})
    return Reference(tree, {"name": "flipped", "accepted": True}), post


def scattered_wide(centre, chains, draws, seed, swap=()):
    return landing_scattered(centre, chains, draws, WIDE, seed, swap)


def _by_hand(fit_post, ref_post) -> tuple[float, float]:
    """(max slope W1, max over chains and scalars of |chain mean - reference mean| / reference sd)
    of draws both in the labelling they were drawn in, with scipy and numpy alone."""
    from scipy.stats import wasserstein_distance

    fw, rw = (p["w"].reshape(-1, p["w"].shape[2]) for p in (fit_post, ref_post))
    w1 = max(wasserstein_distance(fw[:, k], rw[:, k]) for k in range(fw.shape[1]))
    dist = 0.0
    for name in ("w", "sigma", "pi"):
        ref = ref_post[name].reshape(-1, *ref_post[name].shape[2:])
        chains = fit_post[name].mean(axis=1)
        dist = max(dist, float(np.max(np.abs(chains - ref.mean(0)) / ref.std(0))))
    return w1, dist


def test_a_fit_matching_a_reference_stored_in_another_labelling_is_scored_as_matching_it(problem):
    """The reference's stored slope means are far from the truth's (its labelling is the collapsed
    pivot's), yet a fit drawn from the same distribution lands in its mode, at the W1 and distance
    the two samples have in the truth's labelling (by hand); one labelling for all the reference's
    draws gave a W1 of about 2 and a distance of about 1 sd here. A fit 6 away in both slopes (7.5
    sds) is still told apart."""
    ref, ref_post = _flipped_reference(problem)
    stored = ref.posterior["w"].mean(("chain", "draw")).values.ravel()
    truth = np.asarray(FORUM.truth["w"], float).ravel()
    assert np.all(np.abs(np.sort(stored) - np.sort(truth)) > 1.0)  # no permutation brings it to the truth
    same = scattered_wide(FORUM.truth, 2, 300, 7)
    fit = Fit(backend="t", method="nuts", status="ok", timings={"sampling": 1.0},
              draws=canonical_datatree(SPEC, landing_scattered(FORUM.truth, 2, 300, WIDE, 7, swap=(1,))))
    row = evaluate(fit, truth=FORUM.truth, reference=ref, problem=problem, settings=FAST)
    w1, dist = _by_hand(same, ref_post)
    assert row["w_w1_max"] == pytest.approx(w1, rel=1e-6) and w1 < 0.15
    assert row["ref_distance_sd"] == pytest.approx(dist, rel=1e-6) and dist < 0.3
    assert (row["mode"], row["truth_mode"], row["chains_on_target"]) == ("reference", "truth", 2)
    off = shifted(6.0)
    far = scattered_wide(off, 2, 300, 8)
    row = evaluate(Fit(backend="t", method="nuts", status="ok", timings={"sampling": 1.0},
                       draws=canonical_datatree(SPEC, far)), truth=FORUM.truth, reference=ref, problem=problem,
                   settings=FAST)
    w1, dist = _by_hand(far, ref_post)
    assert row["w_w1_max"] == pytest.approx(w1, rel=1e-6) and w1 > 5.5
    assert row["ref_distance_sd"] == pytest.approx(dist, rel=1e-6) and dist > 7
    assert row["mode"] == "other"


def test_a_fit_where_a_collapsed_looking_reference_is_is_in_its_mode_not_collapsed(problem):
    """A posterior whose slopes (0.2 / -0.2, sd 0.8) sit within 2 sds of each other reads as
    collapsed by the absolute test: a fit drawn from it lands in the reference's mode (the reference
    decides), its truth_mode stays collapsed (the absolute test). A collapsed fit (both slopes 1,
    sd 0.01) against a separated reference is still collapsed."""
    centre = {**FORUM.truth, "w": np.array([[0.2], [-0.2]])}
    draws = canonical_datatree(SPEC, scattered_wide(centre, 4, 300, 11, swap=(2,)))
    lp, _ = problem.draw_log_densities(draws, per_chain=300)
    relabelled, _ = canonical_relabel(draws, lp, SPEC)
    ref = Reference(xr.DataTree.from_dict({"posterior": relabelled["posterior"].to_dataset(),
                                           "sample_stats": xr.Dataset({"lp": (("chain", "draw"), lp)})}),
                    {"name": "close", "accepted": True})
    fit = Fit(backend="t", method="nuts", status="ok", timings={"sampling": 1.0},
              draws=canonical_datatree(SPEC, scattered_wide(centre, 2, 300, 12, swap=(1,))))
    row = evaluate(fit, truth=FORUM.truth, reference=ref, problem=problem, settings=FAST)
    assert (row["mode"], row["truth_mode"], row["chains_collapsed"]) == ("reference", "collapsed", 0)
    tied = Fit(backend="t", method="advi-fullrank", status="ok",
               draws=canonical_datatree(SPEC, scattered({**FORUM.truth, "w": np.array([[1.0], [1.0]])}, 1, 300, 13)))
    row = evaluate(tied, truth=FORUM.truth, reference=_reference(problem, FORUM.truth), problem=problem,
                   settings=FAST)
    assert (row["mode"], row["truth_mode"]) == ("collapsed", "collapsed")


# ---------------------------------------------------------------------------------------------
# Breaking points, two ways, on rows whose answer is known


def _ref_row(sep, method, seed, mode, truth_mode, mass, status="accepted"):
    row = _row(sep, method, seed, mode)
    row["cell"] = {**row["cell"], "data_seed": 0}
    row.update(truth_mode=truth_mode, ref_truth_mass=mass if status != "failed" else math.nan,
               reference_status=status)
    if status == "failed":  # no reference: the landing was against the truth
        row["mode"] = truth_mode
    return row


@pytest.fixture
def two_way_rows():
    """One data set per sep. Its reference holds all its mass at the truth at sep 4 and 2, none at
    sep 1 (the data stop identifying the truth there). NUTS lands every seed in the reference's mode
    at every sep (so out of the truth's at sep 1); ADVI lands 4/4 at sep 4 and 1/4 at sep 2 and 1."""
    rows = []
    for sep, mass in ((4, 1.0), (2, 1.0), (1, 0.0)):
        rows += [_ref_row(sep, "nuts", s, "reference", "truth" if mass else "other", mass) for s in range(4)]
        hits = 4 if sep == 4 else 1
        rows += [_ref_row(sep, "advi-fullrank", s, "reference" if s < hits else "other",
                          "truth" if s < hits and mass else "other", mass) for s in range(4)]
    return pd.DataFrame(rows)


def share(k, n):
    lo, hi = wilson_by_hand(k, n)
    return f"{k}/{n} {k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def test_a_method_that_matches_a_reference_which_misses_the_truth_is_not_broken(two_way_rows):
    freq = landing_frequencies(two_way_rows)
    post = breaking_points(freq, share="posterior").set_index("line")
    ident = breaking_points(freq, share="identifies").set_index("line")
    truth = breaking_points(freq).set_index("line")
    # NUTS matches its posterior at every sep; only against the truth does it "break" at sep 1.
    assert (post.loc["nuts", "held"], post.loc["nuts", "hardest_held"]) == ("all", 1.0)
    assert post.loc["nuts", "posterior_there"] == share(4, 4)
    assert (truth.loc["nuts", "held"], truth.loc["nuts", "broke_at"]) == ("at", 1.0)
    # ADVI misses an identifying reference at sep 2 (1/4): the method's own failure.
    assert (post.loc["advi-fullrank", "hardest_held"], post.loc["advi-fullrank", "broke_at"]) == (4.0, 2.0)
    assert post.loc["advi-fullrank", "posterior_at_break"] == share(1, 4)
    # The posterior stops identifying the truth at sep 1 for every line (one data set: 0/1).
    for line in ("nuts", "advi-fullrank"):
        assert (ident.loc[line, "hardest_held"], ident.loc[line, "broke_at"]) == (2.0, 1.0)
        assert ident.loc[line, "identifies_at_break"] == share(0, 1) and ident.loc[line, "mass_broke"] == 0.0

    table = {t.key: t for t in sweep_tables(two_way_rows)}["sweep-breaking"]
    frame = table.frame.set_index("line")
    assert frame.loc["nuts", "misses posterior at sep"] == "never"
    assert frame.loc["advi-fullrank", "misses posterior at sep"] == "2"
    assert (frame.loc["nuts", "not identified at sep"], frame.loc["nuts", "truth identified to sep"]) == ("1", "2")
    assert frame.loc["nuts", "identified at stop"] == f"{share(0, 1)}, mass 0.00"
    assert (frame.loc["nuts", "hardest sep held"], frame.loc["nuts", "broke at sep"]) == ("2", "1")  # truth apart
    assert set(frame["reference made"]) == {"made"}
    from bench.report.glossary import describe

    assert [c for c in table.frame.columns if describe(c) is None] == []


def test_a_biased_fit_is_counted_apart_and_not_as_matching(two_way_rows):
    rows = two_way_rows.copy()
    rows.loc[(rows["sep"] == 2.0) & (rows["method"] == "nuts") & (rows["seed"] == 0), "mode"] = "biased"
    freq = landing_frequencies(rows).set_index(["sep", "line"])
    assert (freq.loc[(2.0, "nuts"), "biased_k"], freq.loc[(2.0, "nuts"), "posterior_k"]) == (1, 3)
    landed = {t.key: t for t in sweep_tables(rows)}["sweep-landings"].frame.set_index(["sep", "line"])
    assert landed.loc[("2", "nuts"), "biased"] == share(1, 4)


def test_findings_name_the_methods_miss_and_the_datas_limit_apart(two_way_rows):
    [section] = sweep_findings(two_way_rows)
    text = {s.text.split(":")[0]: s.text for s in section.sentences}
    assert text["numpyro / nuts"].startswith(
        f"numpyro / nuts: matches the posterior at every sep ({share(4, 4)} at sep 1); the posterior stops "
        f"identifying the truth at sep 1 (reference: truth's mode mass 0.00; {share(0, 1)} data sets).")
    assert text["numpyro / advi-fullrank"].startswith(
        f"numpyro / advi-fullrank: matches the posterior to sep = 4 ({share(4, 4)}) and misses it from 2 "
        f"({share(1, 4)}); the posterior stops identifying the truth at sep 1")
    assert "Against the truth its fits held to sep = 2" in text["numpyro / nuts"]


def test_without_a_reference_the_table_says_so_and_keeps_the_truth_columns(two_way_rows):
    failed = two_way_rows.assign(reference_status="failed", ref_truth_mass=math.nan)
    failed["mode"] = failed["truth_mode"]
    table = {t.key: t for t in sweep_tables(failed)}["sweep-breaking"]
    assert "No accepted reference posterior (--reference none, or each was provisional or could not be made" in table.text
    assert not any("posterior" in c or "identified" in c for c in table.frame.columns)
    frame = table.frame.set_index("line")
    assert frame.loc["nuts", "reference made"] == "failed at sep 1, 2, 4"
    assert (frame.loc["nuts", "hardest sep held"], frame.loc["nuts", "broke at sep"]) == ("2", "1")
    [section] = sweep_findings(failed)
    assert all(s.text.endswith("(references failed at sep 1, 2, 4: against the truth only).")
               for s in section.sentences)
    none = two_way_rows.assign(reference_status="none", ref_truth_mass=math.nan)
    none["mode"] = none["truth_mode"]
    [section] = sweep_findings(none)
    assert all(s.text.endswith("(no reference posterior: against the truth only).") for s in section.sentences)


def test_references_provisional_everywhere_are_named_not_called_none(two_way_rows):
    """References made at every setting but none accepted: the findings say where they were
    provisional (as the table does), not that there was no reference posterior."""
    rows = two_way_rows.assign(reference_status="provisional", ref_truth_mass=math.nan)
    rows["mode"] = rows["truth_mode"]
    frame = {t.key: t for t in sweep_tables(rows)}["sweep-breaking"].frame.set_index("line")
    assert frame.loc["nuts", "reference made"] == "provisional at sep 1, 2, 4"
    [section] = sweep_findings(rows)
    assert all(s.text.endswith("(references provisional at sep 1, 2, 4: against the truth only).")
               for s in section.sentences)


def test_a_provisional_reference_counts_against_the_truth_only(two_way_rows):
    """A reference that failed its checks places no fit (bench.run.references): sep 1 drops out of
    the two-way walk, and the table and findings say where."""
    rows = two_way_rows.copy()
    rows.loc[rows["sep"] == 1.0, "reference_status"] = "provisional"
    freq = landing_frequencies(rows)
    hard = freq[(freq["sep"] == 1.0) & (freq["line"] == "nuts")].iloc[0]
    assert (hard["posterior_n"], hard["identifies_n"], hard["reference"]) == (0, 0, "provisional")
    ident = breaking_points(freq, share="identifies").set_index("line")
    assert (ident.loc["nuts", "held"], ident.loc["nuts", "hardest_held"]) == ("all", 2.0)
    frame = {t.key: t for t in sweep_tables(rows)}["sweep-breaking"].frame.set_index("line")
    assert frame.loc["nuts", "reference made"] == "provisional at sep 1"
    [section] = sweep_findings(rows)
    assert all(s.text.endswith("Reference provisional at sep 1: counted against the truth only there.")
               for s in section.sentences)


# ---------------------------------------------------------------------------------------------
# Planning: the default reference reaches every cell's data set


@pytest.mark.parametrize("extra, data_sets", [([], 4), (["--data-per-seed"], 12)])
def test_a_sweep_attaches_its_default_reference_to_every_cells_data_set(monkeypatch, tmp_path, extra, data_sets):
    """2 seps x 2 specs (unordered; ordered by slope) = 4 posteriors with one data set per point,
    x 3 seeds with a data set each: one NUTS reference made (asked for) per data set and spec,
    every cell given its own."""
    import bench.cli
    import bench.run.references

    asked, seen = [], {}

    def resolve(choice, problem, settings, has_truth, make):
        key = (float(problem.dataset.y[0]), problem.spec.ordering)
        asked.append((choice, settings.method, has_truth, key))
        return SimpleNamespace(path=tmp_path / f"ref{len(asked)}", modes=[], describe=lambda: "fake",
                               lacks=lambda: [])

    def run_grid(cells, options, executor, progress):
        seen["cells"] = cells
        raise MixbenchError("stop here")

    monkeypatch.setattr(bench.run.references, "resolve_reference", resolve)
    monkeypatch.setattr(bench.cli, "run_grid", run_grid)
    args = ["sweep", "--vary", "sep=1,2", "--vary", "N=200", "--backends", "numpyro",
            "--methods", "nuts,nuts:ordering=slope,advi-fullrank", "--seeds", "0-2", "--out", str(tmp_path / "o")]
    assert bench.cli.main([*args, *extra]) == 2
    assert len(asked) == data_sets and len({key for *_, key in asked}) == data_sets
    assert {(choice, method, truth) for choice, method, truth, _ in asked} == {("make", "nuts", True)}
    cells = seen["cells"]
    assert len(cells) == 2 * 3 * 3 and all(c.reference for c in cells)
    by_data = {}
    for cell in cells:  # every fit of one data set and spec shares one reference, and no other's
        key = (cell.scenario, cell.data_seed, cell.spec.get("ordering", "none"))
        by_data.setdefault(key, set()).add(cell.reference)
    assert len(by_data) == data_sets and all(len(refs) == 1 for refs in by_data.values())
    assert len({next(iter(refs)) for refs in by_data.values()}) == data_sets


# ---------------------------------------------------------------------------------------------
# A small real sweep with its references


def test_a_small_sweep_reports_the_separated_breaking_points(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--vary", "sep=1,4", "--vary", "N=100", "--backends", "numpyro", "--methods", "nuts",
            "--seeds", "0-1", "--warmup", "150", "--draws", "150", "--reference-warmup", "300",
            "--reference-draws", "300", "--jobs", "1", "--out", str(out)]
    done = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (out / "cells.jsonl").read_text().splitlines() if line.strip()]
    fits = [r for r in rows if r.get("method") == "nuts"]
    assert len(fits) == 4 and all(r["status"] == "ok" for r in fits)
    assert all(r["reference_status"] in ("accepted", "provisional") for r in fits)
    assert all(0.0 <= r["ref_truth_mass"] <= 1.0 and r["truth_mode"] in ("truth", "other", "collapsed", "mixed")
               for r in fits)
    # The two far-apart lines (sep 4): the posterior sits on the truth and NUTS in it.
    easy = [r for r in fits if r["sep"] == 4.0]
    assert all(r["ref_truth_mass"] == 1.0 and r["mode"] == "reference" for r in easy)
    report = (out / "report.md").read_text()
    assert "truth identified to sep" in report
    assert "misses posterior at sep" in report and "numpyro / nuts: matches the posterior" in report
    assert "truth identified to sep" in done.stdout  # the breaking table printed at the end
    assert FamilyPoint(sep=4.0).name in report


def test_simulated_fits_placed_by_a_reference_are_not_said_to_recover_the_truth(two_way_rows):
    """At sep 1 the reference misses the truth and NUTS sits in the reference's mode: the setup's
    findings name the reference as the target and give the truth's landing apart (0 of 4), never
    "Recovered the truth"; with the reference failed, the truth is the target again."""
    from bench.report.findings import setup_findings
    from bench.report.tables import assign_fit_ids, fit_summary

    rows = two_way_rows[(two_way_rows["sep"] == 1.0) & (two_way_rows["method"] == "nuts")].assign(
        setup="default", reference_source="truth")
    section = setup_findings(fit_summary(assign_fit_ids(rows)))
    text = " ".join(s.text for s in section.sentences)
    assert "scored against the reference posterior of these data" in section.title
    assert "Reached the reference posterior's mode on every seed: numpyro / nuts (4 of 4; in the truth's mode " \
           "on 0 of 4" in text
    assert "Recovered the truth" not in text
    failed = rows.assign(reference_status="failed", mode=rows["truth_mode"])
    section = setup_findings(fit_summary(assign_fit_ids(failed)))
    assert section.title.endswith("simulated, scored against the truth")
    assert "Never reached the truth: numpyro / nuts (0 of 4" in " ".join(s.text for s in section.sentences)
