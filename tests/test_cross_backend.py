"""The same data through every backend's NUTS: the metrics agree on mode and recovery."""

import pytest

from backends import FitSettings, get_backend
from bench.score.metrics import evaluate
from models import get_scenario

BACKENDS = ["pymc", "numpyro", pytest.param("stan", marks=pytest.mark.stan)]


@pytest.fixture(scope="module")
def forum_data():
    scenario = get_scenario("forum")
    return scenario.spec, scenario.simulate(11, N=2000)


@pytest.fixture(scope="module")
def rows(forum_data):
    """Rows of the backends run so far in this module, to compare each new one with."""
    return {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_lands_on_the_truth_with_the_same_recovery(backend, forum_data, rows):
    spec, data = forum_data
    settings = FitSettings(chains=2, warmup=400, draws=400)
    fit = get_backend(backend).fit(spec, data, "nuts", settings, seed=3)
    row = evaluate(fit, truth=data.truth)
    rows[backend] = row
    assert row["status"] == "ok"
    assert row["mode"] == "truth"
    assert row["w_err_max"] < 0.05 and row["sigma_err_max"] < 0.01
    assert row["rhat_max"] < 1.05  # relabelled: chains in opposite labellings still agree
    # Every backend sees the same posterior: its relabelled errors are within Monte Carlo noise of
    # the first backend's (posterior sd of the slopes here is about 0.005).
    first = next(iter(rows.values()))
    assert abs(row["w_err_max"] - first["w_err_max"]) < 0.01
    assert abs(row["pi_err_max"] - first["pi_err_max"]) < 0.03
