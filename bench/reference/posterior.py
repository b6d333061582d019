"""Reference posteriors: what every fit of a data set is labelled, placed and measured against.

In posteriordb's layout (``reference_posteriors/draws/info/*.info.json`` and
``doc/REFERENCE_POSTERIOR_DEFINITION.md``; bench.reference.posteriordb), a reference posterior is a named
artefact, a directory of two files:

- ``draws.json.zip``: the draws (the data's scale), relabelled into one canonical labelling, as a
  list of chains, each mapping ``w[k,d]``, ``b[k]``, ``sigma[k]``, ``pi[k]`` (1-based) to its draws,
  with ``lp``, the oracle's log density of each draw (models/oracle.py, of the model as fitted;
  see bench.score.problem);
- ``info.json``: posteriordb's fields (``inference`` with ``method`` and ``method_arguments``,
  ``diagnostics`` with per-scalar ``r_hat`` and ESS, ``checks_made``, ``versions``) and mixbench's
  (how it was made: backend, engine, NUTS settings, seed, or the user's file and its SHA-256; the
  data set's digest, the spec and the standardisation it belongs to; status, causes, when; for a
  reference made of modes, its modes table ``modes`` and ``draw_modes``, the mode each draw came
  from, as runs per chain).

References written before format 2 (``draws.nc``, an ArviZ DataTree, and ``info.json``) are read.

It is made by a long multi-chain NUTS run with one backend (``ReferenceSettings``), or read from
draws a user supplies (netCDF or CSV, e.g. posteriordb's reference draws). A made reference is
accepted only if, after relabelling, R-hat <= 1.01, bulk and tail ESS >= 400 for every scalar and
no more than a set share of transitions diverged (Vehtari et al. 2021's thresholds; posteriordb
checks the same). Chains stuck in a mode far below the best chain (by mean log density, over
``drop_gap_nats``) are left out first and listed in the info: a mode e^-50 below the best holds
no posterior mass worth drawing. A reference that fails a check is kept as provisional
(``status``), with the failed checks and their causes and advice (bench.reference.advice): runs
still use it, as the labelling target and to measure W1 and landings against, and every row
and report says it is provisional: no fit is said to have reached it.
It is never taken for an accepted one: a run looks for an accepted reference of the same problem
(made with any settings) before it uses a provisional one.

Canonical labelling: each draw is relabelled against the draw with the highest log density
(bench.score.relabel), then components are sorted by the posterior mean of the spec's ordering
quantity when it has one, else the intercept, else the first slope.

Artefacts made on request or on first need are cached under ``cache_root()/references`` by the
data's digest, the spec, the standardisation and the settings. Reading an artefact for another
data set, spec or standardisation fails with a one-line MixbenchError.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import arviz_stats as azs
import numpy as np
import pandas as pd
import xarray as xr

from backends.base import FitSettings, canonical_datatree, package_versions, settings_from_dict
from bench.reference.posteriordb import info_fields, read_draws_zip, write_draws_zip
from bench.score.problem import Problem
from bench.score.relabel import apply_permutations, posterior_dataset, relabel
from models.errors import MixbenchError
from models.spec import MixtureSpec

FORMAT_VERSION = 2
"""2: posteriordb's layout (draws.json.zip, info.json with its fields); 1: draws.nc, still read."""
READS_VERSIONS = (1, 2)
CACHE_KEY_VERSION = 1  # unchanged by format 2, so references cached before it are found and read
INFO_FILE = "info.json"
DRAWS_FILE = "draws.nc"
DRAWS_ZIP = "draws.json.zip"
LP_COLUMN = "lp"  # the oracle's log density of each draw, beside the parameters in draws.json.zip
REFERENCE_CHOICES = ("auto", "make", "none")
FAMILIES = ("w", "b", "sigma", "pi", "nu", "gamma")
TAIL_PROB = (0.05, 0.95)


@dataclass(frozen=True)
class ReferenceSettings:
    """How a reference is made and what it must pass. Recorded in its info."""

    backend: str = "numpyro"
    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    seed: int = 20260101
    target_accept: float = 0.9
    rhat_max: float = 1.01
    """Relabelled rank-normalised split R-hat of every scalar must not exceed this."""
    ess_min: float = 400.0
    """Bulk and tail ESS of every scalar (relabelled) must reach this (100 per chain for 4)."""
    divergent_frac_max: float = 0.001
    """Share of post-warm-up transitions allowed to diverge."""
    drop_gap_nats: float = 50.0
    """A chain whose mean log density is this far below the best chain's is left out."""
    min_chains: int = 2
    """Chains that must remain after dropping."""
    method: str = "modes"
    """"modes": modes found from many starts, each sampled and weighted by its mass
    (bench.reference.modes; NumPyro); "nuts": one multi-chain NUTS run with ``backend``."""
    explore_chains: int = 12
    """modes: short NUTS chains from prior draws that look for modes."""
    explore_warmup: int = 300
    explore_draws: int = 200
    explore_map_starts: int = 4
    """modes: single-start MAP fits (NumPyro) whose optima start more exploration chains."""
    explore_pathfinder_starts: int = 4
    """modes: single-path Pathfinder fits (NumPyro) whose draws' means start more exploration chains."""
    merge_distance_sd: float = 4.0
    """modes: chains within this many pooled sds in every scalar (and close in log density) are one mode."""
    proposal_draws: int = 4000
    """modes: draws of each mode's bridge and importance proposals."""
    mass_se_max: float = 0.02
    """modes: every mode's mass must have a standard error at most this, by both estimators."""

    def __post_init__(self):
        if self.method not in ("modes", "nuts"):
            raise MixbenchError(f"reference settings: method must be modes or nuts, got {self.method!r}")
        for name in ("chains", "warmup", "draws", "min_chains", "explore_chains", "explore_warmup",
                     "explore_draws", "proposal_draws"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup" else 1):
                raise MixbenchError(f"reference settings: {name} must be a positive integer, got {value!r}")
        for name in ("explore_map_starts", "explore_pathfinder_starts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MixbenchError(f"reference settings: {name} must be an integer >= 0, got {value!r}")
        if self.min_chains > self.chains:
            raise MixbenchError(f"reference settings: min_chains ({self.min_chains}) exceeds chains ({self.chains})")

    def fit_settings(self) -> FitSettings:
        return FitSettings(chains=self.chains, warmup=self.warmup, draws=self.draws,
                           target_accept=self.target_accept)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ReferenceSettings":
        return settings_from_dict(cls, data, "reference settings")


@dataclass(eq=False)
class Reference:
    """A reference posterior: draws in the canonical labelling (data scale) and their info."""

    draws: xr.DataTree
    info: dict[str, Any]
    path: Path | None = None

    @property
    def posterior(self) -> xr.Dataset:
        return posterior_dataset(self.draws)

    @property
    def point(self) -> dict[str, np.ndarray]:
        """Posterior mean of every parameter: the point fits are labelled against."""
        ds = self.posterior
        return {n: np.asarray(ds[n].mean(("chain", "draw")).values, dtype=float) for n in ds.data_vars}

    @property
    def lp(self) -> np.ndarray:
        """(chain, draw) log densities of the draws (oracle convention, model as fitted)."""
        return np.asarray(self.draws["sample_stats"]["lp"].transpose("chain", "draw").values, dtype=float)

    @property
    def accepted(self) -> bool:
        return bool(self.info.get("accepted"))

    @property
    def status(self) -> str:
        """"accepted", or "provisional": it failed a check (``failed_checks``, ``causes``)."""
        return "accepted" if self.accepted else "provisional"

    @property
    def failed_checks(self) -> list[str]:
        return list(self.info.get("rejected_because") or [])

    @property
    def causes(self) -> list[dict[str, str]]:
        """Why it failed and what would fix it (bench.reference.advice); empty when accepted."""
        if self.accepted:
            return []
        return list(self.info.get("causes") or [
            {"cause": "unknown", "evidence": "made before mixbench diagnosed failed references",
             "advice": "make it again (mixbench reference) to see why"}])

    def lacks(self) -> list[str]:
        """Lines for people: what a provisional reference lacks and what would fix it."""
        if self.accepted:
            return []
        lines = [f"provisional reference (failed: {'; '.join(self.failed_checks)}): used as the labelling "
                 "target and to measure W1 and landings against, each named provisional; no fit is said to "
                 "have reached it"]
        lines += [f"  {c['cause']}: {c['evidence']}. Fix: {c['advice']}" for c in self.causes]
        return lines

    @property
    def name(self) -> str:
        return str(self.info.get("name", "reference"))

    @property
    def modes(self) -> list[dict[str, Any]]:
        """The modes table (bench.reference.modes): one dict per mode, named A, B, ... by mass."""
        return list(self.info.get("modes") or [])

    @property
    def draw_modes(self) -> np.ndarray | None:
        """(chain, draw): the name of the mode each draw came from, from mixbench's own field
        ``info["draw_modes"]`` (per chain, its runs of draws as [mode name, count]); None when the
        reference has none (one NUTS run, a user's draws, one written before modes were kept) or
        they do not match its draws."""
        runs = self.info.get("draw_modes")
        if not runs:
            return None
        try:
            names = np.array([[name for name, count in chain for _ in range(int(count))] for chain in runs])
        except (TypeError, ValueError):
            return None
        ds = self.posterior
        return names if names.shape == (ds.sizes["chain"], ds.sizes["draw"]) else None

    def describe(self) -> str:
        """One line: what it is and how it did."""
        d = self.info.get("diagnostics", {})
        made = self.info.get("made_by", {})
        how = (f"{made.get('backend')} NUTS {d.get('chains_used')} of {made.get('settings', {}).get('chains')} chains"
               f" x {made.get('settings', {}).get('draws')} draws" if made.get("kind") == "nuts"
               else f"{len(self.modes)} mode(s), each sampled by NumPyro NUTS and weighted by its mass"
               if made.get("kind") == "modes" else f"user draws from {made.get('source_file')}")
        return (f"{self.name}: {how}; R-hat max {_fmt(d.get('rhat_max'))}, ESS bulk/tail min "
                f"{_fmt(d.get('ess_bulk_min'))}/{_fmt(d.get('ess_tail_min'))}, divergences "
                f"{d.get('divergences')}; {'accepted' if self.accepted else 'provisional, NOT accepted: ' + '; '.join(self.failed_checks)}")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Canonical labelling and diagnostics


def _ordering_key(spec: MixtureSpec, ds: xr.Dataset) -> np.ndarray:
    """Per component, the quantity canonical labels sort by (posterior mean)."""
    if spec.ordering == "slope" or (spec.ordering == "none" and not spec.intercept):
        return np.asarray(ds["w"].isel(covariate=0).mean(("chain", "draw")).values)
    return np.asarray(ds["b"].mean(("chain", "draw")).values)


def canonical_relabel(draws: xr.DataTree, lp: np.ndarray, spec: MixtureSpec) -> tuple[xr.DataTree, bool]:
    """Relabel every draw against the highest-lp draw, then sort components by the ordering key.

    Returns (relabelled draws, whether the relabelling settled).
    """
    ds = posterior_dataset(draws)
    c, d = np.unravel_index(np.nanargmax(np.where(np.isfinite(lp), lp, -np.inf)), lp.shape)
    pivot = {n: np.asarray(ds[n].isel(chain=int(c), draw=int(d)).values) for n in ds.data_vars}
    rel = relabel(draws, pivot)
    order = np.argsort(_ordering_key(spec, posterior_dataset(rel.draws)), kind="stable")
    shape = (ds.sizes["chain"], ds.sizes["draw"], spec.K)
    return apply_permutations(rel.draws, np.broadcast_to(order, shape).copy()), rel.converged


def diagnostics(draws: xr.DataTree) -> dict[str, float]:
    """R-hat max, bulk and tail ESS min over every scalar (arviz-stats), and the draws' count."""
    ds = posterior_dataset(draws)
    ds = ds[[n for n in FAMILIES if n in ds.data_vars and ds[n].size]]
    out = {"rhat_max": math.nan, "ess_bulk_min": math.nan, "ess_tail_min": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if ds.sizes["draw"] >= 4:
            bulk = azs.ess(ds, method="bulk")
            tail = azs.ess(ds, method="tail", prob=TAIL_PROB)
            out["ess_bulk_min"] = _min_over(bulk)
            out["ess_tail_min"] = _min_over(tail)
            if ds.sizes["chain"] >= 2:
                rhat = azs.rhat(ds)
                out["rhat_max"] = float(max(np.nanmax(rhat[n].values) for n in rhat.data_vars))
    out["n_draws"] = int(ds.sizes["chain"] * ds.sizes["draw"])
    return out


def _min_over(result: xr.Dataset) -> float:
    values = np.concatenate([np.ravel(result[n].values) for n in result.data_vars])
    return float(np.nanmin(values)) if np.isfinite(values).any() else math.nan


def _checks(diag: dict, divergences: int, n_transitions: int, chains_used: int,
            settings: ReferenceSettings) -> tuple[dict[str, bool], list[str]]:
    frac = divergences / n_transitions if n_transitions else 0.0
    checks = {
        "rhat": bool(diag["rhat_max"] <= settings.rhat_max),
        "ess_bulk": bool(diag["ess_bulk_min"] >= settings.ess_min),
        "ess_tail": bool(diag["ess_tail_min"] >= settings.ess_min),
        "divergences": bool(frac <= settings.divergent_frac_max),
        "chains": bool(chains_used >= settings.min_chains),
    }
    reasons = []

    def failed(label: str, value, bound: str) -> str:
        if value is None or math.isnan(value):
            return f"{label} not computable (needs 2 chains of 4 draws or more)"
        return f"{label} {_fmt(value)} {bound}"

    if not checks["rhat"]:
        reasons.append(failed("R-hat", diag["rhat_max"], f"> {settings.rhat_max}"))
    if not checks["ess_bulk"]:
        reasons.append(failed("bulk ESS", diag["ess_bulk_min"], f"< {settings.ess_min:g}"))
    if not checks["ess_tail"]:
        reasons.append(failed("tail ESS", diag["ess_tail_min"], f"< {settings.ess_min:g}"))
    if not checks["divergences"]:
        reasons.append(f"{divergences} of {n_transitions} transitions divergent")
    if not checks["chains"]:
        reasons.append(f"only {chains_used} chain(s) left in the best mode, {settings.min_chains} needed")
    return checks, reasons


def _versions() -> dict[str, str]:
    return package_versions("mixbench", "numpy", "scipy", "arviz-stats", "numpyro", "jax", "pymc", "nutpie",
                            "cmdstanpy", "pystan")


def _base_info(problem: Problem, name: str | None) -> dict[str, Any]:
    identity = problem.identity()
    return {
        "format_version": FORMAT_VERSION,
        "name": name or f"{problem.dataset.name}-reference",
        "data": {"name": problem.dataset.name, "digest": identity["data_digest"], "N": problem.dataset.N,
                 "D": problem.dataset.D, "covariates": list(problem.dataset.covariates or ())},
        "spec": identity["spec"],
        "standardization": identity["standardization"],
        "labelling": "each draw relabelled against the highest-lp draw, then components sorted by the "
                     "posterior mean of " + ("the first slope" if _sorts_by_slope(problem.spec) else "the intercept"),
        "lp": "sample_stats.lp: log prior + log likelihood (no Jacobian, every constant) of the model as "
              "fitted, at each draw (models/oracle.py via bench/score/problem.py)",
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _sorts_by_slope(spec: MixtureSpec) -> bool:
    return spec.ordering == "slope" or (spec.ordering == "none" and not spec.intercept)


def _with_lp(draws: xr.DataTree, lp: np.ndarray, diverging: np.ndarray | None) -> xr.DataTree:
    ds = posterior_dataset(draws)
    stats = {"lp": (("chain", "draw"), lp)}
    if diverging is not None:
        stats["diverging"] = (("chain", "draw"), np.asarray(diverging, dtype=bool))
    coords = {"chain": ds["chain"].values, "draw": ds["draw"].values}
    return xr.DataTree.from_dict({"posterior": ds, "sample_stats": xr.Dataset(stats, coords=coords)})


def read_draws_file(path: str | Path, spec: MixtureSpec) -> xr.DataTree:
    """User-supplied draws -> canonical DataTree. MixbenchError (one line) when they do not fit.

    netCDF: a DataTree (or Dataset) whose posterior holds the canonical names (w, b, sigma, pi)
    with (chain, draw, ...) dims. CSV: one column per scalar, named ``w[k,d]``, ``b[k]``,
    ``sigma`` or ``sigma[k]``, ``pi[k]`` (0-based), and an optional ``chain`` column. The last
    weight may be left out (it is 1 minus the others: posteriordb's ``theta`` of a two-component
    mixture is ``pi[0]``). posteriordb draws (``.json.zip`` or ``.json``, bench.reference.posteriordb): a
    list of chains of 1-based scalar names, ``mu`` read as ``b`` and a scalar ``theta`` as the
    first weight.
    """
    path = Path(path)
    if not path.is_file():
        raise MixbenchError(f"reference draws {path}: not found")
    shapes = spec.param_shapes()
    if path.name.lower().endswith((".json.zip", ".json")):
        arrays = read_draws_zip(path)
        arrays.pop(LP_COLUMN, None)
        if "pi" in arrays and arrays["pi"].ndim == 2:  # posteriordb's scalar theta: the first of two weights
            arrays["pi"] = arrays["pi"][..., None]
        _fill_empty(arrays, shapes)
    elif path.suffix.lower() in (".nc", ".netcdf", ".h5"):
        try:
            with xr.open_datatree(path, engine="h5netcdf") as opened:
                tree = opened.load()
        except Exception as exc:  # noqa: BLE001 (any unreadable file is the same bad input)
            raise MixbenchError(f"reference draws {path}: not a readable netCDF file ({type(exc).__name__})") from None
        ds = tree["posterior"].to_dataset() if "posterior" in tree.children else tree.to_dataset()
        arrays = {}
        for name in shapes:
            if name not in ds.data_vars:
                if name == "pi" and spec.K > 1:
                    continue
                raise MixbenchError(f"reference draws {path}: no variable {name!r} (has {', '.join(map(str, ds.data_vars))})")
            arrays[name] = np.asarray(ds[name].transpose("chain", "draw", ...).values, dtype=float)
    elif path.suffix.lower() == ".csv":
        try:
            frame = pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001
            raise MixbenchError(f"reference draws {path}: malformed CSV ({str(exc).splitlines()[0]})") from None
        arrays = _arrays_from_columns(frame, spec, path)
    else:
        raise MixbenchError(f"reference draws {path}: expected a .nc, .csv or posteriordb .json.zip file")
    if "pi" not in arrays:
        raise MixbenchError(f"reference draws {path}: no weights (pi)")
    if arrays["pi"].shape[-1] == spec.K - 1:
        arrays["pi"] = np.concatenate([arrays["pi"], 1.0 - arrays["pi"].sum(axis=-1, keepdims=True)], axis=-1)
    for name, shape in shapes.items():
        if name not in arrays:
            raise MixbenchError(f"reference draws {path}: no {name!r} draws")
        if arrays[name].shape[2:] != shape:
            raise MixbenchError(f"reference draws {path}: {name} has shape {arrays[name].shape[2:]} per draw, "
                                f"the spec needs {shape}")
        if not np.isfinite(arrays[name]).all():
            raise MixbenchError(f"reference draws {path}: {name} has non-finite values")
    if np.any(np.abs(arrays["pi"].sum(axis=-1) - 1.0) > 1e-6) or np.any(arrays["pi"] < 0):
        raise MixbenchError(f"reference draws {path}: the weights (pi) are not on the simplex")
    return canonical_datatree(spec, {name: arrays[name] for name in shapes})


def _fill_empty(arrays: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """Parameters without a scalar (the slopes of D = 0) have no column in a draws file."""
    lead = next(iter(arrays.values())).shape[:2]
    arrays.update({name: np.zeros((*lead, *shape)) for name, shape in shapes.items()
                   if name not in arrays and 0 in shape})


def _arrays_from_columns(frame: pd.DataFrame, spec: MixtureSpec, path: Path) -> dict[str, np.ndarray]:
    chains = frame["chain"].to_numpy() if "chain" in frame.columns else np.zeros(len(frame), dtype=int)
    labels, counts = np.unique(chains, return_counts=True)
    if len(set(counts)) != 1:
        raise MixbenchError(f"reference draws {path}: chains have different numbers of draws ({counts.tolist()})")
    n = int(counts[0])

    def column(name: str) -> np.ndarray:
        if name not in frame.columns:
            raise MixbenchError(f"reference draws {path}: no column {name!r}")
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        return np.stack([values[chains == label] for label in labels]).reshape(len(labels), n)

    arrays = {}
    for name, shape in spec.param_shapes().items():
        if name == "pi" and f"pi[{spec.K - 1}]" not in frame.columns and spec.K > 1:
            shape = (spec.K - 1,)
        if not shape:
            arrays[name] = column(name) if name in frame.columns else column(f"{name}[0]")[..., None][..., 0]
            continue
        index = list(np.ndindex(*shape))
        if not index:
            arrays[name] = np.zeros((len(labels), n, *shape))
            continue
        stacked = np.stack([column(f"{name}[{','.join(map(str, i))}]") for i in index], axis=-1)
        arrays[name] = stacked.reshape(len(labels), n, *shape)
    return arrays


def reference_from_draws(problem: Problem, path: str | Path, name: str | None = None) -> Reference:
    """A reference from user-supplied draws (data scale): relabelled, with lp and diagnostics.

    The user vouches for these draws: the checks are recorded, not enforced.
    """
    path = Path(path)
    draws = read_draws_file(path, problem.spec)
    ds = posterior_dataset(draws)
    lp, _ = problem.draw_log_densities(draws, per_chain=ds.sizes["draw"])
    relabelled, settled = canonical_relabel(draws, lp, problem.spec)
    diag = diagnostics(relabelled)
    checks, reasons = _checks(diag, 0, 0, ds.sizes["chain"], ReferenceSettings(min_chains=1))
    info = _base_info(problem, name)
    info.update({
        "made_by": {"kind": "user-draws", "source_file": str(path.resolve()),
                    "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()},
        "diagnostics": {**diag, "divergences": None, "chains_used": int(ds.sizes["chain"]),
                        "chains_dropped": [], "relabelling_settled": bool(settled)},
        "checks": checks,
        "checks_note": "recorded, not enforced: the draws were supplied by the user",
        "accepted": True,
        "status": "accepted",
        "rejected_because": [],
        "warnings": reasons,
    })
    return Reference(_with_lp(relabelled, lp, None), info)


# ---------------------------------------------------------------------------------------------
# Writing, reading, caching


def write_reference(reference: Reference, directory: str | Path) -> Path:
    """Write ``draws.nc`` and ``info.json`` into ``directory`` (replaced whole, atomically)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    try:
        arrays = {name: np.asarray(values.transpose("chain", "draw", ...).values, dtype=float)
                  for name, values in reference.posterior.data_vars.items()}
        arrays[LP_COLUMN] = reference.lp
        write_draws_zip(arrays, tmp / DRAWS_ZIP)
        info = {**reference.info, **info_fields(reference.draws, reference.info), "format_version": FORMAT_VERSION}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, default=str))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    reference.path = directory
    return directory


def _spec_differences(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [k for k in keys if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True)]


def load_reference(directory: str | Path, problem: Problem | None = None) -> Reference:
    """Read a reference artefact, accepted or provisional (``Reference.status``); with ``problem``,
    refuse one made for other data, spec or scale.

    Every refusal is a one-line MixbenchError naming the artefact and the mismatch.
    """
    directory = Path(directory)
    info_path = directory / INFO_FILE
    draws_path = directory / DRAWS_ZIP if (directory / DRAWS_ZIP).is_file() else directory / DRAWS_FILE
    if not directory.is_dir() or not info_path.is_file() or not draws_path.is_file():
        raise MixbenchError(f"reference {directory}: not a reference directory (needs {INFO_FILE} and {DRAWS_ZIP})")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MixbenchError(f"reference {directory}: {INFO_FILE} is unreadable ({type(exc).__name__})") from None
    if info.get("format_version") not in READS_VERSIONS:
        raise MixbenchError(f"reference {directory}: format version {info.get('format_version')!r}, "
                            f"this mixbench reads {', '.join(map(str, READS_VERSIONS))}")
    if problem is not None:
        identity = problem.identity()
        made_for = info.get("data", {}).get("digest")
        if made_for != identity["data_digest"]:
            raise MixbenchError(f"reference {directory}: made for data digest {str(made_for)[:12]} "
                                f"({info.get('data', {}).get('name')}), not this data's {identity['data_digest'][:12]} "
                                f"({problem.dataset.name})")
        differ = _spec_differences(info.get("spec") or {}, identity["spec"])
        if differ:
            raise MixbenchError(f"reference {directory}: made for another spec (differs in {', '.join(differ)})")
        if json.dumps(info.get("standardization"), sort_keys=True) != json.dumps(identity["standardization"], sort_keys=True):
            raise MixbenchError(f"reference {directory}: made {'with' if info.get('standardization') else 'without'} "
                                f"--standardize, this run is {'with' if identity['standardization'] else 'without'}")
    if draws_path.name == DRAWS_ZIP:
        arrays = read_draws_zip(draws_path)
        lp = arrays.pop(LP_COLUMN, None)
        if lp is None:
            raise MixbenchError(f"reference {directory}: {DRAWS_ZIP} has no {LP_COLUMN!r} column")
        try:
            spec = MixtureSpec.from_dict(info.get("spec") or {})
            _fill_empty(arrays, spec.param_shapes())
            tree = canonical_datatree(spec, arrays)
        except (MixbenchError, ValueError, TypeError) as exc:
            raise MixbenchError(f"reference {directory}: its draws do not fit its spec "
                                f"({str(exc).splitlines()[0]})") from None
        return Reference(_with_lp(tree, lp, None), info, directory)
    try:
        # Loaded whole and the file closed: a reference stays readable (and replaceable) while runs use it.
        with xr.open_datatree(draws_path, engine="h5netcdf") as opened:
            draws = opened.load()
    except Exception as exc:  # noqa: BLE001
        raise MixbenchError(f"reference {directory}: {DRAWS_FILE} is unreadable ({type(exc).__name__})") from None
    return Reference(draws, info, directory)


def references_dir() -> Path:
    from backends.caches import cache_root, private_dir

    return private_dir(cache_root() / "references")  # loaded from: only a private directory


def cache_dir_for(problem: Problem, settings: ReferenceSettings, source: str | None = None) -> Path:
    """Where the cached reference of this problem (and these settings, or this user file) lives."""
    from backends.caches import cache_key

    parts = {"format": CACHE_KEY_VERSION, **problem.identity(),
             **({"source_sha256": source} if source else {"settings": settings.to_dict()})}
    return references_dir() / f"{problem.dataset.name}-{cache_key(parts)[:16]}"


def _cached(directory: Path, problem: Problem) -> Reference | None:
    return load_reference(directory, problem) if (directory / INFO_FILE).is_file() else None


def accepted_reference(problem: Problem) -> Reference | None:
    """An accepted cached reference of this problem made with any settings (newest first), or None.

    A reference made with other settings (more draws, another seed) describes the same posterior;
    an accepted one is preferred over a provisional one of the settings asked for.
    """
    root = references_dir()
    identity = problem.identity()
    found = []
    for info_path in root.glob(f"{problem.dataset.name}-*/{INFO_FILE}"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if (info.get("accepted") and info.get("format_version") in READS_VERSIONS
                and info.get("made_by", {}).get("kind") in ("nuts", "modes")
                and info.get("data", {}).get("digest") == identity["data_digest"]
                and not _spec_differences(info.get("spec") or {}, identity["spec"])
                and json.dumps(info.get("standardization"), sort_keys=True)
                == json.dumps(identity["standardization"], sort_keys=True)):
            found.append((str(info.get("created")), info_path.parent))
    return load_reference(max(found)[1], problem) if found else None
