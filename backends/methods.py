"""The method vocabulary: each inference method as an object that says what kind it is and what
a fit of it must carry (docs/architecture.md, "Methods").

A ``Method`` is its name (it is a ``str``: rows, run files and the command line keep plain names,
and ``"nuts" in METHODS`` holds), with the traits every layer reads instead of testing names:
its ``kind``, whether it runs on minibatches, whether it is the best of several optimisations,
whether its draws are importance-resampled, and the Fit fields and DataTree groups an ok fit of
it has. ``backends.base.Backend.fit`` checks each ok fit against them.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from models.errors import MixbenchError


class Kind(str, Enum):
    """What a method's draws are: a Markov chain, independent draws of an approximation, one
    point, or the particle populations of sequential Monte Carlo (each chain one independent
    run's population: its draws are exchangeable, not a sequence)."""

    MCMC = "mcmc"
    APPROXIMATION = "approximation"
    POINT = "point"
    PARTICLES = "particles"


# An approximation's per-draw arrays (``Fit.log_p``, ``log_q``, ``log_jacobian``), stored by
# ``backends.canonical.store_vi_arrays`` in group sample_stats.
APPROXIMATION_FIELDS: tuple[str, ...] = ("log_p", "log_q", "log_jacobian")
# The importance-resampling pool (backends.importance.GROUP and PROPOSAL_GROUP).
IMPORTANCE_GROUPS: tuple[str, ...] = ("importance_sampling", "importance_proposal")
# Sequential Monte Carlo's record per run (backends.smc.smc_group): stages, log evidence.
SMC_GROUP = "smc"


class Method(str):
    """One inference method: its name (the string itself) and its traits.

    Attributes
    ----------
    kind : Kind
        MCMC (``chains`` x ``draws`` draws), PARTICLES (``chains`` independent runs of ``draws``
        particles, with group ``SMC_GROUP``), APPROXIMATION (``vi_draws`` draws of one chain, with
        log p, log q and log |Jacobian| per draw) or POINT (one chain of one draw).
    minibatch : bool
        Each optimisation step sees ``FitSettings.batch_size`` observations.
    multi_start : bool
        The fit is the best of ``FitSettings.map_starts`` optimisations; ``start_log_densities``
        holds every start's final log density and ``point`` the best start's optimum.
    importance_resampled : bool
        With ``FitSettings.pathfinder_resampling == "psis"`` the draws are resampled from a pool
        by PSIS weights, and the pool is kept in groups ``IMPORTANCE_GROUPS``.
    approximation_parameters : frozenset of str
        Variables of group ``approximation`` (``backends.canonical.approximation_group``) for a
        backend that stores it; empty for a method with no parametric approximation.
    """

    kind: Kind
    minibatch: bool
    multi_start: bool
    importance_resampled: bool
    approximation_parameters: frozenset[str]

    def __new__(cls, name: str, kind: Kind, *, minibatch: bool = False, multi_start: bool = False,
                importance_resampled: bool = False, approximation_parameters: tuple[str, ...] = ()):
        self = super().__new__(cls, name)
        self.kind = kind
        self.minibatch = minibatch
        self.multi_start = multi_start
        self.importance_resampled = importance_resampled
        self.approximation_parameters = frozenset(approximation_parameters)
        return self

    @property
    def name(self) -> str:
        """The method's name as a plain ``str`` (what rows and files hold)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Method({self.name!r}, {self.kind.name})"

    def __reduce__(self):
        # Unpickled (in a worker process) as the registered method of that name.
        return method, (self.name,)

    @property
    def fields(self) -> tuple[str, ...]:
        """The ``Fit`` fields an ok fit of this method sets (not None)."""
        out: list[str] = []
        if self.kind is Kind.APPROXIMATION:
            out += APPROXIMATION_FIELDS
        if self.kind is Kind.POINT or self.multi_start:
            out += ["point", "point_log_density"]
        if self.multi_start:
            out.append("start_log_densities")
        return tuple(out)

    def groups(self, settings: Any, stores_approximation: bool = True) -> tuple[str, ...]:
        """The DataTree groups an ok fit of this method has in ``Fit.draws``.

        Parameters
        ----------
        settings : backends.fit.FitSettings
            The fit's settings (``pathfinder_resampling`` and ``pathfinder_paths`` decide the
            importance groups).
        stores_approximation : bool
            The backend's ``Backend.stores_approximation``.

        Returns
        -------
        tuple of str
            ``posterior`` always; ``sample_stats`` for MCMC (the sampler's statistics) and for
            approximations (their per-draw arrays); ``SMC_GROUP`` for particles; ``approximation`` and the importance groups
            where the traits and settings call for them.
        """
        out = ["posterior"]
        if self.kind is Kind.PARTICLES:
            out.append(SMC_GROUP)
        elif self.kind is not Kind.POINT:
            out.append("sample_stats")
        if self.approximation_parameters and stores_approximation:
            out.append("approximation")
        # One path has nothing to resample between: Stan returns its draws as they are (and the
        # other backends may), so only a multi-path fit must carry the importance groups.
        if self.importance_resampled and settings.pathfinder_resampling == "psis" and settings.pathfinder_paths > 1:
            out += IMPORTANCE_GROUPS
        return tuple(out)

    def draw_shape(self, settings: Any) -> tuple[int, int | None]:
        """The (chain, draw) sizes of an ok fit's posterior group.

        Parameters
        ----------
        settings : backends.fit.FitSettings

        Returns
        -------
        tuple of int (the draws None where they are not fixed)
            MCMC and PARTICLES: (``chains``, ``draws``); APPROXIMATION: (1, ``vi_draws``), but (1, None) for an
            importance-resampled method with resampling off (a backend may keep every path's
            draws); POINT: (1, 1).
        """
        if self.kind in (Kind.MCMC, Kind.PARTICLES):
            return settings.chains, settings.draws
        if self.kind is Kind.APPROXIMATION:
            resampled = not self.importance_resampled or settings.pathfinder_resampling == "psis"
            return 1, settings.vi_draws if resampled else None
        return 1, 1


METHODS: tuple[Method, ...] = (
    Method("nuts", Kind.MCMC),
    Method("advi-meanfield", Kind.APPROXIMATION, approximation_parameters=("mean", "std")),
    Method("advi-fullrank", Kind.APPROXIMATION, approximation_parameters=("mean", "std", "cov")),
    Method("advi-minibatch-meanfield", Kind.APPROXIMATION, minibatch=True,
           approximation_parameters=("mean", "std")),
    Method("advi-minibatch-fullrank", Kind.APPROXIMATION, minibatch=True,
           approximation_parameters=("mean", "std", "cov")),
    Method("pathfinder", Kind.APPROXIMATION, importance_resampled=True),
    Method("map", Kind.POINT, multi_start=True),
    # Laplace: a Gaussian around the mode that a multi-start search found.
    Method("laplace", Kind.APPROXIMATION, multi_start=True, approximation_parameters=("mean", "cov")),
    # Adaptive tempered SMC (Del Moral, Doucet & Jasra 2006): ``chains`` runs of ``draws`` particles.
    Method("smc", Kind.PARTICLES),
)
_BY_NAME: dict[str, Method] = {m.name: m for m in METHODS}


def method(name: str) -> Method:
    """The method called ``name``.

    Parameters
    ----------
    name : str
        A method name (a ``Method`` is returned as it is).

    Returns
    -------
    Method

    Raises
    ------
    MixbenchError
        ``name`` is not one of ``METHODS``.
    """
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    if found is None:
        raise MixbenchError(f"method: unknown {name!r}; known: {', '.join(METHODS)}")
    return found


def kind_of(name: Any) -> Kind | None:
    """The kind of the method called ``name``, for rows and tables that hold names.

    Parameters
    ----------
    name : object
        A method name, or anything a table column holds (NaN, None).

    Returns
    -------
    Kind or None
        None for a name outside ``METHODS`` (a row of an older run, a missing value).
    """
    found = _BY_NAME.get(name) if isinstance(name, str) else None
    return found.kind if found is not None else None
