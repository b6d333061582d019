"""posteriordb's reference-posterior layout, read and written.

posteriordb (Magnusson et al. 2024, https://github.com/stan-dev/posteriordb,
``doc/REFERENCE_POSTERIOR_DEFINITION.md``) stores a reference posterior as two files:

- ``<name>.json.zip``: a zip archive holding one JSON file, a list of chains, each a dict mapping
  a scalar's Stan name (1-based: ``mu[1]``, ``w[2,1]``, ``theta``) to the list of its draws;
- ``<name>.info.json``: ``name``, ``inference`` (``method``, ``method_arguments``), ``diagnostics``
  (``diagnostic_information.names``, ``ndraws``, ``nchains``, ``effective_sample_size_bulk``,
  ``effective_sample_size_tail``, ``r_hat``, ``divergent_transitions``), ``checks_made``,
  ``comments``, ``added_by``, ``added_date``, ``versions``.

Here the draws are named after mixbench's parameters (``w[k,d]``, ``b[k]``, ``sigma`` or
``sigma[k]``, ``pi[k]``, 1-based as Stan and posteriordb name them). posteriordb's own Gaussian
mixtures (``low_dim_gauss_mix``, ``normal_mixture``) name the locations ``mu`` and the first
weight ``theta``: read as they come, ``mu`` is the intercept ``b`` and ``theta`` (a scalar) the
first component's weight.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import arviz_stats as azs
import numpy as np

from bench.score.relabel import posterior_dataset
from models.errors import MixbenchError

# posteriordb's mixture names -> mixbench's (see the module docstring).
ALIASES = {"mu": "b", "theta": "pi"}


def scalar_names(name: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """(Stan name, 0-based index) of every scalar of a parameter: ``w[1,1]``, ... or ``sigma``."""
    if not shape:
        return [(name, ())]
    return [(f"{name}[{','.join(str(i + 1) for i in index)}]", index) for index in np.ndindex(*shape)]


def write_draws_zip(arrays: dict[str, np.ndarray], path: Path) -> None:
    """``arrays``: name -> (chain, draw, *shape) draws, written as posteriordb's json.zip."""
    chains = next(iter(arrays.values())).shape[0]
    listing = []
    for c in range(chains):
        chain = {}
        for name, arr in arrays.items():
            for stan_name, index in scalar_names(name, arr.shape[2:]):
                chain[stan_name] = [float(v) for v in arr[(c, slice(None), *index)]]
        listing.append(chain)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.name.removesuffix(".zip"), json.dumps(listing))
    path.write_bytes(buffer.getvalue())


def _parse(key: str) -> tuple[str, tuple[int, ...]]:
    """'w[2,1]' -> ('w', (1, 0)); 'theta' -> ('pi', ()) through ALIASES. MixbenchError on a bad index."""
    base, _, rest = key.partition("[")
    base = ALIASES.get(base, base)
    if not rest:
        return base, ()
    try:
        index = tuple(int(i) - 1 for i in rest.rstrip("]").split(","))
    except ValueError:
        raise MixbenchError(f"posteriordb draws: cannot read the index of {key!r}") from None
    if min(index) < 0:
        raise MixbenchError(f"posteriordb draws: {key!r} is not 1-based")
    return base, index


def read_draws_zip(path: Path) -> dict[str, np.ndarray]:
    """posteriordb draws (a ``.json.zip`` or a bare ``.json``) -> name -> (chain, draw, *shape).

    Shapes come from the largest index of each name; names go through ``ALIASES``. Whether they
    fit a spec is the caller's to check. Raises MixbenchError (one line) on a malformed file.
    """
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith(".json")]
                if len(members) != 1:
                    raise MixbenchError(f"reference draws {path}: expected one .json file in the zip, "
                                        f"found {len(members)}")
                listing = json.loads(archive.read(members[0]))
        else:
            listing = json.loads(path.read_text())
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MixbenchError(f"reference draws {path}: not posteriordb draws ({type(exc).__name__})") from None
    if not isinstance(listing, list) or not listing or not all(isinstance(c, dict) and c for c in listing):
        raise MixbenchError(f"reference draws {path}: expected a list of chains, each a dict of draws")
    if any(set(chain) != set(listing[0]) for chain in listing):
        raise MixbenchError(f"reference draws {path}: chains hold different parameters")
    try:
        columns = {key: np.array([chain[key] for chain in listing], dtype=float) for key in listing[0]}
    except (TypeError, ValueError):
        raise MixbenchError(f"reference draws {path}: draws of different lengths or not numbers") from None
    if any(values.ndim != 2 for values in columns.values()):
        raise MixbenchError(f"reference draws {path}: draws of different lengths or not numbers")
    grouped: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
    for key, values in columns.items():
        base, index = _parse(key)
        grouped.setdefault(base, {})[index] = values
    arrays = {}
    for base, scalars in grouped.items():
        shape = tuple(np.max(list(scalars), axis=0) + 1) if () not in scalars else ()
        if int(np.prod(shape)) != len(scalars):
            raise MixbenchError(f"reference draws {path}: {base} lacks some of its indices")
        first = next(iter(scalars.values()))
        arr = np.empty((*first.shape, *shape))
        for index, values in scalars.items():
            arr[(slice(None), slice(None), *index)] = values
        arrays[base] = arr
    return arrays


def info_fields(draws, info: dict) -> dict:
    """posteriordb's info fields of a reference (bench.reference.posterior.Reference's draws and info):
    ``inference``, ``diagnostics`` (per scalar, merged into mixbench's own), ``checks_made``,
    ``added_by``, ``added_date``, ``comments``. R-hat (rank-normalised split) and bulk / tail ESS
    from arviz-stats, on the relabelled draws, as posteriordb's R code computes them with posterior.
    """
    ds = posterior_dataset(draws)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        enough = ds.sizes["draw"] >= 4
        bulk = azs.ess(ds, method="bulk") if enough else None
        tail = azs.ess(ds, method="tail", prob=(0.05, 0.95)) if enough else None
        rhat = azs.rhat(ds) if enough and ds.sizes["chain"] >= 2 else None
    names, r_hat, ess_bulk, ess_tail = [], [], [], []
    for name in ds.data_vars:
        for stan_name, index in scalar_names(name, ds[name].shape[2:]):
            names.append(stan_name)
            for out, result in ((r_hat, rhat), (ess_bulk, bulk), (ess_tail, tail)):
                out.append(None if result is None else float(np.asarray(result[name].values)[index]))
    divergent = None
    if "sample_stats" in draws.children and "diverging" in draws["sample_stats"].data_vars:
        divergent = [int(v) for v in np.asarray(draws["sample_stats"]["diverging"].values).sum(axis=1)]
    made = info.get("made_by", {})
    settings = made.get("settings", {})
    checks = info.get("checks", {})
    if made.get("kind") == "modes":
        inference = {"method": "numpyro_nuts_per_mode_mass_weighted",
                     "method_arguments": {**settings, "seed": made.get("seed"),
                                          "mass": "bridge sampling (Meng & Wong 1996), checked by importance "
                                                  "sampling; the modes table is info.json's modes"}}
    elif made.get("kind") == "nuts":
        inference = {"method": f"{made.get('backend')}_nuts",
                     "method_arguments": {"chains": settings.get("chains"), "warmup": settings.get("warmup"),
                                          "draws": settings.get("draws"), "seed": made.get("seed"),
                                          "target_accept": settings.get("target_accept"),
                                          "engine": made.get("engine")}}
    else:
        inference = {"method": "user_draws", "method_arguments": {"source_file": made.get("source_file"),
                                                                  "source_sha256": made.get("source_sha256")}}
    return {
        "inference": inference,
        "diagnostics": {**info.get("diagnostics", {}), "diagnostic_information": {"names": names},
                        "ndraws": int(ds.sizes["chain"] * ds.sizes["draw"]), "nchains": int(ds.sizes["chain"]),
                        "effective_sample_size_bulk": ess_bulk, "effective_sample_size_tail": ess_tail,
                        "r_hat": r_hat, "divergent_transitions": divergent},
        "checks_made": {"ndraws_is_10k": int(ds.sizes["chain"] * ds.sizes["draw"]) >= 10000,
                        "nchains_is_gte_4": int(ds.sizes["chain"]) >= 4,
                        "ess_within_bounds": bool(checks.get("ess_bulk") and checks.get("ess_tail")),
                        "r_hat_below_1_01": bool(checks.get("rhat")),
                        "divergent_transitions_within_bounds": bool(checks.get("divergences"))},
        "comments": "; ".join(info.get("rejected_because") or []) or None,
        "added_by": "mixbench",
        "added_date": str(info.get("created", ""))[:10],
    }
