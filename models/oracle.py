"""The reference log density in NumPy/SciPy: the oracle every backend is tested against.

Convention (docs/architecture.md): log prior + log likelihood of the constrained parameters, no
Jacobian, every normalising constant included.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

from models.spec import GammaPrior, MixtureSpec, SigmaPrior

_LOG_2PI = float(np.log(2.0 * np.pi))


def component_means(spec: MixtureSpec, x: np.ndarray, params: dict) -> np.ndarray:
    """Mean of every observation under every component: x w_k + b_k.

    Parameters
    ----------
    spec : MixtureSpec
    x : ndarray, shape (N, D)
        Covariates.
    params : dict
        Constrained parameters; ``w`` of shape (K, D) and, with intercepts, ``b`` of shape (K,).

    Returns
    -------
    ndarray, shape (N, K)
    """
    mu = x @ np.asarray(params["w"]).T
    if spec.intercept:
        mu = mu + np.asarray(params["b"])[None, :]
    return mu


def sigma_prior_distribution(prior: SigmaPrior):
    """``prior`` as a frozen SciPy distribution.

    Parameters
    ----------
    prior : SigmaPrior
        In SciPy's (shape, scale) forms (models/spec.py ``SigmaPrior``).

    Returns
    -------
    scipy.stats frozen distribution
        uniform(0, scale), halfnorm(scale), gamma(shape, scale = 1/rate), invgamma(shape, scale)
        or lognorm(s = shape, scale = exp(mu)), as ``scipy.stats`` defines them.
    """
    family, scale, shape = prior.family, prior.scale, prior.shape
    if family == "uniform":
        return stats.uniform(0.0, scale)
    if family == "halfnormal":
        return stats.halfnorm(scale=scale)
    if family == "gamma":
        return stats.gamma(shape, scale=scale)
    if family == "invgamma":
        return stats.invgamma(shape, scale=scale)
    return stats.lognorm(shape, scale=scale)


def sigma_log_prior(prior: SigmaPrior, sigma: np.ndarray) -> np.ndarray:
    """Elementwise log density of ``prior`` at each sigma.

    Parameters
    ----------
    prior : SigmaPrior
    sigma : array_like, any shape

    Returns
    -------
    ndarray, the shape of ``sigma``
        -inf outside the prior's support.
    """
    return sigma_prior_distribution(prior).logpdf(np.asarray(sigma, dtype=float))


def nu_value(spec: MixtureSpec, params: dict):
    """The Student-t degrees of freedom at ``params``: the spec's fixed nu or the parameter."""
    return params["nu"] if spec.nu_is_parameter else spec.nu


def error_log_density(spec: MixtureSpec, y, mu, sigma, nu=None) -> np.ndarray:
    """log f(y | mu, sigma) of the spec's error distribution, elementwise (NumPy broadcasting).

    Normal: -log(2 pi)/2 - log sigma - z^2/2. Student-t (location mu, scale sigma, nu degrees of
    freedom; e.g. Lange, Little & Taylor 1989, JASA 84, eq. 1): lgamma((nu+1)/2) - lgamma(nu/2)
    - log(nu pi)/2 - log sigma - (nu+1)/2 log(1 + z^2/nu), with z = (y - mu)/sigma. Written out
    rather than taken from SciPy so that tests/test_oracle.py can check it against scipy.stats.t.
    """
    z = (y - mu) / sigma
    if spec.errors == "normal":
        return -0.5 * _LOG_2PI - np.log(sigma) - 0.5 * z**2
    return (special.gammaln(0.5 * (nu + 1.0)) - special.gammaln(0.5 * nu) - 0.5 * np.log(nu * np.pi)
            - np.log(sigma) - 0.5 * (nu + 1.0) * np.log1p(z**2 / nu))


def nu_log_prior(prior: GammaPrior, nu) -> np.ndarray:
    """Gamma(shape, rate) log density of nu, elementwise."""
    return stats.gamma.logpdf(nu, prior.shape, scale=1.0 / prior.rate)


def slopes_log_prior(spec: MixtureSpec, w: np.ndarray) -> np.ndarray:
    """Normal log prior of the slopes, w of shape (..., K, D), summed to shape (...). Shared
    slopes are one vector, its prior counted once; rows that differ are outside the support."""
    mu, sd = spec.slope_prior.mu, spec.slope_prior.sigma
    if spec.shared != "slopes":
        return stats.norm.logpdf(w, mu, sd).sum(axis=(-2, -1))
    lp = stats.norm.logpdf(w[..., 0, :], mu, sd).sum(axis=-1)
    return np.where(np.all(w == w[..., :1, :], axis=(-2, -1)), lp, -np.inf)


def intercepts_log_prior(spec: MixtureSpec, b: np.ndarray) -> np.ndarray:
    """Normal log prior of the intercepts, b of shape (..., K), summed to shape (...). Shared
    intercepts are one number, its prior counted once; entries that differ are outside the support."""
    mu, sd = spec.intercept_prior.mu, spec.intercept_prior.sigma
    if spec.shared != "intercepts":
        return stats.norm.logpdf(b, mu, sd).sum(axis=-1)
    return np.where(np.all(b == b[..., :1], axis=-1), stats.norm.logpdf(b[..., 0], mu, sd), -np.inf)


def gamma_log_prior(spec: MixtureSpec, gamma: np.ndarray) -> np.ndarray:
    """Normal log prior of the softmax weights' coefficients, gamma of shape (..., K, D + 1),
    summed to shape (...): the K - 1 free rows iid Normal(mu, s); a reference row (the last)
    other than 0 is outside the support."""
    lp = stats.norm.logpdf(gamma[..., :-1, :], spec.gamma_prior.mu, spec.gamma_prior.sigma).sum(axis=(-2, -1))
    return np.where(np.all(gamma[..., -1, :] == 0, axis=-1), lp, -np.inf)


def log_weights(spec: MixtureSpec, x: np.ndarray, params: dict) -> np.ndarray:
    """log pi_k(x_n), shape (N, K): log softmax_k(gamma_k0 + x_n . gamma_k[1:]) under softmax
    weights (Jacobs et al. 1991), else log pi_k for every n."""
    if not spec.softmax_weights:
        with np.errstate(divide="ignore"):
            return np.broadcast_to(np.log(params["pi"]), (x.shape[0], spec.K))
    gamma = np.asarray(params["gamma"], dtype=float)
    eta = gamma[:, 0][None, :] + x @ gamma[:, 1:].T
    return eta - special.logsumexp(eta, axis=1, keepdims=True)


def log_prior(spec: MixtureSpec, params: dict) -> float:
    """Log prior density of a constrained point, every normalising constant included.

    Dirichlet(alpha) on pi (or normal priors on gamma's free rows), normal priors on w (and b),
    each shared vector counted once, the sigma prior on each sigma, Gamma on nu; an ordered
    spec adds the log of the order constant (``MixtureSpec.log_order_constant``: the prior
    restricted to the ordered cone, renormalised).

    Parameters
    ----------
    spec : MixtureSpec
    params : dict
        Constrained parameters of the spec's shapes (``MixtureSpec.param_shapes``).

    Returns
    -------
    float
        -inf off the support: pi off the simplex (tolerance 1e-10), an ordering broken, sigma
        outside its prior's support.

    Raises
    ------
    MixbenchError
        Parameters missing, unexpected or of the wrong shape (``MixtureSpec.check_params``).
    """
    params = spec.check_params(params)
    if spec.softmax_weights:
        lp = gamma_log_prior(spec, params["gamma"])
    else:
        pi = params["pi"]
        if np.any(pi < 0) or not np.isclose(pi.sum(), 1.0, rtol=0, atol=1e-10):
            return -np.inf
        lp = stats.dirichlet.logpdf(np.clip(pi, 1e-300, None) / pi.sum(), spec.alpha)
    lp += slopes_log_prior(spec, params["w"])
    if spec.nu_is_parameter:
        lp += nu_log_prior(spec.nu, params["nu"])
    if spec.intercept:
        lp += intercepts_log_prior(spec, params["b"])
    lp += sigma_log_prior(spec.sigma_prior, params["sigma"]).sum()
    if spec.ordering != "none":
        ordered = params["b"] if spec.ordering == "intercept" else params["w"][:, 0]
        if np.any(np.diff(ordered) <= 0):
            return -np.inf
        lp += spec.log_order_constant
    return float(lp)


def log_likelihood_terms(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> np.ndarray:
    """Per-observation mixture log likelihood: log sum_k pi_k(x_n) f(y_n | mu_nk, sigma_k),
    f the spec's error density (``error_log_density``), pi_k(x_n) the weights (``log_weights``).

    Parameters
    ----------
    spec : MixtureSpec
    x : ndarray, shape (N, D)
    y : ndarray, shape (N,)
    params : dict
        Constrained parameters.

    Returns
    -------
    ndarray, shape (N,)

    Raises
    ------
    MixbenchError
        Parameters missing, unexpected or of the wrong shape.
    """
    params = spec.check_params(params)
    mu = component_means(spec, x, params)
    sigma = np.broadcast_to(params["sigma"], (spec.K,))
    terms = error_log_density(spec, y[:, None], mu, sigma[None, :], nu_value(spec, params))
    return special.logsumexp(log_weights(spec, x, params) + terms, axis=1)


def forum_log_likelihood(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> float:
    """The thread's likelihood over one batch (the whole of ``y``), bugs as ``spec.likelihood`` keeps.

    Batch log-sum-exp bug: each component's normal log density is summed over the whole batch
    *before* the log-sum-exp, so every point of the batch is forced into one component.
    log-sigma bug: the posted density is -0.5 (n log 2 pi + log sigma + sum z^2) over a batch of n,
    where the normal needs -0.5 (n log 2 pi + 2 n log sigma + sum z^2).
    """
    params = spec.check_params(params)
    mu = component_means(spec, x, params)
    sigma = np.broadcast_to(params["sigma"], (spec.K,))
    with np.errstate(divide="ignore"):
        log_pi = np.log(params["pi"])
    z2 = (y[:, None] - mu) ** 2 / sigma**2
    batch_lse = spec.likelihood in ("forum-original", "forum-batch-lse")
    log_sigma_bug = spec.likelihood in ("forum-original", "forum-log-sigma")
    if batch_lse:
        n = y.shape[0]
        sigma_term = np.log(sigma) if log_sigma_bug else 2 * n * np.log(sigma)
        batch_logp = -0.5 * (n * np.log(2 * np.pi) + sigma_term + z2.sum(axis=0))
        return float(special.logsumexp(log_pi + batch_logp))
    point_logp = -0.5 * (np.log(2 * np.pi) + np.log(sigma)[None, :] + z2)
    return float(special.logsumexp(log_pi[None, :] + point_logp, axis=1).sum())


def log_likelihood(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> float:
    """The log likelihood of the data: the mixture's, or the forum replay's (``forum_log_likelihood``).

    Parameters
    ----------
    spec : MixtureSpec
        ``spec.likelihood`` chooses the mixture or a forum replay.
    x : ndarray, shape (N, D)
    y : ndarray, shape (N,)
    params : dict
        Constrained parameters.

    Returns
    -------
    float

    Raises
    ------
    MixbenchError
        Parameters missing, unexpected or of the wrong shape.
    """
    if spec.likelihood != "mixture":
        return forum_log_likelihood(spec, x, y, params)
    return float(log_likelihood_terms(spec, x, y, params).sum())


def log_density(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, params: dict) -> float:
    """Log prior + log likelihood at a constrained point: the oracle (docs/architecture.md).

    No Jacobian: the density of the constrained parameters, every normalising constant included.

    Parameters
    ----------
    spec : MixtureSpec
    x : ndarray, shape (N, D)
    y : ndarray, shape (N,)
    params : dict
        Constrained parameters of the spec's shapes.

    Returns
    -------
    float
        -inf off the prior's support (the likelihood is then not evaluated).

    Raises
    ------
    MixbenchError
        Parameters missing, unexpected or of the wrong shape.
    """
    lp = log_prior(spec, params)
    if not np.isfinite(lp):
        return lp
    return lp + log_likelihood(spec, x, y, params)
