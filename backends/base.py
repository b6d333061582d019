"""The contract every backend satisfies: ``Backend``, whose ``fit`` validates the input, runs the
adapter's method under one failure policy and checks the result against its method's kind.

A backend knows its engine and the spec; it knows nothing about metrics, harness or reports. The
fit's types, clock, canonical tree and contract live in their own modules (``backends.fit``,
``backends.timing``, ``backends.canonical``, ``backends.contract``, ``backends.multistart``);
their names are importable from here too, where bench/ and plug-in backends have imported them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import ClassVar

import numpy as np

from backends.caches import waited_seconds
from backends.canonical import VI_DRAW_ARRAYS, approximation_group, canonical_datatree, store_vi_arrays
from backends.contract import check_batch_size, contract_violation
from backends.fit import (OPTIMIZERS, SAMPLERS, Fit, FitSettings, Status, failed, machine_info, package_versions,
                          settings_from_dict, unsupported)
# The shared method vocabulary (docs/architecture.md): a backend declares which it supports.
from backends.methods import METHODS, Kind
from backends.methods import method as method_named
from backends.multistart import best_of_starts, bound_hits, start_seeds
from backends.timing import (TIMING_PHASES, chain_seconds, check_timings, compile_notes, note_compile,
                             set_phase_listener, stopwatch)
from models.data import Dataset
from models.errors import MixbenchError
from models.spec import MixtureSpec

__all__ = [
    "METHODS", "OPTIMIZERS", "SAMPLERS", "TIMING_PHASES", "VI_DRAW_ARRAYS", "Backend", "Fit", "FitSettings", "Status",
    "approximation_group", "bound_hits", "canonical_datatree", "chain_seconds", "check_batch_size", "check_timings",
    "contract_violation", "failed", "machine_info", "note_compile", "package_versions", "set_phase_listener",
    "settings_from_dict", "start_seeds", "stopwatch", "store_vi_arrays", "unsupported",
]


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
    # Whether one compiled program serves every cell of the backend, built once into a store that
    # processes share under one build lock (backends.caches.build_lock): a process needing it
    # while another builds it waits. A run then gives a free worker other work meanwhile
    # (bench.run.executors.next_cell). False: what a fit compiles is per shape of cell.
    shared_program: ClassVar[bool] = False

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
            return f"method {str(method)!r} is not implemented by the {self.name} backend (it runs: {declared})"
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
        settings = settings or FitSettings()
        dataset.check_against(spec)
        reason = self.unsupported_reason(spec, method, settings)
        waited_before = waited_seconds()
        with compile_notes() as notes:
            if reason is not None:
                result = unsupported(self.name, method, reason)
            elif kind is Kind.POINT:
                result = self._multi_start_map(spec, dataset, settings, seed)
            else:
                check_batch_size(method, settings, dataset.N)  # one rule for every backend
                result = self._run(spec, dataset, method, settings, seed)
            if result.compile is None and notes:
                result.compile = "cold" if "cold" in notes else "warm"
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
        """``settings.map_starts`` single-start MAP runs of ``_fit``, the best kept (``best_of_starts``)."""
        seeds = start_seeds(seed, settings.map_starts)
        starts = [self._run(spec, dataset, "map", settings, s) for s in seeds]
        self._start_log_densities(spec, dataset, starts)
        return best_of_starts(spec, dataset, starts, seeds)

    def _start_log_densities(self, spec: MixtureSpec, dataset: Dataset, starts: list[Fit]) -> None:
        """Fill in ``point_log_density`` (oracle convention) of the ok ``starts`` that leave it to
        the whole multi-start fit, in place; a start whose point cannot be evaluated becomes a
        failed start. A hook for a backend that evaluates every start at once: each start of
        this base evaluates its own point."""
        return
