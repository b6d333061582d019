"""The mixture of regressions as a NumPyro model, beside its PyMC model (models/pymc_model.py)
and its Stan program (stan/mixture.stan, mapped by models/stan_model.py).

``mixture_model`` is the model; ``site_values`` and ``canonical_values`` map a canonical point
(models/spec.py's names and shapes) to the model's latent sites and back; ``latent_sites`` lists
those sites with their unconstrained shapes and transforms. Its log density is the
oracle's (models/oracle.py): tests/test_models.py checks it at random points of many specs.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import random
from numpyro import handlers
from numpyro.distributions import constraints
from numpyro.distributions.transforms import biject_to

from models.errors import MixbenchError
from models.spec import MixtureSpec


class OrderedNormal(dist.Distribution):
    """``size`` iid Normal(loc, scale) values sorted ascending.

    Sorting iid draws gives the iid prior restricted to the ordered region, which holds 1/K! of
    its mass: the density there is K! prod_k phi(x_k), exactly the spec's ordered prior.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.ordered_vector
    reparametrized_params = ["loc", "scale"]

    def __init__(self, loc, scale, size: int, *, validate_args=None):
        self.loc, self.scale, self.size = loc, scale, size
        super().__init__(batch_shape=(), event_shape=(size,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        draws = self.loc + self.scale * random.normal(key, sample_shape + self.event_shape)
        return jnp.sort(draws, axis=-1)

    def log_prob(self, value):
        lp = dist.Normal(self.loc, self.scale).log_prob(value).sum(-1) + math.lgamma(self.size + 1)
        ordered = jnp.all(jnp.diff(value, axis=-1) > 0, axis=-1)
        return jnp.where(ordered, lp, -jnp.inf)


# How the likelihood is written (bench/experiments/ppl_formulations.py compares them; docs/performance.md):
# NumPyro's MixtureSameFamily, or the log-sum-exp of the component log densities as a factor.
LIKELIHOOD_FORMS = ("mixture_same_family", "logsumexp_factor")


def mixture_model(spec: MixtureSpec, x, y, subsample_size: int | None = None, total_size: bool = True,
                  form: str = "mixture_same_family"):
    """y_n ~ sum_k pi_k f(y_n | b_k + x_n . w_k, sigma_k), f Normal or StudentT(nu), priors,
    ordering and shared slopes (site ``w_shared``, ``w`` then deterministic) or intercepts (site
    ``b_shared``) from ``spec``; under softmax weights the site ``gamma_free`` (K - 1, D + 1)
    and pi_k(x_n) = softmax(gamma_k0 + x_n . gamma_k[1:]) per observation.

    ``subsample_size`` subsamples the observation plate, which scales the batch log likelihood by
    N / batch. ``total_size=False`` undoes that scaling (scale batch / N), replaying the forum
    thread's minibatch without total_size: the batch weighted as if it were the whole data.

    Ordered by slope, the first slope column is its own ordered site ``w_first`` and the other
    columns ``w_rest``; ``w`` is then a deterministic site joining them.
    """
    K, D, N = spec.K, spec.D, y.shape[0]
    if spec.softmax_weights:
        # K - 1 free rows; the reference row (the last) is 0 (models/spec.py).
        g = spec.gamma_prior
        gamma_free = numpyro.sample("gamma_free", dist.Normal(g.mu, g.sigma).expand((K - 1, D + 1)).to_event(2))
        gamma = numpyro.deterministic("gamma", jnp.concatenate([gamma_free, jnp.zeros((1, D + 1), y.dtype)]))
    else:
        pi = numpyro.sample("pi", dist.Dirichlet(jnp.asarray(spec.alpha, dtype=y.dtype)))
    s = spec.slope_prior
    if spec.ordering == "slope":
        columns = [numpyro.sample("w_first", OrderedNormal(s.mu, s.sigma, K))[:, None]]
        if D > 1:
            columns.append(numpyro.sample("w_rest", dist.Normal(s.mu, s.sigma).expand((K, D - 1)).to_event(2)))
        w = numpyro.deterministic("w", jnp.concatenate(columns, axis=1))
    elif D > 0 and spec.shared == "slopes":
        # One slope vector, its prior counted once; w repeats it for every component.
        w_shared = numpyro.sample("w_shared", dist.Normal(s.mu, s.sigma).expand((D,)).to_event(1))
        w = numpyro.deterministic("w", jnp.broadcast_to(w_shared, (K, D)))
    elif D > 0:
        w = numpyro.sample("w", dist.Normal(s.mu, s.sigma).expand((K, D)).to_event(2))
    if spec.intercept:
        p = spec.intercept_prior
        if spec.shared == "intercepts":
            b = numpyro.deterministic("b", jnp.broadcast_to(numpyro.sample("b_shared", dist.Normal(p.mu, p.sigma)), (K,)))
        else:
            prior = (OrderedNormal(p.mu, p.sigma, K) if spec.ordering == "intercept"
                     else dist.Normal(p.mu, p.sigma).expand((K,)).to_event(1))
            b = numpyro.sample("b", prior)
    sp = spec.sigma_prior
    if sp.family == "uniform":
        sigma_prior = dist.Uniform(0.0, sp.scale)
    elif sp.family == "halfnormal":
        sigma_prior = dist.HalfNormal(sp.scale)
    elif sp.family == "gamma":
        sigma_prior = dist.Gamma(sp.shape, 1.0 / sp.scale)
    elif sp.family == "invgamma":
        sigma_prior = dist.InverseGamma(sp.shape, sp.scale)
    else:
        sigma_prior = dist.LogNormal(np.log(sp.scale), sp.shape)
    if spec.sigma == "per-component":
        sigma_prior = sigma_prior.expand((K,)).to_event(1)
    sigma = numpyro.sample("sigma", sigma_prior)
    if spec.nu_is_parameter:
        nu = numpyro.sample("nu", dist.Gamma(spec.nu.shape, spec.nu.rate))
    else:
        nu = spec.nu

    # The observed site's distributions skip NumPyro's support check of y (validate_args, on by
    # default: log p -> where(isfinite(y), log p, -inf)): Dataset has already refused non-finite
    # data. Where y is a program's argument (the stored NUTS programs), the check's select stays
    # in every gradient and keeps XLA from fusing the log-sum-exp's log and sum into one
    # vectorised kernel (libm's scalar log instead): each NUTS step took 1.4x as long at
    # N = 1e5 (measured). A script that closes over its data has the check folded away.
    def errors(loc):
        if spec.errors == "normal":
            return dist.Normal(loc, sigma, validate_args=False)
        return dist.StudentT(nu, loc, sigma, validate_args=False)

    with numpyro.plate("obs", N, subsample_size=subsample_size) as idx:
        xb, yb = (x, y) if subsample_size is None else (x[idx], y[idx])
        mu = jnp.zeros((yb.shape[0], K), dtype=y.dtype)
        if D > 0:
            mu = mu + xb @ w.T
        if spec.intercept:
            mu = mu + b
        if spec.softmax_weights:
            eta = gamma[:, 0] + (xb @ gamma[:, 1:].T if D > 0 else jnp.zeros((yb.shape[0], 1), y.dtype))
            logits = jax.nn.log_softmax(eta, axis=-1)
        else:
            logits = jnp.log(pi)
        unscaled = subsample_size is not None and not total_size
        with handlers.scale(scale=subsample_size / N) if unscaled else nullcontext():
            if form == "mixture_same_family":
                # log sum_k exp(log_softmax(log pi)_k + log N(y | mu_k, sigma_k)) per observation,
                # one (batch, K) array, the oracle's formula; and y stays an observed site.
                likelihood = dist.MixtureSameFamily(dist.Categorical(logits=logits), errors(mu), validate_args=False)
                numpyro.sample("y", likelihood, obs=yb)
            elif form == "logsumexp_factor":
                terms = logits + errors(mu).log_prob(yb[:, None])
                numpyro.factor("y", jax.nn.logsumexp(terms, axis=-1))
            else:
                raise MixbenchError(f"likelihood form: unknown {form!r}; known: {', '.join(LIKELIHOOD_FORMS)}")


def site_values(spec: MixtureSpec, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical parameters (models/spec.py's names and shapes, after any leading batch axes)
    -> the model's latent sites: the canonical -> native map. Indexing counts from the last axes,
    so a batch of points (S, *shape) maps as one point does."""
    sites = {"sigma": params["sigma"]}
    if spec.softmax_weights:
        sites["gamma_free"] = params["gamma"][..., :-1, :]
    else:
        sites["pi"] = params["pi"]
    if spec.intercept and spec.shared == "intercepts":
        sites["b_shared"] = params["b"][..., 0]
    elif spec.intercept:
        sites["b"] = params["b"]
    if spec.nu_is_parameter:
        sites["nu"] = params["nu"]
    if spec.shared == "slopes":
        sites["w_shared"] = params["w"][..., 0, :]
    elif spec.ordering == "slope":
        sites["w_first"] = params["w"][..., 0]
        if spec.D > 1:
            sites["w_rest"] = params["w"][..., 1:]
    elif spec.D > 0:
        sites["w"] = params["w"]
    return sites


def canonical_values(spec: MixtureSpec, sites: dict[str, Any], lead: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Constrained site values with leading dims ``lead`` -> canonical names (float64 NumPy): the
    native -> canonical map; shapes (*lead, *spec.param_shapes()[name])."""
    sites = {k: np.asarray(v, dtype=np.float64) for k, v in sites.items()}
    out = {name: sites[name] for name in spec.param_shapes() if name in sites}
    if "gamma" not in out and spec.softmax_weights:
        out["gamma"] = np.concatenate([sites["gamma_free"], np.zeros(lead + (1, spec.D + 1))], axis=-2)
    if "b" not in out and spec.intercept:
        out["b"] = np.broadcast_to(sites["b_shared"][..., None], lead + (spec.K,)).copy()
    if "w" not in out:
        if spec.shared == "slopes":
            out["w"] = np.broadcast_to(sites["w_shared"][..., None, :], lead + (spec.K, spec.D)).copy()
        elif spec.ordering == "slope":
            columns = [sites["w_first"][..., None]] + ([sites["w_rest"]] if spec.D > 1 else [])
            out["w"] = np.concatenate(columns, axis=-1)
        else:
            out["w"] = np.zeros(lead + (spec.K, 0))
    return out


@dataclass(frozen=True)
class LatentSite:
    """One latent site of ``mixture_model``: its name, unconstrained shape and NumPyro's
    transform from the unconstrained space to its support (``biject_to``)."""

    name: str
    shape: tuple[int, ...]
    transform: Any


@cache
def latent_sites(spec: MixtureSpec) -> tuple[LatentSite, ...]:
    """The model's latent sites in trace order, with their unconstrained shapes and transforms
    (the space NumPyro's NUTS and optimisers work in)."""
    transforms = {}

    def unconstrained(x, y):
        tr = handlers.trace(handlers.seed(partial(mixture_model, spec), 0)).get_trace(x, y)
        out = {}
        for name, site in tr.items():
            if site["type"] == "sample" and not site["is_observed"]:
                transforms[name] = biject_to(site["fn"].support)
                out[name] = transforms[name].inv(site["value"])
        return out

    # Shapes only: abstract evaluation runs no computation.
    shapes = jax.eval_shape(unconstrained, jnp.zeros((1, spec.D)), jnp.zeros(1))
    return tuple(LatentSite(name, tuple(shapes[name].shape), transforms[name]) for name in transforms)
