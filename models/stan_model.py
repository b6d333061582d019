"""The mixture of regressions as a Stan program (stan/mixture.stan), beside its PyMC model
(models/pymc_model.py) and its NumPyro model (models/numpyro_model.py): the program's text, its
data block, and the canonical <-> native maps (``stan_parameters`` to the parameters block,
``flat_to_canonical`` from either engine's output columns back to canonical arrays).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from models.data import Dataset
from models.spec import MixtureSpec

# stan/ at the repository root; a wheel carries the same file inside this package (pyproject.toml).
_REPO_PROGRAM = Path(__file__).resolve().parents[1] / "stan" / "mixture.stan"
PROGRAM_PATH = _REPO_PROGRAM if _REPO_PROGRAM.is_file() else Path(__file__).resolve().parents[1] / "backends" / "stan_programs" / "mixture.stan"

# Canonical name -> the Stan variable holding it (transformed parameters assemble w and b).
STAN_NAMES = {"w": "w", "b": "b", "sigma": "sigma", "nu": "nu", "pi": "theta", "gamma": "gamma"}
_ORDERING_CODE = {"none": 0, "intercept": 1, "slope": 2}
SIGMA_FAMILY_CODE = {"uniform": 1, "halfnormal": 2, "gamma": 3, "invgamma": 4, "lognormal": 5}
# pystan writes Stan indices with dots (w.1.2), cmdstanpy with brackets (w[1,2]).
_FLAT_NAME = re.compile(r"(?P<base>[A-Za-z]\w*?)(?:\[(?P<brackets>\d+(?:,\s*\d+)*)\]|(?P<dots>(?:\.\d+)+))?")

@lru_cache(maxsize=1)
def program_code() -> str:
    return PROGRAM_PATH.read_text()



# --- data and parameters -------------------------------------------------------------------------

def stan_data(spec: MixtureSpec, dataset: Dataset) -> dict[str, Any]:
    """The data block of stan/mixture.stan for ``spec`` and ``dataset``."""
    dataset.check_against(spec)
    return {
        "N": dataset.N,
        "K": spec.K,
        "D": spec.D,
        "x": dataset.x,
        "y": dataset.y,
        "has_intercept": int(spec.intercept),
        "sigma_per_component": int(spec.sigma == "per-component"),
        "alpha": spec.alpha,
        "slope_mu": spec.slope_prior.mu,
        "slope_sd": spec.slope_prior.sigma,
        "intercept_mu": spec.intercept_prior.mu,
        "intercept_sd": spec.intercept_prior.sigma,
        "sigma_family": SIGMA_FAMILY_CODE[spec.sigma_prior.family],
        "sigma_scale": spec.sigma_prior.scale,
        "sigma_shape": spec.sigma_prior.shape or 0.0,
        "ordering": _ORDERING_CODE[spec.ordering],
        "shared_slopes": int(spec.shared == "slopes"),
        "shared_intercepts": int(spec.shared == "intercepts"),
        "softmax_weights": int(spec.softmax_weights),
        "gamma_mu": spec.gamma_prior.mu,
        "gamma_sd": spec.gamma_prior.sigma,
        "errors": 0 if spec.errors == "normal" else (2 if spec.nu_is_parameter else 1),
        "nu_fixed": 0.0 if spec.errors == "normal" or spec.nu_is_parameter else spec.nu,
        "nu_shape": spec.nu.shape if spec.nu_is_parameter else 0.0,
        "nu_rate": spec.nu.rate if spec.nu_is_parameter else 0.0,
    }


def stan_parameters(spec: MixtureSpec, params: dict) -> dict[str, np.ndarray]:
    """A canonical constrained point -> the variables of the program's parameters block."""
    p = spec.check_params(params)
    w = p["w"]
    by_slope, by_intercept = spec.ordering == "slope", spec.ordering == "intercept"
    b = p["b"] if spec.intercept else np.zeros(0)
    if spec.shared == "intercepts":
        b = b[:1]
    return {
        "theta": np.ones(1) if spec.softmax_weights else p["pi"],
        "gamma_free": p["gamma"][:-1] if spec.softmax_weights else np.zeros((0, spec.D + 1)),
        "w_first_ordered": w[:, 0] if by_slope else np.zeros(0),
        "w_free": w[:, 1:] if by_slope else (w[:1] if spec.shared == "slopes" else w),
        "b_ordered": b if by_intercept else np.zeros(0),
        "b_free": np.zeros(0) if by_intercept else b,
        "sigma": np.atleast_1d(p["sigma"]),
        "nu": np.atleast_1d(p["nu"]) if spec.nu_is_parameter else np.zeros(0),
    }


def in_support(spec: MixtureSpec, params: dict) -> bool:
    """Whether a canonical point lies where the program's constraints can represent it."""
    p = spec.check_params(params)
    sigma = np.atleast_1d(p["sigma"])
    if spec.softmax_weights:
        if np.any(p["gamma"][-1] != 0):
            return False
    elif np.any(p["pi"] < 0) or abs(p["pi"].sum() - 1.0) > 1e-8:
        return False
    if spec.shared == "intercepts" and np.any(p["b"] != p["b"][:1]):
        return False
    if np.any(sigma <= 0) or np.any(sigma >= spec.sigma_prior.upper):
        return False
    if spec.nu_is_parameter and not p["nu"] > 0:
        return False
    if spec.shared == "slopes" and np.any(p["w"] != p["w"][:1]):
        return False
    if spec.ordering != "none":
        ordered = p["b"] if spec.ordering == "intercept" else p["w"][:, 0]
        if np.any(np.diff(ordered) <= 0):
            return False
    return True


def parse_flat_name(name: str) -> tuple[str, tuple[int, ...]]:
    """'w.1.2' or 'w[1,2]' -> ('w', (0, 1)); 'lp__' -> ('lp__', ())."""
    match = _FLAT_NAME.fullmatch(name.strip())
    if match is None:
        raise ValueError(f"not a Stan output column name: {name!r}")
    index = match["brackets"] or (match["dots"] or "")[1:].replace(".", ",")
    return match["base"], tuple(int(i) - 1 for i in index.split(",")) if index else ()


def _stan_shape(spec: MixtureSpec, canonical: str) -> tuple[int, ...]:
    return {"w": (spec.K, spec.D), "b": (spec.K,), "sigma": (spec.n_sigma,), "nu": (1,), "pi": (spec.K,),
            "gamma": (spec.K, spec.D + 1)}[canonical]


def flat_to_canonical(spec: MixtureSpec, columns: Sequence[str], values: np.ndarray) -> dict[str, np.ndarray]:
    """Stan output columns -> canonical arrays.

    ``values`` has shape (chain, draw, column), ``columns`` names its last axis in either
    engine's spelling. Returns {canonical name: array (chain, draw, *canonical shape)}.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 3 or values.shape[2] != len(columns):
        raise ValueError(f"values of shape {values.shape} do not match {len(columns)} columns")
    where = {parse_flat_name(name): j for j, name in enumerate(columns)}
    lead = values.shape[:2]
    out = {}
    for canonical, shape in spec.param_shapes().items():
        stan_name, stan_shape = STAN_NAMES[canonical], _stan_shape(spec, canonical)
        array = np.empty(lead + stan_shape)
        for index in np.ndindex(*stan_shape):
            key = (stan_name, index)
            if key not in where:
                raise ValueError(f"Stan output has no column for {stan_name}{[i + 1 for i in index]}")
            array[(..., *index)] = values[..., where[key]]
        out[canonical] = array.reshape(lead + shape)
    return out


def n_unconstrained(spec: MixtureSpec) -> int:
    """Dimension of the program's unconstrained space (a K-simplex has K - 1 free coordinates)."""
    slopes = spec.D if spec.shared == "slopes" else spec.K * spec.D
    intercepts = (1 if spec.shared == "intercepts" else spec.K) if spec.intercept else 0
    weights = (spec.K - 1) * (spec.D + 1) if spec.softmax_weights else spec.K - 1
    return weights + slopes + intercepts + spec.n_sigma + int(spec.nu_is_parameter)
