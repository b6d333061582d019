"""Making a data set's reference posterior, and choosing which one a run uses.

``make_reference`` runs the fit (one long multi-chain NUTS run, or the modes of
bench.reference.modes) and checks it with bench.reference.posterior's checks;
``resolve_reference`` picks a cached, accepted, provisional or new reference for ``--reference``.
Apart from bench.reference.posterior so that the modes reference, which uses its checks and
format, and this module, which calls the modes reference, import one another in one direction.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from bench.reference.advice import diagnose
from bench.reference.modes import make_modes_reference
from bench.reference.posterior import (
    Reference,
    ReferenceSettings,
    _base_info,
    _cached,
    _checks,
    _with_lp,
    accepted_reference,
    cache_dir_for,
    canonical_relabel,
    diagnostics,
    load_reference,
    reference_from_draws,
    write_reference,
)
from bench.score.problem import Problem
from bench.score.relabel import posterior_dataset
from models.errors import MixbenchError


# ---------------------------------------------------------------------------------------------
# Making


def make_reference(problem: Problem, settings: ReferenceSettings = ReferenceSettings(),
                   name: str | None = None, progress: Callable[[str], None] | None = None) -> Reference:
    """Run NUTS with ``settings.backend`` on the problem, check it, and return the reference.

    The result may fail its checks: it is then provisional (``accepted`` False, with
    ``info["rejected_because"]`` and ``info["causes"]``, see bench.reference.advice). Raises
    MixbenchError when the run itself fails.
    """
    if settings.method == "modes":
        return make_modes_reference(problem, settings, name, progress)
    from backends import get_backend

    backend = get_backend(settings.backend)
    if progress:
        progress(f"reference posterior: {settings.backend} NUTS, {settings.chains} chains x "
                 f"({settings.warmup} + {settings.draws}) on {problem.dataset.name} (N = {problem.dataset.N}) ...")
    start = time.perf_counter()
    fit = backend.fit(problem.spec, problem.fit_dataset, "nuts", settings.fit_settings(), seed=settings.seed)
    if not fit.ok:
        raise MixbenchError(f"reference: the {settings.backend} NUTS run did not finish ({fit.status}: {fit.reason})")
    fit = problem.to_data_scale(fit)
    seconds = time.perf_counter() - start
    draws = fit.draws
    ds = posterior_dataset(draws)
    lp, _ = problem.draw_log_densities(draws, per_chain=ds.sizes["draw"])
    diverging = None
    if "sample_stats" in draws.children and "diverging" in draws["sample_stats"].data_vars:
        diverging = np.asarray(draws["sample_stats"]["diverging"].transpose("chain", "draw").values, dtype=bool)
    chain_lp = np.array([np.mean(row[np.isfinite(row)]) if np.isfinite(row).any() else -np.inf for row in lp])
    best = float(np.max(chain_lp))
    keep = [c for c in range(len(chain_lp)) if chain_lp[c] >= best - settings.drop_gap_nats]
    dropped = [{"chain": c, "mean_lp_below_best": float(best - chain_lp[c])}
               for c in range(len(chain_lp)) if c not in keep]
    kept = xr.DataTree.from_dict({"posterior": ds.isel(chain=keep)})
    kept_lp = lp[keep]
    relabelled, settled = canonical_relabel(kept, kept_lp, problem.spec)
    diag = diagnostics(relabelled)
    divergences = int(diverging[keep].sum()) if diverging is not None else 0
    n_transitions = len(keep) * ds.sizes["draw"]
    checks, reasons = _checks(diag, divergences, n_transitions, len(keep), settings)
    causes = diagnose(draws, lp, relabelled, checks, diag, divergences, problem.spec, problem.dataset.x,
                      problem.dataset.y, problem.standardization is not None, settings.draws, settings.ess_min)
    info = _base_info(problem, name)
    info.update({
        "made_by": {"kind": "nuts", "backend": settings.backend, "engine": fit.engine, "method": "nuts",
                    "settings": settings.to_dict(), "seed": settings.seed, "seconds": seconds,
                    "engine_versions": fit.versions},
        "diagnostics": {**diag, "divergences": divergences, "chains_used": len(keep),
                        "chains_dropped": dropped, "relabelling_settled": bool(settled),
                        "chain_mean_lp": [float(v) for v in chain_lp]},
        "checks": checks,
        "accepted": not reasons,
        "status": "accepted" if not reasons else "provisional",
        "rejected_because": reasons,
        "causes": causes,
    })
    out = _with_lp(relabelled, kept_lp, diverging[keep] if diverging is not None else None)
    return Reference(out, info)



def resolve_reference(choice: str | Path, problem: Problem, settings: ReferenceSettings = ReferenceSettings(),
                      has_truth: bool = False, progress: Callable[[str], None] | None = None,
                      make: Callable[[Problem, ReferenceSettings, Path], Reference] | None = None) -> Reference | None:
    """The reference a run uses: accepted where one exists, else provisional (``Reference.status``).

    choice: "none"; "auto" (a cached one, made now when the data has no truth and none is
    cached; with a truth only a cached accepted one); "make" (a cached one, else made now); or a
    path: a reference directory (checked against the problem) or a draws file (.nc / .csv, see
    ``read_draws_file``), turned into a cached reference. For auto and make, the cached reference
    of ``settings`` when accepted, else an accepted one made with other settings
    (``accepted_reference``), else the provisional one of ``settings`` (made again it would give the
    same draws: same settings, same seed), else a new one.

    make: makes the new one and writes it into the directory it is given (bench.run.references
    runs it as a cell in an executor); default ``make_reference`` in this process.
    """
    if str(choice) == "none":
        return None
    if str(choice) in ("auto", "make"):
        directory = cache_dir_for(problem, settings)
        cached = _cached(directory, problem)
        if cached is not None and cached.accepted:
            return cached
        other = accepted_reference(problem)
        if other is not None:
            return other
        if str(choice) == "auto" and has_truth:
            return None
        if cached is not None and "causes" in cached.info:
            return cached
        # None cached, or one refused by an older mixbench without saying why: made (again) now.
        if make is not None:
            return make(problem, settings, directory)
        reference = make_reference(problem, settings, progress=progress)
        write_reference(reference, directory)
        return reference
    path = Path(choice)
    if path.is_dir():
        return load_reference(path, problem)
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        directory = cache_dir_for(problem, settings, source=digest)
        cached = _cached(directory, problem)
        if cached is not None:
            return cached
        reference = reference_from_draws(problem, path)
        write_reference(reference, directory)
        return reference
    raise MixbenchError(f"--reference: {choice!s} is neither auto, make, none, a reference directory nor a draws file")
