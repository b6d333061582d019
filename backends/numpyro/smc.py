"""Sequential Monte Carlo in the NumPyro backend: BlackJAX's adaptive tempered SMC on the NumPyro
model's log density.

The tempering splits the model's log density on NumPyro's unconstrained space (its ``potential
energy``, the log |Jacobian| of the constraining transforms included) into the log prior (the
potential of the model with its observed sites blocked) and the log likelihood (the rest):
the particles start as draws of the prior and move through p(z) L(z)^beta (backends/smc.py).
The mutation is ``NUM_MCMC_STEPS`` HMC steps of ``NUM_INTEGRATION_STEPS`` leapfrog steps per stage;
between stages the inverse mass matrix is set to the particles' variances and the step size is
scaled by exp(acceptance - TARGET_ACCEPT), the particle-based tuning of Buchholz, Chopin & Jacob
(2021, "Adaptive tuning of Hamiltonian Monte Carlo within sequential Monte Carlo").
``blackjax.adaptive_tempered_smc`` chooses each next beta so that the weights' ESS is
``TARGET_ESS`` of the particles and resamples systematically; its summed
``log_likelihood_increment`` is the log marginal likelihood estimate.
"""

from __future__ import annotations

from functools import cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import constrain_fn, potential_energy

from backends.base import Fit, FitSettings, canonical_datatree, note_compile, stopwatch
from backends.methods import SMC_GROUP
from backends.smc import TARGET_ESS, smc_group
from models.data import Dataset
from models.numpyro_model import canonical_values, mixture_model
from models.spec import MixtureSpec

ENGINE = "numpyro+blackjax-smc"
NUM_MCMC_STEPS = 10
NUM_INTEGRATION_STEPS = 10
TARGET_ACCEPT = 0.65
MAX_STAGES = 1000  # a run still short of beta = 1 after this many stages has failed


class _Target:
    """The model's prior and likelihood on one flat unconstrained vector, and the maps out of it;
    the data are arguments, so one compiled SMC step serves every data set of one shape."""

    def __init__(self, spec: MixtureSpec, D: int):
        self.model = partial(mixture_model, spec)
        x, y = jnp.zeros((2, D)), jnp.zeros(2)
        trace = handlers.trace(handlers.seed(self.model, 0)).get_trace(x, y)
        self.latent = [n for n, s in trace.items() if s["type"] == "sample" and not s["is_observed"]]
        observed = [n for n, s in trace.items() if s["type"] == "sample" and s["is_observed"]]
        self.transforms = {n: biject_to(trace[n]["fn"].support) for n in self.latent}
        flat, self.unravel = ravel_pytree({n: self.transforms[n].inv(trace[n]["value"]) for n in self.latent})
        self.dim = flat.size
        self.prior_model = handlers.block(self.model, hide=observed)

    def log_prior(self, flat, x, y):
        return -potential_energy(self.prior_model, (x, y), {}, self.unravel(flat))

    def log_likelihood(self, flat, x, y):
        return -potential_energy(self.model, (x, y), {}, self.unravel(flat)) - self.log_prior(flat, x, y)

    def prior_draw(self, key, x, y):
        trace = handlers.trace(handlers.seed(self.model, key)).get_trace(x, y)
        return ravel_pytree({n: self.transforms[n].inv(trace[n]["value"]) for n in self.latent})[0]

    def constrained(self, flat, x, y):
        return constrain_fn(self.model, (x, y), {}, self.unravel(flat), return_deterministic=True)


@cache
def _program(spec: MixtureSpec, D: int):
    """(target, jitted SMC step) of one spec, built once per process: a later fit of the same
    shapes reuses the compiled step."""
    import blackjax

    target = _Target(spec, D)

    def step(key, state, step_size, inverse_mass_matrix, x, y):
        # Leading dimension 1: one value shared by every particle (blackjax.smc.base).
        parameters = {"step_size": step_size[None], "inverse_mass_matrix": inverse_mass_matrix[None],
                      "num_integration_steps": jnp.array([NUM_INTEGRATION_STEPS])}
        smc = blackjax.adaptive_tempered_smc(
            partial(target.log_prior, x=x, y=y), partial(target.log_likelihood, x=x, y=y),
            blackjax.hmc.build_kernel(), blackjax.hmc.init,
            mcmc_parameters=parameters, resampling_fn=blackjax.smc.resampling.systematic,
            target_ess=TARGET_ESS, num_mcmc_steps=NUM_MCMC_STEPS)
        new, info = smc.step(key, state)
        return new, info.log_likelihood_increment, jnp.mean(info.update_info.acceptance_rate)

    return target, jax.jit(step)


_COMPILED: dict[tuple, tuple] = {}


def _compiled(spec: MixtureSpec, D: int, N: int, particles: int, precision: str):
    """(target, the SMC step compiled for these shapes), compiled once per process (ahead of
    time, so that sampling is timed apart from compiling)."""
    key = (spec, D, N, particles, precision)
    if key not in _COMPILED:
        import blackjax

        dtype = jnp.float64 if precision == "float64" else jnp.float32
        target, step = _program(spec, D)
        state = blackjax.smc.tempered.init(jnp.zeros((particles, target.dim), dtype))
        _COMPILED[key] = target, step.lower(random.PRNGKey(0), state, jnp.asarray(0.1, dtype),
                                            jnp.ones(target.dim, dtype), jnp.zeros((N, D), dtype),
                                            jnp.zeros(N, dtype)).compile()
    return _COMPILED[key]


def _run(target: _Target, step, key, particles: int, x, y):
    """One SMC run: (particles (n, d), betas, log evidence)."""
    import blackjax

    init_key, key = random.split(key)
    positions = jax.vmap(lambda k: target.prior_draw(k, x, y))(random.split(init_key, particles))
    state = blackjax.smc.tempered.init(positions)
    step_size = jnp.asarray(0.5 / target.dim ** 0.25, dtype=positions.dtype)
    betas, log_z = [], 0.0
    while float(state.tempering_param) < 1.0:
        if len(betas) >= MAX_STAGES:
            raise RuntimeError(f"SMC: beta = {float(state.tempering_param):.3g} after {MAX_STAGES} stages")
        key, sub = random.split(key)
        inverse_mass = jnp.maximum(jnp.var(state.particles, axis=0), 1e-12).astype(positions.dtype)
        state, increment, accept = step(sub, state, step_size, inverse_mass, x, y)
        step_size = (step_size * jnp.exp(accept - TARGET_ACCEPT)).astype(positions.dtype)
        betas.append(float(state.tempering_param))
        log_z += float(increment)
    return state.particles, betas, log_z


def fit_smc(backend, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
    """Fit ``spec`` to ``dataset`` by BlackJAX's adaptive tempered SMC: the NumPyro backend's ``smc``
    runner.

    Parameters
    ----------
    backend : backends.base.Backend
        The NumPyro backend (its name goes on the Fit); called as its method-table runner.
    spec, dataset, method, settings, seed
        As ``Backend.fit`` passes them: ``settings.chains`` runs of ``settings.draws`` particles
        at ``settings.precision``.

    Returns
    -------
    Fit
        Status ok; draws (chain, draw) = (runs, particles) with group ``SMC_GROUP``; timings
        ``compile`` (tracing and compiling the SMC step), ``sampling`` and ``extraction``.

    Raises
    ------
    RuntimeError
        A run that does not reach beta = 1 within ``MAX_STAGES`` stages (a failed fit).
    """
    timings: dict[str, float] = {}
    dtype = jnp.float64 if settings.precision == "float64" else jnp.float32
    with jax.enable_x64(settings.precision == "float64"):
        x, y = jnp.asarray(dataset.x, dtype), jnp.asarray(dataset.y, dtype)
        with stopwatch(timings, "compile"):
            note_compile("warm" if (spec, dataset.D, dataset.N, settings.draws, settings.precision) in _COMPILED
                         else "cold")
            target, step = _compiled(spec, dataset.D, dataset.N, settings.draws, settings.precision)
        keys = random.split(random.PRNGKey(seed), settings.chains)
        with stopwatch(timings, "sampling"):
            runs = [_run(target, step, k, settings.draws, x, y) for k in keys]
        with stopwatch(timings, "extraction"):
            flat = jnp.stack([r[0] for r in runs]).reshape(-1, target.dim)
            sites = jax.vmap(lambda z: target.constrained(z, x, y))(flat)
            lead = (settings.chains, settings.draws)
            posterior = canonical_values(spec, {n: np.asarray(v).reshape(lead + v.shape[1:]) for n, v in sites.items()},
                                         lead)
            draws = canonical_datatree(spec, {n: posterior[n] for n in spec.param_shapes()},
                                       attrs={"/": {"backend": backend.name, "engine": ENGINE}})
            draws[SMC_GROUP] = smc_group(settings.draws, [r[1] for r in runs], [r[2] for r in runs], ENGINE)
    return Fit(backend=backend.name, method=method, status="ok", engine=ENGINE, draws=draws, timings=timings,
               precision=settings.precision)
