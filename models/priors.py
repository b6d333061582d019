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

``sigma_prior`` holds ``SigmaPrior``'s fields, SciPy's (shape, scale) with scale in sigma's units:
``{ family = "gamma", shape = 2.0, scale = 2.0 }`` is Gamma(shape 2, rate 0.5),
``{ family = "invgamma", shape = 3.0, scale = 1.0 }`` InverseGamma(3, 1) and
``{ family = "lognormal", shape = 1.0, scale = 1.0 }`` LogNormal(mu = log(scale) = 0, s = 1).

Robust and shared-slope variants (models/spec.py)::

    errors = "student-t"          # or "normal", the default
    nu = 4.0                      # fixed degrees of freedom, or a Gamma prior on them:
    # nu = { shape = 2.0, rate = 0.1 }   (Juárez & Steel 2010; the default under Student-t errors)
    shared = "slopes"             # one slope vector for every component ("none" by default),
                                  # or "intercepts": one intercept for every component
    weights = "softmax"           # pi_k(x) = softmax(gamma_k0 + x . gamma_k[1:]), last row 0;
                                  # "dirichlet" (constant weights) by default
    gamma_prior = { mu = 0.0, sigma = 2.5 }   # Normal prior on gamma's free rows (the default)
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

from models.errors import MixbenchError
from models.spec import GammaPrior, MixtureSpec, NormalPrior, SigmaPrior, _nu_value

SPEC_FIELDS = tuple(MixtureSpec.__dataclass_fields__)
_PRIOR_FIELDS = {"slope_prior": NormalPrior, "intercept_prior": NormalPrior, "sigma_prior": SigmaPrior,
                 "gamma_prior": NormalPrior}


def _number(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise MixbenchError(f"{option}: not a number: {text!r}") from None


def normal_prior_text(option: str, text: str) -> dict[str, float]:
    """A Normal(MU, SD) prior from its text.

    Parameters
    ----------
    option : str
        The option or field the text came from, named in the error.
    text : str
        ``"MU,SD"``.

    Returns
    -------
    dict
        ``{"mu": MU, "sigma": SD}``.

    Raises
    ------
    MixbenchError
        One line: not two numbers, or a value ``NormalPrior`` refuses.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise MixbenchError(f"{option}: expected MU,SD (e.g. 0,10), got {text!r}")
    try:
        prior = NormalPrior(_number(option, parts[0]), _number(option, parts[1]))
    except MixbenchError as exc:
        if str(exc).startswith(option):
            raise
        raise MixbenchError(f"{option}: {exc}") from None
    return {"mu": prior.mu, "sigma": prior.sigma}


SIGMA_PRIOR_HELP = (
    "uniform:UPPER (Uniform(0, UPPER)), halfnormal:SCALE, gamma:RATE (Gamma(shape 2, RATE), "
    "Chung et al. 2013's boundary-avoiding prior) or gamma:SHAPE,RATE, invgamma:A,B "
    "(InverseGamma(shape A, scale B)), lognormal:MU,S (log sigma ~ Normal(MU, S)); default uniform:1. "
    "Tied y values (m equal points) make the posterior improper at sigma = 0 unless the prior "
    "density vanishes there faster than sigma^(m-2): Uniform and HalfNormal never do (m >= 2), "
    "Gamma(shape a) only for m < a + 1 (shape 2: at most 2 ties); InverseGamma and LogNormal "
    "always do, and remove the collapsed mode")


def sigma_prior_text(option: str, text: str) -> dict[str, Any]:
    """The --sigma-prior text -> SigmaPrior fields {"family", "scale"[, "shape"]} (models/spec.py).

    Textbook parameters in, SciPy's (shape, scale) out: 'uniform:U' -> Uniform(0, U);
    'halfnormal:S'; 'gamma:RATE' (shape 2) or 'gamma:SHAPE,RATE' -> scale 1/RATE; 'invgamma:A,B'
    -> shape A, scale B; 'lognormal:MU,S' -> shape S, scale exp(MU).

    Parameters
    ----------
    option : str
        The option or field the text came from, named in the error.
    text : str

    Returns
    -------
    dict
        ``SigmaPrior.to_dict()``: ``family``, ``scale`` and, for a family with one, ``shape``.

    Raises
    ------
    MixbenchError
        One line: an unknown family, a wrong count of numbers, or a value out of range.
    """
    family, sep, rest = str(text).partition(":")
    family = family.strip().lower()
    values = [_number(option, part.strip()) for part in rest.split(",")] if sep else []
    counts = {"uniform": (1,), "halfnormal": (1,), "gamma": (1, 2), "invgamma": (2,), "lognormal": (2,)}
    if not sep or (family in counts and len(values) not in counts[family]):
        raise MixbenchError(f"{option}: expected uniform:UPPER, halfnormal:SCALE, gamma:[SHAPE,]RATE, "
                            f"invgamma:A,B or lognormal:MU,S, got {text!r}")
    if family == "gamma":
        shape, rate = ([2.0] + values)[-2:]
        if not (math.isfinite(rate) and rate > 0):
            raise MixbenchError(f"{option}: the gamma rate must be a positive finite number, got {rate!r}")
        prior = SigmaPrior(family, 1.0 / rate, shape)
    elif family == "invgamma":
        prior = SigmaPrior(family, values[1], values[0])
    elif family == "lognormal":
        if not abs(values[0]) < 700:  # exp(MU) must be a finite double
            raise MixbenchError(f"{option}: the lognormal MU must be finite and within +-700, got {values[0]!r}")
        prior = SigmaPrior(family, math.exp(values[0]), values[1])
    else:
        prior = SigmaPrior(family, *values[:1])
    return prior.to_dict()


NU_HELP = ("Student-t degrees of freedom (with --errors student-t): a number fixes nu, gamma:SHAPE,RATE "
           "gives it a Gamma(SHAPE, RATE) prior; default gamma:2,0.1 (Juárez & Steel 2010)")


def nu_text(option: str, text: str) -> float | dict[str, float]:
    """The --nu text -> the spec's ``nu``: 'NU' (fixed) or 'gamma:SHAPE,RATE' (a prior)."""
    family, sep, rest = str(text).partition(":")
    if not sep:
        return _nu_spec_value(option, _number(option, family.strip()))
    parts = [p.strip() for p in rest.split(",")]
    if family.strip().lower() != "gamma" or len(parts) != 2:
        raise MixbenchError(f"{option}: expected a number or gamma:SHAPE,RATE, got {text!r}")
    return _nu_spec_value(option, {"shape": _number(option, parts[0]), "rate": _number(option, parts[1])})


def _nu_spec_value(where: str, value) -> float | dict[str, float]:
    try:
        nu = _nu_value(value)
    except MixbenchError as exc:
        raise MixbenchError(f"{where}: {exc}") from None
    return nu.to_dict() if isinstance(nu, GammaPrior) else nu


def pi_alpha_text(option: str, text: str) -> float | list[float]:
    """Dirichlet concentrations from their text.

    Parameters
    ----------
    option : str
        The option or field the text came from, named in the error.
    text : str
        ``"A"`` (every component) or ``"A1,A2,..."`` (one per component).

    Returns
    -------
    float or list of float

    Raises
    ------
    MixbenchError
        One line: empty, not numbers, or a concentration that is not positive.
    """
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise MixbenchError(f"{option}: expected a concentration or a comma-separated list, got {text!r}")
    values = [_number(option, p) for p in parts]
    for value in values:
        if not value > 0:
            raise MixbenchError(f"{option}: concentrations must be positive, got {value}")
    return values[0] if len(values) == 1 else values


def check_spec_fields(fields: dict[str, Any], where: str) -> dict[str, Any]:
    """Field names and prior contents of a partial spec (a spec file's, a sweep's), checked.

    Parameters
    ----------
    fields : dict
        Some of ``MixtureSpec``'s fields.
    where : str
        Where they came from, named in the error.

    Returns
    -------
    dict
        The fields as plain values (priors as dicts).

    Raises
    ------
    MixbenchError
        An unknown field, or a prior with unknown keys or values out of range.
    """
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
        out[name] = prior.to_dict() if kind is SigmaPrior else {k: getattr(prior, k) for k in kind.__dataclass_fields__}
    if out.get("nu") is not None:
        out["nu"] = _nu_spec_value(where, out["nu"])
    if isinstance(out.get("pi_alpha"), tuple):
        out["pi_alpha"] = list(out["pi_alpha"])
    return out


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """A spec file (``.toml`` or ``.json``) -> its spec fields as a plain dict, checked.

    ``D`` may be left out: a data file sets it from its columns.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    dict
        The spec fields (``check_spec_fields``).

    Raises
    ------
    MixbenchError
        One line: a missing, unreadable or malformed file, unknown fields or impossible prior
        values.
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
