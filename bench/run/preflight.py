"""Checks of a run's option values made before any cell runs: each failure is one MixbenchError
line (exit 2), never a row per cell.

- a backend is registered, or a plug-in ``package.module:Class`` naming a ``Backend`` subclass
  (its module is imported; nothing in it is called);
- ``--sampler`` and ``--optimizer`` are names some backend of the run takes (backends.base
  SAMPLERS, OPTIMIZERS);
- a cell's draws fit in the memory this machine has available (``check_memory``);
- a ``--scheduler`` address has the form ``scheme://host:port``.
"""

from __future__ import annotations

import os
import re

from backends import BACKENDS, backend_class
from backends.base import OPTIMIZERS, SAMPLERS, FitSettings
from backends.methods import Kind
from backends.methods import method as method_named
from models.errors import MixbenchError
from models.spec import MixtureSpec

# bench.score.predictive thins the pointwise log likelihood to at most this many values per fit.
LOO_MAX_VALUES = 2e7
_SCHEDULER = re.compile(r"^(tcp|tls|ws|wss|ucx)://[A-Za-z0-9._\-\[\]:]+:(\d{1,5})$")


def check_backend_name(name: str) -> None:
    """A registered backend, or a plug-in 'package.module:Class' naming a backends.base.Backend
    subclass (backends.backend_class: its module is imported, nothing in it is called).
    Raises MixbenchError otherwise."""
    if name not in BACKENDS:
        backend_class(name)


def check_engine_names(backends: list[str], settings: dict) -> None:
    """``settings['sampler']`` and ``settings['optimizer']`` must be taken by some built-in backend
    of the run (a plug-in backend may take any name, so with one the check is left to it)."""
    built_in = [b for b in backends if b in SAMPLERS]
    if len(built_in) < len(backends):
        return
    for option, table in (("sampler", SAMPLERS), ("optimizer", OPTIMIZERS)):
        value = settings.get(option)
        if value is None:
            continue
        known = sorted({name for b in built_in for name in table[b]} if option == "sampler"
                       else {name for names in table.values() for name in names})
        if value not in known:
            raise MixbenchError(f"--{option}: unknown {value!r}; known: {', '.join(known)}")


def available_memory() -> int:
    """Bytes of memory available to a new process now: MemAvailable of /proc/meminfo (Linux),
    else the physical memory (os.sysconf)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fit_bytes(spec: MixtureSpec, N: int, method: str, settings: FitSettings) -> int:
    """A lower bound on the bytes one fit holds: its draws (draws per chain x chains for NUTS and
    SMC, ``vi_draws`` for an approximation, ``map_starts`` points for MAP) x parameters x 8 bytes,
    plus the pointwise log likelihood the scoring keeps (draws x N, at most LOO_MAX_VALUES
    values, bench.score.predictive) and the data (N x (D + 1))."""
    params = spec.K * spec.D + spec.K * int(spec.intercept) + (spec.K if spec.sigma == "per-component" else 1) + spec.K
    kind = method_named(method).kind
    draws = {Kind.MCMC: settings.chains * settings.draws, Kind.PARTICLES: settings.chains * settings.draws,
             Kind.POINT: settings.map_starts}.get(kind, settings.vi_draws)
    return 8 * (draws * params + int(min(draws * N, LOO_MAX_VALUES)) + N * (spec.D + 1))


def check_memory(spec: MixtureSpec, N: int, method: str, settings: FitSettings) -> None:
    """MixbenchError when one fit of ``method`` needs more memory than this machine has available."""
    need, have = fit_bytes(spec, N, method, settings), available_memory()
    if need > have:
        raise MixbenchError(f"{method}: one fit of N = {N} with these settings holds at least {need / 2**30:.1f} GiB "
                            f"(draws x parameters x 8 bytes), more than the {have / 2**30:.1f} GiB available here; "
                            "use fewer --draws, --chains or --vi-draws")


def check_scheduler(address: str) -> None:
    """MixbenchError unless ``address`` looks like a Dask scheduler address, scheme://host:port."""
    match = _SCHEDULER.match(address.strip())
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise MixbenchError(f"--scheduler: {address!r} is not a scheduler address (expected e.g. tcp://127.0.0.1:8786)")
