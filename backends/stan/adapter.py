"""The Stan backend: stan/mixture.stan run by CmdStan (through cmdstanpy) or by pystan 3.

The engine is CmdStan whenever cmdstanpy finds an install, else pystan (httpstan, which carries
Stan in its wheel); ``FitSettings.sampler`` may force either. pystan 3 runs NUTS only, so ADVI,
Pathfinder, MAP and Laplace need CmdStan. Each method is one ``_<method>_cmdstan`` function
calling cmdstanpy's public method of the same job (``sample``, ``variational``, ``pathfinder``,
``optimize``, ``laplace_sample``); ``_fit`` maps method names to them and nothing else.

Stan names differ from the canonical ones only for the weights (``theta`` for ``pi``) and in the
pieces the parameters block is made of (ordered and free parts); ``stan_parameters`` and
``flat_to_canonical`` are the two places that know the mapping.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from backends import backend_versions
from backends.base import Backend
from backends.canonical import canonical_datatree
from backends.fit import SAMPLERS, Fit, FitSettings, failed
from backends.multistart import bound_hits, start_seeds
from backends.timing import stopwatch
from backends.degenerate import best_start
from backends.importance import attach_pool, psis_resample
from backends.methods import Kind
from backends.methods import method as method_named
from models.data import Dataset
from models.errors import MixbenchError
from models.spec import MixtureSpec
from models.stan_model import (
    flat_to_canonical,
    in_support,
    n_unconstrained,
    program_code,
    stan_data,
    stan_parameters,
)
from backends.stan.install import (INSTALL_CMDSTAN, NO_CMDSTAN, _check_seed, _quiet, cmdstan_path, cmdstan_version,
                                   pystan_stan_version)
from backends.stan.parsers import (_column, _nuts_phase_timings, _optimum_point, _parse_httpstan_output, advi_eta,
                                   advi_log_densities, advi_progress, csv_stan_version, optimize_converged, optimize_progress,
                                   pathfinder_log_densities, pathfinder_progress, read_elbo_trace,
                                   sample_stats_from_flat)
from backends.stan.programs import StanPrograms
from backends.stan.runs import _NUTS_FUNCTION, _cmdstan_run, _httpstan_fits, _run_advi, _take_draws, run_files

ENGINES = SAMPLERS["stan"]


class StanBackend(StanPrograms, Backend):
    name = "stan"

    def versions(self) -> dict[str, str]:
        return backend_versions(self.name)  # declared where the backends are registered

    def engine_for(self, settings: FitSettings | None = None) -> str:
        """The engine a fit with ``settings`` runs on: forced, or CmdStan when installed."""
        forced = settings.sampler if settings is not None else None
        if forced is not None:
            return forced
        return "cmdstanpy" if cmdstan_path() is not None else "pystan"

    # The method table (Backend's contract); stan/mixture.stan implements the correct mixture only.
    # Stan has no minibatch variational inference: those methods are absent from the table.
    methods = {
        "nuts": "_nuts",
        "advi-meanfield": "_advi_cmdstan",
        "advi-fullrank": "_advi_cmdstan",
        "pathfinder": "_pathfinder_cmdstan",
        "map": "_map_cmdstan",
        "laplace": "_laplace_cmdstan",
    }

    # CmdStan writes the draws of its approximations, not their parameters (ADVI's first row is
    # the mean mapped to the constrained space; laplace_sample gives no Hessian).
    stores_approximation = False

    # stan/mixture.stan takes the spec as data: one CmdStan executable (and one httpstan module)
    # serves every spec and method (backends.stan.programs).
    shared_program = True

    def refuses(self, spec: MixtureSpec, method: str, settings: FitSettings) -> str | None:
        if settings.precision != "float64":
            return f"precision {settings.precision}: Stan computes in float64 only"
        engine = self.engine_for(settings)
        if engine not in ENGINES:
            return f"sampler {engine!r} is not a Stan engine (choose cmdstanpy or pystan)"
        if engine == "cmdstanpy" and cmdstan_path() is None:
            return f"{NO_CMDSTAN}; sampler 'cmdstanpy' was requested"
        if engine == "pystan" and method_named(method).kind is not Kind.MCMC:
            why = NO_CMDSTAN if cmdstan_path() is None else "sampler 'pystan' was requested"
            return f"pystan 3 runs NUTS only and {method} needs CmdStan: {why}; {INSTALL_CMDSTAN}"
        return None

    # --- log density ---------------------------------------------------------------------------

    def log_density(self, spec: MixtureSpec, dataset: Dataset, params: dict[str, np.ndarray],
                    engine: str | None = None) -> float:
        """Log prior + log likelihood at a constrained point, computed by Stan (no Jacobian)."""
        self.check_likelihood(spec)
        engine = engine or self.engine_for()
        if engine not in ENGINES:
            raise MixbenchError(f"engine: must be cmdstanpy or pystan, got {engine!r}")
        dataset.check_against(spec)
        point = stan_parameters(spec, params)
        if not in_support(spec, params):
            return -math.inf
        if engine == "pystan":
            model, _ = self.pystan_model(spec, dataset)
            unconstrained = model.unconstrain_pars({k: v.tolist() for k, v in point.items()})
            return float(model.log_prob(unconstrained, adjust_transform=False))
        if cmdstan_path() is None:
            raise MixbenchError(f"engine: {NO_CMDSTAN}")
        return self._cmdstan_log_densities(spec, dataset, [params])[0]

    def _cmdstan_log_densities(self, spec: MixtureSpec, dataset: Dataset, points: list[dict]) -> list[float]:
        """``log_density`` by CmdStan at each of ``points`` (canonical, constrained), -inf
        outside the support, from one ``log_prob`` process for all of them: CmdStan reads many
        parameter sets from a Stan CSV (its command_helper's ``parse_stan_csv``: the columns
        after those ending in ``__``, in the parameters block's order, each variable flattened
        column-major), so a multi-start MAP pays one process start and one read of the data,
        not one per start. Each value is written with ``repr``, which reads back to the same
        double, as the JSON of a single point does."""
        inside = [in_support(spec, point) for point in points]
        out = [-math.inf] * len(points)
        if not any(inside):
            return out
        if cmdstan_path() is None:
            raise MixbenchError(f"engine: {NO_CMDSTAN}")
        model, _ = self.cmdstan_model()
        header, rows = None, []
        for point, ok in zip(points, inside):
            if not ok:
                continue
            names, values = ["lp__"], ["0"]
            for name, value in stan_parameters(spec, point).items():
                value = np.asarray(value, dtype=float)
                for index in np.ndindex(*value.shape[::-1]):  # column-major, as Stan flattens
                    index = index[::-1]
                    names.append(".".join([name, *(str(i + 1) for i in index)]))
                    values.append(repr(float(value[index])))
            header = header or names
            rows.append(",".join(values))
        with tempfile.TemporaryDirectory(prefix="mixbench-stan-log-prob-") as directory, _quiet():
            params = Path(directory) / "points.csv"
            params.write_text("\n".join([",".join(header), *rows]) + "\n")
            table = model.log_prob(params=str(params), data=stan_data(spec, dataset), jacobian=False, sig_figs=18)
        found = iter(float(v) for v in table["lp__"].to_numpy())
        return [next(found) if ok else value for ok, value in zip(inside, out)]

    # --- gradient --------------------------------------------------------------------------------

    def gradient_function(self, spec: MixtureSpec, dataset: Dataset, settings: FitSettings):
        """Stan's log density + gradient (Jacobian included) of stan/mixture.stan, built by
        ``backends.stan_gradient`` with httpstan's stanc, headers and flags: the gradient pystan's
        NUTS evaluates, called in this process with the model built once (engine "pystan").
        CmdStan's build of the same program is not timed here."""
        from backends.gradients import fixed_point
        from backends.stan_gradient import load

        self.check_likelihood(spec)
        if settings.precision != "float64":
            raise MixbenchError(f"precision {settings.precision}: Stan computes in float64 only")
        if (settings.sampler or "pystan") != "pystan":
            raise MixbenchError(
                f"sampler {settings.sampler!r}: the Stan gradient function runs httpstan's build (pystan)")
        dataset.check_against(spec)
        model, _ = load(program_code(), stan_data(spec, dataset))
        x0 = model.unconstrain(stan_parameters(spec, fixed_point(spec, dataset)))

        def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
            return model.log_density_gradient(theta, jacobian=True)

        return f, x0

    # --- fits ----------------------------------------------------------------------------------

    def _fit(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        return super()._fit(spec, dataset, method, settings, _check_seed(seed))

    def _nuts(self, spec, dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        """NUTS on the engine ``settings.sampler`` names (CmdStan when installed, else pystan)."""
        if self.engine_for(settings) == "pystan":
            return self._nuts_pystan(spec, dataset, method, settings, seed)
        return self._nuts_cmdstan(spec, dataset, method, settings, seed)

    def _result(self, method: str, engine: str, stan_version: str | None = None, **fields) -> Fit:
        """An ok Fit; ``stan_version`` is the Stan that ran as its output reports it (CmdStan's
        CSV header), which can differ from the CmdStan front end's own version."""
        if stan_version is None:
            stan_version = pystan_stan_version() if engine == "pystan" else cmdstan_version()
        versions = {"stan": stan_version, "engine": engine}
        if engine == "cmdstanpy":
            versions["cmdstan"] = cmdstan_version() or "unknown"
        return Fit(backend=self.name, method=method, status="ok", engine=engine, precision="float64",
                   versions=versions, **fields)

    def _nuts_pystan(self, spec, dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            model, compiled = self.pystan_model(spec, dataset)
        payloads = [
            {"function": _NUTS_FUNCTION, "chain": chain, "data": model.data, "init": {},
             "random_seed": seed, "num_warmup": settings.warmup, "num_samples": settings.draws,
             "num_thin": 1, "save_warmup": True, "delta": settings.target_accept,
             "max_depth": settings.max_treedepth}
            for chain in range(1, settings.chains + 1)
        ]
        started = time.perf_counter()
        outputs = asyncio.run(_httpstan_fits(model.model_name, payloads, settings.parallel_chains))
        run_seconds = time.perf_counter() - started
        with stopwatch(timings, "extraction"):
            parsed = [_parse_httpstan_output(raw) for raw in outputs]
            columns = parsed[0][0]
            if any(p[0] != columns for p in parsed):
                raise RuntimeError("chains returned different columns")
            values = np.stack([p[1] for p in parsed])
            chain_times = [p[2] for p in parsed]
            # httpstan's worker pool has one process per CPU: more chains than that queue.
            cores = min(settings.chains, os.cpu_count() or 1) if settings.parallel_chains else 1
            fit = self._nuts_result(spec, settings, "pystan", columns, values, chain_times, cores,
                                    compiled, run_seconds)
        fit.timings = {"compile": timings["compile"], **fit.timings, "extraction": timings["extraction"]}
        return fit

    def _nuts_result(self, spec, settings: FitSettings, engine: str, columns: list[str], values: np.ndarray,
                     chain_times: list[dict[str, float]], cores: int, compiled: bool,
                     run_seconds: float, stan_version: str | None = None) -> Fit:
        """Draws (chain, warm-up + sampling, column) -> a NUTS Fit with canonical draws."""
        expected = settings.warmup + settings.draws
        if values.shape[1] != expected:
            raise RuntimeError(f"expected {expected} draws per chain with warm-up, got {values.shape[1]}")
        kept = values[:, settings.warmup:]
        attrs = {
            "backend": self.name, "engine": engine, "method": "nuts",
            "stan_version": stan_version or pystan_stan_version(),
            "program_was_compiled": int(compiled),
            "run_wall_s": run_seconds,
            "chain_warmup_s": [t.get("Warm-up", math.nan) for t in chain_times],
            "chain_sampling_s": [t.get("Sampling", math.nan) for t in chain_times],
        }
        draws = canonical_datatree(spec, flat_to_canonical(spec, columns, kept),
                                   sample_stats_from_flat(columns, kept), attrs={"/": attrs})
        return self._result(
            "nuts", engine, stan_version=stan_version, draws=draws,
            timings=_nuts_phase_timings(chain_times, cores),
            # One gradient per leapfrog step, warm-up included.
            grad_evals=int(_column(columns, values, "n_leapfrog__").sum()),
            divergences=int(_column(columns, kept, "divergent__").sum()),
        )

    def _nuts_cmdstan(self, spec, dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            model, compiled = self.cmdstan_model()
        with _cmdstan_run() as out:
            started = time.perf_counter()
            run = model.sample(
                data=stan_data(spec, dataset), chains=settings.chains, seed=seed,
                parallel_chains=settings.chains if settings.parallel_chains else 1,
                iter_warmup=settings.warmup, iter_sampling=settings.draws, save_warmup=True,
                adapt_engaged=settings.warmup > 0, adapt_delta=settings.target_accept,
                max_treedepth=settings.max_treedepth, output_dir=out, sig_figs=18,
                show_progress=False, show_console=False,
            )
            run_seconds = time.perf_counter() - started
            with stopwatch(timings, "extraction"):
                columns = list(run.column_names)
                values = np.transpose(run.draws(inc_warmup=True), (1, 0, 2))
                # cmdstanpy reads each chain's "Elapsed Time" block from its CSV.
                chain_times = [{phase: t[key] for key, phase in (("warmup", "Warm-up"), ("sampling", "Sampling"))
                                if key in t} for t in run.time]
                cores = settings.chains if settings.parallel_chains else 1
                fit = self._nuts_result(spec, settings, "cmdstanpy", columns, values, chain_times, cores,
                                        compiled, run_seconds, stan_version=csv_stan_version(run))
        fit.timings = {"compile": timings["compile"], **fit.timings, "extraction": timings["extraction"]}
        return fit

    def _log_jacobian(self, spec: MixtureSpec, model, csv_file: str, columns: list[str],
                      values: np.ndarray) -> np.ndarray:
        """log |J| of the constraining transform at each draw of a CmdStan output CSV.

        ``values`` (draw, column) are the CSV's last numeric rows (ADVI writes the approximation's
        mean first). The Jacobian depends on the parameters only, so CmdStan's log_prob is run
        with and without it on a one-observation data set: cheap at any N, and exact for the
        transforms of the CmdStan version that produced the draws. A draw whose constrained value
        reached a bound in floating point (sigma = 0, a weight = 0: an extreme unconstrained draw)
        has no finite log |J| and CmdStan refuses to unconstrain it: NaN there, and the CSV given
        to log_prob leaves it out.
        """
        canonical = flat_to_canonical(spec, columns, values[None])
        inside = np.array([in_support(spec, {k: v[0, i] for k, v in canonical.items()}) for i in range(len(values))],
                          dtype=bool)
        out = np.full(len(values), np.nan)
        if not inside.any():
            return out
        lines = Path(csv_file).read_text().splitlines()
        numeric = [i for i, line in enumerate(lines) if line and not line.startswith("#")][1:]  # after the header
        drop = {numeric[len(numeric) - len(values) + j] for j in np.flatnonzero(~inside)}
        drop |= set(numeric[: len(numeric) - len(values)])
        tiny = stan_data(spec, Dataset(x=np.zeros((1, spec.D)), y=np.zeros(1)))
        with tempfile.TemporaryDirectory(prefix="mixbench-stan-jacobian-") as directory, _quiet():
            kept = Path(directory) / "draws.csv"
            kept.write_text("\n".join(line for i, line in enumerate(lines) if i not in drop) + "\n")
            with_j = model.log_prob(params=str(kept), data=tiny, jacobian=True, sig_figs=18)["lp__"].to_numpy()
            without = model.log_prob(params=str(kept), data=tiny, jacobian=False, sig_figs=18)["lp__"].to_numpy()
        out[inside] = with_j - without
        return out

    def _approximation_fit(self, spec, model, method: str, settings: FitSettings, compiled: bool, *,
                           csv_file: str, columns: list[str], values: np.ndarray, log_p: np.ndarray,
                           log_q: np.ndarray, stan_version: str, extra: dict, **fields) -> Fit:
        """Draws of an approximation (draw, column), one CSV holding them -> a VI-style Fit."""
        log_jacobian = self._log_jacobian(spec, model, csv_file, columns, values)
        attrs = {"backend": self.name, "engine": "cmdstanpy", "method": method, "stan_version": stan_version,
                 "program_was_compiled": int(compiled), **extra}
        draws = canonical_datatree(spec, flat_to_canonical(spec, columns, values[None]), attrs={"/": attrs})
        return self._result(method, "cmdstanpy", draws=draws, log_p=log_p, log_jacobian=log_jacobian,
                            log_q=log_q, stan_version=stan_version, **fields)

    def _advi_cmdstan(self, spec, dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            model, compiled = self.cmdstan_model()
        adapt = settings.advi_eta is None
        with _cmdstan_run() as out:
            with stopwatch(timings, "optimisation"):
                # Stan adapts eta by default (a short search over 100, 10, 1, 0.1, 0.01); a fixed
                # eta turns the search off.
                output = _run_advi(model, stan_data(spec, dataset), seed, method, settings, out)
            with stopwatch(timings, "extraction"):
                columns, values, csv_file, stdout, diagnostics, stan_version = output
                log_p, log_q = advi_log_densities(spec, columns, values)
                trace = read_elbo_trace(diagnostics) if diagnostics and Path(diagnostics).exists() else None
                converged, iterations = advi_progress(stdout, trace, settings.vi_iterations)
                eta = advi_eta(stdout) if adapt else settings.advi_eta
                extra = {
                    "log_q_missing_constant": "-log|det scale| of the approximation (CmdStan does not report it)",
                    "loss": "-ELBO every eval_elbo iterations, at loss_iterations",
                    "loss_iterations": trace[:, 0].tolist() if trace is not None else [],
                    # Stan's ADVI has its own step-size sequence; settings.optimizer cannot change it.
                    "optimizer": "Stan ADVI adaptive step-size sequence",
                    "eta": eta if eta is not None else math.nan,
                    "eta_adapted": int(adapt),
                }
                fit = self._approximation_fit(
                    spec, model, method, settings, compiled, csv_file=csv_file, columns=columns, values=values,
                    log_p=log_p, log_q=log_q, stan_version=stan_version, extra=extra, converged=converged,
                    # Each iteration takes grad_samples (CmdStan's default, 1) gradients of the model.
                    iterations=iterations, grad_evals=iterations,
                    loss=-trace[:, 1] if trace is not None else None)
        fit.timings = timings
        return fit

    def _pathfinder_cmdstan(self, spec, dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            model, compiled = self.cmdstan_model()
        paths = settings.pathfinder_paths
        resample = settings.pathfinder_resampling == "psis" and paths > 1
        with _cmdstan_run() as out:
            with stopwatch(timings, "optimisation"):
                # Multi-path runs write every path's draws unresampled (psis_resample=False): their
                # log p and log q are the proposal k-hat needs, which cmdstanpy 1.3 cannot return
                # beside Stan's resampled output (it has no save_single_paths). The PSIS
                # resampling Stan would do next is backends.importance's, the same algorithm.
                # vi_tolerance is an ELBO tolerance; L-BFGS's tolerances (in units of machine
                # epsilon) keep CmdStan's defaults.
                run = model.pathfinder(
                    data=stan_data(spec, dataset), seed=seed, num_paths=paths, draws=settings.vi_draws,
                    num_single_draws=settings.vi_draws, psis_resample=False, calculate_lp=True,
                    max_lbfgs_iters=settings.vi_iterations, output_dir=out, sig_figs=18, show_console=False,
                )
            with stopwatch(timings, "extraction"):
                columns = list(run.column_names)
                pooled = np.asarray(run.draws())
                log_p_all, log_q_all = pathfinder_log_densities(columns, pooled)
                csv_file, stdout_files = run_files(out)
                stdout = "\n".join(Path(f).read_text() for f in stdout_files)
                converged, iterations, grad_evals = pathfinder_progress(stdout)
                fit = self._approximation_fit(
                    spec, model, "pathfinder", settings, compiled, csv_file=csv_file,
                    columns=columns, values=pooled, log_p=log_p_all, log_q=log_q_all,
                    stan_version=csv_stan_version(run),
                    extra={"pathfinder_paths": paths, "pathfinder_resampling": "psis" if resample else "none",
                           "iterations": "L-BFGS iterations of each path's best approximation, summed"},
                    converged=converged, iterations=iterations, grad_evals=grad_evals)
                if resample:
                    keep, pareto_k = psis_resample(log_p_all, log_q_all, settings.vi_draws, seed)
                    path = (_column(columns, pooled, "path__").astype(int) - 1 if "path__" in columns
                            else np.repeat(np.arange(paths), settings.vi_draws)[: len(pooled)])
                    pool = fit.draws
                    fit.draws = _take_draws(pool, keep)
                    attach_pool(fit.draws, pool, log_p_all, log_q_all, path, keep, pareto_k, paths)
                    fit.log_p, fit.log_q, fit.log_jacobian = (a[keep] for a in (fit.log_p, fit.log_q, fit.log_jacobian))
        fit.timings = timings
        return fit

    def _optimize(self, model, data: dict, settings: FitSettings, seed: int, jacobian: bool, out: str,
                  save_iterations: bool = True):
        """One L-BFGS run from Stan's random initial point drawn with ``seed``.

        ``save_iterations`` keeps every iterate in the CSV (the loss trace); a CSV given to
        ``laplace_sample`` as its mode must hold the optimum alone, since CmdStan reads the
        mode from its first row.
        """
        try:
            return model.optimize(data=data, seed=seed, algorithm="lbfgs", jacobian=jacobian,
                                  iter=settings.vi_iterations, save_iterations=save_iterations,
                                  require_converged=False, output_dir=out, sig_figs=18, show_console=False,
                                  timeout=settings.optimize_timeout)
        except TimeoutError:
            raise RuntimeError(f"L-BFGS start (seed {seed}) ran past optimize_timeout = "
                               f"{settings.optimize_timeout:g} s and was stopped") from None

    def _map_cmdstan(self, spec, dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        """One start of MAP (Backend.fit runs settings.map_starts of them and keeps the best)."""
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            model, compiled = self.cmdstan_model()
        with _cmdstan_run() as out:
            with stopwatch(timings, "optimisation"):
                # jacobian=False: the mode of log prior + log likelihood, the oracle's convention.
                run = self._optimize(model, stan_data(spec, dataset), settings, seed, jacobian=False, out=out)
            with stopwatch(timings, "extraction"):
                columns = list(run.column_names)
                trace = np.asarray(run.optimized_iterations_np)
                posterior = flat_to_canonical(spec, columns, trace[-1:][None])
                point = {name: value[0, 0] for name, value in posterior.items()}
                stan_version = csv_stan_version(run)
                attrs = {"backend": self.name, "engine": "cmdstanpy", "method": "map",
                         "stan_version": stan_version, "program_was_compiled": int(compiled)}
                draws = canonical_datatree(spec, posterior, attrs={"/": attrs})
                converged = optimize_converged(Path(run.runset.stdout_files[0]).read_text())
        # point_log_density: every start's at once (_start_log_densities).
        return self._result("map", "cmdstanpy", draws=draws, timings=timings, point=point, converged=converged,
                            # The saved iterations start with the initial point.
                            iterations=len(trace) - 1, loss=-_column(columns, trace, "lp__"),
                            stan_version=stan_version)

    def _start_log_densities(self, spec: MixtureSpec, dataset: Dataset, starts: list[Fit]) -> None:
        """Every start's log density (oracle convention) from one CmdStan ``log_prob`` process for
        all starts (``_cmdstan_log_densities``), its time the first start's extraction; a start
        CmdStan refuses is judged alone, and fails if it is refused alone too."""
        found = [i for i, f in enumerate(starts) if f.ok and f.point_log_density is None]
        if not found:
            return
        with stopwatch(starts[found[0]].timings, "extraction"):
            try:
                densities = self._cmdstan_log_densities(spec, dataset, [starts[i].point for i in found])
            except Exception:  # noqa: BLE001 - a point CmdStan refuses: judged start by start below
                densities = None
        for j, i in enumerate(found):
            try:
                density = densities[j] if densities is not None else \
                    self._cmdstan_log_densities(spec, dataset, [starts[i].point])[0]
            except Exception as exc:  # noqa: BLE001 - that start fails, as an engine error in it would
                starts[i] = failed(self.name, "map", exc)
                continue
            starts[i].point_log_density = density

    def _laplace_cmdstan(self, spec, dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        """Stan's Laplace approximation: a normal on the unconstrained space at the mode of the
        Jacobian-adjusted density, covariance the inverse negative Hessian (Stan's finite
        differences of gradients), drawn by ``laplace_sample``. The mode is the best of
        ``settings.map_starts`` seeded L-BFGS runs without a degenerate component
        (backends.degenerate.best_start, MAP's rule; the others are recorded in
        ``degenerate_starts``)."""
        timings: dict[str, float] = {}
        with stopwatch(timings, "compile"):
            model, compiled = self.cmdstan_model()
        data = stan_data(spec, dataset)
        with _cmdstan_run() as out:
            with stopwatch(timings, "optimisation"):
                modes = []
                for i, start in enumerate(start_seeds(seed, settings.map_starts)):
                    try:
                        modes.append(self._optimize(model, data, settings, start, jacobian=True,
                                                    out=str(Path(out) / f"start-{i}"), save_iterations=False))
                    except RuntimeError:
                        modes.append(None)
                found = [m.optimized_params_dict["lp__"] if m is not None else -math.inf for m in modes]
                points = [None if m is None else _optimum_point(spec, m) for m in modes]
                # The best mode without a degenerate component (backends.degenerate), as MAP keeps:
                # laplace_sample then runs from it.
                best, degenerate = best_start(found, points, dataset.x, dataset.y)
                if best is None:
                    raise RuntimeError("every start of the mode search failed")
            # The Hessian (finite differences at the mode) and the draws: still building q.
            with stopwatch(timings, "optimisation"):
                run = model.laplace_sample(data=data, mode=modes[best], draws=settings.vi_draws, jacobian=True,
                                           seed=seed, output_dir=str(Path(out) / "laplace"), sig_figs=18,
                                           show_console=False)
            with stopwatch(timings, "extraction"):
                columns = list(run.column_names)
                values = np.asarray(run.draws())
                point = points[best]
                transcript = Path(modes[best].runset.stdout_files[0]).read_text()
                iterations, evaluations = optimize_progress(transcript)
                d = n_unconstrained(spec)
                fit = self._approximation_fit(
                    spec, model, "laplace", settings, compiled, csv_file=run_files(str(Path(out) / "laplace"))[0],
                    columns=columns, values=values,
                    # log_p__: Stan's log density at the draw, unconstrained, Jacobian included;
                    # log_q__ = (u - mode)' H (u - mode) / 2 = -z'z / 2 for the standard normal z
                    # behind the draw (laplace_sample.hpp), constants left out.
                    log_p=_column(columns, values, "log_p__").astype(float),
                    log_q=_column(columns, values, "log_q__").astype(float) - 0.5 * d * math.log(2 * math.pi),
                    stan_version=csv_stan_version(run),
                    extra={"log_q_missing_constant": "+log|det(-H)| / 2 at the mode (CmdStan does not report it)",
                           "mode": "best of map_starts L-BFGS runs of the Jacobian-adjusted density",
                           "mode_lp": found[best]},
                    point=point, point_log_density=self.log_density(spec, dataset, point, engine="cmdstanpy"),
                    start_log_densities=[float(v) for v in found], converged=optimize_converged(transcript),
                    iterations=iterations, grad_evals=evaluations)
        fit.timings = timings
        fit.degenerate_starts = degenerate
        fit.at_bound = bound_hits(spec, point)
        return fit
