"""The prior-scale check before fitting a data file (models/prior_check.py): its rule at the
threshold, and a run on data on a scale of about 100 with the default priors (the check fires,
in one console line and in the report) and the same data standardised (it does not)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bench.cli import main
from models import Dataset, MixtureSpec, SigmaPrior
from models.prior_check import RATIO, prior_scale_note, prior_scale_problems
from models.standardize import Standardization

GMM = MixtureSpec(K=2, D=0, intercept=True)
# Default priors, intercept-only: b ~ Normal(0, 2), sigma ~ Uniform(0, 1) with 90% quantile 0.9.
S0 = math.sqrt(2.0**2 + 0.9**2)


def _data(mean: float, sd: float, n: int = 400) -> Dataset:
    """A data set with exactly this mean and sd (ddof 0)."""
    z = np.random.default_rng(0).normal(size=n)
    z = (z - z.mean()) / z.std()
    return Dataset(x=np.zeros((n, 0)), y=mean + sd * z)


def _minutes() -> Dataset:
    """Two groups on a scale of about 100 (durations in minutes)."""
    rng = np.random.default_rng(1)
    return Dataset(x=np.zeros((300, 0)), y=np.concatenate([rng.normal(80, 10, 150), rng.normal(130, 15, 150)]))


@pytest.mark.parametrize("mean, sd, fires", [
    (0.98 * RATIO * S0, 1.0, []), (1.02 * RATIO * S0, 1.0, ["mean"]),
    (0.0, 0.98 * RATIO * S0, []), (0.0, 1.02 * RATIO * S0, ["sd"]),
])
def test_the_rule_at_its_threshold(mean, sd, fires):
    problems = prior_scale_problems(GMM, _data(mean, sd))
    assert [word for word in ("mean", "sd") if any(f"response's {word}" in p or f"its {word}" in p for p in problems)] == fires


def test_a_zero_avoiding_prior_above_the_data_spread_is_named():
    spec = GMM.with_(sigma_prior=SigmaPrior("invgamma", 30.0, 3.0))  # InverseGamma(3, 30): 1% quantile 3.6
    [problem] = prior_scale_problems(spec, _data(0.0, 1.0))
    assert "InverseGamma(3, 30)" in problem and "3.57" in problem
    assert prior_scale_problems(spec, _data(0.0, 5.0)) == []


@pytest.mark.parametrize("factor, fires", [(0.98, False), (1.02, True)])
def test_a_sigma_prior_far_below_the_data_spread_is_named(factor, fires):
    """Uniform(0, 1) (99% quantile 0.99) on data of sd just under or over RATIO x 0.99, where the
    spread rule (RATIO x S0 = 11) is silent: the sigma prior's ceiling is named, with the fix."""
    sd = factor * RATIO * 0.99
    assert sd < RATIO * S0
    data = _data(1.0, sd)
    note = prior_scale_note(GMM, data)
    if not fires:
        assert note is None
        return
    assert note == (f"prior scale: the sigma prior Uniform(0, 1) puts 99% of its mass below 0.99, under 1/5 of the "
                    f"response's spread (sd {sd:.3g}); the fits will be pulled to the priors' scale: fit with "
                    f"--standardize, or set priors on the data's scale (--intercept-prior 1,{2 * sd:.3g} "
                    f"--sigma-prior halfnormal:{sd:.3g}).")
    # A sigma prior that reaches the data's scale is not named.
    assert prior_scale_problems(GMM.with_(sigma_prior=SigmaPrior("halfnormal", 5.0)), data) == []


def test_data_on_a_scale_of_100_fire_and_standardised_do_not():
    data = _minutes()
    note = prior_scale_note(GMM, data)
    mean, sd = data.y.mean(), data.y.std()
    assert note.startswith(f"prior scale: the response's mean {mean:.3g} is {mean / S0:.0f} prior-predictive sds "
                           f"from the priors' 0; its sd {sd:.3g} is {sd / S0:.0f} times")
    assert "--standardize" in note
    assert f"--intercept-prior {data.y.mean():.3g},{2 * data.y.std():.3g}" in note
    standardized = Standardization.of(data, GMM).dataset(data)
    assert prior_scale_note(GMM, standardized, standardized=True) is None


def test_the_run_says_it_once_and_the_report_keeps_it(tmp_path, capsys):
    csv = tmp_path / "minutes.csv"
    csv.write_text("y\n" + "\n".join(f"{v:.2f}" for v in _minutes().y) + "\n")
    common = ["run", "--data", str(csv), "--response", "y", "--K", "2", "--intercept", "--reference", "none",
              "--backends", "tests.fake_backends:QuickBackend", "--chains", "2", "--draws", "50"]
    assert main([*common, "--out", str(tmp_path / "raw")]) == 0  # warned, not refused
    lines = [line for line in capsys.readouterr().err.splitlines() if "prior scale" in line]
    assert len(lines) == 1 and "--standardize" in lines[0]
    assert json.loads((tmp_path / "raw" / "run.json").read_text())["notes"] == [lines[0].removeprefix("mixbench run: ")]
    assert "Warning: prior scale: the response's mean" in (tmp_path / "raw" / "report.md").read_text()

    assert main([*common, "--standardize", "--out", str(tmp_path / "std")]) == 0
    assert "prior scale" not in capsys.readouterr().err
    assert "prior scale" not in (tmp_path / "std" / "report.md").read_text()
