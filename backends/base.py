"""The contract every backend satisfies, and what a fit returns.

A backend knows its engine and the spec; it knows nothing about metrics, harness or reports.
"""

from __future__ import annotations

import math
import os
import platform
import time
import traceback
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import xarray as xr
from arviz_base import from_dict

from backends.caches import waited_seconds
from backends.degenerate import best_start
# The shared method vocabulary (docs/architecture.md): a backend declares which it supports.
from backends.methods import METHODS as METHODS, Kind, Method  # METHODS: re-exported, its old home
from backends.methods import method as method_named
from models.data import Dataset
from models.errors import MixbenchError
from models.spec import MixtureSpec

Status = Literal["ok", "unsupported", "failed"]

# The timing phases a Fit may report, in seconds (the shared list: ``Backend.fit`` refuses any
# other name, so no phase is silently dropped on its way to a row's ``t_<phase>``). NUTS fills
# compile / warmup / sampling / extraction; VI and MAP compile / optimisation / extraction.
# warmup_and_sampling: an engine that runs both as one call it times as a whole (PyMC's numpyro
# sampler); overhead: wall time of the engine call outside every chain's own clock (thread or
# process start-up, the engine's trace conversion); compile_wait: time spent waiting for another
# process to finish building the same program (taken out of compile; not counted against a
# cell's time limit).
TIMING_PHASES: tuple[str, ...] = (
    "compile", "compile_wait", "warmup", "sampling", "warmup_and_sampling", "optimisation", "extraction", "overhead",
)

# The NUTS engines (``FitSettings.sampler``) and VI optimisers (``FitSettings.optimizer``) each
# built-in backend takes, here so that the command line checks a value before any cell runs,
# without importing the engines. The backends read their own entries.
SAMPLERS: dict[str, tuple[str, ...]] = {
    "pymc": ("nutpie", "pymc", "numpyro"), "numpyro": ("numpyro",), "stan": ("cmdstanpy", "pystan"),
}
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "pymc": ("adam", "adamax", "adagrad", "adagrad_window", "adadelta", "rmsprop", "sgd", "momentum",
             "nesterov_momentum"),
    "numpyro": ("adam", "sgd", "adagrad", "clipped_adam", "rmsprop", "momentum"),
    "stan": (),  # Stan's ADVI adapts its own step-size sequence
}


def settings_from_dict(cls, data: dict[str, Any], what: str):
    """A settings dataclass ``cls`` from a dict (a row's or a file's).

    Raises
    ------
    MixbenchError
        ``data`` names a field ``cls`` does not have (``what`` names the settings in the message),
        or the dataclass's own checks refuse a value.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MixbenchError(f"{what}: unknown field(s) {', '.join(unknown)}")
    return cls(**data)


@dataclass(frozen=True)
class FitSettings:
    """Every knob of a fit, recorded with its result. Defaults follow the forum thread."""

    # NUTS
    chains: int = 2
    warmup: int = 1000
    draws: int = 1000
    target_accept: float = 0.8
    max_treedepth: int = 10
    # Which implementation runs NUTS where the backend has a choice (PyMC: nutpie, pymc, numpyro;
    # Stan: cmdstanpy, pystan). None: the backend's default (PyMC: nutpie; Stan: cmdstanpy when a
    # CmdStan install is found, else pystan).
    sampler: str | None = None
    parallel_chains: bool = True
    precision: Literal["float64", "float32"] = "float64"
    # VI and MAP
    vi_iterations: int = 10_000
    optimizer: str = "adam"
    learning_rate: float = 0.01
    vi_tolerance: float = 1e-4
    vi_draws: int = 1000
    batch_size: int = 128
    # Minibatch ADVI scales the batch likelihood up to N (total_size). False replays the forum
    # thread's bug: each step sees 128 points weighted as if they were the whole data.
    minibatch_total_size: bool = True
    # MAP (and Laplace's mode): independent optimisations from seeded random starts; the best
    # log density is kept and every start's is recorded, so a report can say how many reached it.
    # Eight: on the `separated` scenario a single Stan L-BFGS start reaches the mode about half
    # the time (41 of 80 starts), so 8 starts miss it with probability about 0.4%.
    map_starts: int = 8
    # Seconds one optimisation start may take before it counts as failed. CmdStan's L-BFGS
    # line search can loop without end once its bracket turns NaN (seen on `separated` with
    # Laplace's Jacobian-adjusted density); a start cut off this way is a failed start.
    optimize_timeout: float = 600.0
    # Stan's ADVI step size. None: Stan adapts eta itself (its default); a number fixes it.
    advi_eta: float | None = None
    # Pathfinder: independent L-BFGS paths (Stan's default, 4).
    pathfinder_paths: int = 4
    # Pathfinder: "psis" resamples the draws of every path, pooled, by their Pareto-smoothed
    # importance weights (Stan's default; Zhang et al. 2022); "none" keeps every path's draws
    # with equal weight.
    pathfinder_resampling: Literal["psis", "none"] = "psis"

    def __post_init__(self):
        for name in ("chains", "draws", "vi_iterations", "vi_draws", "batch_size", "max_treedepth",
                     "map_starts", "pathfinder_paths"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise MixbenchError(f"settings.{name}: must be a positive integer, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, np.integer)) or self.warmup < 0:
            raise MixbenchError(f"settings.warmup: must be a non-negative integer, got {self.warmup!r}")
        if not (isinstance(self.target_accept, (int, float)) and 0 < self.target_accept < 1):
            raise MixbenchError(f"settings.target_accept: must be in (0, 1), got {self.target_accept!r}")
        if self.pathfinder_resampling not in ("psis", "none"):
            raise MixbenchError(f"settings.pathfinder_resampling: must be psis or none, got {self.pathfinder_resampling!r}")
        if self.precision not in ("float64", "float32"):
            raise MixbenchError(f"settings.precision: must be float64 or float32, got {self.precision!r}")
        for name in ("learning_rate", "vi_tolerance", "advi_eta", "optimize_timeout"):
            value = getattr(self, name)
            if name == "advi_eta" and value is None:
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise MixbenchError(f"settings.{name}: must be a positive finite number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every field by name: what a row records and ``from_dict`` takes back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitSettings":
        """The settings ``data`` names, the others at their defaults.

        Raises
        ------
        MixbenchError
            An unknown field, or a value the checks refuse.
        """
        return settings_from_dict(cls, data, "settings")


@dataclass
class Fit:
    """What ``Backend.fit`` returns, whatever the backend, method or outcome."""

    backend: str
    method: str
    status: Status
    engine: str | None = None
    reason: str | None = None
    draws: xr.DataTree | None = None
    # Seconds: NUTS fills compile / warmup / sampling / extraction; VI and MAP fill compile /
    # optimisation / extraction. A phase the engine cannot separate is absent, not zero.
    timings: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    precision: str = "float64"
    grad_evals: int | None = None
    divergences: int | None = None
    converged: bool | None = None
    iterations: int | None = None
    # VI (and Pathfinder): one entry per draw of ``draws`` (chain 0), all in the approximation's
    # unconstrained space so that log_p - log_q are valid importance weights for PSIS:
    # log_p = the model's log density there, Jacobian included; log_jacobian = the log |Jacobian|
    # of the constraining transform, so log_p - log_jacobian is the oracle-convention log density;
    # log_q = the approximation's log density. loss: the optimisation loss per iteration.
    log_p: np.ndarray | None = None
    log_jacobian: np.ndarray | None = None
    log_q: np.ndarray | None = None
    loss: np.ndarray | None = None
    # MAP and Laplace: the point (canonical names) and its log density (oracle convention); every
    # start's final log density, in start order (-inf for a start that failed): for MAP in the
    # oracle convention, for Laplace the Jacobian-adjusted density its mode search maximises;
    # the point's coordinates that sit on a bound of the prior's support (``bound_hits``).
    point: dict[str, np.ndarray] | None = None
    point_log_density: float | None = None
    start_log_densities: list[float] | None = None
    # Multi-start MAP: the starts whose optimum has a degenerate component (backends.degenerate),
    # e.g. "start 3: sigma[1] = 0.0047 on 8 points"; they are passed over for the best start.
    degenerate_starts: list[str] | None = None
    at_bound: list[str] | None = None
    # "cold": this fit built (or loaded from a disk store) something it runs; "warm": everything
    # it ran was already in this process's memory from an earlier fit; None: nothing ran.
    compile: Literal["cold", "warm"] | None = None
    # A failed fit: the engine's traceback (the reason holds its message on one line).
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def unsupported(backend: str, method: str, reason: str, engine: str | None = None) -> Fit:
    """The Fit of a method a backend cannot run here.

    Returns
    -------
    Fit
        Status ``unsupported``, ``reason`` as given, no draws.
    """
    return Fit(backend=backend, method=method, status="unsupported", engine=engine, reason=reason)


def package_versions(*names: str) -> dict[str, str]:
    """Installed version of each distribution named (``importlib.metadata``).

    Returns
    -------
    dict of str to str
        Name -> version, ``"not installed"`` for one that is not.
    """
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine_info() -> dict[str, str]:
    """The machine a fit ran on.

    Returns
    -------
    dict of str to str
        ``python``, ``platform``, ``machine``, ``processor`` and ``cpu_count``.
    """
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_count": str(os.cpu_count()),
    }


# What the fit in progress in this process compiled: note_compile's states, None outside a fit.
_compile_notes: list[str] | None = None


def note_compile(state: Literal["cold", "warm"]) -> None:
    """Say, where a backend looks up something it compiles, whether it was built (or loaded from
    a store: "cold") or found in this process's memory ("warm").

    Parameters
    ----------
    state : {"cold", "warm"}
        ``Backend.fit`` records the fit as cold when any lookup was cold, warm when all were
        warm; outside a fit the note is dropped.
    """
    if _compile_notes is not None:
        _compile_notes.append(state)


# Per-draw arrays of an approximation's Fit, stored in the draws' sample_stats over (chain, draw).
VI_DRAW_ARRAYS: tuple[str, ...] = ("log_p", "log_q", "log_jacobian")


def store_vi_arrays(fit: Fit) -> None:
    """Put the Fit's VI arrays into its DataTree, the same way for every backend.

    ``log_p``, ``log_q`` and ``log_jacobian`` (shape (draw,), chain 0) become variables of group
    ``sample_stats`` with dims (chain, draw); ``loss`` (shape (iteration,)) becomes variable
    ``loss`` of group ``optimisation`` with dim ``iteration``. Arrays that are None are left out;
    the arrays on the Fit stay as they are. Done by ``Backend.fit`` for every ok fit with draws.

    Raises
    ------
    MixbenchError
        A per-draw array whose length differs from the draws' (a backend bug).
    """
    tree = fit.draws
    n_draws = tree["posterior"].sizes["draw"]
    arrays = {}
    for name in VI_DRAW_ARRAYS:
        values = getattr(fit, name)
        if values is None:
            continue
        values = np.asarray(values, dtype=float).reshape(-1)
        if values.size != n_draws or tree["posterior"].sizes["chain"] != 1:
            raise MixbenchError(f"{fit.backend}/{fit.method}: {name} has {values.size} entries for "
                                f"{tree['posterior'].sizes['chain']} chain(s) of {n_draws} draws")
        arrays[name] = (("chain", "draw"), values[None])
    if arrays:
        coords = {"chain": tree["posterior"]["chain"].values, "draw": tree["posterior"]["draw"].values}
        if "sample_stats" in tree.children:
            stats = tree["sample_stats"].to_dataset().drop_vars(list(arrays), errors="ignore")
            tree["sample_stats"] = xr.DataTree(stats.assign(arrays))
        else:
            tree["sample_stats"] = xr.DataTree(xr.Dataset(arrays, coords=coords))
    if fit.loss is not None:
        loss = np.asarray(fit.loss, dtype=float).reshape(-1)
        tree["optimisation"] = xr.DataTree(xr.Dataset({"loss": (("iteration",), loss)},
                                                      coords={"iteration": np.arange(loss.size)}))


def contract_violation(fit: Fit, method: Method, settings: FitSettings,
                       stores_approximation: bool = True) -> str | None:
    """Why an ok ``fit`` breaks what its method's kind promises, or None when it keeps it.

    The promise is the method's traits (``backends.methods.Method``): the Fit fields it sets
    (``Method.fields``), the DataTree groups of ``fit.draws`` (``Method.groups``), the posterior's
    (chain, draw) sizes (``Method.draw_shape``), one start log density per start for a
    multi-start method, and the ``approximation`` group's variables. ``Backend.fit`` calls it on
    every ok fit, after ``store_vi_arrays``, and turns a violation into a failed fit.

    Parameters
    ----------
    fit : Fit
        An ok fit of ``method``.
    method : Method
    settings : FitSettings
        The settings the fit ran with.
    stores_approximation : bool
        The backend's ``Backend.stores_approximation``.

    Returns
    -------
    str or None
        One line naming the backend, the method, its kind and what is missing or mis-shaped.
    """
    where = f"contract: {fit.backend}/{method} ({method.kind.value})"
    missing = [name for name in method.fields if getattr(fit, name) is None]
    if missing:
        return f"{where}: the fit does not set {', '.join(missing)}"
    if fit.draws is None:
        return f"{where}: the fit has no draws"
    groups = [g for g in method.groups(settings, stores_approximation) if g not in fit.draws.children]
    if groups:
        return f"{where}: the draws lack group(s) {', '.join(groups)}"
    shape = tuple(fit.draws["posterior"].sizes.get(dim, 0) for dim in ("chain", "draw"))
    expected = method.draw_shape(settings)
    if any(want is not None and got != want for got, want in zip(shape, expected)):
        return f"{where}: the posterior has (chain, draw) = {shape}, expected {expected}"
    if method.multi_start and len(fit.start_log_densities) != settings.map_starts:
        return (f"{where}: {len(fit.start_log_densities)} start log densities for "
                f"{settings.map_starts} starts")
    if "approximation" in method.groups(settings, stores_approximation):
        found = set(fit.draws["approximation"].data_vars)
        if found != method.approximation_parameters:
            return (f"{where}: group approximation has {', '.join(sorted(found)) or 'nothing'}, "
                    f"expected {', '.join(sorted(method.approximation_parameters))}")
    return None


def approximation_group(labels: list[str], mean, std=None, cov=None) -> xr.DataTree:
    """The fitted approximation's parameters as the DataTree group every backend stores them in.

    Parameters
    ----------
    labels : list of str, length d
        The engine's unconstrained coordinates, e.g. ``"sigma_log__[0]"`` (their names differ by
        engine: each has its own unconstrained parametrisation).
    mean : array_like, shape (d,)
        The approximation's mean (a Laplace approximation's mode) on that space.
    std : array_like, shape (d,), optional
        Mean-field standard deviations.
    cov : array_like, shape (d, d), optional
        Full-rank (or Laplace) covariance.

    Returns
    -------
    xarray.DataTree
        Variables ``mean`` (and ``std`` and/or ``cov``) over dims ``unconstrained`` (and
        ``unconstrained_bis`` for the covariance's columns), both labelled by ``labels``; assign it
        to ``draws["approximation"]``.

    Raises
    ------
    ValueError
        An array whose shape does not match ``labels``.
    """
    d = len(labels)
    data = {"mean": (("unconstrained",), np.asarray(mean, dtype=float))}
    if std is not None:
        data["std"] = (("unconstrained",), np.asarray(std, dtype=float))
    if cov is not None:
        data["cov"] = (("unconstrained", "unconstrained_bis"), np.asarray(cov, dtype=float))
    for name, (_, values) in data.items():
        if values.shape != (d,) * values.ndim:
            raise ValueError(f"approximation {name}: shape {values.shape} does not match {d} coordinates")
    coords = {"unconstrained": list(labels)}
    if cov is not None:
        coords["unconstrained_bis"] = list(labels)
    return xr.DataTree(xr.Dataset(data, coords=coords))


def check_timings(timings: dict[str, float]) -> dict[str, float]:
    """``timings`` as floats, or MixbenchError naming a phase outside TIMING_PHASES or a bad value.

    Raises
    ------
    MixbenchError
        A phase name not in ``TIMING_PHASES`` (a backend bug: the row would drop it), or a
        negative or non-finite number of seconds.
    """
    unknown = sorted(set(timings) - set(TIMING_PHASES))
    if unknown:
        raise MixbenchError(f"timings: unknown phase(s) {', '.join(unknown)}; known: {', '.join(TIMING_PHASES)}")
    out = {}
    for phase, seconds in timings.items():
        seconds = float(seconds)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise MixbenchError(f"timings[{phase!r}]: must be a finite number of seconds >= 0, got {seconds!r}")
        out[phase] = seconds
    return out


def chain_seconds(per_chain, cores: int) -> float:
    """Wall seconds of a phase whose per-chain durations are ``per_chain``: the one rule for chains.

    Parameters
    ----------
    per_chain : array_like, shape (chains,)
        Seconds each chain spent in the phase, by its own clock.
    cores : int
        Chains the engine ran at once (1: one after another).

    Returns
    -------
    float
        With a core per chain the phase lasts as long as its slowest chain; with fewer cores the
        chains queue and their total work is shared by the cores (sum / cores; exact for one core,
        an estimate between the two when chains queue behind a few workers).

    Raises
    ------
    ValueError
        ``cores`` < 1 or no chain.
    """
    per_chain = np.asarray(per_chain, float)
    if cores < 1 or per_chain.size == 0:
        raise ValueError(f"chain_seconds: need cores >= 1 and at least one chain, got {cores} and {per_chain.size}")
    if cores >= per_chain.size:
        return float(per_chain.max())
    return float(per_chain.sum() / cores)


def failed(backend: str, method: str, exc: BaseException, engine: str | None = None) -> Fit:
    """The failed Fit an engine's exception becomes: the one failure policy of every backend.

    Parameters
    ----------
    backend, method : str
        What failed.
    exc : BaseException
        The engine's exception; call inside its ``except`` block (the traceback recorded is the
        one being handled).
    engine : str, optional
        The engine that raised, when known.

    Returns
    -------
    Fit
        Status ``failed``; ``reason`` is ``"<type>: <message>"`` with the whole message on one line
        (at most 2000 characters), ``traceback`` the formatted traceback.
    """
    message = " ".join(str(exc).split())
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return Fit(backend=backend, method=method, status="failed", engine=engine, reason=reason[:2000],
               traceback=traceback.format_exc())


# Told the phase a fit enters (a stopwatch's) and None when it leaves it: a worker tells its run,
# whose progress line then says what each cell is doing (Stan compiling for a minute, say).
_phase_listener: Callable[[str | None], None] | None = None


def set_phase_listener(listener: Callable[[str | None], None] | None) -> None:
    """Call ``listener(phase)`` when a ``stopwatch`` block starts and ``listener(None)`` when it ends.

    Parameters
    ----------
    listener : callable or None
        Takes a phase name (one of ``TIMING_PHASES``) or None; None stops telling.
    """
    global _phase_listener
    _phase_listener = listener


@contextmanager
def stopwatch(timings: dict[str, float], phase: str):
    """Add the wall time of the block, in seconds (``time.perf_counter``), to ``timings[phase]``.

    Parameters
    ----------
    timings : dict of str to float
        Updated in place, also when the block raises.
    phase : str
        One of ``TIMING_PHASES``.
    """
    if _phase_listener is not None:
        _phase_listener(phase)
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start
        if _phase_listener is not None:
            _phase_listener(None)


def canonical_datatree(
    spec: MixtureSpec,
    posterior: dict[str, np.ndarray],
    sample_stats: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
) -> xr.DataTree:
    """Draws with leading (chain, draw) axes -> the canonical DataTree of docs/architecture.md.

    Every backend converts its engine's output to this.

    Parameters
    ----------
    spec : MixtureSpec
    posterior : dict of str to array_like
        Exactly the spec's parameters (w, b when present, sigma, nu when a parameter, pi), each of shape
        (chain, draw, *param_shape) (``MixtureSpec.param_shapes``).
    sample_stats : dict of str to array_like, optional
        Per-draw statistics, each of shape (chain, draw).
    attrs : dict, optional
        Per group, as ArviZ's ``from_dict`` takes it: ``{"/": {...}, "posterior": {...}}``.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (and ``sample_stats``), dims named by ``MixtureSpec.param_dims``,
        coordinates ``component`` 0..K-1 and ``covariate`` 0..D-1.

    Raises
    ------
    ValueError
        A parameter missing or extra, or of the wrong shape.
    """
    shapes = spec.param_shapes()
    if set(posterior) != set(shapes):
        raise ValueError(f"posterior has {sorted(posterior)}, the spec needs {sorted(shapes)}")
    for name, shape in shapes.items():
        arr = np.asarray(posterior[name])
        if arr.ndim != 2 + len(shape) or arr.shape[2:] != shape:
            raise ValueError(f"posterior[{name!r}] has shape {arr.shape}, expected (chain, draw, *{shape})")
    groups = {"posterior": {k: np.asarray(v, dtype=float) for k, v in posterior.items()}}
    if sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    coords = {"component": np.arange(spec.K), "covariate": np.arange(spec.D)}
    return from_dict(groups, coords=coords, dims=spec.param_dims(), attrs=attrs)


def check_batch_size(method: str, settings: FitSettings, N: int) -> None:
    """MixbenchError when a minibatch method's ``settings.batch_size`` exceeds the N observations.

    Raises
    ------
    MixbenchError
        ``method`` is unknown, or a minibatch method's batch is larger than the data.
    """
    if method_named(method).minibatch and settings.batch_size > N:
        raise MixbenchError(f"settings.batch_size: {settings.batch_size} is larger than the data (N = {N})")


def start_seeds(seed: int, starts: int) -> list[int]:
    """Independent seeds for ``starts`` optimisations of one fit seeded ``seed``.

    Parameters
    ----------
    seed : int
    starts : int

    Returns
    -------
    list of int, length ``starts``, in [0, 2^31)
        Start 0 keeps ``seed`` itself (a one-start MAP is the engine's plain run); later starts
        take numbers from NumPy's SeedSequence on (seed, start), so they never collide with
        another fit's seed + 1.
    """
    derived = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0] >> 1) for i in range(1, starts)]
    return [int(seed), *derived]


def bound_hits(spec: MixtureSpec, point: dict[str, np.ndarray], rtol: float = 1e-6) -> list[str]:
    """Coordinates of a constrained point on the edge of the prior's support.

    Edges: sigma at 0 or at a Uniform(0, u) prior's upper bound u; a weight pi_k at 0 (the
    simplex's face); equal neighbours of an ordered parameter (the ordered cone's face). A mode
    found there is the optimiser running into a wall, not an interior posterior mode. ``rtol`` is
    relative to u (sigma), absolute for weights; ties use 1e-9 * max(1, |value|). Returns
    human-readable items, indices 0-based, e.g. ``["sigma[1] = 1 (Uniform upper bound)"]``.
    """
    p = spec.check_params(point)
    hits: list[str] = []
    sigma = np.atleast_1d(p["sigma"])
    upper = spec.sigma_prior.upper
    for k, value in enumerate(sigma):
        if value <= rtol * (upper if math.isfinite(upper) else 1.0):
            hits.append(f"sigma[{k}] = {value:.3g} (lower bound 0)")
        elif math.isfinite(upper) and value >= upper * (1 - rtol):
            hits.append(f"sigma[{k}] = {value:.6g} (Uniform upper bound {upper:g})")
    for k, value in enumerate(p.get("pi", ())):
        if spec.K > 1 and value <= rtol:
            hits.append(f"pi[{k}] = {value:.3g} (simplex face)")
    if spec.ordering != "none":
        ordered = p["b"] if spec.ordering == "intercept" else p["w"][:, 0]
        name = "b" if spec.ordering == "intercept" else "w[:, 0]"
        for k in range(spec.K - 1):
            if ordered[k + 1] - ordered[k] <= 1e-9 * max(1.0, abs(ordered[k])):
                hits.append(f"{name} components {k} and {k + 1} tie (ordering bound)")
    return hits


class Backend(ABC):
    """One probabilistic programming backend: an adapter from the spec to its engines.

    A backend declares what it runs in two class attributes, and ``fit`` alone answers for
    anything outside them (there is no catch-all branch in any backend):

    ``methods``
        method (from ``METHODS``) -> name of the method of this class that runs it, called as
        ``run(spec, dataset, method, settings, seed) -> Fit`` on validated input.
    ``likelihoods``
        the ``MixtureSpec.likelihood`` variants the backend's model implements.

    Settings a declared method cannot honour (a precision, a sampler, an optimiser) are refused
    by ``refuses``. Output contract: timings name phases of ``TIMING_PHASES`` only; an engine's
    exception becomes a failed Fit with its message and traceback (``failed``); a
    ``MixbenchError`` (bad input) propagates.
    """

    name: str = ""
    methods: ClassVar[dict[str, str]] = {}
    likelihoods: ClassVar[tuple[str, ...]] = ("mixture",)
    # Whether ADVI and Laplace fits store the approximation's parameters (``approximation_group``).
    stores_approximation: ClassVar[bool] = True

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the backend's packages and engines.

        Returns
        -------
        dict of str to str
            Package or engine name -> version.
        """

    @abstractmethod
    def log_density(self, spec: MixtureSpec, dataset: Dataset, params: dict[str, np.ndarray]) -> float:
        """The backend's own model log density at a constrained point (oracle convention).

        Parameters
        ----------
        spec : MixtureSpec
        dataset : Dataset
        params : dict of str to ndarray
            Constrained parameters of the spec's shapes.

        Returns
        -------
        float
            log prior + log likelihood, no Jacobian (``models.oracle.log_density``'s convention).
        """

    def refuses(self, spec: MixtureSpec, method: str, settings: FitSettings) -> str | None:
        """Why this backend cannot run a declared ``method`` with ``settings``, or None.

        A hook for settings-dependent limits (the table and the likelihoods are checked before it).

        Returns
        -------
        str or None

        Raises
        ------
        MixbenchError
            Settings that are wrong for this backend whatever the method (an unknown sampler).
        """
        return None

    def unsupported_reason(self, spec: MixtureSpec, method: str, settings: FitSettings) -> str | None:
        """None if this backend can run ``method`` for ``spec`` with ``settings``, else why not.

        The method table first, then the likelihood variant, then ``refuses``.

        Returns
        -------
        str or None
            One line naming what is missing.

        Raises
        ------
        MixbenchError
            Settings that ``refuses`` rejects whatever the method.
        """
        if method not in self.methods:
            declared = ", ".join(self.methods) or "none"
            return f"method {method!r} is not implemented by the {self.name} backend (it runs: {declared})"
        reason = self.likelihood_reason(spec)
        if reason is not None:
            return reason
        return self.refuses(spec, method, settings)

    def likelihood_reason(self, spec: MixtureSpec) -> str | None:
        """Why ``spec.likelihood`` is outside this backend's model, or None (the one guard for it).

        Returns
        -------
        str or None
        """
        if spec.likelihood in self.likelihoods:
            return None
        return (f"likelihood {spec.likelihood!r} is not implemented in the {self.name} backend "
                f"(its model implements: {', '.join(self.likelihoods)})")

    def check_likelihood(self, spec: MixtureSpec) -> None:
        """Check that ``spec.likelihood`` is one this backend's model implements.

        Raises
        ------
        MixbenchError
            It is not (``likelihood_reason``).
        """
        reason = self.likelihood_reason(spec)
        if reason is not None:
            raise MixbenchError(reason)

    def gradient_function(self, spec: MixtureSpec, dataset: Dataset, settings: FitSettings):
        """What one NUTS leapfrog step pays: the log density and its gradient.

        Parameters
        ----------
        spec : MixtureSpec
        dataset : Dataset
        settings : FitSettings
            ``sampler`` chooses the engine, ``precision`` its floating point.

        Returns
        -------
        f : callable
            f(theta) -> (log density, gradient) on the engine's unconstrained space, the Jacobian
            of the constraining transforms included, compiled once before returning; takes and
            returns float64 NumPy (a float and an array of x0's shape) and blocks until its result
            exists.
        x0 : ndarray, shape (d,)
            The engine's unconstrained image of ``backends.gradients.fixed_point(spec, dataset)``.

        Raises
        ------
        MixbenchError
            The backend has no gradient function (optional for plug-in backends: only the
            gradient-cost benchmark needs it).
        """
        # Optional for plug-in backends: only the gradient-cost benchmark needs it.
        raise MixbenchError(f"backend {self.name!r}: has no gradient function (needed by the gradient-cost benchmark)")

    def _fit(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        """Run a declared ``method`` through the table; only called for supported pairs on valid input."""
        return getattr(self, self.methods[method])(spec, dataset, method, settings, seed)

    def _run(self, spec: MixtureSpec, dataset: Dataset, method: str, settings: FitSettings, seed: int) -> Fit:
        """``_fit`` under the failure policy: an engine exception becomes a failed Fit."""
        try:
            return self._fit(spec, dataset, method, settings, seed)
        except MixbenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - any engine error is the fit's failure, recorded whole
            return failed(self.name, method, exc)

    def fit(
        self,
        spec: MixtureSpec,
        dataset: Dataset,
        method: str,
        settings: FitSettings | None = None,
        seed: int = 0,
    ) -> Fit:
        """Fit ``spec`` to ``dataset`` with ``method``: ok, unsupported (with a reason) or failed.

        Parameters
        ----------
        spec, dataset
            The model and its data (N observations, D covariates).
        method : str
            One of ``METHODS``.
        settings : FitSettings, optional
            Defaults to ``FitSettings()``.
        seed : int
            Seeds everything random in the fit.

        Returns
        -------
        Fit
            Status ``unsupported`` for a method outside ``methods``, a likelihood outside
            ``likelihoods`` or settings ``refuses`` names; ``failed`` with the engine's message
            (``reason``) and ``traceback`` when the engine raised; timings in ``TIMING_PHASES``.

        Raises
        ------
        MixbenchError
            An unknown method, data that do not match the spec, a batch larger than the data, or
            a timing phase outside the shared list (a backend bug).
        """
        kind = method_named(method).kind
        global _compile_notes
        settings = settings or FitSettings()
        dataset.check_against(spec)
        reason = self.unsupported_reason(spec, method, settings)
        _compile_notes = []
        waited_before = waited_seconds()
        try:
            if reason is not None:
                result = unsupported(self.name, method, reason)
            elif kind is Kind.POINT:
                result = self._multi_start_map(spec, dataset, settings, seed)
            else:
                check_batch_size(method, settings, dataset.N)  # one rule for every backend
                result = self._run(spec, dataset, method, settings, seed)
            if result.compile is None and _compile_notes:
                result.compile = "cold" if "cold" in _compile_notes else "warm"
        finally:
            _compile_notes = None
        waited = waited_seconds() - waited_before
        if waited > 0:
            # Waiting for another process's build of the same program (backends.caches.build_lock)
            # is not this fit's compile: its own phase, which the run does not count against the
            # cell's time limit.
            result.timings["compile"] = max(result.timings.get("compile", 0.0) - waited, 0.0)
            result.timings["compile_wait"] = waited
        result.timings = check_timings(result.timings)
        if result.ok and result.draws is not None:
            store_vi_arrays(result)
        if result.ok:
            violation = contract_violation(result, method_named(method), settings, self.stores_approximation)
            if violation is not None:
                result = replace(result, status="failed", reason=violation)
        result.settings = settings.to_dict()
        result.seed = seed
        result.versions = {**self.versions(), **result.versions}
        return result

    def _multi_start_map(self, spec: MixtureSpec, dataset: Dataset, settings: FitSettings, seed: int) -> Fit:
        """``settings.map_starts`` single-start MAP runs of ``_fit``; the highest log density wins
        among the starts without a degenerate component (backends.degenerate; all starts when every
        one has one).

        Every start's final log density (oracle convention) is kept in ``start_log_densities``.
        Timings: compile as the first start paid it (later starts reuse the compiled program),
        optimisation and extraction summed over starts; iterations and gradient evaluations
        summed too, so cost stays what the whole fit paid. A failed start counts as -inf; the fit
        fails only when every start does, with the first start's reason.
        """
        starts = [self._run(spec, dataset, "map", settings, s) for s in start_seeds(seed, settings.map_starts)]
        found = [f.point_log_density if f.ok and f.point_log_density is not None else -math.inf
                 for f in starts]
        if not any(f.ok for f in starts):
            return starts[0]
        # An ok start without a point (a plug-in backend's) is judged on its density alone: {}.
        points = [(f.point or {}) if f.ok else None for f in starts]
        best_index, degenerate = best_start(found, points, dataset.x, dataset.y)
        best = starts[best_index]
        timings: dict[str, float] = {}
        for i, start in enumerate(starts):
            for phase, seconds in start.timings.items():
                if phase == "compile" and i > 0:
                    continue
                timings[phase] = timings.get(phase, 0.0) + seconds
        best.timings = timings
        best.start_log_densities = [float(v) for v in found]
        best.degenerate_starts = degenerate
        for name in ("iterations", "grad_evals"):
            counts = [getattr(f, name) for f in starts if f.ok]
            if all(c is not None for c in counts):
                setattr(best, name, int(sum(counts)))
        best.at_bound = bound_hits(spec, best.point)
        if best.draws is not None:
            best.draws.attrs.update({"map_starts": len(starts), "map_best_start": best_index,
                                     "map_start_seeds": start_seeds(seed, settings.map_starts)})
        return best
