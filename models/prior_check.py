"""Whether a data set lies on the scale its priors allow, checked before fitting it.

Each of the K components has the same prior, so the prior predictive distribution of one y_n is
that of b + x_n . w + sigma eps, eps ~ Normal(0, 1), with b, w, sigma drawn from their priors
(models/spec.py). Its mean and sd, averaged over the data's x, are

    m0 = mu_b + sum_d mu_w xbar_d                       (mu_b = 0 without intercepts)
    s0 = sqrt(s_b^2 + sum_d (s_w^2 + mu_w^2) E[x_d^2] - (sum_d mu_w xbar_d)^2 + q^2)

with q the sigma prior's 90% quantile standing in for sigma (its second moment is infinite for an
InverseGamma of shape <= 2). The check names a problem when

- location: |mean(y) - m0| > RATIO s0: the data's centre is far where the intercept and slope
  priors put almost no mass; fits pull the components toward m0 or collapse into one;
- spread: sd(y) > RATIO s0: the data are wider than the priors reach, and a sigma with a
  Uniform(0, u) prior sits at u (the failure of issue 22: every fit one component at sigma 1.000);
- floor: the sigma prior's 1% quantile exceeds sd(y): a zero-avoiding prior (InverseGamma,
  LogNormal) forces every sigma above the data's whole spread;
- ceiling: sd(y) > RATIO times the sigma prior's 99% quantile: the priors of b and w may reach
  the data while sigma's cannot (a user's trial: Uniform(0, 1) on data of sd 5.94, MAP sigma at
  1.000, which the spread rule missed because wide slope priors make s0 large). A mixture's
  components may sit well inside sd(y), hence the margin: the built-in scenarios' sd(y) is
  1.3-2.1 times their sigma prior's upper end.

Student-t errors (models/spec.py): eps ~ t_nu has no finite variance for nu <= 2, so q is widened
by t_nu's 95% quantile over the normal's (nu at its prior's 10% quantile when nu has a prior:
the heavier tail, the wider reach); and the data's centre and spread are read robustly, the median
and 1.4826 x the median absolute deviation (the normal-consistent MAD), because Student-t errors
are chosen for data with gross outliers, which would inflate the mean and sd and trip the check
on exactly the data the model is meant for. Shared coefficients and softmax weights leave one
component's prior predictive as it is.

RATIO = 5 prior-predictive sds: the data sit where the priors put under about 1e-6 of their mass
(a normal tail at 5 sds), far enough out that no reasonable choice of priors is flagged. On
standardised data (mean 0, sd 1) with the default priors (m0 = 0, s0 = 2.1) nothing fires.
"""

from __future__ import annotations

import math

import numpy as np

from models.data import Dataset
from scipy import stats

from models.oracle import sigma_prior_distribution
from models.spec import MixtureSpec

RATIO = 5.0


def error_widening(spec: MixtureSpec) -> float:
    """How much wider one error eps is than Normal(0, 1) at its 95% quantile: 1 for normal
    errors, t_nu.ppf(0.95) / Normal.ppf(0.95) for Student-t (nu at its Gamma prior's 10% quantile
    when a parameter)."""
    if spec.errors == "normal":
        return 1.0
    nu = stats.gamma(spec.nu.shape, scale=1.0 / spec.nu.rate).ppf(0.1) if spec.nu_is_parameter else spec.nu
    return float(stats.t.ppf(0.95, nu) / stats.norm.ppf(0.95))


def response_centre_spread(spec: MixtureSpec, y: np.ndarray) -> tuple[float, float]:
    """The response's mean and sd, or under Student-t errors its median and normal-consistent
    MAD (scipy.stats.median_abs_deviation, scale 'normal'), robust to the outliers t errors are for."""
    if spec.errors == "normal":
        return float(y.mean()), float(y.std())
    return float(np.median(y)), float(stats.median_abs_deviation(y, scale="normal"))


def prior_predictive(spec: MixtureSpec, x: np.ndarray) -> tuple[float, float]:
    """Mean and sd of the prior predictive of one y at the data's x (the module docstring's rule).

    Parameters
    ----------
    spec : MixtureSpec
    x : ndarray, shape (N, D)

    Returns
    -------
    m0 : float
    s0 : float
        The sigma prior enters by its 0.9 quantile (times ``error_widening``); s0 is at least that.
    """
    sw, sb, sigma = spec.slope_prior, spec.intercept_prior, spec.sigma_prior
    xbar = x.mean(axis=0) if spec.D else np.zeros(0)
    x2 = (x**2).mean(axis=0) if spec.D else np.zeros(0)
    shift = float(sw.mu * xbar.sum())
    m0 = (sb.mu if spec.intercept else 0.0) + shift
    q = float(sigma_prior_distribution(sigma).ppf(0.9)) * error_widening(spec)
    var = (sb.sigma**2 if spec.intercept else 0.0) + float(((sw.sigma**2 + sw.mu**2) * x2).sum()) - shift**2 + q**2
    return m0, math.sqrt(max(var, q**2))


def prior_scale_problems(spec: MixtureSpec, dataset: Dataset) -> list[str]:
    """What lies outside the priors' reach on ``dataset`` (the data as fitted).

    The rule is the module docstring's: the response's mean more than ``RATIO`` prior-predictive
    sds from the prior's, its sd more than ``RATIO`` times the prior-predictive sd, a sigma
    prior whose 1% quantile exceeds the response's sd, or one whose 99% quantile is under
    1/``RATIO`` of it.

    Returns
    -------
    list of str
        Short phrases; empty when nothing lies outside.
    """
    mean, sd = response_centre_spread(spec, dataset.y)
    m0, s0 = prior_predictive(spec, dataset.x)
    problems = []
    if abs(mean - m0) > RATIO * s0:
        problems.append(f"the response's mean {mean:.3g} is {abs(mean - m0) / s0:.0f} prior-predictive sds "
                        f"from the priors' {m0:.3g}")
    if sd > RATIO * s0:
        problems.append(f"its sd {sd:.3g} is {sd / s0:.0f} times the prior-predictive sd {s0:.2g}")
    floor = float(sigma_prior_distribution(spec.sigma_prior).ppf(0.01))
    if floor > sd:
        problems.append(f"the sigma prior {spec.sigma_prior.describe()} puts 99% of its mass above {floor:.3g}, "
                        f"more than the response's whole sd {sd:.3g}")
    ceiling = float(sigma_prior_distribution(spec.sigma_prior).ppf(0.99))
    if sd > RATIO * ceiling:
        problems.append(f"the sigma prior {spec.sigma_prior.describe()} puts 99% of its mass below {ceiling:.3g}, "
                        f"under 1/{RATIO:g} of the response's spread (sd {sd:.3g})")
    return problems


def prior_scale_note(spec: MixtureSpec, dataset: Dataset, standardized: bool = False) -> str | None:
    """One line naming what ``prior_scale_problems`` found and the fix.

    Parameters
    ----------
    spec : MixtureSpec
    dataset : Dataset
        The data as fitted (standardised already when ``standardized``).
    standardized : bool
        Whether the fix to name is priors for standardised data.

    Returns
    -------
    str or None
        None when nothing lies outside the priors' reach.
    """
    problems = prior_scale_problems(spec, dataset)
    if not problems:
        return None
    mean, sd = response_centre_spread(spec, dataset.y)
    if standardized:
        fix = "set priors for standardised data (mean 0, sd 1), e.g. --sigma-prior halfnormal:1"
    else:
        priors = [f"--intercept-prior {mean:.3g},{2 * sd:.3g}" if spec.intercept else "--intercept",
                  f"--sigma-prior halfnormal:{sd:.3g}"]
        if spec.D:
            x_sd = float(np.max(dataset.x.std(axis=0))) or 1.0
            priors.insert(1, f"--slope-prior 0,{2 * sd / x_sd:.3g}")
        fix = "fit with --standardize, or set priors on the data's scale (" + " ".join(priors) + ")"
    return f"prior scale: {'; '.join(problems)}; the fits will be pulled to the priors' scale: {fix}."
