"""The thresholds of the metrics (bench.score.metrics): every number a judgment of a fit uses.

Recorded beside the results they produced; the report's wording (bench.report) cites them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSettings:
    """Every threshold the metrics use. Recorded beside the results they produced."""

    interval_prob: float = 0.9
    """Probability of the central (equal-tailed) interval whose coverage of the truth is reported."""

    truth_location_atol: float = 0.3
    """A chain is in the truth's mode only if each slope and intercept mean (relabelled) lies within
    this of the true value. Absolute, in units of y (intercepts) and y per unit x (slopes; the
    scenarios draw x in (-1, 1)). Keep it below half the smallest gap between true components, or a
    collapsed fit could pass for the truth (collapse is checked first, which guards most cases)."""

    truth_sigma_rtol: float = 0.5
    """... and each sigma mean within this fraction of the true sigma (0.5: the forum failure's
    sigma of 0.9 against 0.1 is far outside, a 20% miss on a small data set is inside)."""

    truth_weight_atol: float = 0.15
    """... and each weight mean within this of the true weight."""

    collapse_location_atol: float = 0.1
    """Two components coincide when every slope and intercept of one is within this of the other's
    (or within ``collapse_sd_multiple`` posterior sds, whichever is larger)."""

    collapse_sigma_rtol: float = 0.25
    """... and, with per-component sigmas, when their sigmas differ by at most this fraction of the
    larger (or by ``collapse_sd_multiple`` sds)."""

    collapse_sd_multiple: float = 2.0
    """Component means closer than this many posterior sds count as coinciding. Relabelling draws of
    two identical, wide components sorts them and pushes their means about 1.4 sds apart; a real
    gap between components is many sds. Without this a wide collapsed approximation (the forum's
    slopes 0.6 +- 0.8) would pass for two distinct components."""

    collapse_weight_min: float = 0.02
    """A component whose mean weight is below this has emptied out: the fit is collapsed."""

    switch_min_draws: int = 20
    """A change of labelling inside a chain counts as a switch only if the new labelling holds for
    at least this many consecutive draws; shorter runs are blips of the assignment, not switches."""

    khat_good: float = 0.5
    """PSIS k-hat below this: the approximation is good (Yao et al. 2018)."""

    khat_bad: float = 0.7
    """PSIS k-hat at or above this: bad; between ``khat_good`` and this: ok (usable with care)."""

    relabel_scale_floor: float = 1e-6
    """Floor on the per-scalar scale in the relabelling cost (see bench.score.relabel)."""

    relabel_max_iter: int = 10
    """Most refinements of the relabelling's within-component scales (see bench.score.relabel); in
    practice the permutations settle after one or two."""

    khat_constant_tol: float = 1e-8
    """Log importance ratios spanning less than this are constant up to rounding (q is p up to a
    normalising constant): k-hat is then -inf, the bounded-weights best case, which arviz-stats'
    tail fit cannot estimate."""

    mode_distance_sd: float = 5.0
    """With a reference posterior: a chain is in the reference's mode when every relabelled mean
    lies within this many reference posterior sds of the reference's mean (bench.score.landing)."""

    point_lp_gap_nats: float = 2.0
    """A single point (MAP, a Laplace mode) reached the reference's mode only if its log density is
    within this of the best optimum known for the data set (the reference's highest draw, or the
    point when higher). The highest of a few thousand draws of a d-dimensional near-normal
    posterior lies about a nat below its mode for the small d here, so 2 nats passes every true
    optimum and fails a point 8 nats down, which the 10-nat chain tolerance let through."""

    point_distance_sd: float = 2.0
    """... and every relabelled coordinate within this many reference posterior sds of the
    reference's mean. A posterior's mode and mean differ by a fraction of an sd, up to about one
    for skewed scales and weights on small data; a point further off is not at the mode."""

    lp_gap_nats: float = 10.0
    """A chain in another mode whose mean log density is more than max(lp_gap_nats, lp_gap_sd x
    the sd of the reference's log densities) below the reference's sits in a poorer mode. For a
    d-dimensional posterior that sd is about sqrt(d / 2) nats."""

    lp_gap_sd: float = 4.0
    """See ``lp_gap_nats``."""

    lp_draws_per_chain: int = 200
    """Most draws per chain (evenly thinned) whose log density enters the gap. They are taken
    from the draws PSIS-LOO evaluates (one pass over the data per draw serves both), so at large
    N there are fewer: 100 per chain for 2 chains at N = 1e5 (``loo_max_values`` / N draws in
    all, at least 100). The gap is a mean over draws judged against a tolerance of at least
    ``lp_gap_nats``; its Monte Carlo error, sd(log density) / sqrt(draws), is about
    sqrt(d / 2) / 10 = 0.2 nats for d = 6 parameters at 100 draws, far inside it."""

    rhat_max: float = 1.01
    """Health flag rhat: relabelled R-hat above this (Vehtari et al. 2021)."""

    ess_min_per_chain: float = 100.0
    """Health flag ess: bulk or tail ESS below this many per chain (Vehtari et al. 2021)."""

    stuck_repeat_frac: float = 0.9
    """Health flag stuck: a chain whose consecutive draws repeat exactly this often never moved."""

    bound_rtol: float = 0.01
    """Health flag *-at-bound: a sigma whose median lies within this fraction of a Uniform
    prior's upper end."""

    zero_rtol: float = 1e-3
    """... or below this fraction of the sigma prior's scale (a component shrunk onto points)."""

    loo_max_values: float = 2e7
    """PSIS-LOO: draws are thinned so that draws x N stays under this (memory: 8 bytes each)."""

    loo_max_draws: int = 1000
    """PSIS-LOO: most draws used (fewer when N is large, see ``loo_max_values``; at least 100)."""

    loo_max_obs: int = 1000
    """PSIS-LOO (and stacking): above this many observations, a seeded random subsample of this
    many is Pareto-smoothed and the rest enter through their lpd (arviz-stats' loo_subsample,
    Magnusson et al. 2020); rows record ``loo_obs`` and ``elpd_loo_subsample_se``. Up to 1000
    observations every one is Pareto-smoothed: a 100-observation subsample was tried
    (docs/performance.md, section 7) and was too inaccurate at small N (N = 160: subsampling se
    of 10.7 and 19.2 nats, every elpd comparison noise; forum-small, N = 2000: a miss of 7.3
    stated subsampling se). The cost: arviz-stats' PSIS-LOO runs per observation in Python (four
    SciPy logsumexp calls each), 0.26-0.32 s of CPU for 1000 observations of 1000 draws on the
    project's 2-core machine, so scoring a 2-chain NUTS fit takes about 0.35 s of CPU from
    N = 1e3 on (0.45 s at 1e4, 0.5 s at 1e5), above the 0.2 s target below fits of 7-10 s
    (bench/benchmarks/scoring_time.py)."""

    def __post_init__(self):
        if not 0.0 < self.interval_prob < 1.0:
            raise ValueError(f"interval_prob: must be in (0, 1), got {self.interval_prob!r}")
        for name in ("truth_location_atol", "truth_sigma_rtol", "truth_weight_atol",
                     "collapse_location_atol", "collapse_sigma_rtol", "collapse_sd_multiple",
                     "collapse_weight_min", "relabel_scale_floor", "khat_constant_tol", "mode_distance_sd",
                     "point_lp_gap_nats", "point_distance_sd",
                     "lp_gap_nats", "lp_gap_sd", "rhat_max", "ess_min_per_chain", "stuck_repeat_frac",
                     "bound_rtol", "zero_rtol", "loo_max_values"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a non-negative number, got {value!r}")
        for name, least in (("switch_min_draws", 1), ("relabel_max_iter", 0), ("lp_draws_per_chain", 1),
                            ("loo_max_draws", 2), ("loo_max_obs", 10)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name}: must be an integer >= {least}, got {value!r}")
        if not self.khat_good <= self.khat_bad:
            raise ValueError(f"khat_good ({self.khat_good}) must not exceed khat_bad ({self.khat_bad})")
