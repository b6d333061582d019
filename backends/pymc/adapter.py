"""The PyMC backend: the mixture of regressions as one PyMC model, fitted by NUTS, VI or MAP.

NUTS runs through nutpie (default), PyMC's own sampler or PyMC's NumPyro/JAX sampler. VI is
pm.fit's ADVI (mean-field or full-rank, on the full data or on minibatches), Pathfinder comes
from pymc-extras, MAP is pm.find_MAP's L-BFGS-B and the Laplace approximation a trust-region
search, both on pymc-extras' compiled log density and derivatives, compiled once per model so
that every start of a multi-start search reuses them (``_map``, ``_laplace``).

The model and its canonical <-> native parameter maps are models/pymc_model.py's, beside the
NumPyro model and the Stan program; this package adapts them to the engines:
the model object (``model``), the NUTS runs (``nuts``), ADVI's and Pathfinder's set-up and stores
(``vi``); this module translates each method's run into a Fit.

What is compiled is kept on disk for later processes: the full-data model's functions after
PyTensor's rewrites (backends/pytensor_store.py), nutpie's C callbacks (backends/nutpie_cache.py),
and, per exact cell, the prepared ADVI and pymc-extras' single-path Pathfinder function. A later
identical run loads them and compiles nothing (docs/performance.md, section 5).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import numpy as np
import pytensor
from scipy import optimize

from backends import backend_versions, laplace
from backends.base import Backend
from backends.canonical import canonical_datatree, unconstrained_groups
from backends.fit import SAMPLERS, Fit, FitSettings
from backends.importance import attach_pool, choose_draws
from backends.methods import Kind
from backends.methods import method as method_named
from backends.pymc.model import _Compiled, _precision, compiled
from backends.pymc.smc import fit_smc
from backends.pymc.nuts import (_jax_gradient, _nutpie_gradient, _pytensor_gradient, _run_numpyro, _run_nutpie,
                                _run_pymc, _sample_stats)
from backends.pymc.vi import (VI_METHODS, PATHFINDER_MAXITER, _ConvergenceCheck, _draw_function, _optimizer,
                              _prepared_advi, _stored_single_pathfinder)
from backends.timing import stopwatch
from models.data import Dataset
from models.errors import MixbenchError
from models.pymc_model import canonical_values as _canonical
from models.pymc_model import model_values as _model_values
from models.spec import LIKELIHOODS, MixtureSpec

SAMPLERS = SAMPLERS["pymc"]


@contextmanager
def _quiet(logger_name: str):
    """Keep a library's progress chatter (INFO) out of a benchmark's output."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _value_space(spec: MixtureSpec, dataset: Dataset, settings: FitSettings):
    """What the MAP and Laplace searches run on: the compiled model entry, the model, PyTensor's
    float type and the names of the unconstrained value variables (``model.value_vars`` order)."""
    entry = compiled(spec, dataset, settings.precision)
    return entry, entry.model, pytensor.config.floatX, [v.name for v in entry.model.value_vars]


# --------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------


class PyMCBackend(Backend):
    name = "pymc"

    def versions(self) -> dict[str, str]:
        return backend_versions(self.name)  # declared where the backends are registered

    # The method table and the likelihoods this backend's model implements (Backend's contract).
    methods = {
        "nuts": "_nuts",
        **dict.fromkeys(VI_METHODS, "_advi"),
        "pathfinder": "_pathfinder",
        "map": "_map",
        "laplace": "_laplace",
        "smc": "_smc",
    }
    _smc = fit_smc  # backends/pymc/smc.py
    likelihoods = LIKELIHOODS  # the forum replay likelihoods too: they replay PyMC code

    def refuses(self, spec: MixtureSpec, method: str, settings: FitSettings) -> str | None:
        if method_named(method).kind is Kind.MCMC and (settings.sampler or "nutpie") not in SAMPLERS:
            raise MixbenchError(
                f"settings.sampler: the PyMC backend runs {', '.join(SAMPLERS)}, got {settings.sampler!r}"
            )
        if method in VI_METHODS:
            _optimizer(settings)
        if method == "pathfinder" and settings.precision == "float32":
            return "pymc-extras' Pathfinder builds float64 graphs that do not accept a float32 model"
        return None

    def log_density(self, spec: MixtureSpec, dataset: Dataset, params: dict[str, np.ndarray]) -> float:
        dataset.check_against(spec)
        entry = compiled(spec, dataset)
        values = _model_values(spec, params)
        return float(entry.constrained_logp()(*[values[n] for n in entry.free_names]))

    def gradient_function(self, spec: MixtureSpec, dataset: Dataset, settings: FitSettings):
        """The log density + gradient each NUTS engine evaluates, on the flat value variables:
        nutpie's Numba function (called through the C pointer nuts-rs calls), PyMC's own
        ValueGradFunction (PyTensor's default backend, Numba in PyTensor 3, as PyMC's NUTS calls
        it), or the JAX function PyMC's numpyro sampler differentiates. Compiled before returning."""
        from backends.gradients import fixed_point

        engine = settings.sampler or "nutpie"
        if engine not in SAMPLERS:
            raise MixbenchError(f"settings.sampler: the PyMC backend runs {', '.join(SAMPLERS)}, got {engine!r}")
        dataset.check_against(spec)
        with _precision(settings.precision):
            entry = compiled(spec, dataset, settings.precision)
            x0 = entry.unconstrained_point(fixed_point(spec, dataset))
            build = {"nutpie": _nutpie_gradient, "pymc": _pytensor_gradient, "numpyro": _jax_gradient}[engine]
            f = build(entry, x0.size, settings.precision)
        f(x0)  # any lazy compilation happens now
        return f, x0

    def _fit(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        # Every method runs at the fit's precision with PyMC's chatter off; the table dispatches.
        with _precision(settings.precision), _quiet("pymc"):
            return super()._fit(spec, dataset, method, settings, seed)

    # ---- NUTS ------------------------------------------------------------------------------

    def _nuts(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
              seed: int) -> Fit:
        sampler = settings.sampler or "nutpie"
        entry = compiled(spec, dataset, settings.precision)
        cores = settings.chains if settings.parallel_chains else 1
        timings: dict[str, float] = {}
        run = {"nutpie": _run_nutpie, "pymc": _run_pymc, "numpyro": _run_numpyro}[sampler]
        trace, warmup_stats = run(entry, settings, seed, cores, timings)

        with stopwatch(timings, "extraction"):
            post = trace.posterior
            lead = (settings.chains, settings.draws)
            posterior = _canonical(spec, {n: post[n].values for n in entry.output_names}, lead)
            stats = _sample_stats(trace.sample_stats, sampler)
            draws = canonical_datatree(spec, posterior, stats,
                                       attrs={"/": {"backend": self.name, "engine": f"pymc+{sampler}"}})
        grad_evals = None
        if warmup_stats is not None:
            grad_evals = int(stats["n_steps"].sum()) + int(_sample_stats(warmup_stats, sampler)["n_steps"].sum())
        return Fit(backend=self.name, method="nuts", status="ok", engine=f"pymc+{sampler}", draws=draws,
                   timings=timings, precision=settings.precision, grad_evals=grad_evals,
                   divergences=int(stats["diverging"].sum()))

    def _advi(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        pm_method, minibatch = VI_METHODS[method]
        entry = compiled(spec, dataset, settings.precision)
        engine = f"pymc+{pm_method}"
        timings: dict[str, float] = {}
        check = _ConvergenceCheck(settings.vi_tolerance)
        try:
            with stopwatch(timings, "compile"):
                inference = _prepared_advi(entry, dataset, method, settings, seed)
                inference.state = inference.state._replace(callbacks=[check])
                draw_fn = _draw_function(inference)
            with stopwatch(timings, "optimisation"):
                inference.refine(settings.vi_iterations, progressbar=False)
        except FloatingPointError as exc:
            return Fit(backend=self.name, method=method, status="failed", engine=engine,
                       reason=f"optimisation diverged: {str(exc).splitlines()[0]}", timings=timings,
                       precision=settings.precision)
        with stopwatch(timings, "extraction"):
            group = inference.approx.groups[0]
            noise = np.random.default_rng(seed).standard_normal((settings.vi_draws, group.ddim))
            flat, log_q = draw_fn(noise.astype(group.symbolic_initial.dtype))
        layout = [(name, sl, shape) for name, sl, shape, _ in group.ordering.values()]
        params = {"mean": group.mean.eval(), "std": group.std.eval()}
        if pm_method == "fullrank_advi":
            params["cov"] = group.cov.eval()
        draws, log_p, log_jacobian = self._approximation_draws(
            spec, entry, flat, layout, timings, engine, stats={"log_q": np.asarray(log_q, float)[None]},
            approximation=params)
        return Fit(backend=self.name, method=method, status="ok", engine=engine, draws=draws,
                   timings=timings, precision=settings.precision,
                   converged=check.stopped_at is not None,
                   iterations=check.stopped_at or settings.vi_iterations,
                   log_p=log_p, log_jacobian=log_jacobian, log_q=np.asarray(log_q, float),
                   loss=np.asarray(inference.hist, float))

    def _pathfinder(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                    seed: int) -> Fit:
        from pymc.blocking import DictToArrayBijection
        from pymc_extras.inference.pathfinder.lbfgs import LBFGSConfig, LBFGSStatus
        from pymc_extras.inference.pathfinder.multipath import multipath_pathfinder

        entry = compiled(spec, dataset, settings.precision)
        info = DictToArrayBijection.map(entry.model.initial_point()).point_map_info
        n_dim = sum(size for _, _, size, _ in info)
        resample = settings.pathfinder_resampling == "psis"
        # Resampling draws vi_draws from a pool of vi_draws per path, as Stan (num_draws per path,
        # num_psis_draws in all); pooling keeps vi_draws in all, an equal share per path.
        per_path = settings.vi_draws if resample else -(-settings.vi_draws // settings.pathfinder_paths)
        # pymc-extras evaluates the approximation at every L-BFGS step of a buffer sized by
        # maxiter, so a large maxiter costs time even when L-BFGS stops early: vi_iterations is
        # capped at pymc-extras' own default (1000).
        maxiter = min(settings.vi_iterations, PATHFINDER_MAXITER)
        try:
            # fit_pathfinder's own engine, without its importance sampling (whose "psis" draws
            # without replacement): the pool is resampled below as Stan does, and kept, so that
            # its log p - log q give the PSIS k-hat. Paths run one after another in this process
            # (no worker processes to start).
            with _stored_single_pathfinder(entry, dataset):
                result = multipath_pathfinder(
                    entry.model, num_paths=settings.pathfinder_paths, num_draws=settings.vi_draws,
                    num_draws_per_path=per_path, num_elbo_draws=10, jitter=2.0,
                    lbfgs_config=LBFGSConfig(maxiter=maxiter).set_default_maxcor(n_dim),
                    importance_sampling=None, progressbar=False, parallel=False, random_seed=seed,
                )
        except ValueError as exc:
            return Fit(backend=self.name, method="pathfinder", status="failed", engine="pymc-extras+pathfinder",
                       reason=str(exc).splitlines()[0], precision=settings.precision)
        timings = {"compile": float(result.compile_time), "optimisation": float(result.compute_time)}
        with stopwatch(timings, "extraction"):
            # The pool, path after path. Each draw's log q is its own path's normal approximation
            # and log p pymc-extras' own (unconstrained, Jacobian included), as Stan weighs them:
            # the draws' log p is taken from there, not evaluated again over all N.
            paths = np.asarray(result.samples)
            pool = paths.reshape(-1, n_dim)
            pool_log_p = np.asarray(result.logP, dtype=float).reshape(-1)
            pool_log_q = np.asarray(result.logQ, dtype=float).reshape(-1)
            pool_path = np.repeat(np.arange(paths.shape[0]), paths.shape[1])
            chosen, pareto_k = choose_draws(pool_log_p, pool_log_q, paths.shape[0], paths.shape[1],
                                            settings.vi_draws, resample, seed)
            samples, log_q = pool[chosen], pool_log_q[chosen]
            layout, start = [], 0
            for name, shape, size, _ in info:
                layout.append((name, slice(start, start + size), shape))
                start += size
        # The resampled draws are rows of the pool: the pool is constrained once, and the draws
        # take their rows (the same values, computed once).
        if resample:
            pool_values = self._evaluate(spec, entry, pool, layout, timings, log_p=pool_log_p)
            values = ({name: value[:, chosen] for name, value in pool_values[0].items()},
                      *(v[chosen] for v in pool_values[1:]))
        else:
            values = self._evaluate(spec, entry, samples, layout, timings, log_p=pool_log_p[chosen])
        draws, log_p, log_jacobian = self._approximation_draws(
            spec, entry, samples, layout, timings, "pymc-extras+pathfinder",
            stats={"log_q": log_q[None].astype(float)}, values=values)
        draws.attrs["pathfinder_resampling"] = settings.pathfinder_resampling
        if resample:
            # The proposal's own draws, for PSIS-LOO weighted by p/q; constraining them is extraction.
            pool_draws, _, _ = self._approximation_draws(spec, entry, pool, layout, timings, "pymc-extras+pathfinder",
                                                         values=pool_values)
            attach_pool(draws, pool_draws, pool_log_p, pool_log_q, pool_path, chosen, pareto_k, paths.shape[0])
        statuses = set(result.lbfgs_status)
        return Fit(backend=self.name, method="pathfinder", status="ok", engine="pymc-extras+pathfinder",
                   draws=draws, timings=timings, precision=settings.precision,
                   converged=statuses == {LBFGSStatus.CONVERGED},
                   iterations=int(np.max(result.lbfgs_niter)),
                   log_p=log_p, log_jacobian=log_jacobian, log_q=log_q.astype(float))

    def _approximation_draws(self, spec: MixtureSpec, entry: _Compiled, flat: np.ndarray, layout,
                             timings: dict[str, float], engine: str, stats: dict | None = None,
                             approximation: dict | None = None, values: tuple | None = None):
        """Unconstrained draws (one row each) -> canonical DataTree, log p, log |Jacobian|.

        log p is the full-data model's log density with the Jacobian, whatever model (minibatch
        or not) the approximation was fitted to; its cost is part of extraction, as in every
        backend. The tree also carries the unconstrained draws
        (group unconstrained_posterior) and, when given, the approximation's parameters (group
        approximation), both over the dim "unconstrained" labelled value_var[i]. ``values``:
        ``_evaluate(..., flat, ...)`` when already computed.
        """
        posterior, log_p, log_jacobian = values or self._evaluate(spec, entry, flat, layout, timings)
        stats = {"log_p": log_p[None], "log_jacobian": log_jacobian[None], **(stats or {})}
        draws = canonical_datatree(spec, posterior, stats, attrs={"/": {"backend": self.name, "engine": engine}})
        order = np.argsort([sl.start for _, sl, _ in layout], kind="stable")
        labels = [f"{layout[k][0]}[{i}]" for k in order for i in range(layout[k][1].stop - layout[k][1].start)]
        unconstrained_groups(draws, flat, labels, approximation)
        return draws, log_p, log_jacobian

    @staticmethod
    def _evaluate(spec: MixtureSpec, entry: _Compiled, flat: np.ndarray, layout,
                  timings: dict[str, float], log_p: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
        """Unconstrained draws (one row each) -> the canonical parameters (leading axes
        (1, draws)), the full-data log density with the Jacobian and the log |Jacobian| of
        each, timed as extraction.

        ``log_p`` (draws,): the engine's own log density of each draw (unconstrained, Jacobian
        included, as ``entry.log_p_jacobian``), taken as it is; only the Jacobian, which reads no
        data, is evaluated then. Otherwise each draw's log density is evaluated over all N."""
        names = [v.name for v in entry.model.value_vars]
        points = [[row[name] for name in names] for row in (
            {name: flat[i, sl].reshape(shape) for name, sl, shape in layout} for i in range(flat.shape[0]))]
        n_out = len(entry.output_names)
        with stopwatch(timings, "extraction"):
            constrain = entry.constrain() if log_p is None else entry.constrain_jacobian()
            outputs = [constrain(*point) for point in points]
            stacked = {name: np.stack([out[j] for out in outputs])[None]
                       for j, name in enumerate(entry.output_names)}
            posterior = _canonical(spec, stacked, (1, flat.shape[0]))
            if log_p is not None:
                return posterior, np.asarray(log_p, float), np.array([out[n_out] for out in outputs], float)
        with stopwatch(timings, "extraction"):
            log_p_jacobian = entry.log_p_jacobian()
            log_p, log_jacobian = np.array([log_p_jacobian(*point) for point in points], float).T
        return posterior, log_p, log_jacobian

    def _map(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
             seed: int) -> Fit:
        """One L-BFGS-B start of what ``pm.find_MAP`` does (SciPy on -log density without the
        Jacobian, over the unconstrained value variables, at most ``vi_iterations`` function
        evaluations), on a function compiled once per model (``_Compiled.map_objective``):
        ``find_MAP`` compiles its log density, gradient and output function inside every call,
        which made each of the multi-start MAP's starts pay the compile again."""
        engine = "pymc+L-BFGS-B"
        entry, model, dtype, names = _value_space(spec, dataset, settings)
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            function = entry.map_objective()
            constrain = entry.constrain()
            make_start = entry.jittered_start()
        point = make_start(seed)
        x0 = np.concatenate([np.ravel(point[n]) for n in names]).astype(np.float64)

        def loss_and_gradient(x):
            loss, grad = function(x.astype(dtype))
            return float(loss), np.asarray(grad, np.float64)

        with stopwatch(timings, "optimisation"), np.errstate(all="ignore"):
            raw = optimize.minimize(loss_and_gradient, x0, jac=True, method="L-BFGS-B",
                                    options={"maxfun": settings.vi_iterations})
        with stopwatch(timings, "extraction"):
            values, start = [], 0
            for name in names:
                size = int(np.size(point[name]))
                values.append(raw.x[start:start + size].reshape(np.shape(point[name])).astype(dtype))
                start += size
            canonical = _canonical(spec, dict(zip(entry.output_names, constrain(*values))), ())
            draws = canonical_datatree(spec, {k: np.asarray(v)[None, None] for k, v in canonical.items()},
                                       attrs={"/": {"backend": self.name, "engine": engine}})
            log_density = self.log_density(spec, dataset, canonical)
        return Fit(backend=self.name, method="map", status="ok", engine=engine, draws=draws,
                   timings=timings, precision=settings.precision, converged=bool(raw.success),
                   iterations=int(raw.nit), grad_evals=int(raw.njev),
                   point=canonical, point_log_density=log_density)

    def _laplace(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings,
                 seed: int) -> Fit:
        """The Laplace approximation on PyMC's unconstrained space (the value variables, in
        ``model.value_vars`` order): ``backends.laplace.fit`` on pymc-extras' compiled loss,
        gradient and Hessian (``_Compiled.laplace_objective``).

        Starts: PyMC's initial point jittered in the unconstrained space (as find_MAP's starts
        here). Covariance: the inverse of the objective's Hessian at the mode. ``vi_draws``
        draws: mean + L eps with L the Cholesky factor of the covariance and eps standard normal
        from NumPy's generator seeded ``seed`` (``laplace.gaussian_draws``), at the model's
        precision, with their exact log q.
        """
        engine = "pymc-extras+laplace"
        entry, model, dtype, names = _value_space(spec, dataset, settings)
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            objective = laplace.Objective(entry.laplace_objective(), lambda z: np.asarray(z, dtype=dtype))
            make_start = entry.jittered_start()
            constrain = entry.constrain()
        initial = model.initial_point()
        layout, start = [], 0
        for name in names:
            size = int(np.size(initial[name]))
            layout.append((name, slice(start, start + size), np.shape(initial[name])))
            start += size

        def canonical(mode):
            outputs = constrain(*[mode[sl].reshape(shape).astype(dtype) for _, sl, shape in layout])
            return _canonical(spec, dict(zip(entry.output_names, outputs)), ())

        def draws(mean, cov):
            with stopwatch(timings, "extraction"):
                flat, log_q = laplace.gaussian_draws(mean, cov, settings.vi_draws, seed, dtype)
            tree, log_p, log_jacobian = self._approximation_draws(
                spec, entry, flat, layout, timings, engine, stats={"log_q": log_q[None]},
                approximation={"mean": mean, "cov": cov})
            return tree, log_p, log_jacobian, log_q

        plan = laplace.LaplaceEngine(
            objective=objective,
            starts=lambda seeds: [np.concatenate([np.ravel(p[n]) for n in names]) for p in map(make_start, seeds)],
            point=canonical, covariance=laplace.covariance_from_hessian, draws=draws,
            log_density=lambda point: self.log_density(spec, dataset, point), phase=stopwatch)
        return laplace.fit(plan, spec, dataset, settings, seed, timings, backend=self.name, method="laplace",
                           engine=engine, attrs={"method": "laplace"})
