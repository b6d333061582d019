"""Tail ESS against an independent implementation of its definition.

Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat", section 4.3: the tail ESS is the smaller of the ESS of the
indicators I(theta <= q_0.05) and I(theta <= q_0.95), each computed on split chains with Geyer's
initial monotone sequence. Written here from R's posterior package (``ess_tail``,
``ess_quantile``, ``.ess``, ``autocovariance``), with the autocovariance summed directly rather
than by FFT, so nothing is shared with arviz-stats.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import canonical_datatree
from bench.score.metrics import efficiency
from models.scenarios import get_scenario

FORUM = get_scenario("forum-small")


def autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance (divided by n at every lag), as Geyer (1992) recommends."""
    n = x.size
    centred = x - x.mean()
    return np.array([centred[: n - t] @ centred[t:] / n for t in range(n)])


def geyer_ess(chains: np.ndarray) -> float:
    """posterior's ``.ess`` on an (m chains, n draws) array."""
    m, n = chains.shape
    acov = np.array([autocovariance(c) for c in chains])
    mean_var = acov[:, 0].mean() * n / (n - 1)
    var_plus = mean_var * (n - 1) / n
    if m > 1:
        var_plus += chains.mean(axis=1).var(ddof=1)
    rho = np.zeros(n)
    rho[0] = rho_even = 1.0
    rho[1] = rho_odd = 1.0 - (mean_var - acov[:, 1].mean()) / var_plus
    t = 0
    while t < n - 5 and not np.isnan(rho_even + rho_odd) and rho_even + rho_odd > 0:
        t += 2
        rho_even = 1.0 - (mean_var - acov[:, t].mean()) / var_plus
        rho_odd = 1.0 - (mean_var - acov[:, t + 1].mean()) / var_plus
        if rho_even + rho_odd >= 0:
            rho[t], rho[t + 1] = rho_even, rho_odd
    max_t = t
    if rho_even > 0:
        rho[max_t] = rho_even
    # Geyer's initial monotone sequence.
    t = 0
    while t <= max_t - 4:
        t += 2
        if rho[t] + rho[t + 1] > rho[t - 2] + rho[t - 1]:
            rho[t] = rho[t + 1] = (rho[t - 2] + rho[t - 1]) / 2
    tau = -1.0 + 2.0 * rho[:max_t].sum() + rho[max_t]
    tau = max(tau, 1.0 / np.log10(m * n))
    return m * n / tau


def split_chains(x: np.ndarray) -> np.ndarray:
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]])


def ess_quantile(x: np.ndarray, prob: float) -> float:
    indicator = (x <= np.quantile(x, prob)).astype(float)  # R's quantile type 7 = NumPy's linear
    return geyer_ess(split_chains(indicator))


def ess_tail(x: np.ndarray) -> float:
    return min(ess_quantile(x, 0.05), ess_quantile(x, 0.95))


def ar1_chains(rng, chains: int, draws: int, phi: float, offsets) -> np.ndarray:
    out = np.empty((chains, draws))
    for c in range(chains):
        eps = rng.standard_normal(draws)
        value = eps[0] / np.sqrt(1 - phi**2)
        for i in range(draws):
            value = phi * value + eps[i] if i else value
            out[c, i] = value
        out[c] += offsets[c]
    return out


@pytest.fixture(scope="module")
def hand_built():
    """Four chains of 1000 draws (split halves of 500, an FFT-friendly length): autocorrelated
    slopes with chain offsets, heavy-tailed weights, a sigma with a drifting chain."""
    rng = np.random.default_rng(11)
    C, N = 4, 1000
    w0 = 3.0 + 0.05 * ar1_chains(rng, C, N, 0.8, [0.0, 0.02, -0.01, 0.0])
    w1 = -1.0 + 0.05 * ar1_chains(rng, C, N, 0.3, [0.0, 0.0, 0.0, 0.3])
    w = np.stack([w0, w1], axis=-1)[..., None]
    pi0 = 0.5 + 0.01 * np.tanh(ar1_chains(rng, C, N, 0.6, [0.0] * C) + rng.standard_t(2, (C, N)) * 0.2)
    pi = np.stack([pi0, 1 - pi0], axis=-1)
    sigma = 0.1 + 0.002 * ar1_chains(rng, C, N, 0.95, [0.0, 0.0, 1.0, 0.0])
    draws = canonical_datatree(FORUM.spec, {"w": w, "sigma": sigma, "pi": pi})
    return draws, {"w": w.reshape(C, N, -1), "sigma": sigma[..., None], "pi": pi}


def test_tail_ess_equals_the_definition_on_hand_built_chains(hand_built):
    draws, scalars = hand_built
    out = efficiency(draws, draws)
    for family, values in scalars.items():
        expected = min(ess_tail(values[..., i]) for i in range(values.shape[-1]))
        assert out[f"{family}_ess_tail"] == pytest.approx(expected, rel=1e-10), family
    assert out["ess_tail_min"] == pytest.approx(
        min(ess_tail(v[..., i]) for v in scalars.values() for i in range(v.shape[-1])), rel=1e-10)


def test_the_5_and_95_quantiles_matter(hand_built):
    """arviz-stats' fallback (its 0.89 interval: the 5.5% / 94.5% quantiles) gives other numbers on
    these chains, so the test above would catch a call without the 5% / 95% quantiles."""
    draws, scalars = hand_built
    gaps = []
    for values in scalars.values():
        for i in range(values.shape[-1]):
            x = values[..., i]
            at_89 = min(geyer_ess(split_chains((x <= np.quantile(x, p)).astype(float))) for p in (0.055, 0.945))
            gaps.append(abs(at_89 / ess_tail(x) - 1))
    assert max(gaps) > 0.05
