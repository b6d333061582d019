"""The report's table of SMC and stacked fits: how each weights the reference's modes.

One row per ok cell that has something to say here (an SMC record, stacking weights, or a
stacked mixture): its share of draws per reference mode (bench.score.particles), SMC's particles,
stages and log evidence, and the stacking weights with the weight they put on each mode, beside
the reference's bridge-sampling masses.
"""

from __future__ import annotations

import pandas as pd

from bench.report.tables import Table, col

COLUMNS: dict[str, str] = {
    "ref_mode_shares": "draws per mode",
    "smc_particles": "particles",
    "smc_stages": "stages",
    "smc_log_evidence": "log evidence",
    "smc_log_evidence_sd": "log evidence sd",
    "stacking_weights": "stacking weights",
    "stacking_mode_weights": "stacking weight per mode",
    "stacking_elpd": "stacked log score",
    "stacking_elpd_best": "best single log score",
    "elpd_loo": "elpd_loo",
    "ref_mode_masses": "reference masses",
}


def mode_share_table(frame: pd.DataFrame) -> Table:
    """The SMC and stacking table of the report's rows (``frame``, with fit ids); empty where no
    row has SMC, stacking or mode-share columns."""
    key, title = "smc-stacking", "SMC and stacking: the modes' weights"
    if frame.empty or "status" not in frame:
        return Table(key, title, "", pd.DataFrame())
    ok = frame[frame["status"] == "ok"]
    has = pd.Series(False, index=ok.index)
    for name in ("smc_particles", "stacking_weights", "stacked_from"):
        has |= col(ok, name).notna() & ~col(ok, name).astype(str).isin(["", "nan"])
    ok = ok[has]
    if ok.empty:
        return Table(key, title, "", pd.DataFrame())
    out = ok[[c for c in ("fit", "backend", "method", "seed") if c in ok]].copy()
    for name, label in COLUMNS.items():
        values = col(ok, name)
        if not values.astype(str).isin(["", "nan", "None"]).all():
            out[label] = values
    text = ("Per cell: the share of its draws (SMC: particles, pooled over runs) in each reference mode, SMC's "
            "particles, tempering stages per run and log marginal likelihood, and the stacking weights of its "
            "chains or paths (Yao, Vehtari & Gelman 2022) with the weight they put on each mode; a method "
            "ending in +stacked is the stacked mixture scored as a fit. Reference masses: mode:mass:nats below.")
    return Table(key, title, text, out.reset_index(drop=True))
