"""What a fit is given and what it returns: ``FitSettings``, ``Fit``, and the Fits of a method a
backend cannot run (``unsupported``) or whose engine raised (``failed``); the versions and machine
a fit records."""

from __future__ import annotations

import math
import os
import platform
import traceback
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from typing import Any, Literal

import numpy as np
import xarray as xr

from models.errors import MixbenchError

Status = Literal["ok", "unsupported", "failed"]

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
