"""Priors and other spec fields from the command line and from a spec file (TOML or JSON).

Everything here returns plain dicts of ``MixtureSpec`` fields (priors as nested dicts), the form a
harness cell carries; ``MixtureSpec.from_dict`` turns them into the spec and checks them.

A spec file holds ``MixtureSpec`` fields at its top level (or under a ``[spec]`` table), e.g. the
posteriordb model ``low_dim_gauss_mix`` (two ordered means, per-component sds with Normal(0, 2)
priors truncated at 0, a Beta(5, 5) weight, i.e. Dirichlet(5, 5))::

    K = 2
    intercept = true
    sigma = "per-component"
    ordering = "intercept"
    pi_alpha = 5.0
    intercept_prior = { mu = 0.0, sigma = 2.0 }
    sigma_prior = { family = "halfnormal", scale = 2.0 }
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from models.errors import MixbenchError
from models.spec import MixtureSpec, NormalPrior, SigmaPrior

SPEC_FIELDS = tuple(MixtureSpec.__dataclass_fields__)
_PRIOR_FIELDS = {"slope_prior": NormalPrior, "intercept_prior": NormalPrior, "sigma_prior": SigmaPrior}


def _number(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise MixbenchError(f"{option}: not a number: {text!r}") from None


def normal_prior_text(option: str, text: str) -> dict[str, float]:
    """'MU,SD' -> {"mu": MU, "sigma": SD}: a Normal(MU, SD) prior."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise MixbenchError(f"{option}: expected MU,SD (e.g. 0,10), got {text!r}")
    prior = NormalPrior(_number(option, parts[0]), _number(option, parts[1]))
    return {"mu": prior.mu, "sigma": prior.sigma}


def sigma_prior_text(option: str, text: str) -> dict[str, Any]:
    """'uniform:U' (Uniform(0, U)) or 'halfnormal:S' (HalfNormal(S)) -> {"family", "scale"}."""
    family, sep, scale = str(text).partition(":")
    if not sep:
        raise MixbenchError(f"{option}: expected uniform:UPPER or halfnormal:SCALE, got {text!r}")
    prior = SigmaPrior(family.strip().lower(), _number(option, scale))
    return {"family": prior.family, "scale": prior.scale}


def pi_alpha_text(option: str, text: str) -> float | list[float]:
    """'A' (every component) or 'A1,A2,...' (one per component): Dirichlet concentrations."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise MixbenchError(f"{option}: expected a concentration or a comma-separated list, got {text!r}")
    values = [_number(option, p) for p in parts]
    for value in values:
        if not value > 0:
            raise MixbenchError(f"{option}: concentrations must be positive, got {value}")
    return values[0] if len(values) == 1 else values


def check_spec_fields(fields: dict[str, Any], where: str) -> dict[str, Any]:
    """Field names and prior contents of a partial spec, checked; returned as plain values."""
    unknown = sorted(set(fields) - set(SPEC_FIELDS))
    if unknown:
        raise MixbenchError(f"{where}: unknown spec field(s) {', '.join(unknown)}; known: {', '.join(SPEC_FIELDS)}")
    out = dict(fields)
    for name, kind in _PRIOR_FIELDS.items():
        if name not in out:
            continue
        value = out[name]
        if not isinstance(value, dict):
            raise MixbenchError(f"{where}: {name} must be a table such as "
                                + ("{ mu = 0.0, sigma = 2.0 }" if kind is NormalPrior else
                                   '{ family = "uniform", scale = 1.0 }') + f", got {value!r}")
        keys = sorted(set(value) - set(kind.__dataclass_fields__))
        if keys:
            raise MixbenchError(f"{where}: {name} has unknown key(s) {', '.join(keys)}; "
                                f"known: {', '.join(kind.__dataclass_fields__)}")
        try:
            prior = kind(**value)
        except MixbenchError as exc:
            raise MixbenchError(f"{where}: {name}: {exc}") from None
        out[name] = {k: getattr(prior, k) for k in kind.__dataclass_fields__}
    if isinstance(out.get("pi_alpha"), tuple):
        out["pi_alpha"] = list(out["pi_alpha"])
    return out


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """A spec file (``.toml`` or ``.json``) -> its spec fields as a plain dict, checked.

    Raises MixbenchError (one line) for a missing, unreadable or malformed file, unknown fields
    or impossible prior values. ``D`` may be left out: a data file sets it from its columns.
    """
    path = Path(path)
    if not path.is_file():
        raise MixbenchError(f"spec file {path}: not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise MixbenchError(f"spec file {path}: cannot be read ({type(exc).__name__})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise MixbenchError(f"spec file {path}: expected a .toml or .json file")
    except tomllib.TOMLDecodeError as exc:
        raise MixbenchError(f"spec file {path}: malformed TOML ({str(exc).splitlines()[0]})") from None
    except json.JSONDecodeError as exc:
        raise MixbenchError(f"spec file {path}: malformed JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise MixbenchError(f"spec file {path}: must hold a table of spec fields")
    if set(data) == {"spec"} and isinstance(data["spec"], dict):
        data = data["spec"]
    return check_spec_fields(data, f"spec file {path}")
