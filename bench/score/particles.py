"""Columns of a sequential Monte Carlo fit: its record (particles, tempering stages, log marginal
likelihood). Where its particles sit among the reference's modes is bench.score.modes's
(``ref_mode_shares``, a population placed by its shares).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from backends.methods import SMC_GROUP

NAN = float("nan")

PARTICLE_FIELDS: dict[str, str] = {
    "smc_particles": "SMC: particles per run (each run is one chain of the draws)",
    "smc_stages": "SMC: tempering stages after the prior, per run, 's0;s1;...'",
    "smc_log_evidence": "SMC: mean over runs of the log marginal likelihood estimate log p(y) (nats, every "
                        "normalising constant included; product of the mean incremental weights, Del Moral et al. 2006)",
    "smc_log_evidence_sd": "SMC: standard deviation of the runs' log marginal likelihood estimates (NaN for one run)",
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

