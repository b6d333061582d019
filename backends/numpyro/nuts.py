"""The NumPyro backend's NUTS: warm-up and sampling as two programs compiled ahead of time and
stored whole (backends/jax_programs.py).
"""


from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
# numpyro itself before any of its submodules: imported the other way round after arviz_base,
# numpyro.distributions is left without its `distribution` attribute, which numpyro.factor needs.
import numpyro  # noqa: F401
from jax import lax
from numpyro.infer import NUTS

from backends.base import (FitSettings)
from backends.jax_programs import abstract, load_or_compile, program_key
from models.numpyro_model import mixture_model
from models.spec import MixtureSpec
from backends.numpyro.model import SOURCES
from backends.timing import stopwatch


class _NUTSPrograms:
    """NumPyro's NUTS for one (spec, N, settings, chain method, precision) as two compiled
    programs over all chains: warm-up (each chain's initial point, then the adaptation
    iterations) and sampling (the kept iterations from the post-warm-up state).

    The kernel is NumPyro's NUTS with its defaults (diagonal mass matrix adapted in windows, dual
    averaging of the step size), driven as ``MCMC`` drives it: ``init`` then ``sample`` in a
    loop. Chains run on one device each with ``pmap`` (parallel), or one after another inside
    one program (sequential). Written this way, not through ``MCMC``, so that the programs can
    be stored whole (backends/jax_programs.py): ``MCMC`` builds fresh closures on every call and
    has to trace and lower them again in every process.

    Pinned to the public call by tests/test_numpyro_backend.py (the same key gives MCMC's draws).
    Remove it for ``MCMC`` once NumPyro can keep its compiled sampler across processes
    (pyro-ppl/numpyro#1249, open) or once warm workers reuse one process per backend, so that
    JAX's persistent cache alone brings a second identical run's compile under a second a fit.
    """

    def __init__(self, spec: MixtureSpec, settings: FitSettings, chain_method: str, x, y, description: dict):
        self.kernel = NUTS(partial(mixture_model, spec), target_accept_prob=settings.target_accept,
                           max_tree_depth=settings.max_treedepth)
        self.num_warmup, self.num_draws = settings.warmup, settings.draws
        if chain_method == "parallel":
            self.devices = jax.devices()[: settings.chains]
            over_chains = partial(jax.pmap, in_axes=(0, None, None), devices=self.devices)
        else:
            self.devices = jax.devices()[:1]

            def over_chains(one_chain):
                return jax.jit(lambda batch, x, y: lax.map(lambda item: one_chain(item, x, y), batch))

        self.warmup_fn = over_chains(self._warmup_chain)
        self.sampling_fn = over_chains(self._sampling_chain)
        keys = jax.ShapeDtypeStruct((settings.chains, 2), jnp.uint32)
        x, y = abstract((x, y))  # the programs take the data as arguments: lower on shapes only
        self.keys = {name: program_key({**description, "program": name}, SOURCES, self.devices)
                     for name in ("warmup", "sampling")}
        self.warmup = load_or_compile(self.keys["warmup"], lambda: self.warmup_fn.lower(keys, x, y), self.devices)

        def lower_sampling():
            state = jax.eval_shape(self.warmup_fn, keys, x, y)[0]
            return self.sampling_fn.lower(state, x, y)

        self.sampling = load_or_compile(self.keys["sampling"], lower_sampling, self.devices)

    @staticmethod
    def describe(spec: MixtureSpec, N: int, settings: FitSettings, chain_method: str, dtype) -> dict:
        """Everything the two programs depend on besides the code (the program key adds that)."""
        return {"spec": spec.to_dict(), "N": int(N), "dtype": str(dtype), "chain_method": chain_method,
                "chains": settings.chains, "warmup": settings.warmup, "draws": settings.draws,
                "target_accept": settings.target_accept, "max_treedepth": settings.max_treedepth}

    @property
    def loaded(self) -> bool:
        return self.warmup.loaded and self.sampling.loaded

    @staticmethod
    def _fields(state) -> dict:
        return {"num_steps": state.num_steps, "potential_energy": state.potential_energy,
                "energy": state.energy, "accept_prob": state.accept_prob,
                "step_size": state.adapt_state.step_size, "diverging": state.diverging}

    def _iterate(self, state, x, y, length: int, keep_position: bool):
        def step(state, _):
            state = self.kernel.sample(state, (x, y), {})
            return state, ((state.z if keep_position else None), self._fields(state))
        return lax.scan(step, state, None, length=length)

    def _warmup_chain(self, key, x, y):
        state = self.kernel.init(key, self.num_warmup, None, (x, y), {})
        state, (_, fields) = self._iterate(state, x, y, self.num_warmup, keep_position=False)
        return state, fields

    def _sampling_chain(self, state, x, y):
        constrain = self.kernel.postprocess_fn((x, y), {})
        state, (positions, fields) = self._iterate(state, x, y, self.num_draws, keep_position=True)
        return state, jax.vmap(constrain)(positions), fields

    def run(self, keys, x, y, timings: dict[str, float]):
        """Warm-up then sampling, each timed to its results being ready. A stored program that
        has to be compiled again on its first run (backends/jax_programs.py) is charged to
        compile, not to the phase."""
        with stopwatch(timings, "warmup"):
            state, warmup_stats = jax.block_until_ready(self.warmup(keys, x, y))
        with stopwatch(timings, "sampling"):
            _, samples, stats = jax.block_until_ready(self.sampling(state, x, y))
        return warmup_stats, samples, stats
