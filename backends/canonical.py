"""The canonical DataTree every backend converts its engine's output to (docs/architecture.md,
"Conventions"): the posterior of the spec's parameters, an approximation's per-draw log densities
and loss, and the approximation's fitted parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from arviz_base import from_dict

from backends.fit import Fit
from models.errors import MixbenchError
from models.spec import MixtureSpec


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


def unconstrained_groups(draws: xr.DataTree, z: np.ndarray, labels: list[str], approximation: dict | None = None) -> None:
    """Add an approximation's unconstrained draws, and its parameters when given, to ``draws``.

    Parameters
    ----------
    draws : xarray.DataTree
        The draws' canonical tree (one chain), updated in place.
    z : ndarray, shape (draw, d)
        The draws on the engine's unconstrained space, one row each.
    labels : list of str, length d
        The unconstrained coordinates' names (``approximation_group``).
    approximation : dict, optional
        ``approximation_group``'s keyword arguments (mean, std, cov).

    Notes
    -----
    Group ``unconstrained_posterior`` holds ``z`` over (chain, draw, unconstrained); group
    ``approximation`` the fitted parameters (``approximation_group``).
    """
    z = np.asarray(z, dtype=float)
    draws["unconstrained_posterior"] = xr.DataTree(xr.Dataset(
        {"z": (("chain", "draw", "unconstrained"), z[None])},
        coords={"chain": [0], "draw": np.arange(z.shape[0]), "unconstrained": list(labels)}))
    if approximation:
        draws["approximation"] = approximation_group(labels, **approximation)
