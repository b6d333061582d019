"""Per-draw relabelling of mixture draws against a reference point.

A mixture's likelihood is invariant under permutations of its components, so the labels a sampler
or an approximation attaches to components mean nothing on their own. Every draw is relabelled by
the permutation of its components that best matches a reference point (the truth when known,
otherwise a pivot: the MAP draw or a chain's mean), found as an assignment problem.

Cost of giving the draw's component ``j`` the reference's label ``k``::

    cost[k, j] = sum_f ((theta[j, f] - ref[k, f]) / s[k, f]) ** 2

where ``f`` runs over every component-indexed scalar (each slope, the intercept, the sigma when it
is per component, the weight). Standardising puts slopes, sigmas and weights on one footing, so no
family dominates because of its units. The scales are found in two stages:

1. Start: ``s[k, f] = s_f``, the sd of scalar ``f`` pooled over all chains, draws *and
   components*. Pooling over components makes it label-invariant: no labelling has to be chosen
   before relabelling.
2. Refine, in the spirit of the iterative relabelling of Celeux (1998) and Stephens (2000) but
   with the reference held fixed: ``s[k, f]`` = the root mean squared deviation of the relabelled
   draws' component ``k`` from ``ref[k, f]``; relabel again; repeat until the permutations stop
   changing (at most ``max_iter`` refinements). The pooled scale of a slope that
   separates components includes the gap between them, which understates that slope's evidence;
   within-component scales let a well-separated slope outvote the noise of a weight pinned near
   1/K, which otherwise flips a share of the draws when the reference's weights are off 1/K by a
   posterior sd (a MAP pivot). The cost is then a Gaussian negative log likelihood whose
   log-determinant, summed over ``k``, is the same for every permutation and is left out.

Scales are floored (``scale_floor``) so that constant draws (a point, a pinned weight) cannot divide
by zero or blow rounding noise up into a deciding cost. Each draw's minimising permutation is found
with ``scipy.optimize.linear_sum_assignment``.

Convention: ``permutations[c, d, k]`` is the fit's component that plays the reference's component
``k`` in draw ``d`` of chain ``c``; the relabelled draw is ``theta[..., permutations[c, d, :]]``.
A draw with a non-finite component parameter cannot be compared and keeps the identity.

Softmax weights (models/spec.py): gamma's rows permute with the components, but its last row is
the reference, fixed at 0, so a permutation that moves another component last changes gamma
(gamma'_k = gamma_p(k) - gamma_p(K), the same softmax). The cost therefore compares the centred
rows gamma_k - mean_j gamma_j, which a softmax determines and which permute exactly with the
labels; a relabelled draw's gamma is re-referenced, its new last row subtracted from every row.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.optimize import linear_sum_assignment

# Order in which component-indexed parameters enter the cost (and feature names are reported).
COMPONENT_PARAMS = ("w", "b", "sigma", "pi", "gamma")
# Component-indexed parameters defined up to a shift common to all components (a softmax's
# coefficients, the last row the reference): compared centred, re-referenced after a permutation.
REFERENCED_PARAMS = ("gamma",)
SAMPLE_DIMS = ("chain", "draw")

DEFAULT_SCALE_FLOOR = 1e-6
DEFAULT_MAX_ITER = 10


@dataclass(frozen=True)
class Relabelling:
    """Draws relabelled against ``reference``, with what was done to them."""

    draws: xr.DataTree
    # (chain, draw, component) ints; see the module docstring for the convention.
    permutations: np.ndarray
    reference: dict[str, np.ndarray]
    # Feature name ("w[0]", "b", "sigma", "pi") -> the final scale per reference component.
    scales: dict[str, np.ndarray]
    # Draws left unrelabelled because a component parameter was NaN or infinite.
    nonfinite_draws: int
    # Refinements run, and whether the permutations had stopped changing.
    iterations: int
    converged: bool


def posterior_dataset(draws: xr.DataTree) -> xr.Dataset:
    """The posterior group as a Dataset with (chain, draw) leading every variable."""
    if "posterior" not in draws.children:
        raise ValueError("draws: no posterior group")
    ds = draws["posterior"].to_dataset()
    return ds.transpose(*SAMPLE_DIMS, ...)


def component_params(ds: xr.Dataset) -> list[str]:
    """Names of the canonical parameters indexed by component, in cost order."""
    return [name for name in COMPONENT_PARAMS if name in ds.data_vars and "component" in ds[name].dims]


def n_components(ds: xr.Dataset) -> int:
    if "component" not in ds.sizes:
        raise ValueError("draws: no component dimension in the posterior")
    return int(ds.sizes["component"])


def _as_component_first(da: xr.DataArray) -> np.ndarray:
    """(chain, draw, component, rest...) as a float array."""
    other = [d for d in da.dims if d not in (*SAMPLE_DIMS, "component")]
    return np.asarray(da.transpose(*SAMPLE_DIMS, "component", *other).values, dtype=float)


def draw_features(ds: xr.Dataset) -> tuple[np.ndarray, list[str]]:
    """Every component-indexed scalar of every draw: shape (chain, draw, component, feature)."""
    blocks, names = [], []
    for name in component_params(ds):
        arr = _as_component_first(ds[name])
        if name in REFERENCED_PARAMS:
            arr = arr - arr.mean(axis=2, keepdims=True)
        arr = arr.reshape(arr.shape[:3] + (-1,))
        blocks.append(arr)
        names.extend([name] if ds[name].ndim == 3 else [f"{name}[{i}]" for i in range(arr.shape[3])])
    if not blocks:
        raise ValueError("draws: no component-indexed parameter to relabel on")
    return np.concatenate(blocks, axis=3), names


def conform_point(point: dict, ds: xr.Dataset) -> dict[str, np.ndarray]:
    """``point`` as float arrays, a scalar broadcast over components where the draws have them.

    A truth with one shared sigma is the same truth as K equal sigmas, so it serves a fit of a
    per-component-sigma spec unchanged.
    """
    out = {}
    for name, value in point.items():
        value = np.asarray(value, dtype=float)
        if value.ndim == 0 and name in ds.data_vars and ds[name].dims[2:] == ("component",):
            value = np.full(ds.sizes["component"], float(value))
        out[name] = value
    return out


def point_features(point: dict, ds: xr.Dataset) -> np.ndarray:
    """A reference point's component-indexed scalars, shape (component, feature), in draw order."""
    K = n_components(ds)
    blocks = []
    for name in component_params(ds):
        if name not in point:
            raise ValueError(f"reference point: missing {name!r}")
        value = np.asarray(point[name], dtype=float)
        expected = (K,) + tuple(ds.sizes[d] for d in ds[name].dims if d not in (*SAMPLE_DIMS, "component"))
        if value.shape != expected:
            raise ValueError(f"reference point: {name} has shape {value.shape}, the draws need {expected}")
        if name in REFERENCED_PARAMS:
            value = value - value.mean(axis=0, keepdims=True)
        blocks.append(value.reshape(K, -1))
    return np.concatenate(blocks, axis=1)


def feature_scales(feats: np.ndarray, floor: float = DEFAULT_SCALE_FLOOR) -> np.ndarray:
    """Label-invariant scale of each feature: its sd pooled over chains, draws and components."""
    flat = feats.reshape(-1, feats.shape[-1])
    finite = np.where(np.isfinite(flat), flat, np.nan)
    usable = ~np.isnan(finite).all(axis=0)
    sd = np.ones(flat.shape[1])
    # A feature with no finite value at all has no scale; any positive one leaves its (NaN)
    # costs equally unusable, so 1 is as good as another.
    sd[usable] = np.nanstd(finite[:, usable], axis=0)
    return np.maximum(sd, floor)


def within_scales(relabelled: np.ndarray, ref: np.ndarray, floor: float = DEFAULT_SCALE_FLOOR) -> np.ndarray:
    """(component, feature): RMS deviation of relabelled component k's draws from ref[k]."""
    dev = relabelled - ref[None, None]
    dev = np.where(np.isfinite(dev), dev, np.nan)
    usable = ~np.isnan(dev).all(axis=(0, 1))
    out = np.ones(ref.shape)
    out[usable] = np.sqrt(np.nanmean(dev[:, :, usable] ** 2, axis=(0, 1)))
    return np.maximum(out, floor)


def assignment_costs(feats: np.ndarray, ref: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """cost[c, d, k, j]: cost of the draw's component j playing the reference's component k.

    ``scales`` is (feature,) or (component k, feature).
    """
    scales = np.broadcast_to(scales, ref.shape)
    z = (feats[:, :, None, :, :] - ref[None, None, :, None, :]) / scales[None, None, :, None, :]
    return np.sum(z * z, axis=-1)


def best_permutations(costs: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-draw optimal assignment; returns (permutations, number of draws left at identity).

    For K <= ``ENUMERATE_MAX_K`` every permutation's total cost is summed at once and the least
    taken (the first in lexicographic order, identity first, on a tie): the same optimum
    ``scipy.optimize.linear_sum_assignment`` finds draw by draw, without a Python call per
    draw (K! <= 120 sums per draw). Larger K goes through ``linear_sum_assignment``.
    """
    C, D, K, _ = costs.shape
    perms = np.broadcast_to(np.arange(K), (C, D, K)).copy()
    flat_costs = costs.reshape(C * D, K, K)
    flat_perms = perms.reshape(C * D, K)
    finite = np.isfinite(flat_costs).all(axis=(1, 2))
    if K <= ENUMERATE_MAX_K:
        table = _permutation_table(K)  # (P, K): table[p, k] is the draw's component for label k
        rows = np.flatnonzero(finite)
        for start in range(0, rows.size, 4096):  # bounded memory: (chunk, P, K) at a time
            block = flat_costs[rows[start:start + 4096]]
            totals = block[:, np.arange(K), table].sum(axis=-1)  # (chunk, P)
            flat_perms[rows[start:start + 4096]] = table[np.argmin(totals, axis=1)]
        return flat_perms.reshape(C, D, K), int(np.count_nonzero(~finite))
    for i in np.flatnonzero(finite):
        rows, cols = linear_sum_assignment(flat_costs[i])
        flat_perms[i, rows] = cols
    return flat_perms.reshape(C, D, K), int(np.count_nonzero(~finite))


ENUMERATE_MAX_K = 5


@functools.cache
def _permutation_table(K: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(K))), dtype=int).reshape(-1, K)


def apply_permutations(draws: xr.DataTree, permutations: np.ndarray) -> xr.DataTree:
    """A copy of ``draws`` whose component-indexed posterior variables are permuted per draw.

    Other groups (sample_stats, ...) are kept as they are; shared parameters are untouched; a
    referenced parameter (gamma) is re-referenced to its new last row.
    """
    ds = posterior_dataset(draws)
    perms = np.asarray(permutations, dtype=int)
    C, D, K = ds.sizes["chain"], ds.sizes["draw"], n_components(ds)
    if perms.shape != (C, D, K):
        raise ValueError(f"permutations: shape {perms.shape}, expected {(C, D, K)}")
    new = {}
    for name in component_params(ds):
        da = ds[name]
        other = [d for d in da.dims if d not in (*SAMPLE_DIMS, "component")]
        arr = np.asarray(da.transpose(*SAMPLE_DIMS, "component", *other).values)
        index = perms.reshape(perms.shape + (1,) * len(other))
        moved = np.take_along_axis(arr, np.broadcast_to(index, arr.shape), axis=2)
        if name in REFERENCED_PARAMS:
            moved = moved - moved[:, :, -1:]
        new[name] = xr.DataArray(moved, dims=(*SAMPLE_DIMS, "component", *other),
                                 coords={d: da.coords[d] for d in da.dims if d in da.coords},
                                 attrs=da.attrs).transpose(*da.dims)
    out = draws.copy()
    out["posterior"] = xr.DataTree(ds.assign(new))
    return out


def _permute_features(feats: np.ndarray, perms: np.ndarray) -> np.ndarray:
    return np.take_along_axis(feats, perms[..., None], axis=2)


def permutations_for(feats: np.ndarray, ref: np.ndarray, scale_floor: float = DEFAULT_SCALE_FLOOR,
                     max_iter: int = DEFAULT_MAX_ITER) -> tuple[np.ndarray, np.ndarray, int, int, bool]:
    """The relabelling rule on bare arrays: feats (chain, draw, component, feature), ref
    (component, feature) -> (permutations, final scales (component, feature), draws left at
    identity, refinements run, whether they settled). See the module docstring."""
    scales = np.broadcast_to(feature_scales(feats, scale_floor), ref.shape)
    perms, nonfinite = best_permutations(assignment_costs(feats, ref, scales))
    iterations, converged = 0, False
    while iterations < max_iter:
        scales = within_scales(_permute_features(feats, perms), ref, scale_floor)
        new, _ = best_permutations(assignment_costs(feats, ref, scales))
        iterations += 1
        if np.array_equal(new, perms):
            converged = True
            break
        perms = new
    return perms, scales, nonfinite, iterations, converged


def relabel(
    draws: xr.DataTree,
    reference: dict,
    scale_floor: float = DEFAULT_SCALE_FLOOR,
    max_iter: int = DEFAULT_MAX_ITER,
) -> Relabelling:
    """Relabel every draw to best match ``reference`` (a point: canonical names, no chain/draw)."""
    ds = posterior_dataset(draws)
    reference = conform_point(reference, ds)
    feats, names = draw_features(ds)
    ref = point_features(reference, ds)
    perms, scales, nonfinite, iterations, converged = permutations_for(feats, ref, scale_floor, max_iter)
    return Relabelling(
        draws=apply_permutations(draws, perms),
        permutations=perms,
        reference=reference,
        scales={name: scales[:, i].copy() for i, name in enumerate(names)},
        nonfinite_draws=nonfinite,
        iterations=iterations,
        converged=converged,
    )


def perm_label(perm) -> str:
    """A permutation as a short string: [1, 0] -> "1,0"."""
    return ",".join(str(int(i)) for i in perm)


def perm_codes(permutations: np.ndarray) -> np.ndarray:
    """One integer per draw identifying its permutation, shape (chain, draw).

    Base-K digits, first entry most significant, so codes sort as the permutations do
    lexicographically and the identity has the smallest code.
    """
    perms = np.asarray(permutations, dtype=np.int64)
    K = perms.shape[-1]
    return perms @ (K ** np.arange(K - 1, -1, -1, dtype=np.int64))


def decode_perm(code: int, K: int) -> np.ndarray:
    return np.array([(int(code) // K ** (K - 1 - k)) % K for k in range(K)], dtype=int)


def point_at(draws: xr.DataTree, chain: int, draw: int) -> dict[str, np.ndarray]:
    """The posterior variables of one draw as a point (canonical names, no chain/draw)."""
    ds = posterior_dataset(draws)
    return {name: np.asarray(ds[name].isel(chain=chain, draw=draw).values, dtype=float)
            for name in ds.data_vars}


def chain_mean_pivot(draws: xr.DataTree, chain: int = 0) -> dict[str, np.ndarray]:
    """One chain's posterior mean: a pivot, sound as long as that chain does not switch labels."""
    ds = posterior_dataset(draws)
    return {name: np.asarray(ds[name].isel(chain=chain).mean("draw").values, dtype=float)
            for name in ds.data_vars}


def map_pivot(draws: xr.DataTree) -> dict[str, np.ndarray] | None:
    """The draw with the highest ``sample_stats.lp``: a single point, so it never mixes labellings.

    None when the draws carry no finite lp.
    """
    if "sample_stats" not in draws.children or "lp" not in draws["sample_stats"].data_vars:
        return None
    lp = np.asarray(draws["sample_stats"]["lp"].transpose(*SAMPLE_DIMS).values, dtype=float)
    if not np.isfinite(lp).any():
        return None
    chain, draw = np.unravel_index(np.nanargmax(np.where(np.isfinite(lp), lp, -np.inf)), lp.shape)
    return point_at(draws, int(chain), int(draw))
