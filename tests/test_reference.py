"""Reference posteriors: round trip, refusals, canonical labelling, chain dropping, user draws."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from backends.base import Backend, Fit, FitSettings, canonical_datatree
from bench.reference.posterior import (ReferenceSettings, load_reference, read_draws_file, reference_from_draws, write_reference)
from bench.reference.make import make_reference, resolve_reference
from bench.score.problem import Problem
from models import MixbenchError, get_scenario, log_density
from models.data import Dataset

SEP = get_scenario("separated")  # K = 2, D = 1, intercepts -2 / 2, ordered by intercept, per-component sigma
SPEC = SEP.spec.with_(ordering="none")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """References made here go to a temporary cache, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data():
    return SEP.simulate(0, N=200)


def iid_draws(truth, chains=2, draws=300, sd=0.02, seed=0, swap_chain=None):
    """Draws scattered around the truth; ``swap_chain`` stores its components the other way round."""
    rng = np.random.default_rng(seed)
    post = {k: np.asarray(v, float)[None, None] + sd * rng.standard_normal((chains, draws) + np.shape(v))
            for k, v in truth.items()}
    post["pi"] = np.abs(post["pi"]) / np.abs(post["pi"]).sum(-1, keepdims=True)
    post["sigma"] = np.abs(post["sigma"])
    if swap_chain is not None:
        for name in ("w", "b", "sigma", "pi"):
            post[name][swap_chain] = post[name][swap_chain][:, ::-1]
    return post


def to_csv(post, path):
    chains, draws = next(iter(post.values())).shape[:2]
    frame = {"chain": np.repeat(np.arange(chains), draws)}
    for name, arr in post.items():
        flat = arr.reshape(chains * draws, -1)
        for i, index in enumerate(np.ndindex(*arr.shape[2:])):
            frame[f"{name}[{','.join(map(str, index))}]"] = flat[:, i]
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


def test_user_draws_round_trip_and_canonical_labelling(tmp_path, data):
    problem = Problem.make(SPEC, data)
    post = iid_draws(SEP.truth, swap_chain=1)
    ref = reference_from_draws(problem, to_csv(post, tmp_path / "draws.csv"))
    # Canonical labelling: both chains relabelled alike, components sorted by intercept.
    np.testing.assert_allclose(ref.point["b"], [-2.0, 2.0], atol=0.01)
    np.testing.assert_allclose(ref.point["w"][:, 0], [1.0, -1.0], atol=0.01)
    assert ref.posterior["b"].isel(component=0).max() < 0 < ref.posterior["b"].isel(component=1).min()
    # lp is the oracle's at every draw.
    ds = ref.posterior
    for c, d in ((0, 0), (1, 17), (1, 299)):
        point = {n: ds[n].isel(chain=c, draw=d).values for n in ds.data_vars}
        assert ref.lp[c, d] == pytest.approx(log_density(SPEC, data.x, data.y, point), rel=1e-12)
    assert ref.info["made_by"]["kind"] == "user-draws" and ref.accepted

    path = write_reference(ref, tmp_path / "ref")
    again = load_reference(path, problem)
    np.testing.assert_array_equal(again.lp, ref.lp)
    for name in ref.posterior.data_vars:
        np.testing.assert_array_equal(again.posterior[name].values, ref.posterior[name].values)
    info = json.loads((path / "info.json").read_text())
    assert info["data"]["digest"] == data.digest() and info["spec"] == SPEC.to_dict()


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_a_reference_for_other_data_spec_or_scale_is_refused(tmp_path, data):
    problem = Problem.make(SPEC, data)
    path = write_reference(reference_from_draws(problem, to_csv(iid_draws(SEP.truth), tmp_path / "d.csv")),
                           tmp_path / "ref")
    other = Dataset(x=data.x, y=data.y + 1e-9)
    with pytest.raises(MixbenchError) as exc:
        load_reference(path, Problem.make(SPEC, other))
    assert "made for data digest" in _one_line(exc) and data.digest()[:12] in str(exc.value)
    with pytest.raises(MixbenchError) as exc:
        load_reference(path, Problem.make(SPEC.with_(sigma="shared"), data))
    assert "made for another spec (differs in sigma)" in _one_line(exc)
    with pytest.raises(MixbenchError) as exc:
        load_reference(path, Problem.make(SPEC, data, standardize=True))
    assert "without --standardize" in _one_line(exc)
    with pytest.raises(MixbenchError) as exc:
        load_reference(tmp_path / "nowhere", problem)
    assert "not a reference directory" in _one_line(exc)


def test_draws_files_that_do_not_fit_the_spec_are_refused(tmp_path):
    post = iid_draws(SEP.truth)
    post["pi"][0, 3] = [0.7, 0.7]
    with pytest.raises(MixbenchError, match="not on the simplex"):
        read_draws_file(to_csv(post, tmp_path / "a.csv"), SPEC)
    post = iid_draws(SEP.truth)
    del post["b"]
    with pytest.raises(MixbenchError, match=r"no column 'b\[0\]'"):
        read_draws_file(to_csv(post, tmp_path / "b.csv"), SPEC)
    (tmp_path / "x.txt").write_text("w\n1\n")
    with pytest.raises(MixbenchError, match="expected a .nc, .csv or posteriordb"):
        read_draws_file(tmp_path / "x.txt", SPEC)


def test_posteriordb_style_weights_fill_the_last_component(tmp_path):
    """posteriordb's low_dim_gauss_mix names its weight theta: one column pi[0]; pi[1] = 1 - theta."""
    spec = SPEC.with_(D=0)
    truth = {"w": np.zeros((2, 0)), "b": np.array([-2.0, 2.0]), "sigma": np.array([1.0, 1.0]),
             "pi": np.array([0.3, 0.7])}
    post = iid_draws(truth, chains=1, draws=50)
    post.pop("w")
    path = tmp_path / "pdb.csv"
    to_csv({k: v for k, v in post.items() if k != "pi"}, path)
    frame = pd.read_csv(path)
    frame["pi[0]"] = post["pi"][0, :, 0]
    frame.to_csv(path, index=False)
    tree = read_draws_file(path, spec)
    np.testing.assert_allclose(tree["posterior"]["pi"].sum("component"), 1.0)
    np.testing.assert_allclose(tree["posterior"]["pi"].values[0, :, 1], 1 - post["pi"][0, :, 0])


def test_netcdf_draws_are_read(tmp_path):
    post = iid_draws(SEP.truth)
    canonical_datatree(SPEC, post).to_netcdf(tmp_path / "d.nc", engine="h5netcdf")
    tree = read_draws_file(tmp_path / "d.nc", SPEC)
    np.testing.assert_allclose(tree["posterior"]["w"].values, post["w"])


class PoorModeBackend(Backend):
    """NUTS-shaped draws around the truth; chain 3 sits in a poor mode (slopes swapped)."""

    name = "poor-mode"

    def versions(self):
        return {"poor-mode": "1"}

    methods = {"nuts": "_sample"}

    def log_density(self, spec, dataset, params):
        return log_density(spec, dataset.x, dataset.y, params)

    def _sample(self, spec, dataset, method, settings, seed):
        post = iid_draws(SEP.truth, chains=settings.chains, draws=settings.draws, sd=0.01, seed=seed)
        post["w"][3] = post["w"][3][:, ::-1]  # each intercept paired with the other line's slope
        stats = {"diverging": np.zeros((settings.chains, settings.draws), bool)}
        return Fit(backend=self.name, method=method, status="ok", engine="fake",
                   draws=canonical_datatree(spec, post, stats))


class IidBackend(PoorModeBackend):
    """Independent draws around the truth in one labelling: every chain alike."""

    def _sample(self, spec, dataset, method, settings, seed):
        post = iid_draws(SEP.truth, chains=settings.chains, draws=settings.draws, sd=0.01, seed=seed)
        stats = {"diverging": np.zeros((settings.chains, settings.draws), bool)}
        return Fit(backend=self.name, method=method, status="ok", engine="fake",
                   draws=canonical_datatree(spec, post, stats))


class SwitchingBackend(PoorModeBackend):
    """Two chains whose draws disagree in place (not labelling): R-hat far above 1.01."""

    def _sample(self, spec, dataset, method, settings, seed):
        fit = super()._sample(spec, dataset, method, settings, seed)
        post = fit.draws["posterior"].to_dataset()
        b = post["b"].values.copy()
        b[0] += 0.05
        fit.draws["posterior"] = xr.DataTree(post.assign(b=(post["b"].dims, b)))
        return fit


def test_a_chain_in_a_poor_mode_is_dropped_and_recorded(data):
    problem = Problem.make(SPEC, data)
    ref = make_reference(problem, ReferenceSettings(method="nuts", backend="tests.test_reference:PoorModeBackend",
                                                    chains=4, warmup=0, draws=1000, ess_min=100))
    diag = ref.info["diagnostics"]
    assert ref.accepted and diag["chains_used"] == 3
    (dropped,) = diag["chains_dropped"]
    # The swapped-slope mode's gap, from the oracle at the two points.
    swapped = {**SEP.truth, "w": SEP.truth["w"][::-1]}
    gap = log_density(SPEC, data.x, data.y, SEP.truth) - log_density(SPEC, data.x, data.y, swapped)
    assert dropped["chain"] == 3 and dropped["mean_lp_below_best"] == pytest.approx(gap, rel=0.02)
    assert gap > 1000


def test_a_reference_failing_its_checks_is_kept_as_provisional_with_its_cause(tmp_path, data):
    problem = Problem.make(SPEC, data)
    settings = ReferenceSettings(method="nuts", backend="tests.test_reference:SwitchingBackend", chains=4, warmup=0, draws=400,
                                 ess_min=100)
    ref = make_reference(problem, settings)
    assert not ref.accepted and ref.status == "provisional" and ref.info["checks"]["rhat"] is False
    assert ref.failed_checks[0].startswith("R-hat ") and "R-hat -" not in ref.failed_checks[0]
    # Chain 0's intercepts sit 0.05 above the others' (5 draw sds of 0.01): two places, not too few draws.
    (cause,) = [c for c in ref.causes if c["cause"] == "modes"]
    assert "relabelled means of b[" in cause["evidence"] and "more draws will not merge" in cause["advice"]
    assert not any(c["cause"] == "few_draws" for c in ref.causes)
    path = write_reference(ref, tmp_path / "provisional")
    again = load_reference(path, problem)  # read back as what it is, never as accepted
    assert again.status == "provisional" and again.causes == ref.causes
    assert any("more draws will not merge" in line for line in again.lacks())
    # Made on first need, a provisional reference does not stop the run: it is returned as such,
    # and a second resolve reads it from the cache instead of making it again.
    first = resolve_reference("auto", problem, settings)
    assert first.status == "provisional"
    assert resolve_reference("auto", problem, settings).info["created"] == first.info["created"]
    # One refused by an older mixbench, which did not say why, is made again, with its causes.
    info_path = first.path / "info.json"
    old = json.loads(info_path.read_text())
    del old["causes"], old["status"]
    info_path.write_text(json.dumps(old))
    remade = resolve_reference("auto", problem, settings)
    assert remade.causes == ref.causes and "causes" in json.loads(info_path.read_text())
    # With a truth, auto takes no provisional reference.
    assert resolve_reference("auto", problem, settings, has_truth=True) is None


def test_an_accepted_reference_of_other_settings_wins_over_a_cached_provisional_one(data):
    """The cached-refused-reference bug: a run with --reference-draws 2000 made an accepted one, and
    later runs without the flag must use it, not the earlier provisional one."""
    problem = Problem.make(SPEC, data)
    failing = ReferenceSettings(method="nuts", backend="tests.test_reference:SwitchingBackend", chains=4, warmup=0, draws=400,
                                ess_min=100)
    passing = ReferenceSettings(method="nuts", backend="tests.test_reference:PoorModeBackend", chains=4, warmup=0, draws=2000,
                                ess_min=100)
    provisional = resolve_reference("auto", problem, failing)
    accepted = resolve_reference("make", problem, passing)
    assert provisional.status == "provisional" and accepted.accepted and accepted.path != provisional.path
    used = resolve_reference("auto", problem, failing)
    assert used.accepted and used.path == accepted.path


def _tree(post):
    return canonical_datatree(SPEC, post)


def test_too_few_draws_advises_how_many(data):
    """iid draws: R-hat passes, ESS about the draw count falls short of a high bar: only more
    draws are advised, scaled by ess_min / ESS."""
    problem = Problem.make(SPEC, data)
    settings = ReferenceSettings(method="nuts", backend="tests.test_reference:IidBackend", chains=2, warmup=0, draws=300,
                                 ess_min=2000)
    ref = make_reference(problem, settings)
    (cause,) = ref.causes
    ess = min(ref.info["diagnostics"]["ess_bulk_min"], ref.info["diagnostics"]["ess_tail_min"])
    needed = int(np.ceil(300 * 2000 / ess * 1.2 / 500) * 500)
    assert cause["cause"] == "few_draws" and f"--reference-draws {needed}" in cause["advice"]
    assert ref.info["checks"]["rhat"] and not ref.info["checks"]["ess_bulk"]


def test_prior_scale_and_degenerate_components_are_named(data):
    """Draws of intercepts 20 prior sds from the prior mean (data shifted by +40), and a component
    whose sigma sits at 1e-6 on tied points: each cause named, with advice to match."""
    shifted = Dataset(x=np.vstack([data.x, data.x[:3]]), y=np.r_[data.y, data.y[:3]] + 40.0)
    problem = Problem.make(SPEC, shifted)
    truth = {**SEP.truth, "b": np.asarray(SEP.truth["b"]) + 40.0, "sigma": np.array([1e-6, 0.5])}
    post = iid_draws(truth, chains=2, draws=200, sd=1e-8)
    draws = _tree(post)
    lp, _ = problem.draw_log_densities(draws, per_chain=200)
    from bench.reference.advice import diagnose
    from bench.reference.posterior import canonical_relabel, diagnostics

    kept, _ = canonical_relabel(draws, lp, SPEC)
    causes = {c["cause"]: c for c in diagnose(draws, lp, kept, {"rhat": False}, diagnostics(kept), 0, SPEC,
                                              shifted.x, shifted.y, False, 200, 400)}
    assert "--standardize" in causes["prior_scale"]["advice"]
    assert "prior sds from the prior mean 0" in causes["prior_scale"]["evidence"]
    assert "6 tied points" in causes["degenerate"]["evidence"]  # 3 points, each twice
    assert "improper" in causes["degenerate"]["advice"]
    # Standardised, the priors are on the data's scale: no prior-scale cause.
    assert "prior_scale" not in {c["cause"] for c in diagnose(draws, lp, kept, {"rhat": False}, diagnostics(kept),
                                                              0, SPEC, shifted.x, shifted.y, True, 200, 400)}


def test_a_missing_diagnostic_is_said_so_not_printed_as_a_dash():
    from bench.reference.posterior import _checks

    diag = {"rhat_max": float("nan"), "ess_bulk_min": 500.0, "ess_tail_min": 500.0}
    _, reasons = _checks(diag, 0, 100, 1, ReferenceSettings(min_chains=1))
    assert reasons == ["R-hat not computable (needs 2 chains of 4 draws or more)"]


def test_auto_makes_once_then_reads_the_cache(data):
    problem = Problem.make(SPEC, data)
    settings = ReferenceSettings(method="nuts", backend="tests.test_reference:PoorModeBackend", chains=4, warmup=0, draws=1000,
                                 ess_min=100)
    first = resolve_reference("auto", problem, settings)
    again = resolve_reference("auto", problem, settings)
    assert again.path == first.path and again.info["created"] == first.info["created"]
    # With a truth, auto only reads a cached reference; none is made.
    truth_problem = Problem.make(SPEC, Dataset(x=data.x, y=data.y * 1.0001))
    assert resolve_reference("auto", truth_problem, settings, has_truth=True) is None
    assert resolve_reference("none", problem, settings) is None


def test_a_real_nuts_reference_is_accepted_and_matches_the_data(data):
    """NumPyro NUTS on 200 points, a short run with a lowered ESS bar: accepted, in the canonical
    labelling, and its mean agrees with least squares on each line's points."""
    problem = Problem.make(SPEC, data)
    ref = make_reference(problem, ReferenceSettings(method="nuts", chains=2, warmup=500, draws=1000, ess_min=100))
    assert ref.accepted, ref.info["rejected_because"]
    # Assign each point to the nearer true line (the lines are 4 sds of noise apart or more),
    # then fit each line by least squares: the posterior mean agrees to a few posterior sds.
    x, y = data.x[:, 0], data.y
    resid = np.abs(y[:, None] - (SEP.truth["b"] + x[:, None] * SEP.truth["w"][:, 0]))
    z = np.argmin(resid, axis=1)
    for k in range(2):
        slope, intercept = np.polyfit(x[z == k], y[z == k], 1)
        sd_b = float(ref.posterior["b"].isel(component=k).std())
        assert ref.point["b"][k] == pytest.approx(intercept, abs=4 * sd_b)
        assert ref.point["w"][k, 0] == pytest.approx(slope, abs=4 * float(ref.posterior["w"].isel(component=k).std()))
    assert ref.info["made_by"]["engine"] and ref.info["diagnostics"]["rhat_max"] <= 1.01


@pytest.mark.parametrize("cls, what", [(FitSettings, "settings"), (ReferenceSettings, "reference settings")])
def test_settings_from_a_dict_name_an_unknown_field_and_keep_the_known(cls, what):
    with pytest.raises(MixbenchError, match=rf"^{what}: unknown field\(s\) bogus, zz$"):
        cls.from_dict({"chains": 2, "zz": 1, "bogus": 0})
    assert cls.from_dict({"chains": 3}) == cls(chains=3)
