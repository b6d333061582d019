"""The sigma priors (models/spec.py SigmaPrior): the oracle's densities against closed forms, and
on tied data the collapsed mode at sigma = 0 that Uniform, HalfNormal and Gamma(2, rate) keep and
InverseGamma and LogNormal remove."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, special

from models import MixtureSpec, SigmaPrior, log_density, log_prior, random_point
from models.oracle import sigma_log_prior
from models.priors import sigma_prior_text

SIGMAS = np.array([1e-3, 0.05, 0.4, 1.0, 2.7, 11.0])


def _closed_form(family: str, p1: float, p2: float, s: np.ndarray) -> np.ndarray:
    """Textbook log densities (not SciPy): Gamma(shape p1, rate p2), InverseGamma(shape p1,
    scale p2), LogNormal(mu p1, s p2)."""
    if family == "gamma":
        return p1 * math.log(p2) - math.lgamma(p1) + (p1 - 1) * np.log(s) - p2 * s
    if family == "invgamma":
        return p1 * math.log(p2) - math.lgamma(p1) - (p1 + 1) * np.log(s) - p2 / s
    return -np.log(s * p2 * math.sqrt(2 * math.pi)) - (np.log(s) - p1) ** 2 / (2 * p2**2)


@pytest.mark.parametrize("text, family, p1, p2", [
    ("gamma:0.5", "gamma", 2.0, 0.5), ("gamma:3.5,2", "gamma", 3.5, 2.0),
    ("invgamma:3,1.5", "invgamma", 3.0, 1.5), ("lognormal:-0.7,0.6", "lognormal", -0.7, 0.6),
])
def test_oracle_sigma_priors_equal_the_closed_forms(text, family, p1, p2):
    prior = SigmaPrior(**sigma_prior_text("--sigma-prior", text))
    np.testing.assert_allclose(sigma_log_prior(prior, SIGMAS), _closed_form(family, p1, p2, SIGMAS), rtol=1e-12)
    assert np.all(sigma_log_prior(prior, np.array([-1.0, 0.0])) == -np.inf)
    # In the spec: the log prior moves by exactly the sigma terms against a Uniform(0, 20) spec.
    spec = MixtureSpec(K=2, D=1, sigma="per-component", sigma_prior=prior)
    point = dict(random_point(spec, np.random.default_rng(0)), sigma=np.array([0.3, 1.7]))
    base = spec.with_(sigma_prior=SigmaPrior("uniform", 20.0))
    expected = log_prior(base, point) + 2 * math.log(20.0) + _closed_form(family, p1, p2, np.array([0.3, 1.7])).sum()
    assert log_prior(spec, point) == pytest.approx(expected, rel=1e-12)


def test_gamma_defaults_to_shape_2_and_the_other_families_need_a_shape():
    assert SigmaPrior("gamma", 2.0).shape == 2.0
    assert SigmaPrior("gamma", 2.0).describe() == "Gamma(shape 2, rate 0.5)"
    assert SigmaPrior("uniform").to_dict() == {"family": "uniform", "scale": 1.0}  # older specs keep their identity
    spec = MixtureSpec(sigma_prior=SigmaPrior("lognormal", 0.5, 0.8))
    assert MixtureSpec.from_dict(spec.to_dict()) == spec


# --- tied data --------------------------------------------------------------------------------

M_TIES, TIE = 8, 6.0


def _tied_data():
    """K = 2 intercept-only data: 50 points near 0, 30 near 6, and 8 more recorded as exactly 6.0."""
    rng = np.random.default_rng(5)
    y = np.concatenate([rng.normal(0.0, 1.0, 50), rng.normal(TIE, 1.0, 30), np.full(M_TIES, TIE)])
    return np.zeros((y.size, 0)), y


PRIORS = {
    "uniform": SigmaPrior("uniform", 10.0),
    "halfnormal": SigmaPrior("halfnormal", 2.0),
    "gamma2": SigmaPrior("gamma", 2.0),             # Gamma(shape 2, rate 0.5)
    "invgamma": SigmaPrior("invgamma", 1.0, 3.0),   # InverseGamma(3, 1)
    "lognormal": SigmaPrior("lognormal", 1.0, 0.5),  # LogNormal(0, 0.5)
}
IMPROPER = ("uniform", "halfnormal", "gamma2")


def _spec(prior):
    return MixtureSpec(K=2, D=0, intercept=True, sigma="per-component", sigma_prior=prior)


@pytest.mark.parametrize("name", list(PRIORS))
def test_the_log_density_along_a_collapsing_component(name):
    """Component 0 sits on the ties and its sigma shrinks, component 1 holds the rest: the oracle's
    log density grows like -(m - a + 1) log sigma without bound under a prior ~ sigma^(a-1) at 0
    (a = 1, 1, 2), and has an interior maximum under InverseGamma and LogNormal."""
    x, y = _tied_data()
    spec = _spec(PRIORS[name])
    rest = y[np.abs(y - TIE) > 0]
    sigmas = np.logspace(-12, 0.5, 300)

    def lp(s):
        return log_density(spec, x, y, {"w": np.zeros((2, 0)), "b": np.array([TIE, rest.mean()]),
                                        "sigma": np.array([s, rest.std()]), "pi": np.array([0.1, 0.9])})

    values = np.array([lp(s) for s in sigmas])
    low, usual = sigmas < 1e-6, sigmas >= 1e-2
    if name in IMPROPER:
        a = 2 if name == "gamma2" else 1
        # slope in log sigma of the collapsing branch: -(m - (a - 1)), to rounding
        slope = np.polyfit(np.log(sigmas[low]), values[low], 1)[0]
        assert slope == pytest.approx(-(M_TIES - (a - 1)), abs=0.01)
        assert values[0] > values[usual].max() + 100  # the spike beats every sigma >= 0.01
    else:
        # An interior maximum, at about b / (m + a + 1) = 0.08 (InverseGamma) or exp(mu - (m + 1) s^2)
        # = 0.1 (LogNormal) on the ties alone; the second cluster's points near 6.0 move it up.
        assert 1e-2 < sigmas[np.argmax(values)] < 1.0
        assert values[0] < values.max() - 1e3
        assert np.all(np.diff(values[sigmas < 1e-2]) > 0)  # rising all the way from 0 to 0.01


def _multistart_map(spec, x, y, starts: int = 12):
    """Multi-start L-BFGS on the oracle's log density (constrained, no Jacobian: the MAP) in
    (b, log sigma, logit pi). Returns each start's (log density, sigma)."""
    def unpack(z):
        pi0 = special.expit(z[4])
        return {"w": np.zeros((2, 0)), "b": z[:2], "sigma": np.exp(z[2:4]), "pi": np.array([pi0, 1 - pi0])}

    def neg(z):
        value = log_density(spec, x, y, unpack(z))
        return -value if np.isfinite(value) else 1e300

    rng = np.random.default_rng(0)
    out = []
    for i in range(starts):
        # Locations drawn among the data, sigma about 1; every other start puts component 0 on
        # the tied value with sigma 0.05, as a start drawn near the data may.
        z0 = np.concatenate([rng.choice(y, 2), rng.normal(0.0, 0.5, 2), rng.normal(0.0, 1.0, 1)])
        if i % 2:
            z0[0], z0[2] = TIE, math.log(0.05)
        res = optimize.minimize(neg, z0, method="L-BFGS-B", bounds=[(None, None)] * 2 + [(-60, 5)] * 2 + [(-20, 20)],
                                options={"maxiter": 2000})
        out.append((-res.fun, unpack(res.x)["sigma"]))
    return out


@pytest.mark.parametrize("name", ["uniform", "invgamma", "lognormal"])
def test_multistart_map_on_tied_data_collapses_only_under_a_prior_with_density_at_zero(name):
    x, y = _tied_data()
    results = _multistart_map(_spec(PRIORS[name]), x, y)
    best_lp, best_sigma = max(results, key=lambda r: r[0])
    if name == "uniform":
        # The best optimum is a spike: sigma heading to 0 on the 8 ties (L-BFGS stops on the way,
        # 8 nats higher for every factor e closer), above the optimum with both sigmas >= 0.01.
        assert best_sigma.min() < 1e-6
        proper = [lp for lp, s in results if s.min() >= 1e-2]
        assert proper and best_lp > max(proper) + 20
    else:
        assert all(s.min() > 1e-2 for _, s in results)
        assert np.isfinite(best_lp)
