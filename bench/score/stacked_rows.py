"""The stacked row of a cell: its fit's chains or paths mixed by their stacking weights
(bench.score.stacking) and scored like any fit, a row of its own beside the cell's, where the chains
do not mix: they landed in different places (``non_mixing``). Stacking is for non-mixing
computations (Yao, Vehtari & Gelman 2022): MCMC chains that mix, and Pathfinder paths or SMC runs
that agree (bench.score.stacking.component_agreement), are not stacked at all, their stacked
mixture being the fit itself (tests/test_stacking.py).

The cell's row carries the stacked row under ``STACKED_KEY`` until the run writes rows
(``split``), so that executors move one row per cell as before.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.base import Fit
from bench.score.metrics import score_fit
from bench.score.stacking import SUFFIX, non_mixing, parse_weights, stacked_fit

STACKED_KEY = "stacked_row"
def stacked_row(row: dict[str, Any], fit: Fit, truth: dict | None, reference, problem) -> dict[str, Any] | None:
    """The stacked row of a scored cell, or None where its row has no stacking weights or its
    components mix (``non_mixing``).

    Parameters
    ----------
    row : dict
        The cell's row, scored (``stacking_weights``) and with its ids (``cell_id``, ``method``).
    fit : Fit
        The cell's fit (on the data's scale).
    truth, reference, problem
        As the cell's scoring had them (bench.score.metrics.score_fit).

    Returns
    -------
    dict or None
        The stacked mixture's ``score_fit`` row with the cell's ids, ``cell_id`` and ``method``
        suffixed ``+stacked``, ``stacked_from`` the cell's id and the cell's stacking columns;
        None also where scoring the mixture raised (the error joins the row's ``metric_errors``).
    """
    weights = parse_weights(row.get("stacking_weights"))
    if weights is None or not non_mixing(row):
        return None
    try:
        scored, means = score_fit(stacked_fit(fit, fit.draws, weights), truth=truth, reference=reference,
                                  problem=problem)
    except Exception as exc:  # noqa: BLE001  (the cell's own row is kept whatever stacking does)
        note = f"stacked row: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        row["metric_errors"] = "; ".join(e for e in (row.get("metric_errors") or "", note) if e)
        return None
    ids = {k: v for k, v in row.items() if k not in scored and k not in means}
    carried = {k: row[k] for k in ("stacking_components", "stacking_weights", "stacking_elpd",
                                   "stacking_elpd_best", "stacking_elpd_pointwise", "stacking_mode_weights",
                                   "stacking_rhat")}
    return {**ids, **scored, **means, **carried, **_stacked_elpd(row, problem.dataset.N),
            "cell_id": f"{row['cell_id']}{SUFFIX}", "method": f"{row['method']}{SUFFIX}", "stacked_from": row["cell_id"]}


def _stacked_elpd(row: dict[str, Any], n_obs: int) -> dict[str, Any]:
    """The stacked mixture's elpd: its pointwise LOO predictive log densities
    log sum_c w_c p_c(y_i | y_-i) (Yao et al. 2022), not PSIS-LOO of its pooled draws, which
    weights each draw by 1 / p(y_i | theta) as if the draws came from the full-data posterior and
    for a mixture of separated modes is dominated by the other mode's draws. Over a subsample of
    n observations, elpd is N times their mean and its se N sd / sqrt(n) (simple random sampling)."""
    values = np.array([float(v) for v in row["stacking_elpd_pointwise"].split(";")])
    n = values.size
    scale = n_obs / n
    return {"elpd_loo": float(values.sum() * scale), "elpd_loo_se": float(np.sqrt(n) * values.std() * scale),
            "elpd_loo_pointwise": row["stacking_elpd_pointwise"], "loo_method": "stacking", "loo_obs": n,
            "loo_approx_pointwise": ";".join(["0.0"] * n) if n < n_obs else "",
            "p_loo": float("nan"), "loo_khat_max": float("nan"), "loo_n_bad": float("nan")}


def split(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A cell's row and, where it carries one, its stacked row: the rows a run writes."""
    stacked = row.pop(STACKED_KEY, None)
    return [row] if stacked is None else [row, stacked]
