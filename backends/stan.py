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
import contextlib
import hashlib
import io
import json
import logging
import math
import os
import re
import tempfile
import time
import warnings
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from backends.base import (
    Backend,
    Fit,
    FitSettings,
    canonical_datatree,
    chain_seconds,
    package_versions,
    start_seeds,
    stopwatch,
)
from backends import artefacts
from backends.base import SAMPLERS, note_compile
from backends.caches import build_lock
from backends.degenerate import best_start
from backends.importance import GROUP as IMPORTANCE_GROUP
from backends.importance import keep_proposal, proposal_group, psis_resample
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

ENGINES = SAMPLERS["stan"]
NO_CMDSTAN = "CmdStan not installed (cmdstanpy.cmdstan_path() found none)"
INSTALL_CMDSTAN = "install it with `python -m cmdstanpy.install_cmdstan` (or point CMDSTAN at an install)"

# Stan's per-draw sampler columns -> ArviZ sample_stats names.
SAMPLE_STATS = {
    "lp__": "lp",
    "accept_stat__": "acceptance_rate",
    "stepsize__": "step_size",
    "treedepth__": "tree_depth",
    "n_leapfrog__": "n_steps",
    "divergent__": "diverging",
    "energy__": "energy",
}
_NUTS_FUNCTION = "stan::services::sample::hmc_nuts_diag_e_adapt"
_ELAPSED = re.compile(r"([0-9.eE+-]+) seconds \((Warm-up|Sampling)\)")


def cmdstan_path() -> str | None:
    """The CmdStan install cmdstanpy would use, or None."""
    import cmdstanpy

    try:
        return cmdstanpy.cmdstan_path()
    except (ValueError, RuntimeError):
        return None


@lru_cache(maxsize=1)
def pystan_stan_version() -> str:
    """The Stan release compiled into httpstan's wheel (from its bundled headers)."""
    import httpstan

    header = Path(httpstan.__file__).parent / "include" / "stan" / "version.hpp"
    parts = dict(re.findall(r"#define STAN_(MAJOR|MINOR|PATCH) (\d+)", header.read_text()))
    return f"{parts['MAJOR']}.{parts['MINOR']}.{parts['PATCH']}"


def cmdstan_version() -> str | None:
    if cmdstan_path() is None:
        return None
    import cmdstanpy

    version = cmdstanpy.cmdstan_version()
    return ".".join(map(str, version)) if version else "unknown"


def sample_stats_from_flat(columns: Sequence[str], values: np.ndarray) -> dict[str, np.ndarray]:
    """NUTS sampler columns (chain, draw, column) -> ArviZ-named sample_stats."""
    out = {}
    for j, name in enumerate(columns):
        if name in SAMPLE_STATS:
            column = values[..., j]
            if name == "divergent__":
                column = column.astype(bool)
            elif name in ("treedepth__", "n_leapfrog__"):
                column = column.astype(np.int64)
            out[SAMPLE_STATS[name]] = column
    return out


def _column(columns: Sequence[str], values: np.ndarray, name: str) -> np.ndarray:
    return values[..., list(columns).index(name)]


def _nuts_phase_timings(chain_times: list[dict[str, float]], cores: int) -> dict[str, float]:
    """Warm-up and sampling seconds of a run from Stan's own per-chain clocks, combined by the
    one rule for chains sharing ``cores`` (``backends.base.chain_seconds``); left out when a
    chain's clock lacks a phase (the per-chain times stay in the draws' attrs)."""
    phases = {"Warm-up", "Sampling"}
    if not chain_times or not all(phases <= set(t) for t in chain_times):
        return {}
    return {
        "warmup": chain_seconds([t["Warm-up"] for t in chain_times], cores),
        "sampling": chain_seconds([t["Sampling"] for t in chain_times], cores),
    }


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise MixbenchError(f"seed: Stan needs an integer in [0, 2^31), got {seed!r}")
    return int(seed)


def _compile_lock(key: str):
    """One process at a time builds the program ``key`` (backends.caches owns the lock and the
    store); other programs build meanwhile."""
    return build_lock("stan", key)


def _httpstan_libraries(name: str) -> list[Path]:
    """The compiled extension modules httpstan keeps for program ``name``."""
    import httpstan.cache

    return sorted(httpstan.cache.model_directory(name).glob("*.so"))


def _httpstan_build_intact(name: str) -> bool:
    """Whether httpstan's build of ``name`` is the one recorded when it was built
    (backends.artefacts); if not, its directory is deleted so that it is built again."""
    import httpstan.cache

    libraries = _httpstan_libraries(name)
    if libraries and all(artefacts.intact(library) for library in libraries):
        return True
    httpstan.cache.delete_model_directory(name)
    return False


@contextlib.contextmanager
def _quiet():
    """Silence the engines' console chatter (pystan's progress, cmdstanpy's INFO log)."""
    logger = logging.getLogger("cmdstanpy")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


# --- CmdStan runs ---------------------------------------------------------------------------------

_STAN_MESSAGE = re.compile(r"(error|exception|reject|fail|not finite|nan|inf\b)", re.IGNORECASE)


@contextlib.contextmanager
def _cmdstan_run():
    """A temporary output directory for one CmdStan run, consoles silenced; a failed run's
    error carries Stan's own messages from the console transcripts (cmdstanpy's error names only
    files in the directory, which is gone once the run ends)."""
    with tempfile.TemporaryDirectory(prefix="mixbench-stan-") as out, _quiet():
        try:
            yield out
        except RuntimeError as exc:
            messages = []
            for transcript in sorted(Path(out).rglob("*stdout*.txt")):
                messages += [line.strip() for line in transcript.read_text(errors="replace").splitlines()
                             if _STAN_MESSAGE.search(line) and line.strip() not in messages]
            if not messages:
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"{first} | Stan said: {' / '.join(messages[:8])}") from exc


def csv_stan_version(run) -> str:
    """The Stan version a cmdstanpy result's CSV header reports (stan_version_major etc.)."""
    config = run.metadata.cmdstan_config
    parts = [config.get(f"stan_version_{p}") for p in ("major", "minor", "patch")]
    if any(p is None for p in parts):
        return cmdstan_version() or "unknown"
    return ".".join(str(int(p)) for p in parts)


def advi_eta(transcript: str) -> float | None:
    """The step size Stan's ADVI adaptation chose ("Found best value [eta = 1]"), or None."""
    found = re.search(r"best value \[eta = ([0-9.eE+-]+)\]", transcript)
    return float(found[1]) if found else None


def optimize_converged(transcript: str) -> bool:
    """Whether a CmdStan optimize transcript reports a normal L-BFGS termination."""
    return "terminated normally" in transcript and "Maximum number of iterations" not in transcript


def _run_advi(model, data: dict, seed: int, method: str, settings: FitSettings, out: str):
    """One CmdStan ADVI run -> (columns, draws (draw, column), output CSV path, console
    transcript, ELBO diagnostic CSV path, Stan version).

    With adaptation off (a fixed eta) Stan writes no "eta" header line and cmdstanpy 1.3's CSV
    parser refuses the output although the run is fine; the CSV is then read here: its first
    numeric row is the approximation's mean, the rest are the draws.
    """
    adapt = settings.advi_eta is None
    try:
        run = model.variational(data=data, seed=seed, algorithm=method.removeprefix("advi-"),
                                iter=settings.vi_iterations, tol_rel_obj=settings.vi_tolerance,
                                adapt_engaged=adapt, eta=settings.advi_eta, draws=settings.vi_draws,
                                output_dir=out, sig_figs=18, save_diagnostics=True, require_converged=False,
                                show_console=False)
    except (RuntimeError, ValueError) as exc:
        if adapt or "parsing" not in str(exc).lower():
            raise
    else:
        diagnostics = run.runset.diagnostic_files[0] if run.runset.diagnostic_files else ""
        return (list(run.column_names), np.asarray(run.variational_sample), run.runset.csv_files[0],
                Path(run.runset.stdout_files[0]).read_text(), diagnostics, csv_stan_version(run))
    csv_files = [f for f in Path(out).glob("*.csv") if "diagnostic" not in f.name]
    if len(csv_files) != 1:
        raise RuntimeError(f"ADVI with eta={settings.advi_eta} wrote no output CSV")
    lines = csv_files[0].read_text().splitlines()
    header = "\n".join(line for line in lines if line.startswith("#"))
    rows = [line for line in lines if line and not line.startswith("#")]
    values = np.asarray([[float(v) for v in row.split(",")] for row in rows[2:]])
    version = dict(re.findall(r"stan_version_(major|minor|patch) = (\d+)", header))
    stan_version = (f"{version['major']}.{version['minor']}.{version['patch']}" if len(version) == 3
                    else cmdstan_version() or "unknown")
    stdout = "\n".join(f.read_text() for f in Path(out).glob("*stdout*.txt"))
    diagnostics = next((str(f) for f in Path(out).glob("*diagnostic*.csv")), "")
    return rows[0].split(","), values, str(csv_files[0]), stdout, diagnostics, stan_version


def _take_draws(draws, keep: np.ndarray):
    """A one-chain canonical DataTree restricted to the draws ``keep`` (renumbered 0..n-1)."""
    out = draws.copy()
    posterior = draws["posterior"].to_dataset().isel(draw=keep)
    out["posterior"] = xr.DataTree(posterior.assign_coords(draw=np.arange(len(keep))))
    return out


# --- pystan / httpstan ---------------------------------------------------------------------------

async def _httpstan_fits(model_name: str, payloads: list[dict], parallel: bool) -> list[bytes]:
    """Run one httpstan fit per payload and return each fit's raw output (JSON lines).

    pystan's ``Model.sample`` is bypassed for one reason: with a random seed httpstan caches the
    fit on disk and serves the cached output to any later identical request, so a repeated run
    would take no time and prove nothing. Here a cached fit is deleted and the run redone, and
    every fit is deleted once read.

    A private path (httpstan's REST calls), pinned to a public engine by
    tests/test_stan_cmdstan.py (pystan's draws equal CmdStan's, cmdstanpy's public ``sample``, at
    the same seed). Remove it for ``Model.sample`` once pystan can turn httpstan's fit cache off
    or names the cached fit so it can be deleted (no upstream issue filed yet).
    """
    import stan.common

    async with stan.common.HttpstanClient() as client:

        async def start(payload: dict) -> dict:
            for _ in range(2):
                resp = await client.post(f"/{model_name}/fits", json=payload)
                if resp.status != 201:
                    raise RuntimeError(f"httpstan refused the fit: {resp.json().get('message', resp.status)}")
                operation = resp.json()
                if not operation["done"]:
                    return operation
                await client.delete(f"/{operation['result']['name']}")
            raise RuntimeError("httpstan kept serving a cached fit")

        async def finish(operation: dict) -> bytes:
            while not operation["done"]:
                await asyncio.sleep(0.05)
                resp = await client.get(f"/{operation['name']}")
                operation = resp.json()
            fit_name = operation["result"].get("name")
            if fit_name is None:
                message = operation["result"].get("message", "unknown error")
                raise RuntimeError(message.split(", traceback")[0])
            resp = await client.get(f"/{fit_name}")
            if resp.status != 200:
                raise RuntimeError(f"httpstan lost fit {fit_name}")
            await client.delete(f"/{fit_name}")
            return resp.content

        if parallel:
            operations = [await start(p) for p in payloads]
            return [await finish(op) for op in operations]
        return [await finish(await start(p)) for p in payloads]


def _parse_httpstan_output(raw: bytes) -> tuple[list[str], np.ndarray, dict[str, float]]:
    """One chain's httpstan output -> (column names, draws (draw, column), Stan's phase times)."""
    import orjson

    columns: list[str] | None = None
    rows: list[list[float]] = []
    times: dict[str, float] = {}
    for line in raw.splitlines():
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:  # draws holding NaN or inf, which orjson rejects
            message = json.loads(line)
        topic, values = message.get("topic"), message.get("values")
        if topic == "sample" and isinstance(values, dict):
            if columns is None:
                columns = list(values)
            rows.append(list(values.values()))
        elif topic == "logger" and values:
            found = _ELAPSED.search(str(values[0]))
            if found:
                times[found[2]] = float(found[1])
    if columns is None:
        raise RuntimeError("httpstan returned no draws")
    return columns, np.asarray(rows, dtype=float), times


# --- the backend ---------------------------------------------------------------------------------

class StanBackend(Backend):
    name = "stan"

    def __init__(self):
        # (spec, data digest) -> stan.Model: pystan builds (compile cached by httpstan, plus a
        # round trip with the data) once per spec and data set in this process.
        self._pystan_models: OrderedDict[tuple, Any] = OrderedDict()
        self._cmdstan_model = None

    def versions(self) -> dict[str, str]:
        out = package_versions("cmdstanpy", "pystan", "httpstan")
        out["stan (httpstan)"] = pystan_stan_version()
        out["cmdstan"] = cmdstan_version() or "not installed"
        out["cmdstan path"] = str(cmdstan_path() or "not installed")
        return out

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

    # --- programs, compiled once --------------------------------------------------------------

    def pystan_model(self, spec: MixtureSpec, dataset: Dataset) -> tuple[Any, bool]:
        """The pystan model for this spec and data, and whether its program was already compiled."""
        import httpstan.cache
        import httpstan.models

        key = (spec, dataset.digest())
        if key in self._pystan_models:
            self._pystan_models.move_to_end(key)
            note_compile("warm")
            return self._pystan_models[key], True
        note_compile("cold")
        code = program_code()
        name = httpstan.models.calculate_model_name(code)
        with _compile_lock(f"httpstan-{name.replace('/', '-')}"):
            compiled = name in httpstan.cache.list_model_names() and _httpstan_build_intact(name)
            with _quiet():
                model, compiled = self._pystan_build(name, code, spec, dataset, compiled)
            if not compiled:
                for library in _httpstan_libraries(name):
                    artefacts.record(library)
        self._pystan_models[key] = model
        while len(self._pystan_models) > 8:
            self._pystan_models.popitem(last=False)
        return model, compiled

    @staticmethod
    def _pystan_build(name: str, code: str, spec: MixtureSpec, dataset: Dataset, compiled: bool) -> tuple[Any, bool]:
        """pystan's build of the program with this data, and whether httpstan's cached build served."""
        import httpstan.cache
        import stan

        try:
            return stan.build(code, data=stan_data(spec, dataset)), compiled
        except Exception:
            if not compiled:
                raise
            # A build killed part-way leaves httpstan an entry it cannot load (its server then
            # answers 500 for every later build): discard it and build once more.
            warnings.warn(f"httpstan's cached build of the Stan program ({name}) failed to load; rebuilding",
                          RuntimeWarning, stacklevel=2)
            httpstan.cache.delete_model_directory(name)
            return stan.build(code, data=stan_data(spec, dataset)), False

    def cmdstan_model(self) -> tuple[Any, bool]:
        """The CmdStan executable, compiled once into the "stan" cache store per program and CmdStan version."""
        import cmdstanpy

        if self._cmdstan_model is not None:
            note_compile("warm")
            return self._cmdstan_model, True
        note_compile("cold")
        code = program_code()
        key = hashlib.sha256(f"{code}\0{cmdstan_path()}\0{cmdstan_version()}".encode()).hexdigest()[:16]
        from backends.caches import private_dir, store_dir

        directory = private_dir(store_dir("stan") / key)
        source = directory / "mixture.stan"
        if not source.exists():  # written once, so the executable stays newer than its source
            source.write_text(code)
        exe = source.with_suffix(".exe" if os.name == "nt" else "")
        with _compile_lock(f"cmdstan-{key}"):
            compiled = artefacts.intact(exe)  # a cut-off or foreign executable is discarded, not run
            with _quiet():
                exe_path = cmdstanpy.compile_stan_file(source)
            if not compiled:
                artefacts.record(Path(exe_path))
            self._cmdstan_model = cmdstanpy.CmdStanModel(stan_file=source, exe_file=exe_path)
        return self._cmdstan_model, compiled

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
        model, _ = self.cmdstan_model()
        with _quiet():
            table = model.log_prob(params=point, data=stan_data(spec, dataset), jacobian=False, sig_figs=18)
        return float(table["lp__"].iloc[0])

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
                stdout = "\n".join(Path(f).read_text() for f in run._runset.stdout_files)
                converged, iterations, grad_evals = pathfinder_progress(stdout)
                fit = self._approximation_fit(
                    spec, model, "pathfinder", settings, compiled, csv_file=run._runset.csv_files[0],
                    columns=columns, values=pooled, log_p=log_p_all, log_q=log_q_all,
                    stan_version=csv_stan_version(run),
                    extra={"pathfinder_paths": paths, "pathfinder_resampling": "psis" if resample else "none",
                           "iterations": "L-BFGS iterations of each path's best approximation, summed"},
                    converged=converged, iterations=iterations, grad_evals=grad_evals)
                if resample:
                    keep, _ = psis_resample(log_p_all, log_q_all, settings.vi_draws, seed)
                    path = (_column(columns, pooled, "path__").astype(int) - 1 if "path__" in columns
                            else np.repeat(np.arange(paths), settings.vi_draws)[: len(pooled)])
                    pool = fit.draws
                    fit.draws = _take_draws(pool, keep)
                    fit.draws[IMPORTANCE_GROUP] = proposal_group(log_p_all, log_q_all, path, keep)
                    keep_proposal(fit.draws, pool)
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
                point_log_density = self.log_density(spec, dataset, point, engine="cmdstanpy")
                converged = optimize_converged(Path(run.runset.stdout_files[0]).read_text())
        return self._result("map", "cmdstanpy", draws=draws, timings=timings, point=point,
                            point_log_density=point_log_density, converged=converged,
                            # The saved iterations start with the initial point.
                            iterations=len(trace) - 1, loss=-_column(columns, trace, "lp__"),
                            stan_version=stan_version)

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
                d = n_unconstrained(spec)
                fit = self._approximation_fit(
                    spec, model, "laplace", settings, compiled, csv_file=run._runset.csv_files[0],
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
                    start_log_densities=[float(v) for v in found], converged=optimize_converged(
                        Path(modes[best].runset.stdout_files[0]).read_text()),
                    iterations=None)
        fit.timings = timings
        fit.degenerate_starts = degenerate
        return fit


def _optimum_point(spec: MixtureSpec, run) -> dict:
    """The canonical parameters of a CmdStanMLE's optimum."""
    mode = flat_to_canonical(spec, list(run.column_names), np.asarray(run.optimized_params_np)[None, None])
    return {name: value[0, 0] for name, value in mode.items()}


def advi_log_densities(spec: MixtureSpec, columns: Sequence[str], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-draw (log p, log q) from CmdStan ADVI output rows (draws only, not the mean row).

    Stan writes lp__ = 0; log_p__ = the model's log density at the draw in the unconstrained
    space, Jacobian and all constants included (log_prob<propto=false, jacobian=true>); log_g__ =
    -||eps||^2 / 2 for the standard-normal eps behind the draw, constants dropped. The full
    log q adds -d/2 log(2 pi), done here, and -log|det scale|, which CmdStan does not report: log q
    is exact up to that one constant, shared by all draws, so PSIS weights and k-hat are exact
    while an ELBO computed from it would be shifted.
    """
    log_p = _column(columns, values, "log_p__").astype(float)
    log_q = _column(columns, values, "log_g__") - 0.5 * n_unconstrained(spec) * math.log(2 * math.pi)
    return log_p, log_q.astype(float)


def pathfinder_log_densities(columns: Sequence[str], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-draw (log p, log q) from single-path Pathfinder output rows.

    lp__ = the model's log density at the draw, unconstrained space, Jacobian and constants
    included (log_prob<false, true>); lp_approx__ = the log density of the path's normal
    approximation there, -log|det| and -d/2 log(2 pi) included: both exact.
    """
    return (_column(columns, values, "lp__").astype(float),
            _column(columns, values, "lp_approx__").astype(float))


def advi_progress(transcript: str, trace: np.ndarray | None, max_iterations: int) -> tuple[bool, int | None]:
    """(converged, iterations run) from CmdStan's ADVI console transcript and ELBO trace."""
    converged = "ELBO CONVERGED" in transcript
    if not converged and "maximum number of iterations is reached" in transcript:
        return False, max_iterations
    return converged, int(trace[-1, 0]) if trace is not None else None


def pathfinder_progress(transcript: str) -> tuple[bool, int | None, int | None]:
    """(converged, L-BFGS iterations, gradient evaluations) from Pathfinder's transcript.

    Iterations are each path's best iteration and evaluations each path's count, both summed
    over paths ("Path [p] :Best Iter: [i] ELBO (...) evaluations: (e)" lines, one per path).
    """
    converged = not ("terminated with error" in transcript or "Maximum number of iterations" in transcript)
    found = re.findall(r"Best Iter: \[(\d+)\].*?evaluations: \((\d+)\)", transcript)
    if not found:
        return converged, None, None
    return converged, sum(int(i) for i, _ in found), sum(int(e) for _, e in found)


def read_elbo_trace(path: str) -> np.ndarray | None:
    """ADVI's diagnostic CSV (iter,time_in_seconds,ELBO) -> rows (iteration, ELBO), or None."""
    rows = []
    for line in Path(path).read_text().splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) != 3:
            continue
        try:
            iteration, _seconds, elbo = (float(f) for f in fields)
        except ValueError:
            continue  # the header line
        rows.append((iteration, elbo))
    return np.asarray(rows) if rows else None
