"""Multi-start optimisation, written once for every backend: the seeds of the starts, the choice
of the best start (backends.degenerate's rule), and the bounds of the prior's support a point
found sits on."""

from __future__ import annotations

import math

import numpy as np

from backends.degenerate import best_start
from backends.fit import Fit
from models.data import Dataset
from models.spec import MixtureSpec

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


def best_of_starts(spec: MixtureSpec, dataset: Dataset, starts: list[Fit], seeds: list[int]) -> Fit:
    """One Fit from the single-start MAP Fits of one multi-start fit (``Backend._multi_start_map``).

    The highest log density wins among the starts without a degenerate component
    (backends.degenerate; all starts when every one has one). Every start's final log density
    (oracle convention) is kept in ``start_log_densities``. Timings: compile as the first start
    paid it (later starts reuse the compiled program), the other phases summed over starts;
    iterations and gradient evaluations summed too, so cost stays what the whole fit paid. A
    failed start counts as -inf.

    Parameters
    ----------
    spec, dataset
        The model and data the starts fitted.
    starts : list of Fit
        One per start, in start order.
    seeds : list of int
        The starts' seeds (``start_seeds``), recorded in the draws' attributes.

    Returns
    -------
    Fit
        The best start's Fit, updated in place; the first start's Fit when every start failed.
    """
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
                                 "map_start_seeds": list(seeds)})
    return best
