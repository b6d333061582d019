"""Stacking of chains (bench.score.stacking, bench.score.stacked_rows) on chains placed by hand: weights against
an independent SciPy optimisation of the stacking objective and against its closed form, a
single-mode fit whose stacked mixture is the fit itself, and Pathfinder paths stacked only where
they disagree."""

from __future__ import annotations

import warnings

import arviz_stats as azs
import numpy as np
import pytest
import xarray as xr
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from backends.base import Fit, canonical_datatree
from backends.importance import GROUP, keep_proposal, proposal_group, psis_resample
from bench.score.metrics import score_fit
from bench.score.settings import MetricSettings
from bench.score.problem import Problem
from bench.score.stacked_rows import split, stacked_row
from bench.score.stacking import non_mixing, stacked_fit, stacking_columns
from models import Dataset, MixtureSpec
from models.oracle import log_likelihood_terms

SPEC = MixtureSpec(K=2, D=1)
DRAWS = 200


@pytest.fixture(scope="module")
def data() -> Dataset:
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(150, 1))
    on_first = rng.uniform(size=150) < 0.7
    y = np.where(on_first, 2.0 * x[:, 0], -1.0 * x[:, 0]) + 0.1 * rng.standard_normal(150)
    return Dataset(x=x, y=y, truth={"w": np.array([[2.0], [-1.0]]), "sigma": np.array(0.1),
                                    "pi": np.array([0.7, 0.3])})


def _chain(rng, w, sigma, pi, jitter=0.01) -> dict[str, np.ndarray]:
    w = np.asarray(w, float)[None] + jitter * rng.standard_normal((DRAWS, 2, 1))
    sigma = sigma * np.exp(jitter * rng.standard_normal(DRAWS))
    pi = np.broadcast_to(np.asarray(pi, float), (DRAWS, 2))
    return {"w": w, "sigma": sigma, "pi": pi}


def _fit(chains: list[dict]) -> Fit:
    posterior = {k: np.stack([c[k] for c in chains]) for k in chains[0]}
    return Fit(backend="hand", method="nuts", status="ok", draws=canonical_datatree(SPEC, posterior),
               timings={"sampling": 1.0}, seed=0)


def _independent_elpd_i(fit: Fit, data: Dataset) -> np.ndarray:
    """PSIS-LOO pointwise elpd of each chain from the oracle's pointwise log likelihood."""
    post = fit.draws["posterior"]
    out = []
    for c in range(post.sizes["chain"]):
        log_lik = np.stack([log_likelihood_terms(SPEC, data.x, data.y, {n: post[n].values[c, d] for n in ("w", "sigma", "pi")})
                            for d in range(post.sizes["draw"])])
        tree = xr.DataTree.from_dict({"log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik[None])})})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out.append(np.ravel(azs.loo(tree, pointwise=True, reff=1.0).elpd_i.values))
    return np.stack(out)


def _scipy_stacking(elpd_i: np.ndarray) -> np.ndarray:
    """max_w sum_i log sum_c w_c exp(elpd_ic), w = softmax(a), by L-BFGS (not arviz-stats' SLSQP)."""
    def loss(a):
        return -np.sum(logsumexp(elpd_i + np.log(softmax(np.append(a, 0.0)))[:, None], axis=0))
    result = minimize(loss, np.zeros(elpd_i.shape[0] - 1), method="L-BFGS-B", options={"gtol": 1e-10})
    return softmax(np.append(result.x, 0.0))


def _objective(elpd_i: np.ndarray, weights: np.ndarray) -> float:
    with np.errstate(divide="ignore"):
        return float(np.sum(logsumexp(elpd_i + np.log(weights)[:, None], axis=0)))


def test_two_one_line_modes_are_stacked_by_the_share_of_points_each_explains(data):
    rng = np.random.default_rng(0)
    # Chain 0 puts both components on the line y = 2x, chain 1 both on y = -x: each predicts its
    # own line's points and misses the other's.
    fit = _fit([_chain(rng, [[2.0], [2.0]], 0.1, [0.5, 0.5]), _chain(rng, [[-1.0], [-1.0]], 0.1, [0.5, 0.5])])
    problem = Problem.make(SPEC, data)
    cols = stacking_columns(fit, fit.draws, problem)
    weights = np.array([float(v) for v in cols["stacking_weights"].split(";")])

    elpd_i = _independent_elpd_i(fit, data)
    expected = _scipy_stacking(elpd_i)
    # arviz-stats' SLSQP stops within about 0.005 of the optimum in w (seen: 0.690 against
    # 0.694), where the objective is flat (0.01 nats lower): both are asserted.
    np.testing.assert_allclose(weights, expected, atol=0.01)
    assert _objective(elpd_i, weights) == pytest.approx(_objective(elpd_i, expected), abs=0.02)
    # Closed form where each point is explained by one chain only: w_c = the share of its points.
    share = float(np.mean(elpd_i[0] > elpd_i[1]))
    assert weights[0] == pytest.approx(share, abs=0.03)
    assert 0.6 < weights[0] < 0.8
    assert cols["stacking_elpd"] == pytest.approx(_objective(elpd_i, weights), abs=0.02)
    assert cols["stacking_elpd"] > cols["stacking_elpd_best"] + 10  # the mixture beats either mode


def test_a_poor_mode_gets_the_weight_the_scipy_optimum_gives(data):
    rng = np.random.default_rng(1)
    good = _chain(rng, [[2.0], [-1.0]], 0.1, [0.7, 0.3])
    poor = _chain(rng, [[0.5], [0.5]], 0.9, [0.5, 0.5])  # one wide line through both
    fit = _fit([good, poor, _chain(rng, [[2.0], [-1.0]], 0.1, [0.7, 0.3])])
    cols = stacking_columns(fit, fit.draws, Problem.make(SPEC, data))
    weights = np.array([float(v) for v in cols["stacking_weights"].split(";")])
    np.testing.assert_allclose(weights, _scipy_stacking(_independent_elpd_i(fit, data)), atol=0.01)
    assert weights[1] < 0.02


def test_a_single_mode_fit_stacks_to_itself(data):
    rng = np.random.default_rng(2)
    fit = _fit([_chain(rng, [[2.0], [-1.0]], 0.1, [0.7, 0.3], jitter=0.02) for _ in range(4)])
    problem = Problem.make(SPEC, data)
    every = MetricSettings(loo_max_obs=data.N)  # stacking_elpd and elpd_loo over the same (all) observations
    row, means = score_fit(fit, truth=data.truth, problem=problem, settings=every)
    # Chains that mix are not stacked when a fit is scored (no PSIS pass per chain) ...
    assert not non_mixing(row) and not isinstance(row["stacking_weights"], str), row["metric_errors"]
    # ... and stacked all the same, their mixture is the fit itself.
    cols = stacking_columns(fit, fit.draws, problem, max_obs=data.N)
    assert cols["stacking_components"] == "chains"
    weights = np.array([float(v) for v in cols["stacking_weights"].split(";")])
    assert weights.sum() == pytest.approx(1.0)
    row.update(cols, cell_id="c", method="nuts")
    assert stacked_row(row, fit, data.truth, None, problem) is None  # its chains mix: no row of its own
    stacked, stacked_means = score_fit(stacked_fit(fit, fit.draws, weights), truth=data.truth, problem=problem,
                                       settings=every)
    stacked.update(stacked_means)
    assert stacked["method"] == "nuts+stacked"
    assert stacked["n_chains"] == 1 and stacked["n_draws"] == DRAWS
    # The mixture of one mode's chains is that mode: the same means (within 4 Monte Carlo sds of
    # a mean of DRAWS draws), the same predictive density, the same recovery.
    post = fit.draws["posterior"]
    for name, sd in (("w", 0.02), ("sigma", 0.002)):
        for key in [k for k in means if k.startswith(f"mean.{name}")]:
            assert stacked[key] == pytest.approx(means[key], abs=4 * sd / np.sqrt(DRAWS)), key
    assert stacked["elpd_loo"] == pytest.approx(row["elpd_loo"], abs=0.5)
    assert row["stacking_elpd"] == pytest.approx(row["elpd_loo"], abs=0.5)
    assert stacked["mode"] == row["mode"] == "truth"
    assert post.sizes["chain"] == 4
    assert split(dict(row)) == [row]


def test_chains_in_two_modes_get_a_stacked_row_of_their_own(data):
    rng = np.random.default_rng(6)
    fit = _fit([_chain(rng, [[2.0], [2.0]], 0.1, [0.5, 0.5]), _chain(rng, [[-1.0], [-1.0]], 0.1, [0.5, 0.5])])
    problem = Problem.make(SPEC, data)
    row, _ = score_fit(fit, truth=data.truth, problem=problem)
    row.update(cell_id="c", method="nuts")
    stacked = stacked_row(row, fit, data.truth, None, problem)
    assert row["rhat_max"] > 1.5  # both chains collapsed, each onto its own line: they do not mix
    assert stacked["method"] == "nuts+stacked" and stacked["stacked_from"] == "c"
    assert stacked["stacking_weights"] == row["stacking_weights"]
    # The stacked mixture predicts both lines: its elpd_loo beats either chain's alone.
    assert stacked["elpd_loo"] > row["stacking_elpd_best"] + 10
    assert [r["cell_id"] for r in split({**row, "stacked_row": stacked})] == ["c", "c+stacked"]


def test_the_stacked_mixture_takes_each_chains_share_of_distinct_draws(data):
    rng = np.random.default_rng(4)
    fit = _fit([_chain(rng, [[2.0], [2.0]], 0.1, [0.5, 0.5]), _chain(rng, [[-1.0], [-1.0]], 0.1, [0.5, 0.5])])
    mixed = stacked_fit(fit, fit.draws, np.array([0.25, 0.75]))
    w = mixed.draws["posterior"]["w"].values[0, :, 0, 0]
    assert w.size == DRAWS
    assert np.sum(w > 0.5) == 50 and np.sum(w < 0.5) == 150
    assert np.unique(w).size == DRAWS  # no draw repeated
    assert mixed.method == "nuts+stacked"
    with pytest.raises(ValueError, match="3 weights for 2 components"):
        stacked_fit(fit, fit.draws, np.array([0.2, 0.3, 0.5]))


def test_one_chain_has_nothing_to_stack(data):
    rng = np.random.default_rng(5)
    fit = _fit([_chain(rng, [[2.0], [-1.0]], 0.1, [0.7, 0.3])])
    row, _ = score_fit(fit, truth=data.truth, problem=Problem.make(SPEC, data))
    assert not isinstance(row["stacking_weights"], str)
    assert stacked_row({**row, "cell_id": "c", "method": "nuts"}, fit, data.truth, None, None) is None


def _pathfinder_fit(paths: list[dict]) -> Fit:
    """A multi-path Pathfinder fit: the paths' draws pooled as its proposal (path after path),
    resampled by PSIS weights of a tame log p / log q."""
    pool = {k: np.concatenate([p[k] for p in paths])[None] for k in paths[0]}
    n_pool = pool["w"].shape[1]
    rng = np.random.default_rng(8)
    log_q = rng.normal(0.0, 1.0, n_pool)
    log_p = log_q + 0.1 * rng.standard_normal(n_pool)
    chosen, _ = psis_resample(log_p, log_q, DRAWS, seed=0)
    draws = canonical_datatree(SPEC, {k: v[:, chosen] for k, v in pool.items()})
    draws[GROUP] = proposal_group(log_p, log_q, np.repeat(np.arange(len(paths)), DRAWS), chosen)
    keep_proposal(draws, canonical_datatree(SPEC, pool))
    return Fit(backend="hand", method="pathfinder", status="ok", draws=draws, timings={"optimisation": 1.0}, seed=0)


def _swapped(path: dict) -> dict:
    return {**path, "w": path["w"][:, ::-1], "pi": path["pi"][:, ::-1]}


def test_pathfinder_paths_that_agree_are_not_stacked_whatever_their_labels(data):
    rng = np.random.default_rng(7)
    paths = [_chain(rng, [[2.0], [-1.0]], 0.1, [0.7, 0.3]) for _ in range(4)]
    # Paths 1 and 3 found the same mode under the other labelling: label-invariant, they agree.
    fit = _pathfinder_fit([paths[0], _swapped(paths[1]), paths[2], _swapped(paths[3])])
    problem = Problem.make(SPEC, data)
    row, _ = score_fit(fit, truth=data.truth, problem=problem)
    assert row["metric_errors"] == ""
    # The R-hat across paths is that of the paths in one labelling (arviz-stats on the draws as drawn).
    posterior = xr.Dataset({k: (("chain", "draw") + (("component", "covariate") if k == "w" else
                                                    ("component",) if k == "pi" else ()), np.stack([p[k] for p in paths]))
                            for k in ("w", "sigma", "pi")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = azs.rhat(posterior)
    expected = np.nanmax(np.concatenate([np.ravel(rhat[n].values) for n in rhat.data_vars]))
    assert row["stacking_rhat"] == pytest.approx(expected, rel=1e-9)
    assert row["stacking_rhat"] < 1.1
    assert not non_mixing(row) and not isinstance(row["stacking_weights"], str)
    assert stacked_row({**row, "cell_id": "c", "method": "pathfinder"}, fit, data.truth, None, problem) is None


def test_pathfinder_paths_in_two_places_are_stacked(data):
    rng = np.random.default_rng(9)
    # Paths 0 and 1 put both components on y = 2x, paths 2 and 3 on y = -x.
    fit = _pathfinder_fit([_chain(rng, [[2.0], [2.0]], 0.1, [0.5, 0.5]) for _ in range(2)]
                          + [_chain(rng, [[-1.0], [-1.0]], 0.1, [0.5, 0.5]) for _ in range(2)])
    problem = Problem.make(SPEC, data)
    row, _ = score_fit(fit, truth=data.truth, problem=problem)
    assert row["metric_errors"] == ""
    assert row["stacking_rhat"] > 1.5 and non_mixing(row)
    assert row["stacking_components"] == "paths"
    weights = np.array([float(v) for v in row["stacking_weights"].split(";")])
    # Each line's two paths share the weight of the points on it (about 0.7 on y = 2x).
    assert 0.6 < weights[:2].sum() < 0.8
    row.update(cell_id="c", method="pathfinder")
    stacked = stacked_row(row, fit, data.truth, None, problem)
    assert stacked["method"] == "pathfinder+stacked" and stacked["stacked_from"] == "c"
    assert stacked["stacking_rhat"] == row["stacking_rhat"]
    assert stacked["elpd_loo"] > row["stacking_elpd_best"] + 10


def test_smc_runs_are_stacked_only_where_they_disagree(data):
    import dataclasses

    rng = np.random.default_rng(10)
    problem = Problem.make(SPEC, data)
    agree = dataclasses.replace(_fit([_chain(rng, [[2.0], [-1.0]], 0.1, [0.7, 0.3]) for _ in range(2)]), method="smc")
    row, _ = score_fit(agree, truth=data.truth, problem=problem)
    assert row["metric_errors"] == "" and row["stacking_rhat"] < 1.1
    assert not isinstance(row["stacking_weights"], str)
    apart = dataclasses.replace(_fit([_chain(rng, [[2.0], [2.0]], 0.1, [0.5, 0.5]),
                                      _chain(rng, [[-1.0], [-1.0]], 0.1, [0.5, 0.5])]), method="smc")
    row, _ = score_fit(apart, truth=data.truth, problem=problem)
    assert row["stacking_rhat"] > 1.5 and row["stacking_components"] == "chains"
    row.update(cell_id="c", method="smc")
    assert stacked_row(row, apart, data.truth, None, problem)["method"] == "smc+stacked"


def test_the_report_table_shows_the_stacked_row_beside_its_fit():
    import pandas as pd

    from bench.report.mode_share_table import mode_share_table

    frame = pd.DataFrame([
        {"fit": "F1", "status": "ok", "backend": "numpyro", "method": "nuts", "seed": 0, "stacking_weights": "0.9;0.1",
         "stacking_mode_weights": "A:0.9;B:0.1", "ref_mode_masses": "A:0.97:0;B:0.03:3.8"},
        {"fit": "F2", "status": "ok", "backend": "numpyro", "method": "nuts+stacked", "seed": 0,
         "stacked_from": "x", "ref_mode_shares": "A:0.9;B:0.1"},
        {"fit": "F3", "status": "ok", "backend": "numpyro", "method": "advi-meanfield", "seed": 0},
    ])
    table = mode_share_table(frame)
    assert list(table.frame["method"]) == ["nuts", "nuts+stacked"]
    assert table.frame.loc[0, "stacking weight per mode"] == "A:0.9;B:0.1"
    assert table.frame.loc[1, "draws per mode"] == "A:0.9;B:0.1"
    assert mode_share_table(frame.iloc[2:]).empty
