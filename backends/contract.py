"""What a Fit of each method kind must carry (``backends.methods.Method``), checked by
``Backend.fit`` on every ok fit, and the input rule every backend shares (a minibatch no larger
than the data)."""

from __future__ import annotations

from backends.fit import Fit, FitSettings
from backends.methods import Method
from backends.methods import method as method_named
from models.errors import MixbenchError

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

def check_batch_size(method: str, settings: FitSettings, N: int) -> None:
    """MixbenchError when a minibatch method's ``settings.batch_size`` exceeds the N observations.

    Raises
    ------
    MixbenchError
        ``method`` is unknown, or a minibatch method's batch is larger than the data.
    """
    if method_named(method).minibatch and settings.batch_size > N:
        raise MixbenchError(f"settings.batch_size: {settings.batch_size} is larger than the data (N = {N})")
