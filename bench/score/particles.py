"""Columns of a fit read draw by draw: sequential Monte Carlo's record (particles, tempering
stages, log marginal likelihood) and the share of a fit's draws in each reference mode.

A chain lands in one reference mode (bench.score.modes); an SMC particle population or a stacked
mixture holds several, so its answer is a share per mode: each draw (evenly thinned to at most
``MAX_DRAWS``, pooled over chains) lands in the mode whose location it is within
``bench.score.modes.LAND_DISTANCE_SD`` of (``bench.score.modes.land``, components matched by assignment, so
no relabelling enters), or in none ("-"). Beside the reference's bridge-sampling masses
(``ref_mode_masses``) these shares say whether a method weights the modes as the posterior does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from backends.methods import SMC_GROUP
from bench.score.modes import land
from bench.score.problem import thin_indices
from bench.score.relabel import posterior_dataset

NAN = float("nan")
MAX_DRAWS = 1000

PARTICLE_FIELDS: dict[str, str] = {
    "smc_particles": "SMC: particles per run (each run is one chain of the draws)",
    "smc_stages": "SMC: tempering stages after the prior, per run, 's0;s1;...'",
    "smc_log_evidence": "SMC: mean over runs of the log marginal likelihood estimate log p(y) (nats, every "
                        "normalising constant included; product of the mean incremental weights, Del Moral et al. 2006)",
    "smc_log_evidence_sd": "SMC: standard deviation of the runs' log marginal likelihood estimates (NaN for one run)",
    "ref_mode_shares": "share of the fit's draws (pooled over chains, at most 1000 evenly thinned) in each reference "
                       "mode, 'A:0.52;B:0.47;-:0.01' ('-': in none); empty without a modes reference",
}


def smc_columns(draws: xr.DataTree) -> dict[str, Any]:
    """The ``smc_*`` columns of a fit whose draws hold group ``SMC_GROUP`` (backends.smc); empty
    for any other fit."""
    if SMC_GROUP not in draws.children:
        return {}
    group = draws[SMC_GROUP]
    log_z = np.asarray(group["log_marginal_likelihood"].values, dtype=float)
    return {"smc_particles": int(group.attrs["particles"]),
            "smc_stages": ";".join(str(int(s)) for s in np.asarray(group["stages"].values)),
            "smc_log_evidence": float(log_z.mean()),
            "smc_log_evidence_sd": float(log_z.std(ddof=1)) if log_z.size > 1 else NAN}


def mode_shares(draws: xr.DataTree, modes: list[dict[str, Any]]) -> dict[str, float]:
    """Share of the draws in each reference mode (and in none, key "-"), pooled over chains.

    Parameters
    ----------
    draws : xarray.DataTree
        Canonical draws (any labelling: ``bench.score.modes.land`` matches components itself).
    modes : list of dict
        The reference's modes table (bench.reference.modes).

    Returns
    -------
    dict of str to float
        Mode name -> share of the (at most ``MAX_DRAWS``, evenly thinned) draws landing there;
        empty without modes.
    """
    if not modes:
        return {}
    ds = posterior_dataset(draws)
    K = int(ds.sizes["component"])
    total = ds.sizes["chain"] * ds.sizes["draw"]
    keep = thin_indices(total, MAX_DRAWS)
    # NumPy, not xarray's stack, which cannot reshape the empty covariate axis of D = 0.
    values = {n: np.asarray(ds[n].transpose("chain", "draw", ...).values).reshape(total, *ds[n].shape[2:])[keep]
              for n in ds.data_vars}
    names = [land({n: v[i] for n, v in values.items()}, modes, K) or "-" for i in range(keep.size)]
    found, counts = np.unique(names, return_counts=True)
    return {str(n): float(c) / keep.size for n, c in zip(found, counts)}


def particle_columns(draws: xr.DataTree, modes: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The PARTICLE_FIELDS of one fit: SMC's record where it has one, the mode shares where the
    reference has modes."""
    out = smc_columns(draws)
    shares = mode_shares(draws, modes or [])
    if shares:
        out["ref_mode_shares"] = ";".join(f"{n}:{s:.3g}" for n, s in sorted(shares.items()))
    return out
