"""The stacked row of a cell: its fit's chains or paths mixed by their stacking weights
(bench.stacking) and scored like any fit, a row of its own beside the cell's.

The cell's row carries the stacked row under ``STACKED_KEY`` until the run writes rows
(``split``), so that executors move one row per cell as before.
"""

from __future__ import annotations

from typing import Any

from backends.base import Fit
from bench.metrics import score_fit
from bench.stacking import SUFFIX, parse_weights, stacked_fit

STACKED_KEY = "stacked_row"


def stacked_row(row: dict[str, Any], fit: Fit, truth: dict | None, reference, problem) -> dict[str, Any] | None:
    """The stacked row of a scored cell, or None where its row has no stacking weights.

    Parameters
    ----------
    row : dict
        The cell's row, scored (``stacking_weights``) and with its ids (``cell_id``, ``method``).
    fit : Fit
        The cell's fit (on the data's scale).
    truth, reference, problem
        As the cell's scoring had them (bench.metrics.score_fit).

    Returns
    -------
    dict or None
        The stacked mixture's ``score_fit`` row with the cell's ids, ``cell_id`` and ``method``
        suffixed ``+stacked``, ``stacked_from`` the cell's id and the cell's stacking columns;
        None also where scoring the mixture raised (the error joins the row's ``metric_errors``).
    """
    weights = parse_weights(row.get("stacking_weights"))
    if weights is None:
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
                                   "stacking_elpd_best", "stacking_mode_weights")}
    return {**ids, **scored, **means, **carried, "cell_id": f"{row['cell_id']}{SUFFIX}",
            "method": f"{row['method']}{SUFFIX}", "stacked_from": row["cell_id"]}


def split(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A cell's row and, where it carries one, its stacked row: the rows a run writes."""
    stacked = row.pop(STACKED_KEY, None)
    return [row] if stacked is None else [row, stacked]
