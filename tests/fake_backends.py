"""Backends that misbehave on purpose (and one that is quick and exact), for harness tests.

They plug in by name, e.g. ``get_backend("tests.fake_backends:RaisingBackend")``, and run in the
harness's cell processes like any real backend.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

from backends.base import Backend, Fit, canonical_datatree

MARKER_ENV = "MIXBENCH_TEST_MARKER"


def _mark(name: str) -> None:
    """Append a line per execution, so tests can count which cells really ran."""
    marker = os.environ.get(MARKER_ENV)
    if marker:
        with open(marker, "a") as fh:
            fh.write(name + "\n")


class _Fake(Backend):
    name = "fake"

    def versions(self):
        return {"fake": "1.0"}

    def unsupported_reason(self, spec, method, settings):
        return None if method == "nuts" else f"{self.name} only runs nuts"

    def log_density(self, spec, dataset, params):
        from models.oracle import log_density

        return log_density(spec, dataset.x, dataset.y, params)


class QuickBackend(_Fake):
    """Draws scattered tightly around the truth; chain 1 in the opposite labelling."""

    name = "quick"

    def _fit(self, spec, dataset, method, settings, seed):
        _mark(f"quick:{seed}")
        rng = np.random.default_rng(seed)
        chains, draws = settings.chains, settings.draws
        posterior = {}
        for name, value in dataset.truth.items():
            value = np.asarray(value, dtype=float)
            noise = 0.01 * rng.standard_normal((chains, draws, *value.shape))
            posterior[name] = value + noise
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


class RaisingBackend(_Fake):
    name = "raising"

    def _fit(self, spec, dataset, method, settings, seed):
        _mark(f"raising:{seed}")
        raise RuntimeError("the engine blew up\nsecond line of the engine's message")


class SleepingBackend(_Fake):
    name = "sleeping"

    def _fit(self, spec, dataset, method, settings, seed):
        _mark(f"sleeping:{seed}")
        time.sleep(3600)


class DyingBackend(_Fake):
    """The cell's process is killed mid-fit (as the kernel's OOM killer would)."""

    name = "dying"

    def _fit(self, spec, dataset, method, settings, seed):
        _mark(f"dying:{seed}")
        os.kill(os.getpid(), signal.SIGKILL)


def executions(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []
