"""bench.psis_logsumexp gives SciPy's logsumexp bit for bit, and PSIS-LOO through it is
arviz-stats' PSIS-LOO through SciPy to the last bit."""

from __future__ import annotations

import warnings

import arviz_stats as azs
import numpy as np
import pytest
import xarray as xr
from arviz_stats.base import diagnostics
from scipy.special import logsumexp as scipy_logsumexp

import bench.predictive  # noqa: F401  (installs the fast logsumexp, as scoring does)
from bench.psis_logsumexp import logsumexp


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    for trial in range(600):
        shape = (int(rng.integers(1, 400)),) if trial % 2 else (int(rng.integers(1, 4)), int(rng.integers(1, 200)))
        a = rng.standard_normal(shape) * 10 ** rng.uniform(-3, 3) + rng.uniform(-1e3, 1e3)
        if trial % 5 == 0:
            a.flat[int(rng.integers(a.size))] = a.max()  # ties at the maximum
        if trial % 7 == 0:
            a.flat[int(rng.integers(a.size))] = -np.inf
        special = trial % 30
        if special == 11:
            a[...] = -np.inf
        elif special == 13:
            a.flat[int(rng.integers(a.size))] = np.inf
        elif special == 17:
            a.flat[int(rng.integers(a.size))] = np.nan
        yield a


@pytest.mark.parametrize("b", [None, "1/n", 0.0, -0.5, 3])
def test_bitwise_scipy(b):
    for a in _inputs(0):
        weight = 1.0 / a.size if b == "1/n" else b
        for keepdims in (False, True):
            want = scipy_logsumexp(a, b=weight, keepdims=keepdims)
            got = logsumexp(a, b=weight, keepdims=keepdims)
            assert type(got) is type(want) and np.shape(got) == np.shape(want)
            assert np.array_equal(got, want, equal_nan=True), (a, weight, got, want)


def test_other_calls_are_scipys():
    a = np.array([[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(logsumexp(a, axis=1), scipy_logsumexp(a, axis=1))
    assert logsumexp([1.0, 2.0]) == scipy_logsumexp([1.0, 2.0])
    assert logsumexp(a, b=np.ones(4).reshape(2, 2)) == scipy_logsumexp(a, b=np.ones(4).reshape(2, 2))
    assert logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, -1.0]), return_sign=True) == \
        scipy_logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, -1.0]), return_sign=True)


def test_installed_psis_loo_is_scipys_to_the_bit(monkeypatch):
    assert diagnostics.logsumexp is logsumexp
    rng = np.random.default_rng(1)
    log_lik = -0.5 * (rng.standard_normal((2, 300, 150)) * rng.uniform(0.2, 3, 150)) ** 2
    tree = xr.DataTree.from_dict({
        "posterior": xr.Dataset({"mu": (("chain", "draw"), rng.standard_normal((2, 300)))}),
        "log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik)}),
    })
    weights = {"log_p": xr.DataArray(rng.standard_normal((1, 300)), dims=("chain", "draw")),
               "log_q": xr.DataArray(rng.standard_normal((1, 300)), dims=("chain", "draw"))}
    one_chain = tree.isel(chain=[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = [azs.loo(tree, pointwise=True), azs.loo_approximate_posterior(one_chain, pointwise=True, **weights)]
        monkeypatch.setattr(diagnostics, "logsumexp", scipy_logsumexp)
        slow = [azs.loo(tree, pointwise=True), azs.loo_approximate_posterior(one_chain, pointwise=True, **weights)]
    for f, s in zip(fast, slow):
        assert (f.elpd, f.se, f.p) == (s.elpd, s.se, s.p)
        np.testing.assert_array_equal(f.elpd_i.values, s.elpd_i.values)
        np.testing.assert_array_equal(f.pareto_k.values, s.pareto_k.values)
