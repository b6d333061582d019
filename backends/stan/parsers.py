"""Parsers of what Stan's engines write: CmdStan's CSV columns and transcripts (sampler
statistics, ADVI's and Pathfinder's per-draw log densities and progress, ADVI's ELBO trace,
the optimum), httpstan's NUTS output, and the rule that turns per-chain clocks into phases."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from backends.base import (
    chain_seconds,
)
from models.spec import MixtureSpec
from models.stan_model import (
    flat_to_canonical,
    n_unconstrained,
)
from backends.stan.install import cmdstan_version

# Stan's per-draw sampler columns -> ArviZ sample_stats names.
SAMPLE_STATS = {
    "lp__": "lp",
    "accept_stat__": "acceptance_rate",
    "stepsize__": "step_size",
    "treedepth__": "tree_depth",
    "n_leapfrog__": "n_steps",
    "divergent__": "diverging",
    "energy__": "energy",
}
_ELAPSED = re.compile(r"([0-9.eE+-]+) seconds \((Warm-up|Sampling)\)")


def sample_stats_from_flat(columns: Sequence[str], values: np.ndarray) -> dict[str, np.ndarray]:
    """NUTS sampler columns (chain, draw, column) -> ArviZ-named sample_stats."""
    out = {}
    for j, name in enumerate(columns):
        if name in SAMPLE_STATS:
            column = values[..., j]
            if name == "divergent__":
                column = column.astype(bool)
            elif name in ("treedepth__", "n_leapfrog__"):
                column = column.astype(np.int64)
            out[SAMPLE_STATS[name]] = column
    return out


def _column(columns: Sequence[str], values: np.ndarray, name: str) -> np.ndarray:
    return values[..., list(columns).index(name)]


def _nuts_phase_timings(chain_times: list[dict[str, float]], cores: int) -> dict[str, float]:
    """Warm-up and sampling seconds of a run from Stan's own per-chain clocks, combined by the
    one rule for chains sharing ``cores`` (``backends.timing.chain_seconds``); left out when a
    chain's clock lacks a phase (the per-chain times stay in the draws' attrs)."""
    phases = {"Warm-up", "Sampling"}
    if not chain_times or not all(phases <= set(t) for t in chain_times):
        return {}
    return {
        "warmup": chain_seconds([t["Warm-up"] for t in chain_times], cores),
        "sampling": chain_seconds([t["Sampling"] for t in chain_times], cores),
    }


def csv_stan_version(run) -> str:
    """The Stan version a cmdstanpy result's CSV header reports (stan_version_major etc.)."""
    config = run.metadata.cmdstan_config
    parts = [config.get(f"stan_version_{p}") for p in ("major", "minor", "patch")]
    if any(p is None for p in parts):
        return cmdstan_version() or "unknown"
    return ".".join(str(int(p)) for p in parts)


def advi_eta(transcript: str) -> float | None:
    """The step size Stan's ADVI adaptation chose ("Found best value [eta = 1]"), or None."""
    found = re.search(r"best value \[eta = ([0-9.eE+-]+)\]", transcript)
    return float(found[1]) if found else None


def optimize_converged(transcript: str) -> bool:
    """Whether a CmdStan optimize transcript reports a normal L-BFGS termination."""
    return "terminated normally" in transcript and "Maximum number of iterations" not in transcript


_LBFGS_ROW = re.compile(r"^\s*(\d+)\s+-?[\d.eE+-]+(?:\s+[\d.eE+-]+){4}\s+(\d+)\b", re.MULTILINE)


def optimize_progress(transcript: str) -> tuple[int | None, int | None]:
    """(L-BFGS iterations, log density evaluations) from a CmdStan optimize transcript: the last
    row of its iteration table ("Iter  log prob  ||dx||  ||grad||  alpha  alpha0  # evals  Notes"),
    which CmdStan prints when the run terminates (stan/services/optimize/do_bfgs_optimize.hpp);
    (None, None) when the transcript has none."""
    rows = _LBFGS_ROW.findall(transcript)
    return (int(rows[-1][0]), int(rows[-1][1])) if rows else (None, None)


def _parse_httpstan_output(raw: bytes) -> tuple[list[str], np.ndarray, dict[str, float]]:
    """One chain's httpstan output -> (column names, draws (draw, column), Stan's phase times)."""
    import orjson

    columns: list[str] | None = None
    rows: list[list[float]] = []
    times: dict[str, float] = {}
    for line in raw.splitlines():
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:  # draws holding NaN or inf, which orjson rejects
            message = json.loads(line)
        topic, values = message.get("topic"), message.get("values")
        if topic == "sample" and isinstance(values, dict):
            if columns is None:
                columns = list(values)
            rows.append(list(values.values()))
        elif topic == "logger" and values:
            found = _ELAPSED.search(str(values[0]))
            if found:
                times[found[2]] = float(found[1])
    if columns is None:
        raise RuntimeError("httpstan returned no draws")
    return columns, np.asarray(rows, dtype=float), times


# --- the backend ---------------------------------------------------------------------------------


def _optimum_point(spec: MixtureSpec, run) -> dict:
    """The canonical parameters of a CmdStanMLE's optimum."""
    mode = flat_to_canonical(spec, list(run.column_names), np.asarray(run.optimized_params_np)[None, None])
    return {name: value[0, 0] for name, value in mode.items()}


def advi_log_densities(spec: MixtureSpec, columns: Sequence[str], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-draw (log p, log q) from CmdStan ADVI output rows (draws only, not the mean row).

    Stan writes lp__ = 0; log_p__ = the model's log density at the draw in the unconstrained
    space, Jacobian and all constants included (log_prob<propto=false, jacobian=true>); log_g__ =
    -||eps||^2 / 2 for the standard-normal eps behind the draw, constants dropped. The full
    log q adds -d/2 log(2 pi), done here, and -log|det scale|, which CmdStan does not report: log q
    is exact up to that one constant, shared by all draws, so PSIS weights and k-hat are exact
    while an ELBO computed from it would be shifted.
    """
    log_p = _column(columns, values, "log_p__").astype(float)
    log_q = _column(columns, values, "log_g__") - 0.5 * n_unconstrained(spec) * math.log(2 * math.pi)
    return log_p, log_q.astype(float)


def pathfinder_log_densities(columns: Sequence[str], values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-draw (log p, log q) from single-path Pathfinder output rows.

    lp__ = the model's log density at the draw, unconstrained space, Jacobian and constants
    included (log_prob<false, true>); lp_approx__ = the log density of the path's normal
    approximation there, -log|det| and -d/2 log(2 pi) included: both exact.
    """
    return (_column(columns, values, "lp__").astype(float),
            _column(columns, values, "lp_approx__").astype(float))


def advi_progress(transcript: str, trace: np.ndarray | None, max_iterations: int) -> tuple[bool, int | None]:
    """(converged, iterations run) from CmdStan's ADVI console transcript and ELBO trace."""
    converged = "ELBO CONVERGED" in transcript
    if not converged and "maximum number of iterations is reached" in transcript:
        return False, max_iterations
    return converged, int(trace[-1, 0]) if trace is not None else None


def pathfinder_progress(transcript: str) -> tuple[bool, int | None, int | None]:
    """(converged, L-BFGS iterations, gradient evaluations) from Pathfinder's transcript.

    Iterations are each path's best iteration and evaluations each path's count, both summed
    over paths ("Path [p] :Best Iter: [i] ELBO (...) evaluations: (e)" lines, one per path).
    """
    converged = not ("terminated with error" in transcript or "Maximum number of iterations" in transcript)
    found = re.findall(r"Best Iter: \[(\d+)\].*?evaluations: \((\d+)\)", transcript)
    if not found:
        return converged, None, None
    return converged, sum(int(i) for i, _ in found), sum(int(e) for _, e in found)


def read_elbo_trace(path: str) -> np.ndarray | None:
    """ADVI's diagnostic CSV (iter,time_in_seconds,ELBO) -> rows (iteration, ELBO), or None."""
    rows = []
    for line in Path(path).read_text().splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) != 3:
            continue
        try:
            iteration, _seconds, elbo = (float(f) for f in fields)
        except ValueError:
            continue  # the header line
        rows.append((iteration, elbo))
    return np.asarray(rows) if rows else None


