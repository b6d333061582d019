"""Recovery of the model variants against independent estimates computed here: an ECM algorithm
for shared slopes (Meng & Rubin 1993: the EM of tests/em.py with the M-step split into a joint
weighted least squares for the slope and intercepts given the sigmas, then the sigmas), and a
direct multi-start L-BFGS maximisation of the oracle's log density for softmax weights; and a
contaminated sweep point, where the normal-error fit is flagged and the Student-t one lands."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, special, stats

from models import get_scenario, log_density
from models.families import FamilyPoint

GATED = FamilyPoint(K=2, D=1, sep=4.0, gate=3.0)  # pi_0(x) = expit(3 x), slopes -2 and 2
GATED_N = 400


def ecm_shared_slopes(x: np.ndarray, y: np.ndarray, K: int, starts: int = 10, iterations: int = 2000,
                      seed: int = 0, tol: float = 1e-10) -> dict[str, np.ndarray]:
    """Maximum likelihood of y = x . w + b_z + sigma_z eps (one w, per-component b and sigma).

    E-step: r_nk proportional to pi_k N(y_n | b_k + x_n . w, sigma_k). CM-steps: (b, w) by
    least squares over the N K pairs (n, k) weighted by r_nk / sigma_k^2; then sigma_k^2 =
    sum_n r_nk (y_n - b_k - x_n . w)^2 / sum_n r_nk and pi_k = mean_n r_nk. The best of
    ``starts`` random-responsibility starts by log likelihood. Returns canonical w (K, D), b,
    sigma, pi.
    """
    rng = np.random.default_rng(seed)
    N, D = x.shape
    design = np.concatenate([np.kron(np.eye(K), np.ones((N, 1))), np.tile(x, (K, 1))], axis=1)  # (K N, K + D)
    stacked_y = np.tile(y, K)
    best, best_ll = None, -np.inf
    for _ in range(starts):
        r = rng.dirichlet(np.ones(K), size=N)
        sigma = np.full(K, y.std())
        previous = -np.inf
        for _ in range(iterations):
            weight = (r / sigma**2).T.ravel()
            sw = np.sqrt(weight)
            coef = np.linalg.lstsq(design * sw[:, None], stacked_y * sw, rcond=None)[0]
            b, w = coef[:K], coef[K:]
            resid = y[:, None] - b[None, :] - (x @ w)[:, None]
            sigma = np.sqrt(np.maximum((r * resid**2).sum(axis=0) / r.sum(axis=0), 1e-12))
            pi = r.mean(axis=0)
            log_terms = np.log(pi) + stats.norm.logpdf(resid, 0.0, sigma)
            ll = special.logsumexp(log_terms, axis=1)
            r = np.exp(log_terms - ll[:, None])
            total = ll.sum()
            if total - previous < tol:
                break
            previous = total
        if sigma.min() > 1e-3 and total > best_ll:
            best_ll, best = total, {"w": np.tile(w, (K, 1)), "b": b, "sigma": sigma, "pi": pi}
    return best


def map_softmax(spec, x: np.ndarray, y: np.ndarray, starts: int = 4) -> dict[str, np.ndarray]:
    """The posterior mode (the oracle's density, no Jacobian) of a softmax-weights spec without
    intercepts, by L-BFGS-B from ``starts`` random starts on (w, log sigma, gamma's free rows)."""
    K, D = spec.K, spec.D
    n_w, n_s, n_g = K * D, spec.n_sigma, (K - 1) * (D + 1)

    def unpack(t):
        sigma = np.exp(t[n_w:n_w + n_s])
        gamma = np.vstack([t[n_w + n_s:].reshape(K - 1, D + 1), np.zeros((1, D + 1))])
        return {"w": t[:n_w].reshape(K, D), "sigma": sigma if spec.sigma == "per-component" else sigma[0],
                "gamma": gamma}

    def loss(t):
        value = log_density(spec, x, y, unpack(t))
        return -value if np.isfinite(value) else 1e300

    rng = np.random.default_rng(0)
    results = [optimize.minimize(loss, np.r_[rng.normal(0, 2, n_w), np.log(rng.uniform(0.2, 2, n_s)),
                                             rng.normal(0, 1, n_g)], method="L-BFGS-B")
               for _ in range(starts)]
    return unpack(min(results, key=lambda r: r.fun).x)


@pytest.fixture(scope="module")
def shared_slopes_data():
    scenario = get_scenario("shared-slopes")
    return scenario, scenario.simulate(0)


@pytest.fixture(scope="module")
def gated_data():
    scenario = get_scenario(GATED.name)
    return scenario, scenario.simulate(0, N=GATED_N)


def test_ecm_and_direct_maximisation_agree_on_the_shared_slope(shared_slopes_data):
    """Two independent estimates of the one slope: the ECM's maximum likelihood and the scipy
    posterior mode (tests/test_variants.py), whose weak priors move it by far less than 0.01."""
    from tests.test_variants import _scipy_shared_map

    scenario, data = shared_slopes_data
    ecm = ecm_shared_slopes(data.x, data.y, 2)
    mode = _scipy_shared_map(scenario.spec, data.x, data.y)
    assert ecm["w"][0, 0] == pytest.approx(mode["w"][0, 0], abs=0.01)
    assert ecm["w"][0, 0] == pytest.approx(1.5, abs=0.05)
    np.testing.assert_allclose(np.sort(ecm["b"]), [-1.0, 1.0], atol=0.1)


def test_softmax_mode_recovers_the_gate(gated_data):
    scenario, data = gated_data
    mode = map_softmax(scenario.spec, data.x, data.y)
    order = np.argsort(mode["w"][:, 0])  # the truth's order: slope -2 first
    w = mode["w"][order]
    gamma = mode["gamma"][order] - mode["gamma"][order][-1]
    np.testing.assert_allclose(w[:, 0], [-2.0, 2.0], atol=0.1)
    np.testing.assert_allclose(gamma[0], scenario.truth["gamma"][0], atol=0.8)


def _numpyro_nuts(spec, data, seed: int = 0):
    from backends import get_backend
    from backends.base import FitSettings

    fit = get_backend("numpyro").fit(spec, data, "nuts", FitSettings(chains=2, warmup=400, draws=400), seed=seed)
    assert fit.ok, fit.reason
    return fit


@pytest.mark.slow
def test_nuts_shared_slope_is_the_ecm_slope(shared_slopes_data):
    scenario, data = shared_slopes_data
    w = _numpyro_nuts(scenario.spec, data).draws["posterior"]["w"].values[..., 0, 0]
    ecm = ecm_shared_slopes(data.x, data.y, 2)
    assert abs(w.mean() - ecm["w"][0, 0]) < w.std()


@pytest.mark.slow
def test_nuts_gamma_is_within_its_posterior_sd_of_the_mode(gated_data):
    """NUTS relabelled to the truth (gamma compared centred, re-referenced: bench.score.relabel):
    each free coefficient's posterior mean within one posterior sd of the direct mode's."""
    from bench.score.relabel import relabel

    scenario, data = gated_data
    fit = _numpyro_nuts(scenario.spec, data)
    gamma = relabel(fit.draws, scenario.truth).draws["posterior"]["gamma"].values[..., 0, :]  # (chain, draw, 2)
    mode = map_softmax(scenario.spec, data.x, data.y)
    order = np.argsort(mode["w"][:, 0])
    expected = (mode["gamma"][order] - mode["gamma"][order][-1])[0]
    mean, sd = gamma.mean(axis=(0, 1)), gamma.std(axis=(0, 1))
    assert np.all(np.abs(mean - expected) < sd), (mean, sd, expected)


@pytest.mark.slow
def test_contaminated_sweep_point_flags_normal_errors_and_t_errors_land():
    """The outliers axis at 5%: the normal-error NUTS fit does not land on the truth's lines
    (one component stretched over the outliers), the Student-t one (nu with its Gamma(2, 0.1)
    prior, the sweep line errors=student-t) does."""
    from bench.score.metrics import evaluate
    from bench.run.sweep import parse_method_line, sweep_points

    (point, _), = sweep_points({"outliers": [0.05]}, {"sep": 6.0})
    scenario = get_scenario(point.name)
    data = scenario.simulate(0, N=200)
    normal = evaluate(_numpyro_nuts(scenario.spec, data), truth=scenario.truth)
    line = parse_method_line("nuts:errors=student-t", ("nuts",))
    robust = evaluate(_numpyro_nuts(scenario.spec.overridden(line.spec), data), truth=scenario.truth)
    assert normal["mode"] != "truth", normal["mode"]
    assert robust["mode"] == "truth", robust["mode"]
