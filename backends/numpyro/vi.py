"""The NumPyro backend's optimisation programs: SVI (ADVI, minibatch ADVI, MAP's AutoDelta) as
set-up, update chunk, parameters and draws; the Laplace objective, start, Gaussian and draws
(AutoLaplaceApproximation); BlackJAX's Pathfinder path and draws. Each is stored whole
(backends/jax_programs.py).
"""


from __future__ import annotations

import json
import math
from functools import cache, partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
# numpyro itself before any of its submodules: imported the other way round after arviz_base,
# numpyro.distributions is left without its `distribution` attribute, which numpyro.factor needs.
import numpyro  # noqa: F401
import numpyro.distributions as dist
from jax import lax, random
from jax.flatten_util import ravel_pytree
from numpyro import handlers, optim
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoLaplaceApproximation, AutoMultivariateNormal, AutoNormal
from numpyro.infer.util import potential_energy

from backends.base import (FitSettings)
from backends.methods import method as method_named
from models.numpyro_model import mixture_model
from models.spec import MixtureSpec
from backends.numpyro.model import _constrain, _layout, _stored, _unflatten, _uniform_init


# Optimiser names (PyMC's where they overlap) -> NumPyro optimisers, given the learning rate.
_OPTIMIZERS: dict[str, Callable[[float], Any]] = {
    "adam": optim.Adam,
    "sgd": optim.SGD,
    "adagrad": optim.Adagrad,
    "clipped_adam": optim.ClippedAdam,
    "rmsprop": optim.RMSProp,
    "momentum": lambda lr: optim.Momentum(lr, 0.9),
}


# ----------------------------------------------------------------------------------------------
# SVI machinery

_CHECK_EVERY = 100  # updates between convergence checks, as PyMC's CheckParametersConvergence
_GUIDES = {
    "advi-meanfield": AutoNormal,
    "advi-minibatch-meanfield": AutoNormal,
    "advi-fullrank": AutoMultivariateNormal,
    "advi-minibatch-fullrank": AutoMultivariateNormal,
    "map": AutoDelta,
}


def _svi_approximation(spec: MixtureSpec, guide, params: dict) -> dict[str, np.ndarray]:
    """A fitted ADVI guide's parameters on the unconstrained space, in ``_layout`` order: mean and
    std (AutoNormal, one normal per site), or mean, std and cov = L L' (AutoMultivariateNormal,
    which packs the sites in trace order, the order of ``_layout``), as PyMC's ADVI gives them."""
    layout = _layout(spec)
    if isinstance(guide, AutoNormal):
        return {"mean": np.concatenate([np.ravel(params[f"{s.name}_auto_loc"]) for s in layout]),
                "std": np.concatenate([np.ravel(params[f"{s.name}_auto_scale"]) for s in layout])}
    tril = np.asarray(params["auto_scale_tril"], dtype=float)
    cov = tril @ tril.T
    return {"mean": np.asarray(params["auto_loc"], dtype=float), "std": np.sqrt(np.diag(cov)), "cov": cov}


def _as_json(arrays: dict) -> str:
    """The fitted approximation's parameters as a JSON attribute: a record that survives netCDF."""
    return json.dumps({k: np.asarray(v).tolist() for k, v in arrays.items()})


# The Laplace approximation: NumPyro's AutoLaplaceApproximation. Its loss, Trace_ELBO of its
# Delta guide on the packed unconstrained latent, is minus the log density with the Jacobian of
# the constraining transforms; its covariance is the inverse of that loss's Hessian (jax.hessian)
# at the mode. The guide closes over the data it is set up with, so every program builds and sets
# up its own guide on the data it is given. The mode search is backends/laplace.py's (SciPy's
# trust-exact on this loss, its gradient and Hessian), as in the PyMC backend: jax.scipy's BFGS,
# which NumPyro's optim.Minimize runs, stops on line-search failures far from the mode here.


def _laplace_guide(spec: MixtureSpec, x, y) -> tuple[AutoLaplaceApproximation, np.ndarray]:
    """AutoLaplaceApproximation of the full-data model, set up on (x, y), and the permutation
    ``packed`` with guide vector = _layout vector[packed]: the guide packs its sites in its own
    order (by name), the backend's unconstrained vector is in trace order (_layout)."""
    guide = AutoLaplaceApproximation(partial(mixture_model, spec))
    handlers.seed(guide, random.PRNGKey(0))(x, y)
    starts, offset = {}, 0
    for site in _layout(spec):
        starts[site.name] = offset
        offset += math.prod(site.shape)
    sizes = {s.name: math.prod(s.shape) for s in _layout(spec)}
    packed = np.concatenate([np.arange(starts[name], starts[name] + sizes[name]) for name in guide._init_locs])
    return guide, packed.astype(int)


def _laplace_loss(spec: MixtureSpec, guide: AutoLaplaceApproximation, x, y) -> Callable:
    """guide vector -> AutoLaplaceApproximation's loss there (-log density with Jacobian)."""
    model = partial(mixture_model, spec)
    return lambda flat: Trace_ELBO().loss(random.PRNGKey(0), {"auto_loc": flat}, model, guide, x, y)


@cache
def _laplace_objective_fn(spec: MixtureSpec) -> Callable:
    """(z, x, y) -> AutoLaplaceApproximation's loss at z (_layout order), its gradient and its
    Hessian (jax.hessian, the guide's own default), in _layout order."""
    def run(z, x, y):
        guide, packed = _laplace_guide(spec, x, y)
        loss = _laplace_loss(spec, guide, x, y)

        def in_layout(flat):
            return loss(flat[packed])

        value, gradient = jax.value_and_grad(in_layout)(z)
        return value, gradient, jax.hessian(in_layout)(z)

    return _stored(run, "laplace_objective", spec)


@cache
def _laplace_start_fn(spec: MixtureSpec) -> Callable:
    """(key, y) -> NumPyro's uniform initial point (every unconstrained coordinate uniform on
    (-2, 2)) as one vector in _layout order, in y's dtype."""
    def start(key, y):
        z0 = _uniform_init(spec, key, y.dtype)
        return jnp.concatenate([jnp.ravel(z0[s.name]) for s in _layout(spec)])

    return _stored(start, "laplace_start", spec)


@cache
def _laplace_gaussian_fn(spec: MixtureSpec) -> Callable:
    """(mode, x, y) -> the covariance of AutoLaplaceApproximation's Gaussian there
    (``get_posterior``), in _layout order; zero where the Hessian has no Cholesky factor of its
    inverse, as NumPyro returns it."""
    def run(loc, x, y):
        guide, packed = _laplace_guide(spec, x, y)
        inverse = np.argsort(packed)
        return guide.get_posterior({"auto_loc": loc[packed]}).covariance_matrix[inverse][:, inverse]

    return _stored(run, "laplace_gaussian", spec)


@cache
def _laplace_draws_fn(spec: MixtureSpec) -> Callable:
    """(mean, cov, key, n) -> n draws of the Gaussian, unpacked to latent sites, and its exact
    log density at each (NumPyro's MultivariateNormal)."""
    def draw(loc, cov, key, n):
        gaussian = dist.MultivariateNormal(loc, covariance_matrix=cov)
        flat = gaussian.sample(key, (n,))
        return jax.vmap(partial(_unflatten, spec))(flat), gaussian.log_prob(flat)

    return _stored(draw, "laplace_draws", spec, static_argnums=(3,))


class _SVIProgram:
    """Model, guide, optimiser and their programs for one (spec, N, method, settings): set-up,
    a chunk of updates, the fitted parameters, draws from the guide.

    Every program is stored on disk (backends/jax_programs.py), so a later process runs them
    without tracing anything. NumPyro's AutoGuides set themselves up on first use by running the
    model op by op (some 300 small programs); here that first use happens inside whichever
    program is traced first (``_ensure_guide``), so it is traced once, never executed eagerly,
    and not at all when every program is loaded. The guide's starting point comes from each
    fit's seed (``init``), not from the guide's set-up.
    """

    def __init__(self, spec: MixtureSpec, method: str, settings: FitSettings):
        minibatch = method_named(method).minibatch
        self.spec = spec
        self.model = partial(mixture_model, spec, subsample_size=settings.batch_size if minibatch else None,
                             total_size=settings.minibatch_total_size)
        self.guide = _GUIDES[method](self.model)
        self.svi = SVI(self.model, self.guide, _OPTIMIZERS[settings.optimizer](settings.learning_rate),
                       Trace_ELBO())
        described = {"method": method, "optimizer": settings.optimizer, "learning_rate": settings.learning_rate,
                     "batch_size": settings.batch_size if minibatch else None,
                     "total_size": settings.minibatch_total_size if minibatch else None,
                     "check_every": _CHECK_EVERY}
        self.init = _stored(self._init_state, "svi_init", spec, **described)
        self.run_chunk = _stored(self._run_chunk, "svi_chunk", spec, **described)
        self.get_params = _stored(self._get_params, "svi_params", spec, **described)
        self.draw = _stored(self._draw, "svi_draw", spec, static_argnums=(4,), **described)

    def _ensure_guide(self, x, y):
        """Set the guide (and SVI's constraint transforms) up inside the current trace."""
        if self.guide.prototype_trace is None:
            self.svi.init(random.PRNGKey(0), x, y)

    def _init_state(self, init_key, key, x, y):
        self._ensure_guide(x, y)
        z0 = _uniform_init(self.spec, init_key, y.dtype)
        return self.svi.init(key, x, y, init_params=self._init_params(z0))

    def _get_params(self, state, x, y):
        self._ensure_guide(x, y)
        return self.svi.get_params(state)

    def _run_chunk(self, state, n, x, y):
        """``n`` <= _CHECK_EVERY updates; losses padded with NaN to a fixed length (one compile)."""
        self._ensure_guide(x, y)

        def step(i, carry):
            state, losses = carry
            state, loss = self.svi.update(state, x, y)
            return state, losses.at[i].set(loss)

        return lax.fori_loop(0, n, step, (state, jnp.full(_CHECK_EVERY, jnp.nan, y.dtype)))

    def _init_params(self, z0: dict) -> dict:
        if isinstance(self.guide, AutoNormal):
            return {f"{name}_auto_loc": value for name, value in z0.items()}
        if isinstance(self.guide, AutoDelta):  # its locations live in the constrained space
            return {f"{name}_auto_loc": value for name, value in _constrain(self.spec, z0).items()}
        # AutoContinuous packs its sites into one vector in the order of its init locations.
        return {"auto_loc": jnp.concatenate([jnp.ravel(z0[name]) for name in self.guide._init_locs])}

    def flat_params(self, state) -> np.ndarray:
        """The guide's parameters in the optimiser's (unconstrained) space, as one vector (in
        NumPy: no small JAX program per check)."""
        leaves = jax.tree.leaves(self.svi.optim.get_params(state.optim_state))
        return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])

    def map_point(self, params: dict) -> dict:
        return {s.name: params[f"{s.name}_auto_loc"] for s in _layout(self.spec)}

    def _draw(self, params: dict, key, x, y, n: int):
        """``n`` draws of the guide's unconstrained latent and the guide's log density at each."""
        self._ensure_guide(x, y)
        if isinstance(self.guide, AutoNormal):
            layout = _layout(self.spec)
            z, log_q = {}, jnp.zeros(n)
            for site, k in zip(layout, random.split(key, len(layout))):
                q = dist.Normal(params[f"{site.name}_auto_loc"], params[f"{site.name}_auto_scale"])
                z[site.name] = q.sample(k, (n,))
                log_q = log_q + q.log_prob(z[site.name]).reshape(n, -1).sum(-1)
            return z, log_q
        posterior = self.guide.get_posterior(params)
        flat = posterior.sample(key, (n,))
        return jax.vmap(self.guide._unpack_latent)(flat), posterior.log_prob(flat)


def _optimise(program: _SVIProgram, state, x, y, settings: FitSettings):
    """Run SVI for up to ``vi_iterations`` updates, stopping like PyMC's CheckParametersConvergence:
    every _CHECK_EVERY updates, the largest relative change of a parameter,
    (|new - old| + 1e-6) / (|old| + 1e-6), below ``vi_tolerance`` means converged."""
    losses, done, converged = [], 0, False
    previous = program.flat_params(state)
    while done < settings.vi_iterations:
        n = min(_CHECK_EVERY, settings.vi_iterations - done)
        state, chunk = program.run_chunk(state, n, x, y)
        losses.append(np.asarray(chunk)[:n])
        done += n
        if not np.all(np.isfinite(losses[-1])):
            break
        current = program.flat_params(state)
        change = np.max((np.abs(current - previous) + 1e-6) / (np.abs(previous) + 1e-6))
        previous = current
        if change < settings.vi_tolerance:
            converged = True
            break
    return state, np.concatenate(losses).astype(np.float64), done, converged


# ----------------------------------------------------------------------------------------------
# Pathfinder. blackjax.vi.pathfinder.approximate evaluates the ELBO at every point of the
# L-BFGS path at once (vmap), which needs memory for (maxiter x draws x N x K) values; here the
# same computation runs point by point over the iterations L-BFGS actually took. BlackJAX's
# approximate also passes the objective's gradient, grad(-log p), where the paper's BFGS-Sample
# mean theta + H grad(log p) needs grad(log p): on a Gaussian target its mean then steps away
# from the mode. This code passes grad(log p).

# BlackJAX's defaults for L-BFGS and for the number of draws per ELBO estimate.
_PATHFINDER = {"maxcor": 10, "gtol": 1e-8, "ftol": 1e-5, "maxls": 1000, "elbo_draws": 200}


def _flat_template(spec: MixtureSpec) -> Callable:
    return ravel_pytree({s.name: jnp.zeros(s.shape) for s in _layout(spec)})[1]


@cache
def _pathfinder_fn(spec: MixtureSpec, maxiter: int) -> Callable:
    from blackjax.optimizers.lbfgs import bfgs_sample, lbfgs_inverse_hessian_factors, minimize_lbfgs

    model = partial(mixture_model, spec)
    maxcor = _PATHFINDER["maxcor"]

    def run(init_key, key, x, y):
        flat0, unravel = ravel_pytree(_uniform_init(spec, init_key, y.dtype))

        def objective(flat):
            return potential_energy(model, (x, y), {}, unravel(flat))

        last, history = minimize_lbfgs(objective, flat0, maxiter, maxcor, _PATHFINDER["gtol"],
                                       _PATHFINDER["ftol"], _PATHFINDER["maxls"])
        iterations = last.state.iter_num
        mask = history.update_mask[1:]
        s = jnp.where(mask, jnp.diff(history.x, axis=0), 0.0)
        dz = jnp.where(mask, jnp.diff(history.g, axis=0), 0.0)
        s, dz = jnp.pad(s, ((maxcor, 0), (0, 0))), jnp.pad(dz, ((maxcor, 0), (0, 0)))

        def factors(i):
            window = i + jnp.arange(maxcor)
            return lbfgs_inverse_hessian_factors(s[window].T, dz[window].T, history.alpha[i])

        def elbo(i, k):
            beta, gamma = factors(i)
            phi, log_q = bfgs_sample(k, _PATHFINDER["elbo_draws"], history.x[i], -history.g[i],
                                     history.alpha[i], beta, gamma)
            log_p = -lax.map(objective, phi, batch_size=16)
            return jnp.mean(log_p - log_q)

        keys = random.split(key, maxiter + 1)

        def best_of(i, best):
            value = elbo(i, keys[i])
            better = jnp.isfinite(value) & (value > best[0])
            return jnp.where(better, value, best[0]), jnp.where(better, i, best[1])

        # As BlackJAX: the points before the last iteration are candidates.
        best_elbo, best = lax.fori_loop(0, iterations, best_of, (jnp.array(-jnp.inf, flat0.dtype), 0))
        beta, gamma = factors(best)
        return {"position": history.x[best], "grad": -history.g[best], "alpha": history.alpha[best],
                "beta": beta, "gamma": gamma, "elbo": best_elbo, "best": best,
                "iterations": iterations, "objective": history.f}

    return _stored(run, "pathfinder", spec, maxiter=maxiter, **_PATHFINDER)


@cache
def _pathfinder_draws_fn(spec: MixtureSpec) -> Callable:
    from blackjax.optimizers.lbfgs import bfgs_sample

    unravel = _flat_template(spec)

    def draw(approx, key, n):
        phi, log_q = bfgs_sample(key, n, approx["position"], approx["grad"], approx["alpha"],
                                 approx["beta"], approx["gamma"])
        return jax.vmap(unravel)(phi), log_q

    return _stored(draw, "pathfinder_draws", spec, static_argnums=(2,))
