"""The NumPyro backend: one NumPyro model for every spec; NUTS, SVI (ADVI, minibatch ADVI), MAP,
the Laplace approximation (AutoLaplaceApproximation) and BlackJAX's Pathfinder on it.

JAX fixes two things per process before its first computation: how many CPU devices exist
(parallel chains need one device each) and whether 64-bit floats are allowed. Both are set for
the whole process when the first backend loads (backends/jax_setup.py); a float32 fit then runs
inside ``jax.enable_x64(False)`` with its data cast to float32, so every array JAX creates in it (initial points, momenta, step sizes) is
float32 too, not only the data.

Every fit runs as programs compiled ahead of time and stored whole (backends/jax_programs.py):
NUTS as a warm-up and a sampling program, SVI as set-up, update chunk, parameters and draws,
Pathfinder as its path and its draws. A later process loads them and traces nothing.
"""

from __future__ import annotations

import json
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
from jax import random

from backends import backend_versions, laplace
from backends.base import Backend
from backends.canonical import approximation_group, canonical_datatree, unconstrained_groups
from backends.fit import Fit, FitSettings
from backends.importance import attach_pool, choose_draws
from backends.methods import Kind
from backends.methods import method as method_named
from backends.numpyro.model import (ENGINE, _constrain, _constrain_fn, _device_data, _draw_diagnostics_fn, _layout,
                                    _log_density_fn, _precision, _unconstrained_labels, _unflatten,
                                    _value_and_grad_fn)
from backends.numpyro.nuts import _NUTSPrograms
from backends.numpyro.smc import fit_smc
from backends.numpyro.vi import (_CHECK_EVERY, _GUIDES, _OPTIMIZERS, _PATHFINDER, _SVIProgram, _as_json,
                                 _laplace_draws_fn, _laplace_gaussian_fn, _laplace_objective_fn, _laplace_start_fn,
                                 _optimise, _pathfinder_draws_fn, _pathfinder_fn, _svi_approximation)
from backends.timing import note_compile, stopwatch
from models.data import Dataset
from models.errors import MixbenchError
from models.numpyro_model import canonical_values as _canonical
from models.numpyro_model import site_values as _sites_from_params
from models.spec import MixtureSpec


# ----------------------------------------------------------------------------------------------
# The backend

class NumPyroBackend(Backend):
    name = "numpyro"

    def __init__(self):
        self._programs: dict[tuple, _SVIProgram] = {}
        self._nuts_cache: dict[str, _NUTSPrograms] = {}

    def versions(self) -> dict[str, str]:
        return backend_versions(self.name)  # declared where the backends are registered

    # The method table (Backend's contract); the model implements the correct mixture only.
    methods = {
        "nuts": "_fit_nuts",
        **dict.fromkeys(("advi-meanfield", "advi-fullrank", "advi-minibatch-meanfield",
                         "advi-minibatch-fullrank", "map"), "_fit_svi"),
        "pathfinder": "_fit_pathfinder",
        "laplace": "_fit_laplace",
        "smc": "_fit_smc",
    }
    _fit_smc = fit_smc  # backends/numpyro/smc.py

    def refuses(self, spec: MixtureSpec, method: str, settings: FitSettings) -> str | None:
        if method_named(method).kind is Kind.MCMC and settings.sampler not in (None, "numpyro"):
            return f"sampler {settings.sampler!r}: the numpyro backend runs NumPyro's own NUTS only"
        if method in _GUIDES:  # the methods this backend runs by SVI
            if settings.optimizer not in _OPTIMIZERS:
                return (f"optimizer {settings.optimizer!r} is not available in the numpyro backend; "
                        f"known: {', '.join(_OPTIMIZERS)}")
        return None

    def log_density(self, spec: MixtureSpec, dataset: Dataset, params: dict[str, np.ndarray]) -> float:
        self.check_likelihood(spec)
        dataset.check_against(spec)
        params = spec.check_params(params)
        with _precision("float64"):
            x, y = _device_data(dataset, "float64")
            sites = {k: jnp.asarray(v) for k, v in _sites_from_params(spec, params).items()}
            return float(_log_density_fn(spec)(sites, x, y))

    def gradient_function(self, spec: MixtureSpec, dataset: Dataset, settings: FitSettings):
        """The jitted log density + gradient NUTS uses, on a flat vector of the unconstrained
        sites (trace order), at ``settings.precision``, compiled before returning."""
        from backends.gradients import fixed_point

        self.check_likelihood(spec)
        if settings.sampler not in (None, ENGINE):
            raise MixbenchError(f"sampler {settings.sampler!r}: the numpyro backend runs NumPyro only")
        dataset.check_against(spec)
        sites = _sites_from_params(spec, fixed_point(spec, dataset))
        fn = _value_and_grad_fn(spec)
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            z0 = [jnp.ravel(s.transform.inv(jnp.asarray(sites[s.name], y.dtype))) for s in _layout(spec)]
            flat0 = jnp.concatenate(z0)
            jax.block_until_ready(fn(flat0, x, y))

        def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
            with _precision(settings.precision):
                lp, grad = jax.block_until_ready(fn(jnp.asarray(theta, y.dtype), x, y))
            return float(lp), np.asarray(grad, dtype=np.float64)

        return f, np.asarray(flat0, dtype=np.float64)

    # -- NUTS ------------------------------------------------------------------------------------

    @staticmethod
    def chain_method(settings: FitSettings) -> str:
        """Parallel chains (pmap, one device each) where devices allow, else one after another."""
        if settings.chains > 1 and settings.parallel_chains and jax.local_device_count() >= settings.chains:
            return "parallel"
        return "sequential"

    def _fit_nuts(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                  seed: int) -> Fit:
        timings: dict[str, float] = {}
        chain_method = self.chain_method(settings)
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            # Phases. compile: building or loading the two programs (backends/jax_programs.py:
            # a later process loads them from disk, with no tracing, lowering or compiling).
            # warmup: each chain's initial point and the adaptation iterations. sampling: the
            # kept iterations, from the post-warm-up state. extraction: device to NumPy,
            # canonical names, DataTree.
            with stopwatch(timings, "compile"):
                programs = self._nuts_programs(spec, dataset.N, settings, chain_method, x, y)
            keys = random.split(random.PRNGKey(seed), settings.chains)
            warmup_stats, samples, stats = programs.run(keys, x, y, timings)
            with stopwatch(timings, "extraction"):
                samples, stats, warmup_stats = jax.device_get((samples, stats, warmup_stats))
                engine_dtype = str(np.asarray(samples["sigma"]).dtype)
                lead = (settings.chains, settings.draws)
                n_steps = np.asarray(stats["num_steps"])
                tree_depth = np.log2(n_steps).astype(int) + 1
                sample_stats = {
                    "diverging": np.asarray(stats["diverging"], dtype=bool),
                    "n_steps": n_steps,
                    "tree_depth": tree_depth,
                    "reached_max_tree_depth": tree_depth >= settings.max_treedepth,
                    "lp": -np.asarray(stats["potential_energy"]),
                    "energy": np.asarray(stats["energy"]),
                    "acceptance_rate": np.asarray(stats["accept_prob"]),
                    "step_size": np.asarray(stats["step_size"]),
                }
                draws = canonical_datatree(
                    spec, _canonical(spec, samples, lead), sample_stats,
                    attrs={"/": {"backend": self.name, "engine": ENGINE, "method": "nuts",
                                 "chain_method": chain_method, "precision": settings.precision,
                                 "engine_dtype": engine_dtype,
                                 "programs": "loaded" if programs.loaded else "compiled"}},
                )
        warmup_steps = int(np.sum(warmup_stats["num_steps"]))
        return Fit(
            backend=self.name, method="nuts", status="ok", engine=ENGINE, draws=draws, timings=timings,
            precision=settings.precision, grad_evals=warmup_steps + int(n_steps.sum()),
            divergences=int(sample_stats["diverging"].sum()),
        )

    def _nuts_programs(self, spec: MixtureSpec, N: int, settings: FitSettings, chain_method: str,
                       x, y) -> "_NUTSPrograms":
        description = _NUTSPrograms.describe(spec, N, settings, chain_method, y.dtype)
        description_key = json.dumps(description, sort_keys=True)
        note_compile("warm" if description_key in self._nuts_cache else "cold")
        if description_key not in self._nuts_cache:
            self._nuts_cache[description_key] = _NUTSPrograms(spec, settings, chain_method, x, y, description)
        return self._nuts_cache[description_key]

    # -- SVI: ADVI (mean-field, full-rank, minibatch) and MAP -----------------------------------

    def _svi_program(self, spec: MixtureSpec, N: int, method: str, settings: FitSettings) -> "_SVIProgram":
        minibatch = method_named(method).minibatch
        key = (spec, N, method, settings.optimizer, settings.learning_rate, settings.precision,
               settings.batch_size if minibatch else None, settings.minibatch_total_size if minibatch else None)
        if key not in self._programs:
            self._programs[key] = _SVIProgram(spec, method, settings)
        return self._programs[key]

    def _fit_svi(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        timings: dict[str, float] = {"compile": 0.0}
        init_key, svi_key, draw_key = random.split(random.PRNGKey(seed), 3)
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            # optimisation: SVI set-up and every update, in jitted chunks between convergence checks.
            with stopwatch(timings, "optimisation"):
                program = self._svi_program(spec, dataset.N, method, settings)
                state = program.init(init_key, svi_key, x, y)
                state, loss, iterations, converged = _optimise(program, state, x, y, settings)
                params = jax.block_until_ready(program.get_params(state, x, y))
        common = dict(backend=self.name, method=method, engine=ENGINE, timings=timings,
                      precision=settings.precision, loss=loss, iterations=iterations, converged=converged,
                      grad_evals=iterations)
        if not np.all(np.isfinite(loss)):
            bad = int(np.argmin(np.isfinite(loss)))
            return Fit(status="failed", reason=f"the loss became non-finite at iteration {bad + 1}", **common)
        attrs = {"optimizer": settings.optimizer, "learning_rate": settings.learning_rate,
                 "guide": type(program.guide).__name__, "check_every": _CHECK_EVERY,
                 "engine_dtype": str(jax.tree.leaves(params)[0].dtype), "approximation": _as_json(params)}
        # extraction: draws from the fitted approximation and their densities, in float64 whatever
        # the fit's precision (importance weights need it at large N), then canonical names.
        # log_p is the full-data model's, for minibatch fits too (and for the unscaled forum
        # replay): PSIS then measures q against the real posterior.
        with stopwatch(timings, "extraction"), _precision("float64"):
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
            if method_named(method).kind is Kind.POINT:
                point = _canonical(spec, program.map_point(params), ())
                draws = canonical_datatree(spec, {k: v[None, None] for k, v in point.items()},
                                           attrs={"/": self._attrs("map", settings, attrs)})
                return Fit(status="ok", draws=draws, point=point,
                           point_log_density=self.log_density(spec, dataset, point), **common)
            z, log_q = program.draw(params, draw_key, *_device_data(dataset, "float64"), settings.vi_draws)
            draws, log_p, log_jacobian = self._approximation_draws(
                spec, dataset, z, self._attrs(method, settings, attrs))
            draws["approximation"] = approximation_group(_unconstrained_labels(spec),
                                                         **_svi_approximation(spec, program.guide, params))
        return Fit(status="ok", draws=draws, log_p=log_p, log_jacobian=log_jacobian,
                   log_q=np.asarray(log_q), **common)

    def _attrs(self, method: str, settings: FitSettings, extra: dict) -> dict:
        return {"backend": self.name, "engine": ENGINE, "method": method,
                "precision": settings.precision, **extra}

    # -- Laplace (AutoLaplaceApproximation) -----------------------------------------------------

    def _fit_laplace(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                     seed: int) -> Fit:
        """The Laplace approximation on NumPyro's unconstrained space (the sites' ``biject_to``
        inverses, flattened in trace order): ``backends.laplace.fit`` on NumPyro's
        AutoLaplaceApproximation.

        Objective: the guide's loss (minus the log density with the Jacobian), its gradient and
        Hessian. Starts: NumPyro's uniform initial point drawn with each start's seed.
        Covariance: the guide's ``get_posterior`` at the mode. The search and the covariance run
        at ``settings.precision``; ``vi_draws`` draws (key from ``seed``), their log q
        (NumPyro's MultivariateNormal) and log p in float64.
        """
        timings: dict[str, float] = {"compile": 0.0}
        draw_key = random.split(random.PRNGKey(seed), 2)[1]
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            function = _laplace_objective_fn(spec)
            objective = laplace.Objective(lambda z: jax.device_get(function(z, x, y)),
                                          lambda z: jnp.asarray(z, dtype=y.dtype))

        @contextmanager
        def phase(timings, name):
            # The search and the Gaussian at the fit's precision; the draws and the point in float64.
            with stopwatch(timings, name), _precision(settings.precision if name == "optimisation" else "float64"):
                yield

        def starts(seeds):
            return [np.asarray(_laplace_start_fn(spec)(random.split(random.PRNGKey(s))[0], y), np.float64)
                    for s in seeds]

        def covariance(mode, hessian):
            cast = jnp.asarray(mode, dtype=y.dtype)
            cov = np.asarray(jax.device_get(_laplace_gaussian_fn(spec)(cast, x, y)), np.float64)
            reason = laplace.not_positive_definite(cov)
            return (cov if reason is None else None), reason

        def draws(mean, cov):
            with phase(timings, "extraction"):
                z, log_q = _laplace_draws_fn(spec)(jnp.asarray(mean), jnp.asarray(cov), draw_key, settings.vi_draws)
                tree, log_p, log_jacobian = self._approximation_draws(spec, dataset, z,
                                                                      self._attrs("laplace", settings, {}))
                flat = np.concatenate([np.asarray(z[s.name]).reshape(settings.vi_draws, -1) for s in _layout(spec)],
                                      axis=1)
                unconstrained_groups(tree, flat, _unconstrained_labels(spec), {"mean": mean, "cov": cov})
            return tree, log_p, log_jacobian, log_q

        plan = laplace.LaplaceEngine(objective=objective, starts=starts,
                                     point=lambda mode: self._laplace_point(spec, mode), covariance=covariance,
                                     draws=draws, log_density=lambda point: self.log_density(spec, dataset, point),
                                     phase=phase)
        return laplace.fit(plan, spec, dataset, settings, seed, timings, backend=self.name, method="laplace",
                           engine=ENGINE, attrs={"guide": "AutoLaplaceApproximation", "engine_dtype": str(y.dtype)})

    @staticmethod
    def _laplace_point(spec: MixtureSpec, mode: np.ndarray) -> dict:
        """A mode of the Laplace search (unconstrained, _layout order) as canonical parameters."""
        return _canonical(spec, _constrain(spec, _unflatten(spec, jnp.asarray(mode))), ())

    def _approximation_draws(self, spec: MixtureSpec, dataset: Dataset, z: dict, attrs: dict):
        """Unconstrained draws (leading axis: draw) -> canonical one-chain DataTree, log_p, log_jacobian."""
        x, y = _device_data(dataset, "float64")
        log_p, log_jacobian = _draw_diagnostics_fn(spec)(z, x, y)
        constrained = _constrain_fn(spec)(z)
        n = int(np.shape(log_p)[0])
        posterior = {k: v[None] for k, v in _canonical(spec, constrained, (n,)).items()}
        draws = canonical_datatree(spec, posterior, attrs={"/": attrs})
        return draws, np.asarray(log_p), np.asarray(log_jacobian)

    # -- Pathfinder (BlackJAX's building blocks on the model's potential) ------------------------

    def _fit_pathfinder(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                        seed: int) -> Fit:
        """Multi-path Pathfinder as Stan and pymc-extras run it: settings.pathfinder_paths single paths
        from their own uniform initial points, each drawing from its best normal approximation;
        by default the pooled draws are importance-resampled (backends/importance.py)."""
        timings: dict[str, float] = {"compile": 0.0}
        keys = [random.split(random.fold_in(random.PRNGKey(seed), path), 3) for path in range(settings.pathfinder_paths)]
        with _precision(settings.precision):
            x, y = _device_data(dataset, settings.precision)
            # optimisation: for each path, L-BFGS from a uniform initial point, then the ELBO at
            # each point of its path.
            with stopwatch(timings, "optimisation"):
                paths = [jax.block_until_ready(_pathfinder_fn(spec, settings.vi_iterations)(k[0], k[1], x, y))
                         for k in keys]
        finite = [i for i, path in enumerate(paths) if np.isfinite(path["elbo"])]
        iterations = max(int(path["iterations"]) for path in paths)
        best = max(finite, key=lambda i: float(paths[i]["elbo"])) if finite else 0
        # The loss shown is the best path's objective along its L-BFGS iterations.
        loss = np.asarray(paths[best]["objective"])[: int(paths[best]["iterations"]) + 1]
        common = dict(backend=self.name, method="pathfinder", engine=ENGINE, timings=timings,
                      precision=settings.precision, loss=loss, iterations=iterations,
                      converged=all(int(p["iterations"]) < settings.vi_iterations for p in paths))
        if not finite:
            return Fit(status="failed", reason="no point of any L-BFGS path has a finite ELBO estimate", **common)
        resample = settings.pathfinder_resampling == "psis"
        # Resampling draws vi_draws from a pool of vi_draws per path, as Stan; pooling keeps
        # vi_draws in all, an equal share per path.
        per_path = settings.vi_draws if resample else -(-settings.vi_draws // len(finite))
        names = ("position", "grad", "alpha", "beta", "gamma")
        approximations = [{k: paths[i][k] for k in names} for i in finite]
        attrs = {**{f"pathfinder_{k}": v for k, v in _PATHFINDER.items()},
                 "pathfinder_paths": settings.pathfinder_paths, "pathfinder_paths_finite": len(finite),
                 "pathfinder_best_iteration": json.dumps([int(paths[i]["best"]) for i in finite]),
                 "pathfinder_elbo": json.dumps([float(paths[i]["elbo"]) for i in finite]),
                 "pathfinder_resampling": settings.pathfinder_resampling,
                 "engine_dtype": str(paths[best]["position"].dtype),
                 "approximation": json.dumps([json.loads(_as_json(a)) for a in approximations])}
        with stopwatch(timings, "extraction"), _precision("float64"):
            pieces, log_qs = [], []
            for i, approx in zip(finite, approximations):
                approx = {k: jnp.asarray(v, jnp.float64) for k, v in approx.items()}
                z, log_q = _pathfinder_draws_fn(spec)(approx, keys[i][2], per_path)
                pieces.append(z)
                log_qs.append(np.asarray(log_q))
            pool = {name: jnp.concatenate([z[name] for z in pieces]) for name in pieces[0]}
            pool_log_q = np.concatenate(log_qs)
            pool_path = np.repeat(np.asarray(finite), per_path)
            x64, y64 = _device_data(dataset, "float64")
            pool_log_p, pool_log_jacobian = (np.asarray(a) for a in _draw_diagnostics_fn(spec)(pool, x64, y64))
            chosen, pareto_k = choose_draws(pool_log_p, pool_log_q, len(finite), per_path, settings.vi_draws,
                                            resample, seed)
            constrained = _constrain_fn(spec)({name: v[chosen] for name, v in pool.items()})
            posterior = {k: v[None] for k, v in _canonical(spec, constrained, (chosen.size,)).items()}
            draws = canonical_datatree(spec, posterior, attrs={"/": self._attrs("pathfinder", settings, attrs)})
            if resample:
                pool_canonical = _canonical(spec, _constrain_fn(spec)(pool), (pool_log_q.size,))
                attach_pool(draws, canonical_datatree(spec, {k: v[None] for k, v in pool_canonical.items()}),
                            pool_log_p, pool_log_q, pool_path, chosen, pareto_k, len(finite))
        return Fit(status="ok", draws=draws, log_p=pool_log_p[chosen], log_jacobian=pool_log_jacobian[chosen],
                   log_q=pool_log_q[chosen], **common)
