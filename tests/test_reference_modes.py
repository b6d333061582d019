"""A reference made of modes: mode masses against independent computations, fits named by mode."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from backends.base import canonical_datatree
from bench.reference.mode_mass import bridge_log_z, importance_log_z, masses, mode_log_z
from bench.score.modes import POOR_MASS, fit_answer, land, mode_columns, modes_table_lines
from bench.score.problem import Problem, batch_log_density
from models.data import Dataset
from models.oracle import log_density
from models.spec import random_point
from tests.conftest import MODEL_SPECS
from models.spec import MixtureSpec, NormalPrior, SigmaPrior

SPEC = MixtureSpec(K=2, D=0, intercept=True, ordering="intercept", sigma="per-component",
                   intercept_prior=NormalPrior(0.0, 5.0), sigma_prior=SigmaPrior("halfnormal", 2.0))


def three_clusters(left: int, middle: int, right: int, seed: int = 0, gap: float = 5.0, sd: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(-gap, sd, left), rng.normal(0, sd, middle), rng.normal(gap, sd, right)])


def test_bridge_and_importance_sampling_give_log_z_of_a_normal():
    """log Z of 3 x N(0, I_2): log 3, by both estimators within their stated errors."""
    rng = np.random.default_rng(1)

    def log_p(z):
        return np.log(3.0) - 0.5 * (z**2).sum(axis=1) - np.log(2 * np.pi)

    post = rng.standard_normal((4, 500, 2))
    out = mode_log_z(log_p, post, 4000, seed=2)
    for key in ("bridge", "is"):
        assert out[f"log_z_{key}_se"] > 0
        assert abs(out[f"log_z_{key}"] - np.log(3.0)) <= 4 * out[f"log_z_{key}_se"] + 1e-3
    # The delta-method masses sum to 1 and the error of a mode holding everything is 0.
    m, se = masses(np.array([0.0, np.log(3.0)]), np.array([0.01, 0.01]))
    assert m == pytest.approx([0.25, 0.75]) and se[0] == pytest.approx(se[1])
    assert bridge_log_z(log_p(post[0]), log_p(post[0]), log_p(post[1]), log_p(post[1]), 500)[0] == pytest.approx(0.0)
    assert importance_log_z(np.zeros(10), np.zeros(10))[0] == pytest.approx(0.0)


def test_mode_masses_match_numerical_integration():
    """K = 2, D = 0 on three clusters (10 at -5, 8 at 0, 10 at +5, sd 0.4), sigma = 0.6 and the weights
    (0.5, 0.5) held fixed in the oracle-based integrand so only the ordered means (b1 < b2) are
    free. Two real modes: the middle cluster joins the left or the right one. Their masses by
    integration on a 0.025-wide grid (split at b1 + b2 = 0: the density there is 29 nats below the
    top, so the split is clean), against
    bridge and importance sampling from draws of each mode (exact draws from the grid)."""
    y = three_clusters(10, 8, 10, seed=1)
    x = np.zeros((y.size, 0))

    def log_p(b: np.ndarray) -> np.ndarray:
        S = b.shape[0]
        return batch_log_density(SPEC, x, y, {"w": np.zeros((S, 2, 0)), "b": b, "sigma": np.full((S, 2), 0.6),
                                              "pi": np.full((S, 2), 0.5)})

    # The vectorised oracle is the oracle (tests/test_problem.py); checked here at one point too.
    one = {"w": np.zeros((2, 0)), "b": np.array([-3.0, 1.8]), "sigma": np.array([0.6, 0.6]), "pi": np.array([0.5, 0.5])}
    assert log_p(one["b"][None])[0] == pytest.approx(log_density(SPEC, x, y, one))
    step = 0.025
    grid = np.arange(-7.0, 7.0, step) + step / 2
    b1, b2 = np.meshgrid(grid, grid, indexing="ij")
    points = np.column_stack([b1.ravel(), b2.ravel()])
    lp = log_p(points)
    region_a = points.sum(axis=1) < 0
    log_z = {name: special.logsumexp(lp[mask]) + 2 * np.log(step)
             for name, mask in (("A", region_a), ("B", ~region_a))}
    exact = np.exp(log_z["A"] - np.logaddexp(log_z["A"], log_z["B"]))
    assert 0.8 < exact < 0.95  # two real modes, neither negligible (0.873)
    band = np.abs(points.sum(axis=1)) < 0.1
    assert lp[band].max() < lp.max() - 20
    rng = np.random.default_rng(3)
    estimates = {}
    for name, mask in (("A", region_a), ("B", ~region_a)):
        prob = np.exp(lp[mask] - special.logsumexp(lp[mask]))
        picks = rng.choice(mask.sum(), size=2000, p=prob)
        draws = points[mask][picks] + rng.uniform(-step / 2, step / 2, (2000, 2))
        estimates[name] = mode_log_z(log_p, draws.reshape(4, 500, 2), 3000, seed=4)
    for key in ("bridge", "is"):
        m, se = masses(np.array([estimates[n][f"log_z_{key}"] for n in "AB"]),
                       np.array([estimates[n][f"log_z_{key}_se"] for n in "AB"]))
        print(f"mass of mode A: {key} {m[0]:.4f} +- {se[0]:.4f}, integration {exact:.4f}")
        assert abs(m[0] - exact) <= 4 * se[0] + 0.005, (key, m[0], se[0], exact)
        assert se[0] < 0.05


def _mirror_problem(seed: int = 5) -> Problem:
    """Two real modes of equal mass by construction: y is symmetric about 0 as a set (each
    point's mirror image is in the data) and the priors are symmetric about 0, so y -> -y maps
    the mode where the middle cluster joins the left cluster onto the one where it joins the
    right: the posterior is mirror-symmetric and the two modes hold 0.5 each."""
    half = three_clusters(20, 10, 0, seed=seed, gap=4.0, sd=0.6)
    outer, middle = half[:20], half[20:]
    y = np.concatenate([outer, -outer, middle, -middle])
    return Problem.make(SPEC, Dataset(np.zeros((y.size, 0)), y, name="mirror"))


@pytest.mark.slow
def test_a_mirror_symmetric_data_set_gives_two_modes_of_mass_one_half_and_fits_are_named_by_mode(tmp_path):
    from bench.reference.posterior import (ReferenceSettings)
    from bench.reference.make import make_reference

    problem = _mirror_problem()
    ref = make_reference(problem, ReferenceSettings(explore_chains=8, explore_warmup=200, explore_draws=100,
                                                    warmup=300, draws=400, proposal_draws=2000))
    weighted = [m for m in ref.modes if m["status"] == "weighted"]
    assert len(weighted) == 2, modes_table_lines(ref.modes)
    for mode in weighted:
        for key in ("bridge", "is"):
            assert abs(mode[f"mass_{key}"] - 0.5) <= 4 * mode[f"mass_{key}_se"] + 0.005
    # The modes are mirror images: b of one is minus b of the other, reversed.
    a, b = (np.array(m["location"]["b"]) for m in weighted)
    assert a == pytest.approx(-b[::-1], abs=0.2)
    # Fits landing in each mode are named so: a chain of each mode's draws (in the other
    # labelling: relabelling is not needed), and a point at a mode.
    left = next(m for m in weighted if m["location"]["b"][0] < -3)
    right = next(m for m in weighted if m is not left)
    ds = ref.posterior
    in_left = ds["b"].values[..., 0] < -3
    pick = {n: [] for n in ds.data_vars}
    for mask in (in_left, ~in_left):
        for n in ds.data_vars:
            values = ds[n].values[mask][:200]
            pick[n].append(values[:, ::-1] if values.ndim > 1 and values.shape[1] == 2 else values)
    tree = canonical_datatree(SPEC, {n: np.stack(v) for n, v in pick.items()})
    cols = mode_columns(tree, ref.modes)
    assert cols["ref_mode_chains"] == f"{left['name']};{right['name']}"
    assert cols["ref_mass_covered"] == pytest.approx(left["mass_bridge"] + right["mass_bridge"])
    assert cols["chains_poor_mass"] == 0
    point = {n: np.asarray(v) for n, v in right["location"].items()}
    assert land(point, ref.modes, 2) == right["name"]
    assert ref.info["checks"]["mass_precision"]
    # The modes table travels with the posteriordb files.
    from bench.reference.posterior import load_reference, write_reference

    again = load_reference(write_reference(ref, tmp_path / "ref"), problem)
    assert [m["mass_bridge"] for m in again.modes] == pytest.approx([m["mass_bridge"] for m in ref.modes])
    assert again.info["inference"]["method"] == "numpyro_nuts_per_mode_mass_weighted"


@pytest.mark.slow
def test_mirror_lobes_that_chains_cross_between_are_both_weighted_with_one_half_each():
    """The mirror data at seed 6, with the default settings (/work/notes/demo23.md's "mirror" run):
    the barrier between the two mirror lobes is crossable, and the chains started in one lobe
    were found in the other. Before, that lobe was called unstable with no mass and the other took
    mass 1. Now both lobes are weighted modes whose masses lie within their stated errors of 1/2
    (the symmetry argument of _mirror_problem), each says that chains cross between the lobes, and
    none is unstable."""
    from bench.reference.make import make_reference
    from bench.reference.posterior import ReferenceSettings

    ref = make_reference(_mirror_problem(seed=6), ReferenceSettings())
    print("\n".join(modes_table_lines(ref.modes)))
    assert not [m for m in ref.modes if m["status"] == "unstable"], modes_table_lines(ref.modes)
    weighted = [m for m in ref.modes if m["status"] == "weighted"]
    assert len(weighted) == 2, modes_table_lines(ref.modes)
    for mode in weighted:
        for key in ("bridge", "is"):
            assert abs(mode[f"mass_{key}"] - 0.5) <= 4 * mode[f"mass_{key}_se"] + 0.005, (key, mode)
    for mode in weighted:
        assert f"chains cross between {weighted[0]['name']} and {weighted[1]['name']}" in mode["note"]
    a, b = (np.array(m["location"]["b"]) for m in weighted)
    assert np.sort(a) == pytest.approx(-np.sort(b)[::-1], abs=0.3)
    # The reference's draws are named by their modes, in the modes' masses.
    for mode in weighted:
        assert abs((ref.draw_modes == mode["name"]).mean() - mode["mass_bridge"]) < 0.01


@pytest.mark.slow
def test_mirror_lobes_that_chains_cross_often_are_sampled_as_one_region_split_by_their_draws():
    """The mirror construction with the outer clusters at -3.3 and 3.3 (seed 6): a lower barrier,
    which chains cross many times a run, so that few or none stay in one lobe. The lobes are
    sampled as one region: both listed as weighted modes, joined, masses within their stated errors
    of 1/2 (by symmetry), and the reference's draws named by their lobes, which alternate along
    its chains."""
    from bench.reference.make import make_reference
    from bench.reference.posterior import ReferenceSettings

    half = three_clusters(20, 10, 0, seed=6, gap=3.3, sd=0.6)
    y = np.concatenate([half[:20], -half[:20], half[20:], -half[20:]])
    problem = Problem.make(SPEC, Dataset(np.zeros((y.size, 0)), y, name="mirror-low"))
    ref = make_reference(problem, ReferenceSettings(explore_chains=8, explore_warmup=200, explore_draws=100, warmup=300,
                                                    draws=400, proposal_draws=2000, explore_map_starts=2,
                                                    explore_pathfinder_starts=0))
    print("\n".join(modes_table_lines(ref.modes)))
    weighted = [m for m in ref.modes if m["status"] == "weighted"]
    assert len(weighted) == 2 and len(ref.modes) == 2, modes_table_lines(ref.modes)
    first, second = weighted
    assert first["joined_with"] == [second["name"]] and second["joined_with"] == [first["name"]]
    assert f"chains cross between {first['name']} and {second['name']}: sampled as one region" in first["note"]
    for mode in weighted:
        for key in ("bridge", "is"):
            assert 0 < mode[f"mass_{key}_se"] < 0.15
            assert abs(mode[f"mass_{key}"] - 0.5) <= 4 * mode[f"mass_{key}_se"] + 0.005, (key, mode)
    assert first["mass_bridge"] + second["mass_bridge"] == pytest.approx(1.0)
    assert max(len(runs) for runs in ref.info["draw_modes"]) > 2


def test_a_point_far_from_every_mode_lands_in_none_and_answers_read_as_sentences():
    modes = [
        {"name": "A", "status": "weighted", "mass_bridge": 0.93, "mass_bridge_se": 0.01, "lp_gap": 0.0,
         "lp_mean": -10.0, "location": {"b": [-1.0, 2.0], "sigma": [1.0, 1.0], "pi": [0.5, 0.5]},
         "sd": {"b": [0.1, 0.1], "sigma": [0.1, 0.1], "pi": [0.05, 0.05]}},
        {"name": "B", "status": "weighted", "mass_bridge": 0.03, "mass_bridge_se": 0.01, "lp_gap": 16.5,
         "lp_mean": -26.5, "location": {"b": [-3.0, 1.0], "sigma": [1.0, 1.0], "pi": [0.5, 0.5]},
         "sd": {"b": [0.1, 0.1], "sigma": [0.1, 0.1], "pi": [0.05, 0.05]}},
    ]
    assert land({"b": [2.0, -1.0], "sigma": [1.0, 1.0], "pi": [0.5, 0.5]}, modes, 2) == "A"  # labels swapped
    assert land({"b": [0.0, 5.0], "sigma": [1.0, 1.0], "pi": [0.5, 0.5]}, modes, 2) is None
    masses_text = "A:0.93:0;B:0.03:16.5"
    import pandas as pd

    nuts = pd.DataFrame({"ref_mode_chains": ["A;A;A;A"], "ref_mode_masses": [masses_text], "ref_mass_covered": [0.93]})
    assert fit_answer("NUTS", nuts) == "NUTS: 4 of 4 chains in mode A (mass 0.93); mass covered 0.93"
    maps = pd.DataFrame({"ref_mode_chains": ["B", "B", "A", "A", "A"], "ref_mode_masses": [masses_text] * 5,
                         "ref_mass_covered": [0.03, 0.03, 0.93, 0.93, 0.93]})
    assert fit_answer("MAP", maps) == ("MAP: 3 of 5 seeds in mode A (mass 0.93), 2 in mode B "
                                       "(mass 0.03, 16.5 nats lower)")
    assert 0.03 < POOR_MASS
    assert modes_table_lines(modes)[1].startswith("A    weighted   0.930 +- 0.010")
    tiny = {**modes[1], "mass_bridge": 1.1e-5, "mass_bridge_se": 2e-6}
    assert modes_table_lines([tiny])[1].startswith("B    weighted   1.1e-05 +- 2e-06")
    # A mass and its error 18 characters wide are still apart from the next column.
    wide = {**tiny, "mass_bridge_se": 2.7e-7, "mass_is": 1.8e-5, "mass_is_se": 5.1e-7}
    assert "1.1e-05 +- 2.7e-07 1.8e-05 +- 5.1e-07" in modes_table_lines([wide])[1]


def test_the_reference_draws_mix_the_modes_by_mass_even_when_a_mode_lost_a_chain():
    from types import SimpleNamespace

    from bench.reference.modes import _mixture, allocate

    spec = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component")

    def mode(chains: int, value: float, mass: float) -> dict:
        arrays = {"w": np.zeros((chains, 10, 2, 0)), "b": np.full((chains, 10, 2), value),
                  "sigma": np.ones((chains, 10, 2)), "pi": np.full((chains, 10, 2), 0.5)}
        return {"_rel": canonical_datatree(spec, arrays), "_lp": np.full((chains, 10), value),
                "_diverging": np.zeros((chains, 10), bool), "mass_bridge": mass, "chains_used": chains}

    first, second = mode(4, 1.0, 0.7), mode(3, 2.0, 0.3)
    first["name"], second["name"] = "A", "B"
    tree, lp, _, draw_modes = _mixture([first, second], SimpleNamespace(draws=10))
    assert tree["posterior"]["b"].shape == (4, 10, 2)
    assert (lp == 1.0).sum(axis=1).tolist() == [7, 7, 7, 7] and (lp == 2.0).sum(axis=1).tolist() == [3, 3, 3, 3]
    # Each draw's mode is kept: the runs name the mode every draw (its lp says which) came from.
    from bench.reference.posterior import Reference

    labels = Reference(tree, {"draw_modes": draw_modes}).draw_modes
    assert ((labels == "A") == (lp == 1.0)).all() and ((labels == "B") == (lp == 2.0)).all()
    assert allocate(np.array([0.5, 0.25, 0.25]), 7).sum() == 7


# Two hand-built modes of the forum model (K = 2, D = 1, shared sigma), in the canonical
# labelling (slopes ascending): A at the truth, B with the first slope moved from -1 to -0.5.
FORUM_SPEC = MixtureSpec(K=2, D=1, intercept=False, sigma="shared")
MODE_SD = {"w": 0.01, "sigma": 0.004, "pi": 0.02}
AT = {"A": {"w": [[-1.0], [3.0]], "sigma": 0.1, "pi": [0.5, 0.5]},
      "B": {"w": [[-0.5], [3.0]], "sigma": 0.1, "pi": [0.3, 0.7]}}


def _forum_modes() -> list[dict]:
    sd = {"w": [[0.01], [0.01]], "sigma": 0.004, "pi": [0.02, 0.02]}
    return [{"name": "A", "status": "weighted", "mass_bridge": 0.9, "mass_bridge_se": 0.01, "lp_gap": 0.0,
             "lp_mean": 0.0, "location": AT["A"], "sd": sd},
            {"name": "B", "status": "weighted", "mass_bridge": 0.1, "mass_bridge_se": 0.01, "lp_gap": 3.0,
             "lp_mean": -3.0, "location": AT["B"], "sd": sd}]


def _around(mode: str, chains: int, draws: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: np.asarray(v, dtype=float)[None, None] + MODE_SD[n] * rng.standard_normal((chains, draws) + np.shape(v))
            for n, v in AT[mode].items()}


def test_a_chain_that_leaves_its_mode_mid_run_is_named_by_both_modes_not_one():
    """Chain 0 spends its first 120 draws in mode A and its last 80 in mode B: its mean lies in
    neither, and a landing by the mean alone would name none (or one); it is reported as having
    left A for B, both modes count as covered, and the answer says so."""
    a, b, a2 = _around("A", 1, 120, 1), _around("B", 1, 80, 2), _around("A", 1, 200, 3)
    hopped = {n: np.concatenate([a[n], b[n]], axis=1) for n in a}
    arrays = {n: np.concatenate([hopped[n], a2[n]]) for n in a}
    arrays["pi"] = arrays["pi"] / arrays["pi"].sum(-1, keepdims=True)
    cols = mode_columns(canonical_datatree(FORUM_SPEC, arrays), _forum_modes())
    assert cols["ref_mode_chains"] == "A>B;A"
    assert cols["chains_hopped"] == 1
    assert cols["ref_modes_covered"] == "A,B" and cols["ref_mass_covered"] == pytest.approx(1.0)
    assert cols["chains_poor_mass"] == 0
    # The whole chain's mean is in no mode: what the landing by the mean alone gave.
    whole = {n: v[0].mean(axis=0) for n, v in arrays.items()}
    assert land(whole, _forum_modes(), 2) is None
    import pandas as pd

    rows = pd.DataFrame({"ref_mode_chains": [cols["ref_mode_chains"]], "ref_mass_covered": [1.0],
                         "ref_mode_masses": ["A:0.9:0;B:0.1:3"]})
    assert fit_answer("NUTS", rows) == ("NUTS: 1 of 2 chains in mode A (mass 0.9), 1 moved between modes mid-run "
                                        "(mode A, then mode B); mass covered 1")


def test_w1_to_the_fits_own_mode_is_measured_against_that_modes_draws_and_kept_on_round_trip(tmp_path):
    """A reference of 900 draws from mode A and 100 from mode B per chain; a one-chain fit drawn
    around A. Its W1 to the whole reference includes B's share; to its own mode it is the W1 to
    A's draws alone, computed here with scipy on the sorted components."""
    from scipy.stats import wasserstein_distance

    import xarray as xr

    from backends.base import Fit
    from bench.score.metrics import evaluate
    from bench.reference.posterior import Reference, load_reference, write_reference

    ref_a, ref_b = _around("A", 2, 900, 10), _around("B", 2, 100, 11)
    ref = {n: np.concatenate([ref_a[n], ref_b[n]], axis=1) for n in ref_a}
    ref["pi"] = ref["pi"] / ref["pi"].sum(-1, keepdims=True)
    tree = canonical_datatree(FORUM_SPEC, ref)
    tree = xr.DataTree.from_dict({"posterior": tree["posterior"].to_dataset(),
                                  "sample_stats": xr.Dataset({"lp": (("chain", "draw"), np.zeros((2, 1000)))})})
    info = {"name": "two-modes", "accepted": True, "spec": FORUM_SPEC.to_dict(), "modes": _forum_modes(),
            "draw_modes": [[["A", 900], ["B", 100]]] * 2}
    reference = load_reference(write_reference(Reference(tree, info), tmp_path / "ref"))
    assert reference.draw_modes.shape == (2, 1000)
    assert (reference.draw_modes[:, :900] == "A").all() and (reference.draw_modes[:, 900:] == "B").all()
    fit_arrays = _around("A", 1, 400, 12)
    fit_arrays["pi"] = fit_arrays["pi"] / fit_arrays["pi"].sum(-1, keepdims=True)
    fit = Fit(backend="t", method="advi-fullrank", status="ok", draws=canonical_datatree(FORUM_SPEC, fit_arrays))
    row = evaluate(fit, reference=reference)
    assert row["ref_mode_chains"] == "A"
    expected = max(wasserstein_distance(fit_arrays["w"][0, :, k, 0], ref_a["w"][:, :, k, 0].ravel()) for k in range(2))
    assert row["w_w1_mode"] == pytest.approx(expected, rel=1e-9)
    # B's tenth of the draws sits 0.5 away in the first slope: about 0.05 of W1 the own mode has not.
    assert row["w_w1_max"] > row["w_w1_mode"] + 0.04
    assert row["w_w1_mode"] < 3 * row["w_w1_mode_floor"]
    # A reference without per-draw modes (one NUTS run, or written before they were kept) reads,
    # with no own-mode W1.
    older = Reference(tree, {k: v for k, v in info.items() if k != "draw_modes"})
    assert older.draw_modes is None
    assert np.isnan(evaluate(fit, reference=older)["w_w1_mode"])


def test_a_mode_says_which_starts_found_it():
    from bench.reference.modes import found_by

    sources = ["NUTS chains from prior draws"] * 12 + ["MAP starts"] * 4 + ["Pathfinder starts"] * 4
    totals = {s: sources.count(s) for s in sources}
    group = [0, 3, 12, 13, 19]
    assert found_by([sources[c] for c in group], totals) == ("2 of 12 NUTS chains from prior draws, 2 of 4 MAP starts, "
                                                             "1 of 4 Pathfinder starts")


def test_mode_gaps_are_measured_from_the_best_weighted_mode_not_an_unstable_one():
    """The two_lines demo's case: an unstable mode (its chains left it) 1.69 nats above the only
    weighted one made every fit read '1.69 nats lower'."""
    from bench.reference.modes import lp_gaps

    modes = [{"status": "weighted", "lp_mean": -81.88}, {"status": "weighted", "lp_mean": -90.0},
             {"status": "unstable", "lp_mean": -80.19}]
    assert lp_gaps(modes) == pytest.approx([0.0, 8.12, -1.69])
    assert lp_gaps([{"status": "unstable", "lp_mean": -3.0}, {"status": "degenerate", "lp_mean": -1.0}]) == [2.0, 0.0]


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_a_batch_of_points_maps_to_the_unconstrained_space_and_back_as_each_point_does(name):
    """The modes reference moves batches of canonical points to NumPyro's unconstrained space and
    back (bench.reference.modes.Unconstrained); every spec (shared coefficients, softmax weights,
    orderings, t errors) must map a batch of S points as it maps each one (a batch once lost the
    leading axis to ``gamma[:-1]`` and ``b[0]``)."""
    import jax

    from bench.reference.modes import Unconstrained

    spec = MODEL_SPECS[name]
    space = Unconstrained(spec)
    rng = np.random.default_rng(3)
    points = [spec.check_params(random_point(spec, rng)) for _ in range(3)]
    batch = {n: np.stack([np.asarray(p[n], dtype=float) for p in points]) for n in points[0]}
    with jax.enable_x64(True):
        z = space.to_z(batch)
        one_by_one = np.concatenate([space.to_z({n: np.asarray(v)[None] for n, v in p.items()}) for p in points])
        back, _ = space.from_z(z)
        again = space.to_z(back)
    assert z.shape == (3, space.dim)
    np.testing.assert_allclose(z, one_by_one, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(again, z, rtol=1e-9, atol=1e-9)


def _place(b, lp: float = -10.0, sd: float = 0.1):
    """A chain's place (bench.reference.modes._ChainPlace) made by hand: K = 2, D = 0."""
    from bench.reference.modes import _ChainPlace

    place = object.__new__(_ChainPlace)
    place.mean = {"w": np.zeros((2, 0)), "b": np.asarray(b, dtype=float), "sigma": np.ones(2), "pi": np.full(2, 0.5)}
    place.sd = {"w": np.zeros((2, 0)), "b": np.full(2, sd), "sigma": np.full(2, sd), "pi": np.full(2, sd)}
    place.lp_mean, place.lp_sd = lp, 1.0
    return place


def test_candidates_that_chains_cross_between_are_one_region_and_others_stay_apart():
    """The merge rule on chain places made by hand: a chain whose segments lie in candidate 0, then
    (labels swapped) 0 again, on the barrier, then in candidate 1 visited 0 and 1; a chain that left
    for nowhere known visited only its own; candidates are joined when a chain started in one
    visited the other, transitively, and never otherwise."""
    from bench.reference.modes import chain_visits, joined_regions

    leads = [_place([-3.0, 1.4]), _place([-1.5, 3.7]), _place([0.0, 8.0])]
    crossing = [_place([-3.0, 1.4]), _place([1.42, -3.02]), _place([-2.2, 2.5]), _place([-1.5, 3.7])]
    assert chain_visits(crossing, leads, 2, 4.0) == [0, 1]
    assert chain_visits([_place([-3.0, 1.4]), _place([5.0, 5.0])], leads, 2, 4.0) == [0]
    assert chain_visits([_place([-1.5, 3.7], lp=-40.0)], leads, 2, 4.0) == []  # in place, 30 nats down
    assert joined_regions([[[0, 1], [0]], [[1]], [[2]]]) == [[0, 1], [2]]
    assert joined_regions([[[0]], [[1], []], [[2]]]) == [[0], [1], [2]]
    assert joined_regions([[[0]], [[1]], [[1, 2]]]) == [[0], [1, 2]]  # a chain of 2 found in 1
    assert joined_regions([[[0, 1]], [[1]], [[2, 1]]]) == [[0, 1, 2]]


def test_draws_are_given_their_lobe_whatever_their_labels_and_lobe_shares_carry_their_mc_error():
    """Draws of two lobes (b near (-3, 1.4) or (-1.5, 3.7)), a quarter of them with their labels
    swapped: every draw's lobe is the one it was drawn from. For independent draws the share's
    standard error is the binomial sqrt(p (1 - p) / n) (within 15%); chains that sit in one lobe
    each disagree (lobe indicator R-hat over MIX_RHAT_MAX), chains drawn alike agree."""
    from bench.reference.modes import MIX_RHAT_MAX, draw_lobes, lobe_shares

    rng = np.random.default_rng(4)
    truth = (rng.random((4, 500)) < 0.3).astype(int)
    centres = np.array([[-3.0, 1.4], [-1.5, 3.7]])
    b = centres[truth] + 0.3 * rng.standard_normal((4, 500, 2))
    swap = rng.random((4, 500)) < 0.25
    b[swap] = b[swap][:, ::-1]
    sigma = np.where(swap[..., None], [2.3, 0.7], [0.7, 2.3]) + 0.05 * rng.standard_normal((4, 500, 2))
    arrays = {"w": np.zeros((4, 500, 2, 0)), "b": b, "sigma": sigma, "pi": np.full((4, 500, 2), 0.5)}
    tree = canonical_datatree(SPEC, arrays)
    locations = [{"w": np.zeros((2, 0)), "b": c, "sigma": np.array([0.7, 2.3]), "pi": np.full(2, 0.5)} for c in centres]
    assert (draw_lobes(tree, locations) == truth).all()
    shares, errors, rhat = lobe_shares(truth, 2)
    assert shares == pytest.approx([1 - truth.mean(), truth.mean()])
    binomial = np.sqrt(truth.mean() * (1 - truth.mean()) / truth.size)
    assert errors == pytest.approx([binomial, binomial], rel=0.15)
    assert rhat < 1.02
    apart = np.repeat([[0], [0], [1], [1]], 500, axis=1)
    assert lobe_shares(apart, 2)[2] > MIX_RHAT_MAX
    assert lobe_shares(np.zeros((4, 500), int), 2) == (pytest.approx([1.0, 0.0]), pytest.approx([0.0, 0.0]), 1.0)


def test_log_z_of_a_two_lobed_region_with_per_lobe_proposals():
    """log Z of 3 x (an equal mixture of N((-6, 0), I) and N((6, 0), I)): log 3, by both estimators
    within their stated errors, when the proposals are fitted per lobe; importance sampling's
    k-hat then says its error can be trusted."""
    rng = np.random.default_rng(5)
    centres = np.array([[-6.0, 0.0], [6.0, 0.0]])

    def log_p(z):
        parts = [-0.5 * ((z - c) ** 2).sum(axis=1) - np.log(2 * np.pi) + np.log(0.5) for c in centres]
        return np.log(3.0) + np.logaddexp(*parts)

    lobes = (rng.random((4, 600)) < 0.5).astype(int)
    post = centres[lobes] + rng.standard_normal((4, 600, 2))
    out = mode_log_z(log_p, post, 4000, seed=6, lobes=lobes)
    for key in ("bridge", "is"):
        assert abs(out[f"log_z_{key}"] - np.log(3.0)) <= 4 * out[f"log_z_{key}_se"] + 1e-3, (key, out)
        assert out[f"log_z_{key}_se"] < 0.05
    assert out["is_khat"] < 0.7


def test_a_regions_draws_are_named_by_their_lobes_in_the_reference_mixture():
    from types import SimpleNamespace

    from bench.reference.modes import _mixture

    spec = MixtureSpec(K=2, D=0, intercept=True, sigma="per-component")
    arrays = {"w": np.zeros((2, 10, 2, 0)), "b": np.zeros((2, 10, 2)), "sigma": np.ones((2, 10, 2)),
              "pi": np.full((2, 10, 2), 0.5)}
    names = np.array([["A"] * 6 + ["B"] * 4, ["B"] * 10])
    region = {"_rel": canonical_datatree(spec, arrays), "_lp": np.zeros((2, 10)), "_diverging": np.zeros((2, 10), bool),
              "mass_bridge": 1.0, "chains_used": 2, "_names": names}
    _, _, _, draw_modes = _mixture([region], SimpleNamespace(draws=10))
    assert draw_modes == [[["A", 6], ["B", 4]], [["B", 10]]]
