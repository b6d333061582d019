"""A reference posterior made of modes, each sampled on its own and weighted by its mass.

Steps (bench.reference.posterior calls ``make_modes_reference`` for ``ReferenceSettings(method="modes")``):

1. Explore: ``explore_chains`` short NumPyro NUTS chains, each started from a draw of the prior
   (dispersed starts), run vectorised; and as many short NUTS chains again started at the optima
   of ``explore_map_starts`` single-start MAP fits and at ``explore_pathfinder_starts``
   single-path Pathfinder fits (their draws' mean), from their own random starts
   (``optimiser_starts``): optimisers stop at local optima that chains may pass by.
2. Cluster: each chain's draws are relabelled against its own highest draw and its components
   sorted canonically (bench.reference.posterior.canonical_relabel), so label copies are one mode; chains
   join a mode when their relabelled means lie within ``merge_distance_sd`` within-chain sds (the
   smaller of the two chains') of the mode's first chain for every scalar (components matched by the assignment that
   minimises the scaled distance) and their mean log densities within max(5 nats, 3 sds).
   Modes are visited from the highest mean log density down.
3. Sample each mode: ``chains`` NumPyro NUTS chains of ``warmup`` + ``draws``, started at the
   mode's highest draw (jittered). Each chain's consecutive segments are placed among the
   candidates by the clustering's rule (``chain_visits``). Candidates that chains cross between
   (a chain started in one has a segment in another) are one region (``joined_regions``): their
   chains, started in each, are pooled and checked as one sample; each draw is given its nearest
   candidate as its lobe (``draw_lobes``); the region's mass is split into its lobes by their shares
   of the draws (``lobe_shares``), and every lobe is listed as a weighted mode, named as joined.
   When the pooled chains do not agree on the lobes' shares (R-hat of a lobe indicator over
   ``MIX_RHAT_MAX``: they cross too rarely) the candidates are sampled apart, as below, each by
   the chains, started in any of them, whose segments all lay in it (chains that crossed are left
   out), with that reason noted.
   Apart, a chain whose relabelled mean lands over ``merge_distance_sd`` sds from where it started
   has left its mode and is dropped (listed); a mode left by too many chains is ``unstable``; two
   modes whose samples coincide are merged.
4. A mode whose median point has a degenerate component (backends.degenerate: sigma collapsed on
   tied points) is listed as ``degenerate``: the posterior is improper there, it gets no mass.
5. Mass of every other mode or region by bridge sampling and by importance sampling (bench.reference.mode_mass), in
   the unconstrained space of NumPyro's transforms, with the oracle's log density
   (models/oracle.py) plus the transforms' log Jacobian. Modes are named A, B, ... by mass.
6. The reference draws are the modes' draws mixed by their bridge masses: chain c holds, from
   chain c of every weighted mode or region, a share of its draws (evenly thinned) equal to its mass;
   ``draw_modes`` names each draw's mode (a region's draws by their lobes).

Checks: within every weighted mode R-hat, bulk / tail ESS and divergences as a one-mode reference
(bench.reference.posterior._checks), plus the masses' precision: the standard error of every mass, from
either estimator, at most ``mass_se_max``, and the two estimators within 3 combined standard
errors of each other (their disagreement is named).
"""

from __future__ import annotations

import math
import string
import time
import warnings
from functools import partial
from typing import Any, Callable

import arviz_stats as azs
import numpy as np
import xarray as xr

from backends.base import canonical_datatree
from backends.degenerate import degenerate_components
from bench.reference.advice import diagnose
from bench.reference.mode_mass import KHAT_MAX, masses, mode_log_z
from bench.reference.posterior import Reference, _base_info, _checks, _with_lp, canonical_relabel, diagnostics
from bench.score.modes import scaled_distance
from bench.score.problem import Problem, allocate, batch_log_density
from bench.score.relabel import (assignment_costs, best_permutations, draw_features, feature_scales, point_features,
                                 posterior_dataset)
from models.spec import MixtureSpec

LP_MERGE_NATS = 5.0
LP_MERGE_SD = 3.0
JITTER = 0.05
LEFT_MAX_FRAC = 0.5  # a mode whose sampling chains left it in more than this share is unstable
VISIT_SEGMENTS = 10  # a sampling chain is placed in this many consecutive segments to see where it went
MIX_RHAT_MAX = 1.1
"""Candidates joined by crossing chains are one region only when every lobe indicator's R-hat over
the chains sampled together is at most this: the chains agree on how their draws share the lobes
(1.1: Gelman et al. 2013, Bayesian Data Analysis, 3rd ed., 11.4). The region's own checks
(R-hat of every scalar at most ReferenceSettings.rhat_max, ESS) apply on top, as for any mode."""


# ---------------------------------------------------------------------------------------------
# The unconstrained space


class Unconstrained:
    """NumPyro's transforms of the model's sites: canonical points <-> flat unconstrained vectors."""

    def __init__(self, spec: MixtureSpec):
        from models.numpyro_model import latent_sites

        self.spec, self.layout = spec, latent_sites(spec)
        self.dim = sum(math.prod(s.shape) for s in self.layout)

    def to_z(self, params: dict[str, np.ndarray]) -> np.ndarray:
        """Canonical arrays with one leading axis of S points (fitted scale) -> (S, dim).

        With an ordering constraint each point's components are first sorted by the ordered
        quantity: a per-draw relabelling may have left a draw outside the ordered region, which
        the model labels by sorting.
        """
        import jax.numpy as jnp

        from models.numpyro_model import site_values

        if self.spec.ordering != "none":
            key = params["b"] if self.spec.ordering == "intercept" else params["w"][:, :, 0]
            order = np.argsort(key, axis=1)
            params = {n: (np.take_along_axis(v, order.reshape(order.shape + (1,) * (v.ndim - 2)), axis=1)
                          if v.ndim >= 2 and v.shape[1] == self.spec.K else v) for n, v in params.items()}
            if "gamma" in params:  # the reference row (models/spec.py) moved: re-reference to the last
                params["gamma"] = params["gamma"] - params["gamma"][:, -1:]
        sites = site_values(self.spec, params)
        S = np.asarray(params["sigma"]).shape[0]
        return np.concatenate([np.asarray(s.transform.inv(jnp.asarray(sites[s.name])), dtype=float).reshape(S, -1)
                               for s in self.layout], axis=1)

    def from_z(self, z: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(S, dim) -> (canonical arrays with leading S, log |det Jacobian| (S,))."""
        import jax.numpy as jnp

        from models.numpyro_model import canonical_values

        S, start, sites, log_jac = z.shape[0], 0, {}, np.zeros(z.shape[0])
        for s in self.layout:
            size = math.prod(s.shape)
            zs = jnp.asarray(z[:, start:start + size].reshape(S, *s.shape))
            value = s.transform(zs)
            sites[s.name] = np.asarray(value, dtype=float)
            log_jac += np.asarray(s.transform.log_abs_det_jacobian(zs, value), dtype=float).reshape(S, -1).sum(axis=1)
            start += size
        return canonical_values(self.spec, sites, (S,)), log_jac

    def log_density(self, problem: Problem, z: np.ndarray) -> np.ndarray:
        """The oracle's log density of the fitted model plus the log Jacobian, (S, dim) -> (S,)."""
        import jax

        with jax.enable_x64(True):
            params, log_jac = self.from_z(np.asarray(z, dtype=float))
        fit = problem.fit_dataset
        lp = batch_log_density(self.spec, fit.x, fit.y, params) + log_jac
        return np.where(np.isfinite(lp), lp, -np.inf)


def _nuts(problem: Problem, chains: int, warmup: int, draws: int, target_accept: float, seed: int,
          init_z: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """NumPyro NUTS, chains vectorised: (canonical draws (chain, draw, ...) on the fitted scale,
    diverging (chain, draw)). Started from prior draws, or from ``init_z`` (chains, dim)."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS, init_to_sample

    from models.numpyro_model import canonical_values, latent_sites, mixture_model

    spec = problem.spec
    with jax.enable_x64(True):
        data = problem.fit_dataset
        x, y = jnp.asarray(data.x, dtype=jnp.float64), jnp.asarray(data.y, dtype=jnp.float64)
        kernel = NUTS(partial(mixture_model, spec), target_accept_prob=target_accept, init_strategy=init_to_sample)
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method="vectorized",
                    progress_bar=False)
        init = None
        if init_z is not None:
            init, start = {}, 0
            for s in latent_sites(spec):
                size = math.prod(s.shape)
                init[s.name] = jnp.asarray(init_z[:, start:start + size].reshape(chains, *s.shape))
                start += size
        mcmc.run(jax.random.PRNGKey(seed), x, y, init_params=init, extra_fields=("diverging",))
        samples = jax.device_get(mcmc.get_samples(group_by_chain=True))
        diverging = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"], dtype=bool)
    return canonical_values(spec, samples, (chains, draws)), diverging


# ---------------------------------------------------------------------------------------------
# Locating chains


def _data_tree(problem: Problem, arrays: dict[str, np.ndarray]) -> xr.DataTree:
    return problem.to_data_scale_draws(canonical_datatree(problem.spec, arrays))


def _relabelled(problem: Problem, draws: xr.DataTree) -> tuple[xr.DataTree, np.ndarray]:
    lp, _ = problem.draw_log_densities(draws, per_chain=posterior_dataset(draws).sizes["draw"])
    return canonical_relabel(draws, lp, problem.spec)[0], lp


def _moments(draws: xr.DataTree) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    ds = posterior_dataset(draws)
    return ({n: np.asarray(ds[n].mean(("chain", "draw")).values, dtype=float) for n in ds.data_vars},
            {n: np.asarray(ds[n].std(("chain", "draw")).values, dtype=float) for n in ds.data_vars})


def _pooled_sd(a: dict, b: dict) -> dict:
    return {n: np.sqrt((np.asarray(a[n]) ** 2 + np.asarray(b[n]) ** 2) / 2) for n in a}


class _ChainPlace:
    """One chain's relabelled moments, mean log density and its highest draw."""

    def __init__(self, problem: Problem, arrays: dict[str, np.ndarray], c: int):
        one = {n: v[c:c + 1] for n, v in arrays.items()}
        rel, lp = _relabelled(problem, _data_tree(problem, one))
        self.mean, self.sd = _moments(rel)
        finite = lp[np.isfinite(lp)]
        self.lp_mean = float(finite.mean()) if finite.size else -math.inf
        self.lp_sd = float(finite.std()) if finite.size > 1 else 0.0
        best = int(np.argmax(np.where(np.isfinite(lp[0]), lp[0], -np.inf)))
        self.best = {n: v[c, best] for n, v in arrays.items()}  # fitted scale, as sampled
        self.best_lp = float(lp[0, best])

    def same_mode(self, other: "_ChainPlace", K: int, distance_sd: float) -> bool:
        """Close in mean log density and, in the smaller of the two chains' sds, in every scalar:
        a chain that wanders between two modes has a wide sd, which must not make it near both."""
        tol = max(LP_MERGE_NATS, LP_MERGE_SD * max(self.lp_sd, other.lp_sd))
        sd = {n: np.minimum(self.sd[n], other.sd[n]) for n in self.sd}
        return abs(self.lp_mean - other.lp_mean) <= tol and scaled_distance(self.mean, other.mean, sd, K) <= distance_sd


def cluster_chains(places: list[_ChainPlace], K: int, distance_sd: float) -> list[list[int]]:
    """Chains grouped into modes, modes ordered by their first chain's mean log density (highest first)."""
    groups: list[list[int]] = []
    for c in sorted(range(len(places)), key=lambda i: -places[i].lp_mean):
        if not math.isfinite(places[c].lp_mean):
            continue
        for group in groups:
            if places[group[0]].same_mode(places[c], K, distance_sd):
                group.append(c)
                break
        else:
            groups.append([c])
    return groups


# ---------------------------------------------------------------------------------------------
# Making


def make_modes_reference(problem: Problem, settings, name: str | None = None,
                         progress: Callable[[str], None] | None = None):
    """The reference of the module docstring, a bench.reference.posterior.Reference (accepted or provisional)."""
    import jax

    spec, data = problem.spec, problem.dataset
    say = progress or (lambda text: None)
    start = time.perf_counter()
    say(f"reference posterior (modes): {settings.explore_chains} NumPyro NUTS chains from prior draws, "
        f"{settings.explore_warmup} + {settings.explore_draws} each, on {data.name} (N = {data.N}) ...")
    explore, _ = _nuts(problem, settings.explore_chains, settings.explore_warmup, settings.explore_draws,
                       settings.target_accept, settings.seed, None)
    places = [_ChainPlace(problem, explore, c) for c in range(settings.explore_chains)]
    sources = ["NUTS chains from prior draws"] * settings.explore_chains
    space = Unconstrained(spec)
    starts, start_sources = optimiser_starts(problem, settings, space, say)
    if len(starts):
        from_starts, _ = _nuts(problem, len(starts), settings.explore_warmup, settings.explore_draws,
                               settings.target_accept, settings.seed + 50, starts)
        places += [_ChainPlace(problem, from_starts, c) for c in range(len(starts))]
        sources += start_sources
    totals = {source: sources.count(source) for source in sources}
    groups = cluster_chains(places, spec.K, settings.merge_distance_sd)
    say(f"  {len(groups)} candidate mode(s); sampling each with {settings.chains} chains x "
        f"({settings.warmup} + {settings.draws}) ...")
    leads = [places[group[0]] for group in groups]
    runs = []
    for i, group in enumerate(groups):
        best = max(group, key=lambda c: places[c].best_lp)
        with_point = {n: np.asarray(v)[None] for n, v in places[best].best.items()}
        rng = np.random.default_rng(settings.seed + 1 + i)
        with jax.enable_x64(True):
            z0 = space.to_z(with_point)
        init = z0 + JITTER * rng.standard_normal((settings.chains, space.dim))
        arrays, diverging = _nuts(problem, settings.chains, settings.warmup, settings.draws, settings.target_accept,
                                  settings.seed + 1 + i, init)
        visits = [chain_visits(_segments(problem, arrays, c), leads, spec.K, settings.merge_distance_sd)
                  for c in range(settings.chains)]
        runs.append((arrays, diverging, visits))
    modes: list[dict[str, Any]] = []
    for region in joined_regions([run[2] for run in runs]):
        how = {i: found_by([sources[c] for c in groups[i]], totals) for i in region}
        lobes = _absorb(region, runs, how)
        # Sampled apart, each lobe needs chains that stayed in it alone.
        apart = all(sum(seen == [i] for j in region for seen in runs[j][2]) >= settings.min_chains for i in lobes)
        joint = (_sample_region(problem, settings, space, [runs[i] for i in region], [leads[i] for i in lobes],
                                [how[i] for i in lobes], apart) if len(lobes) > 1 else None)
        if len(lobes) > 1:
            say(f"  candidates {', '.join(str(i + 1) for i in lobes)} of {len(groups)}: " + (
                "chains cross between them: sampled as one region" if isinstance(joint, dict)
                else f"chains cross between them, {joint}: sampled apart"))
        if isinstance(joint, dict):
            modes.append(joint)
            continue
        for i in lobes:
            arrays, diverging, started = runs[i][0], runs[i][1], "started in it"
            if len(region) > 1:  # chains crossed: each candidate gets the chains that sat in it, wherever started
                sat = [(run, c) for run in (runs[j] for j in region) for c, seen in enumerate(run[2]) if seen == [i]]
                arrays = {n: np.stack([run[0][n][c] for run, c in sat]) if sat else v[:0] for n, v in arrays.items()}
                diverging = np.stack([run[1][c] for run, c in sat]) if sat else diverging[:0]
                started = "that stayed in it alone (started in it or in a candidate joined to it)"
            _sample_mode(problem, settings, space, i, leads[i], how[i], arrays, diverging, modes,
                         (region[0], joint) if joint else None, started)
    return _assemble(problem, settings, modes, name, time.perf_counter() - start, places)


def _sample_mode(problem: Problem, settings, space: Unconstrained, i: int, lead: _ChainPlace, how: str,
                 arrays: dict[str, np.ndarray], diverging: np.ndarray, modes: list[dict],
                 why_apart: tuple[int, str] | None,
                 chains: str = "started in it"):
    """Candidate mode ``i`` from its own sampling chains (``arrays``, ``diverging``): appended to
    ``modes`` as unstable, degenerate or weighted with its log Z, or merged into an earlier
    weighted mode whose samples it coincides with. ``why_apart``: (its region, why), when chains
    crossed between it and other candidates of its region but they were not sampled as one region
    (kept under ``_apart``: the note naming the modes is written once they are named), else None;
    ``chains``: which chains ``arrays`` holds, in words."""
    import jax

    spec, data = problem.spec, problem.dataset
    n_chains = len(diverging)
    chain_places = [_ChainPlace(problem, arrays, c) for c in range(n_chains)]
    stayed = [c for c, p in enumerate(chain_places) if p.same_mode(lead, spec.K, settings.merge_distance_sd)]
    mode = {"found_by": how, "explore_lp_mean": lead.lp_mean, "chains_left": [c for c in range(n_chains) if c not in stayed]}
    if why_apart:
        mode["_apart"] = (why_apart[0], f"{why_apart[1]}: sampled apart, by the {n_chains} chain(s) {chains}")
    notes: list[str] = []
    modes.append(mode)
    if len(stayed) < max(settings.min_chains, math.ceil((1 - LEFT_MAX_FRAC) * n_chains)):
        mode.update(status="unstable", lp_mean=lead.lp_mean, note="; ".join(
            notes + ([f"{len(mode['chains_left'])} of {n_chains} chains {chains} left it"] if n_chains else [])),
            **_location(lead.mean, lead.sd))
        return
    kept = {n: v[stayed] for n, v in arrays.items()}
    rel, lp = _relabelled(problem, _data_tree(problem, kept))
    mean, sd = _moments(rel)
    duplicate = next((m for m in modes[:-1] if m.get("status") == "weighted" and "_lobes" not in m
                      and scaled_distance(m["_mean"], mean, _pooled_sd(m["_sd"], sd), spec.K)
                      <= settings.merge_distance_sd), None)
    if duplicate is not None:
        modes.pop()
        duplicate["found_by"] += f"; and {mode['found_by']}, whose samples joined it"
        return
    if notes:
        mode["note"] = "; ".join(notes)
    diag = diagnostics(rel)
    divergences = int(diverging[stayed].sum())
    checks, reasons = _checks(diag, divergences, len(stayed) * settings.draws, len(stayed), settings)
    median = {n: np.asarray(v.median(("chain", "draw")).values, dtype=float)
              for n, v in posterior_dataset(rel).data_vars.items()}
    degenerate = degenerate_components(data.x, data.y, median)
    finite = lp[np.isfinite(lp)]
    mode.update(_location(mean, sd), _mean=mean, _sd=sd, _rel=rel, _lp=lp, _diverging=diverging[stayed],
                lp_mean=float(finite.mean()), lp_max=float(finite.max()), chains_used=len(stayed),
                rhat_max=diag["rhat_max"], ess_bulk_min=diag["ess_bulk_min"], ess_tail_min=diag["ess_tail_min"],
                divergences=divergences, checks=checks, failed=reasons)
    if degenerate:
        mode.update(status="degenerate", note="; ".join(notes + [
            "the posterior is improper here (likelihood unbounded on tied points): " + "; ".join(
                f"sigma[{k}] = {s:.3g} on {n} points" for k, s, n in degenerate)]))
        return
    mode["status"] = "weighted"
    with jax.enable_x64(True):
        z = space.to_z(_fit_points(problem, rel)).reshape(len(stayed), settings.draws, space.dim)
    mode.update(mode_log_z(partial(space.log_density, problem), z, settings.proposal_draws, settings.seed + 100 + i))


def _fit_points(problem: Problem, rel: xr.DataTree) -> dict[str, np.ndarray]:
    """Every draw of ``rel`` (data scale, chain-major) as canonical arrays on the fitted scale."""
    ds = posterior_dataset(rel)
    n_points = ds.sizes["chain"] * ds.sizes["draw"]
    return problem.to_fit_scale({n: np.asarray(v.values, dtype=float).reshape(n_points, *v.shape[2:])
                                 for n, v in ds.data_vars.items()})


# ---------------------------------------------------------------------------------------------
# Candidates that chains cross between: one region


def _segments(problem: Problem, arrays: dict[str, np.ndarray], c: int) -> list[_ChainPlace]:
    """Chain ``c`` cut into VISIT_SEGMENTS consecutive segments, each placed."""
    n = next(iter(arrays.values())).shape[1]
    bounds = np.linspace(0, n, min(VISIT_SEGMENTS, n // 10 or 1) + 1).round().astype(int)
    return [_ChainPlace(problem, {k: v[:, lo:hi] for k, v in arrays.items()}, c) for lo, hi in zip(bounds, bounds[1:])]


def chain_visits(segments: list[_ChainPlace], leads: list[_ChainPlace], K: int, distance_sd: float) -> list[int]:
    """The candidate modes (indices into ``leads``, their first chains) that a chain's consecutive
    segments lie in, by the clustering's rule (``_ChainPlace.same_mode``), each once in order of first
    visit; a segment in none (the chain crossing, or somewhere no candidate is) names none."""
    found: list[int] = []
    for segment in segments:
        j = next((j for j, lead in enumerate(leads) if lead.same_mode(segment, K, distance_sd)), None)
        if j is not None and j not in found:
            found.append(j)
    return found


def _absorb(region: list[int], runs: list, how: dict[int, str]) -> list[int]:
    """The candidates of a region that some chain stayed in (its segments in that one alone;
    ``runs[i][2]``: the visits of candidate i's chains); one that none stayed in was a place an
    exploration chain passed through while crossing (its mean between lobes), no mode: its
    how-found text goes to the candidate its chains visited most (in ``how``). When no chain
    stayed anywhere, every candidate a segment lay in is kept."""
    visits = [j for i in region for chain in runs[i][2] for j in chain]
    stays = [chain[0] for i in region for chain in runs[i][2] if len(chain) == 1]
    lobes = [i for i in region if i in (stays or visits)]
    for i in region:
        if i not in lobes and lobes:
            went = [j for chain in runs[i][2] for j in chain] or lobes
            to = max(lobes, key=went.count)
            how[to] += f"; and {how[i]}, whose chains went to it"
    return lobes or region


def joined_regions(visits: list[list[list[int]]]) -> list[list[int]]:
    """Candidates joined by their sampling chains: ``visits[i][c]`` the candidates chain c, started
    in candidate i, visited (``chain_visits``). i and j are one region when a chain started in
    either visited the other, and joining is transitive (union-find). Regions listed by their first
    candidate, candidates in order."""
    parent = list(range(len(visits)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, chains in enumerate(visits):
        for j in {j for chain in chains for j in chain}:
            parent[root(j)] = root(i)
    regions: dict[int, list[int]] = {}
    for i in range(len(visits)):
        regions.setdefault(root(i), []).append(i)
    return sorted(regions.values(), key=min)


def draw_lobes(draws: xr.DataTree, lobes: list[dict[str, np.ndarray]]) -> np.ndarray:
    """(chain, draw) index of the lobe (a location: canonical names) nearest each draw: the least
    sum of squared differences over the component-indexed scalars, each scaled by its sd pooled
    over draws and components, with the components matched per draw by bench.score.relabel's
    assignment rule (so the draws' labelling does not matter)."""
    ds = posterior_dataset(draws)
    feats, _ = draw_features(ds)
    scale = feature_scales(feats)
    costs = []
    for location in lobes:
        cost = assignment_costs(feats, point_features(location, ds), scale)
        perms, _ = best_permutations(cost)
        costs.append(np.take_along_axis(cost, perms[..., None], axis=3)[..., 0].sum(axis=2))
    return np.argmin(np.stack(costs), axis=0)


def _merge_lobes(rel: xr.DataTree, lobe: np.ndarray, leads: list[_ChainPlace], how: list[str], K: int,
                 distance_sd: float) -> tuple[np.ndarray, list[_ChainPlace], list[str]]:
    """Lobes whose draws coincide (relabelled means within ``distance_sd`` pooled sds, the rule that
    merges modes sampled apart) made one: two candidates the short exploration chains told apart
    may be one mode. Returns the lobe index renumbered, the leads and how-found texts kept."""
    ds = posterior_dataset(rel)
    flat = {n: np.asarray(v.values, dtype=float).reshape(v.shape[0] * v.shape[1], *v.shape[2:]) for n, v in ds.data_vars.items()}
    index = lobe.ravel()
    moments = [({n: v[index == k].mean(axis=0) for n, v in flat.items()},
                {n: v[index == k].std(axis=0) for n, v in flat.items()}) if (index == k).any() else None
               for k in range(len(leads))]
    target = list(range(len(leads)))
    for k in range(len(leads)):
        for j in range(k):
            if target[j] == j and moments[j] and moments[k] and scaled_distance(
                    moments[j][0], moments[k][0], _pooled_sd(moments[j][1], moments[k][1]), K) <= distance_sd:
                target[k] = j
                how[j] += f"; and {how[k]}, whose samples joined it"
                break
    kept = sorted(set(target))
    renumber = np.array([kept.index(t) for t in target])
    return renumber[lobe], [leads[k] for k in kept], [how[k] for k in kept]


def lobe_shares(lobe: np.ndarray, n_lobes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(share of the draws in each lobe, its Monte Carlo standard error, the worst lobe indicator's
    R-hat) from ``lobe`` (chain, draw). The error is the indicator's sd over the square root of its
    effective sample size, and R-hat the rank-normalised split R-hat (Vehtari et al. 2021, both by
    arviz-stats); an indicator constant over every draw has error 0 and R-hat 1."""
    shares, errors, rhats = [], [], []
    for k in range(n_lobes):
        indicator = (lobe == k).astype(float)
        shares.append(indicator.mean())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            constant = indicator.min() == indicator.max()
            errors.append(0.0 if constant else float(azs.mcse(indicator, method="mean")))
            rhats.append(1.0 if constant else float(azs.rhat(indicator)))
    return np.array(shares), np.array(errors), float(np.nan_to_num(max(rhats), nan=np.inf))


def _sample_region(problem: Problem, settings, space: Unconstrained, runs: list, leads: list[_ChainPlace],
                   how: list[str], apart: bool) -> dict[str, Any] | str:
    """Candidates whose sampling chains cross between them, sampled as one region: every run's chains
    (``runs``: (arrays, diverging, visits) of each candidate, chains started in it) pooled and
    relabelled as one sample, checked as one mode (R-hat, ESS, divergences), each draw given the
    nearest candidate as its lobe (``draw_lobes``), log Z of the whole region (bench.reference.mode_mass
    with per-lobe proposals) and each lobe's share of the draws (``lobe_shares``). The region entry
    (status weighted, its lobes under ``_lobes``); or, when the chains do not mix between the lobes
    (a lobe indicator's R-hat over MIX_RHAT_MAX) and ``apart`` (each lobe has chains that stayed
    in it to be sampled by), or a lobe is degenerate, the reason as a string: the candidates are then
    sampled apart. Not mixing and not ``apart``, the region is kept with that R-hat as a failed check."""
    import jax

    data = problem.dataset
    arrays = {n: np.concatenate([run[0][n] for run in runs]) for n in runs[0][0]}
    diverging = np.concatenate([run[1] for run in runs])
    rel, lp = _relabelled(problem, _data_tree(problem, arrays))
    lobe = draw_lobes(rel, [lead.mean for lead in leads])
    lobe, leads, how = _merge_lobes(rel, lobe, leads, how, problem.spec.K, settings.merge_distance_sd)
    shares, share_se, lobe_rhat = lobe_shares(lobe, len(leads))
    if not lobe_rhat <= MIX_RHAT_MAX and apart:
        shown = f"{lobe_rhat:.3g}" if lobe_rhat < 1e3 else "over 1000"
        return (f"too rarely to sample them as one region (R-hat of the lobe indicator over their chains {shown} > "
                f"{MIX_RHAT_MAX})")
    ds = posterior_dataset(rel)
    flat = {n: np.asarray(v.values, dtype=float).reshape(v.shape[0] * v.shape[1], *v.shape[2:]) for n, v in ds.data_vars.items()}
    lobes = []
    for k, (lead, found) in enumerate(zip(leads, how)):
        mask = (lobe == k).ravel()
        part = {n: v[mask] for n, v in flat.items()}
        entry = {"found_by": found, "explore_lp_mean": lead.lp_mean, "chains_left": [], "status": "weighted",
                 "share": float(shares[k]), "share_se": float(share_se[k])}
        if mask.any():
            median = {n: np.median(v, axis=0) for n, v in part.items()}
            degenerate = degenerate_components(data.x, data.y, median)
            if degenerate:
                return f"but a lobe of theirs is degenerate (sigma[{degenerate[0][0]}] = {degenerate[0][1]:.3g})"
            lobe_lp = lp.ravel()[mask]
            entry.update(_location({n: v.mean(axis=0) for n, v in part.items()}, {n: v.std(axis=0) for n, v in part.items()}),
                         lp_mean=float(lobe_lp[np.isfinite(lobe_lp)].mean()), lp_max=float(np.nanmax(lobe_lp)))
        else:
            entry.update(_location(lead.mean, lead.sd), lp_mean=lead.lp_mean)
        lobes.append(entry)
    diag = diagnostics(rel)
    chains = len(diverging)
    divergences = int(diverging.sum())
    checks, reasons = _checks(diag, divergences, chains * settings.draws, chains, settings)
    checks["lobes_mix"] = bool(lobe_rhat <= MIX_RHAT_MAX)
    if not checks["lobes_mix"]:
        reasons.append(f"R-hat of the lobe indicator {lobe_rhat:.3g} > {MIX_RHAT_MAX}: the chains disagree on the "
                       "lobes' shares, and too few stayed in each lobe to sample them apart")
    for entry in lobes:
        entry.update(chains_used=chains, rhat_max=diag["rhat_max"], ess_bulk_min=diag["ess_bulk_min"],
                     ess_tail_min=diag["ess_tail_min"], divergences=divergences)
    finite = lp[np.isfinite(lp)]
    region = {"status": "weighted", "_lobes": lobes, "_lobe": lobe, "_rel": rel, "_lp": lp, "_diverging": diverging,
              "lp_mean": float(finite.mean()), "chains_used": chains, "lobe_rhat": lobe_rhat,
              "rhat_max": diag["rhat_max"], "ess_bulk_min": diag["ess_bulk_min"], "ess_tail_min": diag["ess_tail_min"],
              "divergences": divergences, "checks": checks, "failed": reasons}
    with jax.enable_x64(True):
        z = space.to_z(_fit_points(problem, rel)).reshape(chains, settings.draws, space.dim)
    region.update(mode_log_z(partial(space.log_density, problem), z, settings.proposal_draws, settings.seed + 100,
                             lobes=lobe))
    return region


def optimiser_starts(problem: Problem, settings, space: Unconstrained,
                     say: Callable[[str], None]) -> tuple[np.ndarray, list[str]]:
    """Unconstrained starts (n, dim) from single-start MAP optima (``explore_map_starts`` seeds)
    and single-path Pathfinder fits (``explore_pathfinder_starts`` seeds; their draws' mean) of
    the NumPyro backend, with what found each. An optimiser stops at local optima that chains
    from prior draws may all pass by; a short NUTS chain from each then places it like the others.
    A start whose fit failed or whose point is not finite is left out."""
    import jax

    from backends import get_backend
    from backends.base import FitSettings, start_seeds

    runs = [("map", "MAP starts", settings.explore_map_starts, FitSettings(map_starts=1)),
            ("pathfinder", "Pathfinder starts", settings.explore_pathfinder_starts,
             FitSettings(pathfinder_paths=1, pathfinder_resampling="none"))]
    if not any(count for _, _, count, _ in runs):
        return np.zeros((0, space.dim)), []
    say(f"  and {settings.explore_map_starts} MAP and {settings.explore_pathfinder_starts} Pathfinder starts "
        "(NumPyro), each followed by a short NUTS chain ...")
    backend = get_backend("numpyro")
    points, labels = [], []
    for method, label, count, fit_settings in runs:
        for seed in start_seeds(settings.seed + 7, count) if count else []:
            fit = backend.fit(problem.spec, problem.fit_dataset, method, fit_settings, seed=seed)
            if not fit.ok:
                continue
            if method == "map":
                point = fit.point
            else:
                ds = posterior_dataset(fit.draws)
                point = {n: np.asarray(ds[n].mean(("chain", "draw")).values, dtype=float) for n in ds.data_vars}
            with jax.enable_x64(True):
                z = space.to_z({n: np.asarray(v, dtype=float)[None] for n, v in point.items()})
            if np.isfinite(z).all():
                points.append(z[0])
                labels.append(label)
    return (np.stack(points) if points else np.zeros((0, space.dim))), labels


def found_by(sources: list[str], totals: dict[str, int]) -> str:
    """'3 of 12 NUTS chains from prior draws, 2 of 4 MAP starts': how a mode's chains were started."""
    return ", ".join(f"{sources.count(source)} of {total} {source}" for source, total in totals.items()
                     if source in sources)


def _location(mean: dict, sd: dict) -> dict[str, Any]:
    return {"location": {n: np.asarray(v).tolist() for n, v in mean.items()},
            "sd": {n: np.asarray(v).tolist() for n, v in sd.items()}}


def _assemble(problem: Problem, settings, modes: list[dict], name: str | None, seconds: float,
              places: list[_ChainPlace]):
    """Masses, names, checks and the mixture of the sampled modes: the Reference.

    The weighted entries of ``modes`` are modes and regions (``_sample_region``); a region's mass M
    (either estimator) is split into its lobes by their shares p of its draws: mass M p, standard
    error sqrt((p se(M))^2 + (M se(p))^2) by the delta method, the two errors taken as independent."""
    units = [m for m in modes if m.get("status") == "weighted"]
    reasons: list[str] = []
    causes: list[dict[str, str]] = []
    if units:
        for key in ("bridge", "is"):
            m, se = masses(np.array([u[f"log_z_{key}"] for u in units]), np.array([u[f"log_z_{key}_se"] for u in units]))
            for unit, value, error in zip(units, m, se):
                unit[f"mass_{key}"], unit[f"mass_{key}_se"] = float(value), float(error)
                for lobe in unit.get("_lobes", []):
                    lobe[f"mass_{key}"] = float(value * lobe["share"])
                    lobe[f"mass_{key}_se"] = float(math.hypot(lobe["share"] * error, value * lobe["share_se"]))
                    lobe["is_khat"] = unit["is_khat"]
    weighted = sorted((lobe for u in units for lobe in u.get("_lobes", [u])), key=lambda w: -w["mass_bridge"])
    others = [m for m in modes if m.get("status") != "weighted"]
    for letter, mode, gap in zip(_names(), weighted + others, lp_gaps(weighted + others)):
        mode["name"], mode["lp_gap"] = letter, gap
    for mode in others + weighted:
        if "_apart" in mode:
            joined = [m["name"] for m in others + weighted if m.get("_apart", (None,))[0] == mode["_apart"][0]]
            mode["note"] = "; ".join(filter(None, [f"chains cross between {' and '.join(joined)}, {mode['_apart'][1]}",
                                                   mode.get("note")]))
    for unit in units:
        lobes = unit.get("_lobes")
        if lobes:
            names = [lobe["name"] for lobe in lobes]
            unit["name"], unit["_names"] = "+".join(names), np.array(names)[unit["_lobe"]]
            for lobe in lobes if len(lobes) > 1 else []:  # one lobe: candidates that proved one mode
                lobe["joined_with"] = [n for n in names if n != lobe["name"]]
                lobe["note"] = (f"chains cross between {' and '.join(names)}: sampled as one region "
                                f"({unit['chains_used']} chains, started in each; this lobe holds "
                                f"{lobe['share']:.3f} +- {lobe['share_se']:.3f} of its draws; R-hat of the lobe "
                                f"indicator {unit['lobe_rhat']:.3g})")
        tag = f"modes {' and '.join(names)} (one region)" if lobes and len(lobes) > 1 else f"mode {unit['name']}"
        reasons += [f"{tag}: {r}" for r in unit["failed"]]
        if unit["failed"]:
            causes += [{**c, "evidence": f"{tag}: {c['evidence']}"} for c in diagnose(
                unit["_rel"], unit["_lp"], unit["_rel"], unit["checks"], unit, unit["divergences"], problem.spec,
                problem.dataset.x, problem.dataset.y, problem.standardization is not None, settings.draws,
                settings.ess_min)]
    for mode in weighted:
        tag = f"mode {mode['name']}"
        for key, label in (("bridge", "bridge sampling"), ("is", "importance sampling")):
            if mode[f"mass_{key}_se"] > settings.mass_se_max:
                reasons.append(f"{tag}: {label} mass SE {mode[f'mass_{key}_se']:.3g} > {settings.mass_se_max:g}")
        combined = math.hypot(mode["mass_bridge_se"], mode["mass_is_se"])
        mode["estimators_agree"] = bool(abs(mode["mass_bridge"] - mode["mass_is"]) <= 3 * combined)
        if not mode["estimators_agree"]:
            reasons.append(f"{tag}: mass by bridge sampling {mode['mass_bridge']:.3f} and by importance sampling "
                           f"{mode['mass_is']:.3f} disagree (over 3 combined SEs)")
        if mode["is_khat"] > KHAT_MAX:
            mode["note"] = "; ".join(filter(None, [mode.get("note"), f"importance sampling's k-hat "
                                                   f"{mode['is_khat']:.2f} > {KHAT_MAX}: its SE is not reliable"]))
    if any(r.split(": ", 1)[1].startswith(("bridge", "importance", "mass")) for r in reasons):
        causes.append({"cause": "mass_precision", "evidence": "; ".join(r for r in reasons if "mass" in r),
                       "advice": "more draws per mode (--reference-draws) and more proposal draws"})
    if not weighted:
        reasons.append("no mode could be weighted (every mode found was degenerate or unstable)")
        causes.append({"cause": "no_mode", "evidence": "; ".join(f"{m['status']}: {m.get('note', '')}" for m in modes),
                       "advice": "see the modes listed; a prior that vanishes at sigma 0 (--sigma-prior invgamma:...) "
                                 "removes degenerate modes"})
    if not weighted:
        first = next((m for m in modes if "_rel" in m), None)
        if first is None:
            from models.errors import MixbenchError

            raise MixbenchError("reference (modes): no mode could be sampled")
        draws, lp, diverging = first["_rel"], first["_lp"], first["_diverging"]
        draw_modes = [[[first["name"], int(lp.shape[1])]] for _ in range(lp.shape[0])]
    else:
        draws, lp, diverging, draw_modes = _mixture(units, settings)
    info = _base_info(problem, name)
    table = [{k: v for k, v in m.items() if not k.startswith("_") and k not in ("checks", "failed")} for m in
             sorted(weighted + others, key=lambda m: m["name"])]
    # Reference-level diagnostics are the worst over the weighted modes: the mixture's draws
    # jump between modes by construction, so R-hat over them says nothing.
    sampled = units or [m for m in modes if "_rel" in m][:1]
    diag = {"rhat_max": max(m["rhat_max"] for m in sampled), "ess_bulk_min": min(m["ess_bulk_min"] for m in sampled),
            "ess_tail_min": min(m["ess_tail_min"] for m in sampled), "n_draws": int(lp.size)}
    checks = {name: all(m["checks"][name] for m in sampled) and bool(weighted)
              for name in ("rhat", "ess_bulk", "ess_tail", "divergences", "chains")}
    checks["mass_precision"] = not any("mass" in r for r in reasons)
    info.update({
        "made_by": {"kind": "modes", "backend": "numpyro", "engine": "numpyro", "method": "nuts",
                    "settings": settings.to_dict(), "seed": settings.seed, "seconds": seconds},
        "diagnostics": {**diag, "divergences": int(diverging.sum()), "chains_used": int(diverging.shape[0]),
                        "chains_dropped": [], "relabelling_settled": True,
                        "explore_chain_mean_lp": [p.lp_mean for p in places]},
        "modes": table,
        "draw_modes": draw_modes,
        "checks": checks,
        "accepted": not reasons,
        "status": "accepted" if not reasons else "provisional",
        "rejected_because": reasons,
        "causes": causes,
    })
    return Reference(_with_lp(draws, lp, diverging), info)


def lp_gaps(modes: list[dict]) -> list[float]:
    """Each mode's mean log density below the best weighted mode's (below the best of all when
    none is weighted): an unstable mode, which its own chains left, is no yardstick."""
    weighted = [m["lp_mean"] for m in modes if m.get("status") == "weighted"]
    best = max(weighted or [m["lp_mean"] for m in modes], default=math.nan)
    return [float(best - m["lp_mean"]) for m in modes]


def _names():
    for letter in string.ascii_uppercase:
        yield letter
    for i in range(1000):
        yield f"M{i}"


def _mixture(weighted: list[dict], settings) -> tuple[xr.DataTree, np.ndarray, np.ndarray, list]:
    """Chain c: from chain c (cycled) of every weighted mode or region, evenly thinned draws in
    proportion to its mass. Returns (draws, lp, diverging, per chain the runs [mode name, count]
    its draws came from: a region's draws are named by their lobes, ``_names`` (chain, draw))."""
    counts = allocate(np.array([m["mass_bridge"] for m in weighted]), settings.draws)
    first = posterior_dataset(weighted[0]["_rel"])
    chains = max(m["chains_used"] for m in weighted)
    parts, lps, divs, runs = [], [], [], []
    for c in range(chains):
        pieces, lp_pieces, div_pieces, names = [], [], [], []
        for i, (mode, n) in enumerate(zip(weighted, counts)):
            if n == 0:
                continue
            ds = posterior_dataset(mode["_rel"])
            cc = c % ds.sizes["chain"]
            pick = np.unique(np.linspace(0, ds.sizes["draw"] - 1, n).round().astype(int))
            pick = np.resize(pick, n)
            pieces.append(ds.isel(chain=cc, draw=pick).drop_vars(["chain", "draw"]))
            lp_pieces.append(mode["_lp"][cc, pick])
            div_pieces.append(mode["_diverging"][cc, pick])
            names += (list(mode["_names"][cc, pick]) if "_names" in mode else [mode.get("name", str(i))] * int(n))
        parts.append(xr.concat(pieces, dim="draw", coords="minimal", compat="override"))
        lps.append(np.concatenate(lp_pieces))
        divs.append(np.concatenate(div_pieces))
        runs.append([])
        for name in names:
            if runs[-1] and runs[-1][-1][0] == name:
                runs[-1][-1][1] += 1
            else:
                runs[-1].append([str(name), 1])
    ds = xr.concat(parts, dim="chain", coords="minimal", compat="override").assign_coords(chain=np.arange(chains), draw=np.arange(settings.draws))
    ds = ds.transpose("chain", "draw", ...)
    tree = xr.DataTree.from_dict({"posterior": ds.drop_vars([v for v in ds.coords if v not in first.coords
                                                             and v not in ("chain", "draw")])})
    return tree, np.stack(lps), np.stack(divs), runs
