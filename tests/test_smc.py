"""SMC as a method (backends/pymc/smc.py, backends/numpyro/smc.py): particle shares of a bimodal
posterior against its known mode masses, and the log evidence against quadrature of the oracle's
density; the record the scoring reads (bench.score.particles)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import logsumexp

from backends import get_backend
from backends.base import FitSettings
from backends.smc import smc_group
from bench.score.modes import mode_shares
from bench.score.particles import smc_columns
from models import Dataset, MixtureSpec, NormalPrior, SigmaPrior
from models.oracle import log_density

ENGINES = [pytest.param("numpyro", id="numpyro"), pytest.param("pymc", id="pymc")]


def test_the_smc_record_gives_the_rows_columns():
    group = smc_group(300, [[0.1, 0.5, 1.0], [0.2, 1.0]], [-10.0, -12.0], "x")
    import xarray as xr

    tree = xr.DataTree.from_dict({"smc": group.to_dataset()})
    tree["smc"].attrs.update(group.attrs)
    cols = smc_columns(tree)
    assert cols == {"smc_particles": 300, "smc_stages": "3;2", "smc_log_evidence": -11.0,
                    "smc_log_evidence_sd": pytest.approx(np.sqrt(2.0))}
    with pytest.raises(ValueError, match="run 0 ended at beta = 0.5, not 1"):
        smc_group(10, [[0.5]], [0.0], "x")


def test_draws_land_in_the_mode_they_are_near():
    from backends.base import canonical_datatree

    spec = MixtureSpec(K=2, D=0, intercept=True)
    rng = np.random.default_rng(0)
    b = np.where(rng.uniform(size=(1, 400, 1)) < 0.3, [-2.0, 2.0], [2.0, -2.0]) + 0.01 * rng.standard_normal((1, 400, 2))
    draws = canonical_datatree(spec, {"w": np.zeros((1, 400, 2, 0)), "b": b, "sigma": np.full((1, 400), 0.5),
                                      "pi": np.full((1, 400, 2), 0.5)})
    mode = {"status": "weighted", "location": {"b": [-2.0, 2.0], "sigma": 0.5, "pi": [0.5, 0.5]},
            "sd": {"b": [0.05, 0.05], "sigma": 0.05, "pi": [0.05, 0.05]}}
    far = {"status": "weighted", "location": {"b": [0.0, 5.0], "sigma": 0.5, "pi": [0.5, 0.5]},
           "sd": {"b": [0.05, 0.05], "sigma": 0.05, "pi": [0.05, 0.05]}}
    # Label copies are one mode: every draw is in A, whichever labelling it has.
    assert mode_shares(draws, [{**mode, "name": "A"}, {**far, "name": "B"}]) == {"A": 1.0}
    assert mode_shares(draws, [{**far, "name": "B"}]) == {"-": 1.0}


# Two clusters of 20 points at -2 and 2: the posterior has two label copies of one mode, each of
# mass exactly 1/2 by symmetry (the exchangeable prior), which NUTS chains do not cross.
BIMODAL = MixtureSpec(K=2, D=0, intercept=True, intercept_prior=NormalPrior(0.0, 5.0),
                      sigma_prior=SigmaPrior("halfnormal", 2.0))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_particle_shares_match_the_label_copies_masses(engine):
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(-2, 0.5, 20), rng.normal(2, 0.5, 20)])
    data = Dataset(x=np.zeros((40, 0)), y=y)
    runs = 8
    fit = get_backend(engine).fit(BIMODAL, data, "smc", FitSettings(chains=runs, draws=400), seed=3)
    assert fit.ok, fit.reason
    b = fit.draws["posterior"]["b"].values
    shares = (b[..., 0] < b[..., 1]).mean(axis=1)  # per run: the particles in the copy with b0 < b1
    # The runs are independent: their spread is the Monte Carlo error of one run's share (SMC
    # splits particles between separated modes at an early stage, so it is far above binomial).
    se = shares.std(ddof=1) / np.sqrt(runs)
    assert abs(shares.mean() - 0.5) < 3 * se + 0.02, (shares, se)
    # Informative: the pooled share known to +-0.45 at worst. PyMC's independent-MH runs put
    # nearly all of a run's particles in one copy (seen: 0, 0.79, 0.2, 0.1, 0, 1, 0.79, 0.57).
    assert se < 0.15, shares
    # The particles sit in the copies (within 5 posterior sds of a cluster), not between them.
    inside = np.mean(np.abs(np.abs(b) - 2.0) < 0.6)
    assert inside > 0.999, inside


# K = 1, D = 0: y ~ Normal(b, sigma), b ~ Normal(0, 5), sigma ~ HalfNormal(2): a 2-parameter
# posterior whose evidence p(y) is a 2-D integral of the oracle's density.
ONE = MixtureSpec(K=1, D=0, intercept=True, intercept_prior=NormalPrior(0.0, 5.0),
                  sigma_prior=SigmaPrior("halfnormal", 2.0))


def _log_evidence_by_quadrature(y: np.ndarray) -> float:
    """log of the integral of exp(oracle log density) over (b, sigma), midpoint rule on a grid
    covering the posterior to well beyond 8 sds."""
    b = np.linspace(y.mean() - 2.5, y.mean() + 2.5, 201)
    sigma = np.linspace(0.05, 3.0, 200)
    db, ds = b[1] - b[0], sigma[1] - sigma[0]
    x = np.zeros((y.size, 0))
    values = np.array([[log_density(ONE, x, y, {"w": np.zeros((1, 0)), "b": np.array([bi]), "sigma": np.array(si),
                                                 "pi": np.array([1.0])}) for si in sigma] for bi in b])
    return float(logsumexp(values) + np.log(db * ds))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_log_evidence_matches_quadrature(engine):
    rng = np.random.default_rng(1)
    y = rng.normal(1.0, 0.7, 20)
    exact = _log_evidence_by_quadrature(y)
    runs = 4
    fit = get_backend(engine).fit(ONE, Dataset(x=np.zeros((20, 0)), y=y), "smc", FitSettings(chains=runs, draws=1000),
                                  seed=5)
    assert fit.ok, fit.reason
    log_z = fit.draws["smc"]["log_marginal_likelihood"].values
    se = log_z.std(ddof=1) / np.sqrt(runs)
    assert abs(log_z.mean() - exact) < 4 * se + 0.05, (log_z, exact)
    assert fit.draws["smc"]["stages"].values.min() >= 2


# K = 2 ordered by intercept, shared sigma: b0 < b1, sigma, pi0 free (4-D). Its prior is the iid
# prior restricted to b0 < b1 and scaled by 2! (models/spec.py), which PyMC writes as a Potential.
ORDERED = MixtureSpec(K=2, D=0, intercept=True, ordering="intercept", intercept_prior=NormalPrior(0.0, 5.0),
                      sigma_prior=SigmaPrior("halfnormal", 2.0))


def _two_clusters(sep: float, sd: float, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    y = np.concatenate([rng.normal(-sep, sd, n), rng.normal(sep, sd, n)])
    return Dataset(x=np.zeros((2 * n, 0)), y=y)


def test_pymc_smc_particles_start_from_the_ordered_prior():
    """PyMC's own initial population put every particle at the ordered variable's initval."""
    from scipy import stats

    from backends.pymc.smc import prior_particles
    from models.pymc_model import build_model

    data = _two_clusters(2.0, 0.5, 10)
    model = build_model(ORDERED, data.x, data.y)
    start = prior_particles(model, 4000, np.random.default_rng(0))
    assert set(start) == {"b_ordered__", "sigma_log__", "pi_simplex__"}
    b0 = start["b_ordered__"][:, 0]
    b1 = b0 + np.exp(start["b_ordered__"][:, 1])
    # The ordered prior's components are the min and the max of two iid Normal(0, 5) draws.
    phi = stats.norm(0.0, 5.0).cdf
    assert stats.kstest(b0, lambda v: 1.0 - (1.0 - phi(v)) ** 2).pvalue > 1e-3
    assert stats.kstest(b1, lambda v: phi(v) ** 2).pvalue > 1e-3
    assert stats.kstest(np.exp(start["sigma_log__"]), stats.halfnorm(scale=2.0).cdf).pvalue > 1e-3


def _ordered_log_evidence_by_quadrature(y: np.ndarray) -> float:
    """log p(y) of ORDERED for two separated clusters at -2 and 2 (sd 0.5): midpoint rule on a grid
    of (b0, b1, sigma, pi0) around the posterior; the prior's density written out, the likelihood
    checked against the oracle. The grid's faces are > 12 nats below its maximum (asserted)."""
    from scipy.stats import norm

    def log_post(b0, b1, sigma, p):
        log_prior = norm.logpdf(b0, 0, 5) + norm.logpdf(b1, 0, 5) + np.log(2.0) + np.log(2.0) + norm.logpdf(sigma, 0, 2)
        mix = np.logaddexp(np.log(p)[..., None] + norm.logpdf(y, b0[..., None], sigma[..., None]),
                           np.log1p(-p)[..., None] + norm.logpdf(y, b1[..., None], sigma[..., None]))
        return log_prior + mix.sum(axis=-1)

    point = {"w": np.zeros((2, 0)), "b": np.array([-1.9, 2.1]), "sigma": np.array(0.55), "pi": np.array([0.45, 0.55])}
    oracle = log_density(ORDERED, np.zeros((y.size, 0)), y, point)
    assert log_post(*(np.array(v) for v in (-1.9, 2.1, 0.55, 0.45))) == pytest.approx(oracle, abs=1e-9)
    grid = [np.linspace(-3.4, -0.6, 28), np.linspace(0.6, 3.4, 28), np.linspace(0.15, 1.6, 28), np.linspace(0.02, 0.98, 28)]
    values = log_post(*np.meshgrid(*grid, indexing="ij"))
    faces = max(np.take(values, i, axis=a).max() for a in range(4) for i in (0, -1))
    assert faces < values.max() - 12.0
    return float(logsumexp(values) + np.log(np.prod([g[1] - g[0] for g in grid])))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_log_evidence_of_an_ordered_mixture_matches_quadrature(engine):
    data = _two_clusters(2.0, 0.5, 10)
    exact = _ordered_log_evidence_by_quadrature(data.y)
    runs = 8
    fit = get_backend(engine).fit(ORDERED, data, "smc", FitSettings(chains=runs, draws=1000), seed=5)
    assert fit.ok, fit.reason
    log_z = fit.draws["smc"]["log_marginal_likelihood"].values
    # PyMC's runs spread by about 1.3 nats here (BlackJAX's by 0.1): the clusters split the
    # tempered posterior, and its independent-MH moves rarely cross between the parts.
    se = log_z.std(ddof=1) / np.sqrt(runs)
    assert abs(log_z.mean() - exact) < 4 * se + 0.05, (log_z, exact)
    b = fit.draws["posterior"]["b"].values
    assert np.all(np.abs(b.mean(axis=(0, 1)) - [-2.0, 2.0]) < 0.3), b.mean(axis=(0, 1))
    assert b[..., 0].std() > 0.05  # the particles spread over the posterior (sd about 0.16)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_ordering_leaves_the_log_evidence_unchanged(engine):
    """p(y) is the same with and without the ordering: the likelihood is symmetric in the labels
    and the ordered prior is the iid prior on one of the 2! regions, times 2!. Overlapping
    clusters keep both runs' spread small (PyMC: about 0.06 and 0.14 nats), so a log 2 error shows."""
    data = _two_clusters(1.0, 0.7, 10)
    runs = 6
    estimates = []
    for spec in (ORDERED, dataclasses.replace(ORDERED, ordering="none")):
        fit = get_backend(engine).fit(spec, data, "smc", FitSettings(chains=runs, draws=1000), seed=1)
        assert fit.ok, fit.reason
        estimates.append(fit.draws["smc"]["log_marginal_likelihood"].values)
    (ordered, plain) = estimates
    se = np.hypot(ordered.std(ddof=1), plain.std(ddof=1)) / np.sqrt(runs)
    assert abs(ordered.mean() - plain.mean()) < 4 * se + 0.05, estimates
    assert 4 * se + 0.05 < 0.5 * np.log(2.0)  # informative: the log 2! constant would show


def test_pymc_smc_fits_softmax_weights():
    """The gate's coefficients gamma come out of pm.sample_smc's trace (a KeyError before)."""
    spec = MixtureSpec(K=2, D=1, weights="softmax")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 1))
    fit = get_backend("pymc").fit(spec, Dataset(x=x, y=x[:, 0] + rng.normal(size=30)), "smc",
                                  FitSettings(chains=2, draws=100), seed=0)
    assert fit.ok, fit.reason
    gamma = fit.draws["posterior"]["gamma"].values
    assert gamma.shape[:2] == (2, 100) and np.all(gamma[..., -1, :] == 0.0)  # the reference row
