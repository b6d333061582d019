"""The mixture of regressions as a PyMC model, beside its NumPyro model (models/numpyro_model.py)
and its Stan program (stan/mixture.stan, mapped by models/stan_model.py).

``build_model`` is the model; ``model_values`` and ``canonical_values`` map a canonical point
(models/spec.py's names and shapes) to the model's free variables and back. The likelihood is a
pm.CustomDist whose log density is written out (log-sum-exp over components of the normal log
densities), vectorised over observations: one CustomDist serves the correct mixture and the three
forum-thread variants alike, it is exactly the oracle's formula (models/oracle.py), and as an
observed variable it takes ``total_size`` for minibatches (a Potential would not).
"""

from __future__ import annotations

import math

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.distributions.transforms import ordered

from models.errors import MixbenchError
from models.spec import MixtureSpec

_LOG_2PI = math.log(2.0 * math.pi)


def _normal_terms(value, mu, sigma, log_sigma_bug: bool):
    """Per-observation, per-component normal log densities (the thread's bug optional)."""
    z2 = pt.sqr((value[..., None] - mu) / sigma)
    log_sigma = pt.log(sigma) if log_sigma_bug else 2.0 * pt.log(sigma)
    return -0.5 * (_LOG_2PI + log_sigma + z2)


def _student_t_terms(value, mu, sigma, nu):
    """Per-observation, per-component Student-t log densities (models/oracle.py error_log_density)."""
    z2 = pt.sqr((value[..., None] - mu) / sigma)
    return (pt.gammaln(0.5 * (nu + 1.0)) - pt.gammaln(0.5 * nu) - 0.5 * pt.log(nu * math.pi)
            - pt.log(sigma) - 0.5 * (nu + 1.0) * pt.log1p(z2 / nu))


def _mixture_logp(log_sigma_bug: bool):
    def logp(value, mu, sigma, log_pi):
        return pt.logsumexp(log_pi + _normal_terms(value, mu, sigma, log_sigma_bug), axis=-1)
    return logp


def _student_t_mixture_logp(value, mu, sigma, log_pi, nu):
    return pt.logsumexp(log_pi + _student_t_terms(value, mu, sigma, nu), axis=-1)


def _batch_lse_logp(log_sigma_bug: bool):
    # The thread's logp_gmix: each component's log density summed over the whole batch, then the
    # log-sum-exp over components; its logp_normal counts log(sigma) once per batch.
    def logp(value, mu, sigma, log_pi):
        n = value.shape[0].astype(mu.dtype)
        z2 = pt.sum(pt.sqr((value[:, None] - mu) / sigma), axis=0)
        sigma_term = pt.log(sigma) if log_sigma_bug else 2.0 * n * pt.log(sigma)
        batch = -0.5 * (n * _LOG_2PI + sigma_term + z2)
        return pt.logsumexp(log_pi + batch)
    return logp


def _ordered_initval(prior, K: int) -> np.ndarray:
    # The ordered transform needs a strictly increasing start; the prior mean repeated is not.
    return (prior.mu + prior.sigma * np.linspace(-0.5, 0.5, K)).astype(pytensor.config.floatX)


# How the (correct) mixture likelihood is written (bench/experiments/ppl_formulations.py compares them;
# docs/performance.md): the CustomDist below, PyMC's NormalMixture, or a Potential holding the
# same log-sum-exp (full data only: a Potential takes no total_size).
LIKELIHOOD_FORMS = ("custom_dist", "normal_mixture", "potential")


def build_model(spec: MixtureSpec, x: np.ndarray, y: np.ndarray, *, batch_size: int | None = None,
                total_size: bool = True, form: str = "custom_dist") -> pm.Model:
    """The PyMC model of ``spec`` on data (x, y); minibatches of ``batch_size`` when given.

    Free variables: pi (K > 1) or gamma_free (K - 1, D + 1) under softmax weights (gamma then
    a Deterministic with its zero reference row), w (or w_first, ordered, and w_rest under slope ordering, or
    w_shared (D,) under shared slopes; none when D = 0), b (intercepts, ordered under intercept
    ordering; b_shared () under shared intercepts, b then a Deterministic), sigma, nu (Student-t errors with a prior on nu). w is always available by name (a
    Deterministic under slope ordering and shared slopes). ``total_size=False`` leaves the minibatch
    likelihood unscaled, as the forum thread did.
    """
    K, D = spec.K, spec.D
    with pm.Model() as model:
        x_data = pm.Data("x", x) if D else None
        y_data = pm.Data("y", y)

        gamma = None
        if spec.softmax_weights:
            # K - 1 free rows; the reference row (the last) is 0 (models/spec.py).
            gp = spec.gamma_prior
            gamma_free = pm.Normal("gamma_free", np.float64(gp.mu), np.float64(gp.sigma), shape=(K - 1, D + 1))
            gamma = pm.Deterministic("gamma", pt.concatenate([gamma_free, pt.zeros((1, D + 1))], axis=0))
            log_pi = None
        else:
            log_pi = pt.log(pm.Dirichlet("pi", a=spec.alpha)) if K > 1 else pt.zeros(1)

        sp = spec.slope_prior
        w = None
        if D and spec.ordering == "slope":
            first = pm.Normal("w_first", sp.mu, sp.sigma, shape=K, transform=ordered,
                              initval=_ordered_initval(sp, K))
            columns = [first[:, None]]
            if D > 1:
                columns.append(pm.Normal("w_rest", sp.mu, sp.sigma, shape=(K, D - 1)))
            w = pm.Deterministic("w", pt.concatenate(columns, axis=1))
        elif D and spec.shared == "slopes":
            # One slope vector, its prior counted once; w repeats it for every component.
            w_shared = pm.Normal("w_shared", sp.mu, sp.sigma, shape=D)
            w = pm.Deterministic("w", pt.broadcast_to(w_shared[None, :], (K, D)))
        elif D:
            w = pm.Normal("w", sp.mu, sp.sigma, shape=(K, D))

        b = None
        if spec.intercept:
            ip = spec.intercept_prior
            if spec.shared == "intercepts":
                b = pm.Deterministic("b", pt.broadcast_to(pm.Normal("b_shared", ip.mu, ip.sigma), (K,)))
            elif spec.ordering == "intercept":
                b = pm.Normal("b", ip.mu, ip.sigma, shape=K, transform=ordered,
                              initval=_ordered_initval(ip, K))
            else:
                b = pm.Normal("b", ip.mu, ip.sigma, shape=K)

        shape = () if spec.sigma == "shared" else (K,)
        sp = spec.sigma_prior
        if sp.family == "uniform":
            sigma = pm.Uniform("sigma", 0.0, sp.scale, shape=shape)
        elif sp.family == "halfnormal":
            sigma = pm.HalfNormal("sigma", sigma=sp.scale, shape=shape)
        elif sp.family in ("gamma", "invgamma"):
            # A Python float that fits float32 exactly (3.0) becomes a float32 constant, and
            # gammaln(shape) would be folded in float32 (6.7e-8 off): keep every argument float64.
            a, s = np.float64(sp.shape), np.float64(sp.scale)
            if sp.family == "gamma":
                sigma = pm.Gamma("sigma", alpha=a, beta=1.0 / s, shape=shape)
            else:
                sigma = pm.InverseGamma("sigma", alpha=a, beta=s, shape=shape)
        else:
            sigma = pm.LogNormal("sigma", mu=np.log(sp.scale), sigma=np.float64(sp.shape), shape=shape)

        nu = None
        if spec.nu_is_parameter:
            nu = pm.Gamma("nu", alpha=np.float64(spec.nu.shape), beta=np.float64(spec.nu.rate))
        elif spec.errors == "student-t":
            nu = pt.constant(np.float64(spec.nu))

        if spec.ordering != "none":
            # The ordered prior is the iid prior restricted to one of K! regions (models/spec.py).
            pm.Potential("log_order_constant", pt.constant(spec.log_order_constant))

        if batch_size is None:
            x_obs, y_obs = x_data, y_data
        elif D:
            x_obs, y_obs = pm.Minibatch(x_data, y_data, batch_size=batch_size)
        else:
            x_obs, y_obs = None, pm.Minibatch(y_data, batch_size=batch_size)

        mu = pt.zeros_like(y_obs)[:, None] + (0.0 if b is None else b[None, :])
        if w is not None:
            mu = mu + pt.dot(x_obs, w.T)
        sigma_k = pt.broadcast_to(sigma, (K,))
        if gamma is not None:
            # log softmax of the gate's linear predictor, per observation: (n, K).
            eta = gamma[:, 0][None, :] + pt.zeros_like(y_obs)[:, None]
            if D:
                eta = eta + pt.dot(x_obs, gamma[:, 1:].T)
            log_pi = eta - pt.logsumexp(eta, axis=-1, keepdims=True)

        batch_lse = spec.likelihood in ("forum-original", "forum-batch-lse")
        log_sigma_bug = spec.likelihood in ("forum-original", "forum-log-sigma")
        if batch_lse:
            logp, signature = _batch_lse_logp(log_sigma_bug), "(n,k),(k),(k)->(n)"
        else:
            logp, signature = _mixture_logp(log_sigma_bug), "(k),(k),(k)->()"
        scale = len(y) if (batch_size is not None and total_size) else None
        if form != "custom_dist" and (spec.likelihood != "mixture" or batch_size is not None):
            raise MixbenchError(f"likelihood form {form!r}: only for the full-data mixture likelihood")
        if (nu is not None or gamma is not None) and form != "custom_dist":
            raise MixbenchError(f"likelihood form {form!r}: only the custom_dist form writes Student-t "
                                "errors and softmax weights")
        if nu is None and gamma is not None:
            pm.CustomDist("y_obs", mu, sigma_k, log_pi, logp=_mixture_logp(False), signature="(k),(k),(k)->()",
                          observed=y_obs, total_size=scale)
        elif nu is not None:
            pm.CustomDist("y_obs", mu, sigma_k, log_pi, nu, logp=_student_t_mixture_logp,
                          signature="(k),(k),(k),()->()", observed=y_obs, total_size=scale)
        elif form == "custom_dist":
            pm.CustomDist("y_obs", mu, sigma_k, log_pi, logp=logp, signature=signature,
                          observed=y_obs, total_size=scale)
        elif form == "normal_mixture":
            pm.NormalMixture("y_obs", w=pt.exp(log_pi), mu=mu, sigma=sigma_k, observed=y_obs)
        elif form == "potential":
            pm.Potential("y_obs", pt.sum(logp(y_obs, mu, sigma_k, log_pi)))
        else:
            raise MixbenchError(f"likelihood form: unknown {form!r}; known: {', '.join(LIKELIHOOD_FORMS)}")
    return model


def model_values(spec: MixtureSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A canonical constrained point -> the model's free variables (by RV name): the canonical -> native map.

    ``params``: w (K, D), b (K,) when the spec has intercepts, sigma (() or (K,)), pi (K,).
    Raises MixbenchError (``MixtureSpec.check_params``) for a point of the wrong shape.
    """
    params = spec.check_params(params)
    values = {"sigma": params["sigma"]}
    if spec.softmax_weights:
        values["gamma_free"] = params["gamma"][:-1]
    elif spec.K > 1:
        values["pi"] = params["pi"]
    if spec.intercept and spec.shared == "intercepts":
        values["b_shared"] = params["b"][0]
    elif spec.intercept:
        values["b"] = params["b"]
    if spec.nu_is_parameter:
        values["nu"] = params["nu"]
    if spec.D and spec.shared == "slopes":
        values["w_shared"] = params["w"][0]
    elif spec.D and spec.ordering == "slope":
        values["w_first"] = params["w"][:, 0]
        if spec.D > 1:
            values["w_rest"] = params["w"][:, 1:]
    elif spec.D:
        values["w"] = params["w"]
    return values


def canonical_values(spec: MixtureSpec, values: dict[str, np.ndarray], lead: tuple[int, ...]) -> dict:
    """Model outputs with leading axes ``lead`` -> the canonical parameters (w, b, sigma, nu, pi):
    the native -> canonical map. ``values`` holds w, sigma, pi (K > 1), b (intercepts) and nu (a parameter) of shapes
    (*lead, *shape); returns arrays of shapes (*lead, *spec.param_shapes()[name])."""
    out = {
        "w": np.asarray(values["w"], float) if spec.D else np.zeros((*lead, spec.K, 0)),
        "sigma": np.asarray(values["sigma"], float).reshape((*lead, *spec.param_shapes()["sigma"])),
    }
    if spec.softmax_weights:
        out["gamma"] = np.asarray(values["gamma"], float)
    else:
        out["pi"] = np.asarray(values["pi"], float) if spec.K > 1 else np.ones((*lead, 1))
    if spec.intercept:
        out["b"] = np.asarray(values["b"], float)
    if spec.nu_is_parameter:
        out["nu"] = np.asarray(values["nu"], float).reshape(lead)
    return out
