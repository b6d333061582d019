"""Backends that misbehave on purpose (and one that is quick and exact), for harness tests.

They plug in by name, e.g. ``get_backend("tests.fake_backends:RaisingBackend")``, and run in the
harness's cell processes like any real backend.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from backends.base import Backend, Fit, canonical_datatree, stopwatch

MARKER_ENV = "MIXBENCH_TEST_MARKER"
PIDS_ENV = "MIXBENCH_TEST_PIDS"


def _mark(name: str) -> None:
    """Append a line per execution, so tests can count which cells really ran, and the cell
    process's id, so tests can check that none outlives its run."""
    marker = os.environ.get(MARKER_ENV)
    if marker:
        # Name and pid on one line, in one write: two cells marking at once cannot pair a name
        # with the other cell's pid (the pids file alone is written in its own order).
        with open(marker, "a") as fh:
            fh.write(f"{name} {os.getpid()}\n")
    _record_pid(os.getpid())


def _record_pid(pid: int) -> None:
    pids = os.environ.get(PIDS_ENV)
    if pids:
        with open(pids, "a") as fh:
            fh.write(f"{pid}\n")


class _Fake(Backend):
    name = "fake"

    def versions(self):
        return {"fake": "1.0"}

    methods = {"nuts": "_sample"}  # the method table: anything else is unsupported by Backend.fit

    def log_density(self, spec, dataset, params):
        from models.oracle import log_density

        return log_density(spec, dataset.x, dataset.y, params)


class QuickBackend(_Fake):
    """Draws scattered tightly around the truth; chain 1 in the opposite labelling."""

    name = "quick"

    def scatter(self, settings) -> float:
        return 0.01

    def shift(self, name, settings) -> float:
        return 0.0

    def _sample(self, spec, dataset, method, settings, seed):
        _mark(f"{self.name}:{seed}")
        rng = np.random.default_rng(seed)
        chains, draws = settings.chains, settings.draws
        posterior = {}
        truth = dataset.truth
        if truth is None:  # a data file: scatter around the data's mean instead
            shapes = spec.param_shapes()
            truth = {"w": np.zeros(shapes["w"]), "sigma": np.full(shapes["sigma"], float(np.std(dataset.y))),
                     "pi": np.full(spec.K, 1.0 / spec.K)}
            if "b" in shapes:
                truth["b"] = np.full(shapes["b"], float(np.mean(dataset.y)))
        for name, value in truth.items():
            value = np.asarray(value, dtype=float)
            noise = self.scatter(settings) * rng.standard_normal((chains, draws, *value.shape))
            posterior[name] = value + self.shift(name, settings) + noise
            if name == "pi":
                posterior[name] = np.abs(posterior[name])
                posterior[name] /= posterior[name].sum(axis=-1, keepdims=True)
        perm = np.arange(spec.K)[::-1]
        for name in ("w", "b", "pi") + (("sigma",) if spec.sigma != "shared" else ()):
            if name in posterior:
                posterior[name][1] = posterior[name][1][:, perm]
        stats = {"diverging": np.zeros((chains, draws), bool), "n_steps": np.full((chains, draws), 7)}
        draws_tree = canonical_datatree(spec, posterior, stats)
        return Fit(backend=self.name, method=method, status="ok", engine="quick", draws=draws_tree,
                   timings={"compile": 0.01, "warmup": 0.02, "sampling": 0.03, "extraction": 0.001},
                   grad_evals=7 * chains * draws * 2, divergences=0)


class LingeringThreadBackend(QuickBackend):
    """QuickBackend that leaves a non-daemon thread waiting forever, as pystan's server does: a
    process that joins its threads at exit never ends by itself."""

    name = "lingering"

    def _sample(self, spec, dataset, method, settings, seed):
        threading.Thread(target=threading.Event().wait, name="lingering", daemon=False).start()
        return super()._sample(spec, dataset, method, settings, seed)


class BiasedBackend(QuickBackend):
    """QuickBackend whose slopes sit ``settings.learning_rate`` (a setting it otherwise ignores)
    above the truth: a larger one is a deliberately worse fit, every other draw unchanged."""

    name = "biased"

    def shift(self, name, settings) -> float:
        return settings.learning_rate if name == "w" else 0.0


class RebuildingBackend(QuickBackend):
    """Like QuickBackend, after a cache entry of its own failed to load and was rebuilt."""

    name = "rebuilding"

    def _sample(self, spec, dataset, method, settings, seed):
        import warnings

        from backends.caches import CacheWarning

        warnings.warn("cache entry /x/entry.pkl: failed to load (EOFError: torn); discarded, compiling it again",
                      CacheWarning, stacklevel=2)
        return super()._sample(spec, dataset, method, settings, seed)


RELEASE_ENV = "MIXBENCH_TEST_RELEASE"


class CompilingBackend(QuickBackend):
    """QuickBackend whose fit first "compiles" (a compile stopwatch) until the file named by
    $MIXBENCH_TEST_RELEASE exists; after 120 s without it the fit fails, so a test that never
    releases it fails instead of hanging. One program for all its cells, as Stan's."""

    name = "compiling"
    shared_program = True

    def _sample(self, spec, dataset, method, settings, seed):
        timings = {}
        with stopwatch(timings, "compile"):
            if not wait_until(lambda: Path(os.environ[RELEASE_ENV]).exists(), timeout=120):
                raise RuntimeError("the compile was never released")
        fit = super()._sample(spec, dataset, method, settings, seed)
        fit.timings["compile"] = timings["compile"]
        return fit


class RaisingBackend(_Fake):
    name = "raising"

    def _sample(self, spec, dataset, method, settings, seed):
        _mark(f"raising:{seed}")
        raise RuntimeError("the engine blew up\nsecond line of the engine's message")


class SleepingBackend(_Fake):
    name = "sleeping"

    def _sample(self, spec, dataset, method, settings, seed):
        _mark(f"sleeping:{seed}")
        time.sleep(3600)


class SpawningSleeperBackend(_Fake):
    """Starts a child process of its own (as httpstan or parallel chains do), then sleeps."""

    name = "spawning-sleeper"

    def _sample(self, spec, dataset, method, settings, seed):
        child = subprocess.Popen(["sleep", "3600"])
        _record_pid(child.pid)
        _mark(f"spawning-sleeper:{seed}")
        time.sleep(3600)


class DyingBackend(_Fake):
    """The cell's process is killed mid-fit (as the kernel's OOM killer would)."""

    name = "dying"

    def _sample(self, spec, dataset, method, settings, seed):
        _mark(f"dying:{seed}")
        os.kill(os.getpid(), signal.SIGKILL)


def executions(marker: Path) -> list[str]:
    """The names of the executions marked so far, in order."""
    return [line.split()[0] for line in marker.read_text().splitlines() if line.strip()] if marker.exists() else []


def execution_pid(marker: Path, name: str) -> int:
    """The process id of the first execution marked ``name``."""
    for line in marker.read_text().splitlines():
        if line.split()[:1] == [name]:
            return int(line.split()[1])
    raise LookupError(f"no execution {name!r} in {marker}")


def recorded_pids(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_until(condition, timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` every ``interval`` s for up to ``timeout`` s; its last value.

    Returns as soon as the condition holds: ``timeout`` only bounds a hang, so callers give one
    that a loaded machine meets many times over (60 s for processes to exit after a kill)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def _point_draws(spec, point):
    """A point as the one-chain, one-draw DataTree every MAP fit carries."""
    return canonical_datatree(spec, {name: np.asarray(value, float)[None, None] for name, value in point.items()})


class OptimisingMapBackend(_Fake):
    """MAP by L-BFGS on the oracle's log density, for an intercept-only spec with per-component
    sigma (b, log sigma, logit pi unconstrained). Start 0 begins on ``spike`` (the environment's
    MIXBENCH_TEST_SPIKE: a y value), the others from seeded random points."""

    name = "optimising-map"
    methods = {"map": "_map"}

    def _map(self, spec, dataset, method, settings, seed):
        from scipy.optimize import minimize
        from scipy.special import expit

        from models.oracle import log_density

        K = spec.K

        upper = spec.sigma_prior.upper

        def point(z):
            pi = np.r_[expit(z[2 * K]), 1 - expit(z[2 * K])]
            sigma = upper * expit(z[K:2 * K]) if np.isfinite(upper) else np.exp(z[K:2 * K])
            return {"w": np.zeros((K, 0)), "b": z[:K], "sigma": sigma, "pi": pi}

        def unconstrain(sigma):
            return np.log(sigma / upper) - np.log1p(-sigma / upper) if np.isfinite(upper) else np.log(sigma)

        def loss(z):
            value = log_density(spec, dataset.x, dataset.y, point(z))
            return -value if np.isfinite(value) else 1e300

        rng = np.random.default_rng(seed)
        spike = float(os.environ.get("MIXBENCH_TEST_SPIKE", "nan"))
        if str(seed) == os.environ.get("MIXBENCH_TEST_SPIKE_SEED"):
            # A point on the spike, where a sampler drawn into it went (1e-14, as NUTS did on
            # tied data): sigma on the ties, the other component on the rest.
            tied = np.abs(dataset.y - spike) < 1e-12
            rest = dataset.y[~tied]
            best = {"w": np.zeros((K, 0)), "b": np.array([spike, rest.mean()]),
                    "sigma": np.array([1e-14, min(rest.std(), 0.99 * upper)]), "pi": np.array([tied.mean(), 1 - tied.mean()])}
            return Fit(backend=self.name, method=method, status="ok", engine="scipy", point=best,
                       draws=_point_draws(spec, best),
                       point_log_density=float(log_density(spec, dataset.x, dataset.y, best)), converged=False,
                       timings={"optimisation": 0.01}, iterations=1)
        z0 = np.r_[rng.normal(np.mean(dataset.y), np.std(dataset.y), K), unconstrain(rng.uniform(0.3, 0.9, K)), 0.0]
        result = minimize(loss, z0, method="L-BFGS-B", options={"maxiter": 2000})
        best = point(result.x)
        return Fit(backend=self.name, method=method, status="ok", engine="scipy", point=best,
                   draws=_point_draws(spec, best),
                   point_log_density=float(-result.fun), converged=bool(result.success),
                   timings={"optimisation": 0.01}, iterations=int(result.nit))
