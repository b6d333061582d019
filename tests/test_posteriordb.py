"""posteriordb's layout: a reference written as draws.json.zip + info.json, read back by a reader
written here from posteriordb's documented format only; posteriordb-style files read as they come;
references of the format before (draws.nc) still read."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from bench.reference.posterior import (ReferenceSettings, load_reference, reference_from_draws, write_reference)
from bench.reference.make import make_reference
from bench.score.problem import Problem
from models import MixbenchError, get_scenario
from models.data import Dataset

SEP = get_scenario("separated")
SPEC = SEP.spec.with_(ordering="none")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def posteriordb_draws(path):
    """posteriordb's documented draws format: a zip holding one JSON list of chains, each a dict
    from a parameter's name to the list of its draws."""
    with zipfile.ZipFile(path) as archive:
        (member,) = archive.namelist()
        chains = json.loads(archive.read(member))
    assert isinstance(chains, list) and all(isinstance(c, dict) for c in chains)
    return chains


def test_a_reference_round_trips_through_posteriordb_layout(tmp_path):
    problem = Problem.make(SPEC, SEP.simulate(0, N=200))
    ref = make_reference(problem, ReferenceSettings(method="nuts", backend="tests.test_reference:PoorModeBackend", chains=4,
                                                    warmup=0, draws=300, ess_min=100))
    directory = write_reference(ref, tmp_path / "ref")
    assert sorted(p.name for p in directory.iterdir()) == ["draws.json.zip", "info.json"]
    chains = posteriordb_draws(directory / "draws.json.zip")
    post = ref.posterior
    assert len(chains) == post.sizes["chain"] == 3  # the poor-mode chain left out
    # 1-based Stan names, one list of draws per scalar, equal to the reference's draws.
    for c, chain in enumerate(chains):
        assert chain["b[2]"] == pytest.approx(post["b"].isel(chain=c, component=1).values.tolist())
        assert chain["w[1,1]"] == pytest.approx(post["w"].isel(chain=c, component=0, covariate=0).values.tolist())
        assert chain["pi[2]"] == pytest.approx(post["pi"].isel(chain=c, component=1).values.tolist())
        assert chain["lp"] == pytest.approx(ref.lp[c].tolist())
    info = json.loads((directory / "info.json").read_text())
    assert info["inference"]["method"] == "tests.test_reference:PoorModeBackend_nuts"
    assert info["inference"]["method_arguments"]["draws"] == 300
    names = info["diagnostics"]["diagnostic_information"]["names"]
    assert set(names) == set(chains[0]) - {"lp"}
    assert len(info["diagnostics"]["r_hat"]) == len(names) == len(info["diagnostics"]["effective_sample_size_bulk"])
    assert max(info["diagnostics"]["r_hat"]) == pytest.approx(ref.info["diagnostics"]["rhat_max"])
    assert info["diagnostics"]["nchains"] == 3 and info["diagnostics"]["ndraws"] == 900
    assert info["checks_made"]["r_hat_below_1_01"] is True and info["checks_made"]["nchains_is_gte_4"] is False
    assert "numpy" in info["versions"] and info["data"]["digest"] == problem.identity()["data_digest"]
    again = load_reference(directory, problem)
    for name in ("w", "b", "sigma", "pi"):
        np.testing.assert_allclose(again.posterior[name].values, post[name].values)
    np.testing.assert_allclose(again.lp, ref.lp)
    assert again.accepted and again.status == "accepted"


def test_posteriordb_gaussian_mixture_draws_are_read_as_they_come(tmp_path):
    """low_dim_gauss_mix's names: mu[1], mu[2], sigma[1], sigma[2], theta (the first weight)."""
    rng = np.random.default_rng(1)
    y = np.r_[rng.normal(-2, 0.5, 60), rng.normal(3, 1.0, 40)]
    problem = Problem.make(SPEC.with_(D=0), Dataset(x=np.zeros((100, 0)), y=y))
    chains = [{"mu[1]": (-2 + 0.05 * rng.standard_normal(50)).tolist(),
               "mu[2]": (3 + 0.1 * rng.standard_normal(50)).tolist(),
               "sigma[1]": (0.5 + 0.02 * rng.random(50)).tolist(),
               "sigma[2]": (1.0 + 0.02 * rng.random(50)).tolist(),
               "theta": (0.6 + 0.01 * rng.standard_normal(50)).tolist()} for _ in range(2)]
    path = tmp_path / "low_dim_gauss_mix-low_dim_gauss_mix.json.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("low_dim_gauss_mix-low_dim_gauss_mix.json", json.dumps(chains))
    ref = reference_from_draws(problem, path)
    post = ref.posterior
    # Canonical labelling sorts by intercept: component 0 is mu[1]'s, weighted theta.
    np.testing.assert_allclose(post["b"].isel(component=0).values, [c["mu[1]"] for c in chains])
    np.testing.assert_allclose(post["pi"].isel(component=0).values, [c["theta"] for c in chains])
    np.testing.assert_allclose(post["pi"].isel(component=1).values, 1 - np.array([c["theta"] for c in chains]))
    np.testing.assert_allclose(post["sigma"].isel(component=1).values, [c["sigma[2]"] for c in chains])
    # Written in posteriordb's layout and read back (no slope columns for D = 0).
    again = load_reference(write_reference(ref, tmp_path / "ref"), problem)
    np.testing.assert_allclose(again.posterior["b"].values, post["b"].values)
    assert again.posterior["w"].shape[-1] == 0


@pytest.mark.parametrize("content, needle", [
    ({"not": "a list"}, "expected a list of chains"),
    ([{"b[1]": [0.0, 1.0]}, {"b[1]": [0.0]}], "different lengths"),
    ([{"b[0]": [0.0]}], "not 1-based"),
])
def test_malformed_posteriordb_draws_are_one_line_errors(tmp_path, content, needle):
    path = tmp_path / "bad.json.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bad.json", json.dumps(content))
    problem = Problem.make(SPEC, SEP.simulate(0, N=200))
    with pytest.raises(MixbenchError, match=needle):
        reference_from_draws(problem, path)


def test_a_reference_of_the_format_before_is_still_read(tmp_path):
    problem = Problem.make(SPEC, SEP.simulate(0, N=200))
    ref = make_reference(problem, ReferenceSettings(method="nuts", backend="tests.test_reference:PoorModeBackend", chains=4,
                                                    warmup=0, draws=300, ess_min=100))
    old = tmp_path / "old"
    old.mkdir()
    ref.draws.to_netcdf(old / "draws.nc", engine="h5netcdf")
    (old / "info.json").write_text(json.dumps({**ref.info, "format_version": 1}))
    again = load_reference(old, problem)
    np.testing.assert_allclose(again.posterior["b"].values, ref.posterior["b"].values)
    np.testing.assert_allclose(again.lp, ref.lp)
