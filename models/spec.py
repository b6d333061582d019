"""The mixture-of-regressions spec: one definition, consumed by every backend.

    y_n ~ sum_k pi_k f(y_n | b_k + x_n . w_k, sigma_k)

with f the Normal density (``errors = "normal"``, the default) or Student-t with nu degrees of
freedom (``errors = "student-t"``: robust mixture regression, Yao, Wei & Yu 2014), nu fixed or
given a Gamma(shape, rate) prior, Gamma(2, 0.1) by default (Juárez & Steel 2010). With
``shared = "slopes"`` one slope vector serves every component (y = x . w + b_z + sigma_z eps: the
components differ in intercept and scale only); w keeps its (K, D) shape with K identical rows,
so relabelling and every per-component metric read it unchanged; ``shared = "intercepts"`` does
the same for b (components differing in slopes and scale only), b keeping K identical entries.

Mixing weights are constant, pi ~ Dirichlet(alpha) (``weights = "dirichlet"``, the default), or
a softmax regression on the covariates (``weights = "softmax"``: a mixture of experts, Jacobs,
Jordan, Nowlan & Hinton 1991; flexmix's concomitant variables, Grün & Leisch 2008):

    pi_k(x_n) = softmax_k(gamma_k0 + x_n . gamma_k[1:]),   gamma_K = 0 (the reference category),

gamma of shape (K, D + 1) with its last row fixed at 0 (a softmax is unchanged by adding one
vector to every row, so without a reference the rows are not identified). The free rows have iid
Normal(mu, s) priors, Normal(0, 2.5) by default: rstanarm's default for GLM coefficients, the
weakly informative scale of Gelman, Jakulin, Pittau & Su (2008) for logistic regression, which
keeps a gate's log odds within about +-5 per unit covariate a priori. Under softmax weights pi is
not a parameter; gamma takes its place.

with pi ~ Dirichlet(alpha), w_kd ~ Normal(mu, s), b_k ~ Normal(mu, s) (when there are intercepts),
sigma shared by all components or one per component, with a Uniform(0, upper), HalfNormal(s),
Gamma, InverseGamma or LogNormal prior (``SigmaPrior``). The defaults are the forum thread's: Dirichlet(1), Normal(0, 2), Uniform(0, 1).

An optional ordering constraint (components ordered by intercept or by their first slope) makes
components identifiable. Under it the prior on the ordered vector is the iid prior restricted to
the ordered region, whose mass is 1/K!, so its density carries a +log(K!) constant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import numpy as np

from models.errors import MixbenchError

SigmaMode = Literal["shared", "per-component"]
Ordering = Literal["none", "intercept", "slope"]
Likelihood = Literal["mixture", "forum-original", "forum-batch-lse", "forum-log-sigma"]

SIGMA_MODES = ("shared", "per-component")
ORDERINGS = ("none", "intercept", "slope")
# "mixture" is the correct per-observation mixture. The others replay the forum thread's model:
# "forum-original" as posted (log-sum-exp over whole-batch sums, and log(sigma) counted once
# where the normal needs 2 log(sigma) per observation); "forum-batch-lse" keeps only the first
# bug, "forum-log-sigma" only the second (per observation: -0.5 (log 2 pi + log sigma + z^2)).
LIKELIHOODS = ("mixture", "forum-original", "forum-batch-lse", "forum-log-sigma")
ERRORS = ("normal", "student-t")
SHARED = ("none", "slopes", "intercepts")
WEIGHTS = ("dirichlet", "softmax")


def _positive_finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MixbenchError(f"{name}: must be a number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise MixbenchError(f"{name}: must be a positive finite number, got {value!r}")
    return value


def _finite(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise MixbenchError(f"{name}: must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise MixbenchError(f"{name}: must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class NormalPrior:
    mu: float = 0.0
    sigma: float = 2.0

    def __post_init__(self):
        object.__setattr__(self, "mu", _finite("Normal prior mu", self.mu))
        object.__setattr__(self, "sigma", _positive_finite("Normal prior sigma", self.sigma))


SIGMA_FAMILIES = ("uniform", "halfnormal", "gamma", "invgamma", "lognormal")


@dataclass(frozen=True)
class SigmaPrior:
    """Prior on each noise scale sigma, every family written as (shape, scale) as SciPy writes it,
    ``scale`` in sigma's units:

    - ``uniform``: Uniform(0, scale);  ``halfnormal``: HalfNormal(scale);
    - ``gamma``: Gamma(shape, rate = 1/scale), shape 2 by default: the boundary-avoiding prior of
      Chung, Rabe-Hesketh, Dorie, Gelman & Liu (2013), Psychometrika 78(4), density ~ sigma at 0;
    - ``invgamma``: InverseGamma(shape a, scale b = scale), density b^a / Gamma(a) s^(-a-1) e^(-b/s);
    - ``lognormal``: LogNormal(mu = log(scale), s = shape), i.e. log sigma ~ Normal(mu, s).

    Tied data: with m observations at one value, a component's location sitting on them and its
    sigma -> 0 gives a likelihood ~ sigma^(-m) (times a location width ~ sigma once the location is
    integrated out: sigma^(1 - m)). A prior density ~ sigma^(a - 1) near 0 leaves
    sigma^(a - m) d sigma, integrable only when a - m > -1, i.e. a > m - 1: Uniform and
    HalfNormal (a = 1) do not keep the posterior proper for m >= 2 ties, nor does Gamma(2, rate)
    (a = 2) for m >= 3 (with 8 ties the mass near 0 grows like sigma^-6). InverseGamma (e^(-b/s))
    and LogNormal (e^(-(log s)^2 / 2 s^2)) vanish faster than any power, so any number of ties
    leaves a proper posterior and a finite mode away from 0.
    """

    family: Literal["uniform", "halfnormal", "gamma", "invgamma", "lognormal"] = "uniform"
    scale: float = 1.0
    shape: float | None = None

    def __post_init__(self):
        if self.family not in SIGMA_FAMILIES:
            raise MixbenchError(
                f"sigma prior family: must be one of {', '.join(SIGMA_FAMILIES)}, got {self.family!r}"
            )
        object.__setattr__(self, "scale", _positive_finite("sigma prior scale", self.scale))
        shape = self.shape
        if self.family in ("uniform", "halfnormal"):
            if shape is not None:
                raise MixbenchError(f"sigma prior shape: a {self.family} prior has none, got {shape!r}")
            return
        if shape is None:
            if self.family != "gamma":
                raise MixbenchError(f"sigma prior shape: required for a {self.family} prior")
            shape = 2.0
        object.__setattr__(self, "shape", _positive_finite("sigma prior shape", shape))

    @property
    def upper(self) -> float:
        """Upper bound of sigma's support (inf for every family but Uniform)."""
        return self.scale if self.family == "uniform" else math.inf

    def describe(self) -> str:
        """The prior in the textbook parameters the CLI takes, e.g. 'Gamma(shape 2, rate 0.5)'."""
        s, a = self.scale, self.shape
        if self.family == "uniform":
            return f"Uniform(0, {s:g})"
        if self.family == "halfnormal":
            return f"HalfNormal({s:g})"
        if self.family == "gamma":
            return f"Gamma(shape {a:g}, rate {1 / s:g})"
        if self.family == "invgamma":
            return f"InverseGamma({a:g}, {s:g})"
        return f"LogNormal({math.log(s):g}, {a:g})"

    def to_dict(self) -> dict:
        """Fields as a plain dict; ``shape`` only where the family has one, so the specs of older
        runs keep their identity."""
        out = {"family": self.family, "scale": self.scale}
        if self.shape is not None:
            out["shape"] = self.shape
        return out


@dataclass(frozen=True)
class GammaPrior:
    """Gamma(shape, rate) prior on the Student-t degrees of freedom nu (mean shape / rate).

    The default Gamma(2, 0.1) is Juárez & Steel (2010, JBES 28(1)): mode 10, mean 20, 5% of its
    mass below nu = 3.6 and 5% above 47, so it lets the data choose between heavy tails and
    nearly normal ones; Stan's prior-choice recommendations and brms use it as their default.
    """

    shape: float = 2.0
    rate: float = 0.1

    def __post_init__(self):
        object.__setattr__(self, "shape", _positive_finite("nu prior shape", self.shape))
        object.__setattr__(self, "rate", _positive_finite("nu prior rate", self.rate))

    def to_dict(self) -> dict:
        return {"shape": self.shape, "rate": self.rate}


def _nu_value(value):
    """A spec's ``nu``: a fixed number, a GammaPrior, or its dict; anything else raises."""
    if isinstance(value, GammaPrior):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(GammaPrior.__dataclass_fields__))
        if unknown:
            raise MixbenchError(f"nu: unknown key(s) {', '.join(unknown)}; known: shape, rate")
        return GammaPrior(**value)
    if isinstance(value, bool):
        raise MixbenchError(f"nu: must be a positive number or a {{shape, rate}} Gamma prior, got {value!r}")
    return _positive_finite("nu", value)


@dataclass(frozen=True)
class MixtureSpec:
    """A Bayesian mixture of K linear regressions on D covariates."""

    K: int = 2
    D: int = 1
    intercept: bool = False
    sigma: SigmaMode = "shared"
    pi_alpha: float | tuple[float, ...] = 1.0
    slope_prior: NormalPrior = field(default_factory=NormalPrior)
    intercept_prior: NormalPrior = field(default_factory=NormalPrior)
    sigma_prior: SigmaPrior = field(default_factory=SigmaPrior)
    ordering: Ordering = "none"
    likelihood: Likelihood = "mixture"
    errors: Literal["normal", "student-t"] = "normal"
    # Student-t degrees of freedom: a fixed number or a GammaPrior; None (the default) means
    # GammaPrior() under Student-t errors and nothing under normal ones.
    nu: float | GammaPrior | None = None
    shared: Literal["none", "slopes", "intercepts"] = "none"
    weights: Literal["dirichlet", "softmax"] = "dirichlet"
    gamma_prior: NormalPrior = field(default_factory=lambda: NormalPrior(0.0, 2.5))

    def __post_init__(self):
        for name in ("K", "D"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise MixbenchError(f"{name}: must be an integer, got {value!r}")
        if self.K < 1:
            raise MixbenchError(f"K: must be at least 1 component, got {self.K}")
        if self.D < 0:
            raise MixbenchError(f"D: must be at least 0 covariates, got {self.D}")
        if not isinstance(self.intercept, (bool, np.bool_)):
            raise MixbenchError(f"intercept: must be true or false, got {self.intercept!r}")
        if self.D == 0 and not self.intercept:
            raise MixbenchError("intercept: required when D = 0 (an intercept-only Gaussian mixture)")
        if self.sigma not in SIGMA_MODES:
            raise MixbenchError(f"sigma: must be one of {', '.join(SIGMA_MODES)}, got {self.sigma!r}")
        if self.ordering not in ORDERINGS:
            raise MixbenchError(
                f"ordering: must be one of {', '.join(ORDERINGS)}, got {self.ordering!r}"
            )
        if self.ordering == "intercept" and not self.intercept:
            raise MixbenchError("ordering: 'intercept' needs intercepts: --intercept, or intercept = true in a spec file")
        if self.ordering == "slope" and self.D == 0:
            raise MixbenchError("ordering: 'slope' needs at least one covariate (D >= 1)")
        if self.likelihood not in LIKELIHOODS:
            raise MixbenchError(
                f"likelihood: must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}"
            )
        if self.errors not in ERRORS:
            raise MixbenchError(f"errors: must be one of {', '.join(ERRORS)}, got {self.errors!r}")
        if self.errors == "normal":
            if self.nu is not None:
                raise MixbenchError("nu: only for errors = 'student-t'")
        else:
            object.__setattr__(self, "nu", GammaPrior() if self.nu is None else _nu_value(self.nu))
        if self.shared not in SHARED:
            raise MixbenchError(f"shared: must be one of {', '.join(SHARED)}, got {self.shared!r}")
        if self.shared == "slopes" and self.D == 0:
            raise MixbenchError("shared: 'slopes' needs at least one covariate (D >= 1)")
        if self.shared == "slopes" and self.ordering == "slope":
            raise MixbenchError("ordering: 'slope' cannot order components that share their slopes")
        if self.shared == "intercepts" and not self.intercept:
            raise MixbenchError("shared: 'intercepts' needs intercepts: --intercept, or intercept = true in a spec file")
        if self.shared == "intercepts" and self.ordering == "intercept":
            raise MixbenchError("ordering: 'intercept' cannot order components that share their intercepts")
        if self.shared == "intercepts" and self.D == 0:
            raise MixbenchError("shared: 'intercepts' with D = 0 leaves components that differ in scale only; "
                                "use intercept-only components instead")
        if self.weights not in WEIGHTS:
            raise MixbenchError(f"weights: must be one of {', '.join(WEIGHTS)}, got {self.weights!r}")
        if self.likelihood != "mixture" and (self.errors != "normal" or self.shared != "none"
                                             or self.weights != "dirichlet"):
            raise MixbenchError(f"likelihood: {self.likelihood!r} replays the forum's normal mixture; "
                                "it takes neither Student-t errors, shared coefficients nor softmax weights")
        alpha = self.pi_alpha
        if isinstance(alpha, (list, tuple, np.ndarray)):
            if len(alpha) != self.K:
                raise MixbenchError(
                    f"pi_alpha: has {len(alpha)} concentrations but K = {self.K}"
                )
            alpha = tuple(_positive_finite("pi_alpha", a) for a in alpha)
        else:
            alpha = _positive_finite("pi_alpha", alpha)
        object.__setattr__(self, "pi_alpha", alpha)
        for name, kind in (("slope_prior", NormalPrior), ("intercept_prior", NormalPrior),
                           ("sigma_prior", SigmaPrior), ("gamma_prior", NormalPrior)):
            if not isinstance(getattr(self, name), kind):
                raise MixbenchError(f"{name}: must be a {kind.__name__}")

    @property
    def alpha(self) -> np.ndarray:
        """Dirichlet concentration as a length-K vector."""
        return np.broadcast_to(np.asarray(self.pi_alpha, dtype=float), (self.K,)).copy()

    @property
    def n_sigma(self) -> int:
        return 1 if self.sigma == "shared" else self.K

    @property
    def nu_is_parameter(self) -> bool:
        """Whether nu is a parameter (Student-t errors with a prior on it) rather than fixed."""
        return isinstance(self.nu, GammaPrior)

    @property
    def softmax_weights(self) -> bool:
        """Whether the weights are a softmax regression on the covariates (parameter gamma)."""
        return self.weights == "softmax"

    @property
    def log_order_constant(self) -> float:
        """log(K!) when an ordering constraint restricts the iid prior to one of K! regions."""
        return math.lgamma(self.K + 1) if self.ordering != "none" else 0.0

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical parameter names and their shapes.

        Returns
        -------
        dict of str to tuple of int
            ``w`` (K, D), ``b`` (K,) with intercepts, ``sigma`` () shared or (K,), ``nu`` () when
            a parameter, ``pi`` (K,) or, under softmax weights, ``gamma`` (K, D + 1) (column 0
            the gate's intercept, last row the reference, 0); without the (chain, draw) axes.
        """
        shapes = {"w": (self.K, self.D)}
        if self.intercept:
            shapes["b"] = (self.K,)
        shapes["sigma"] = () if self.sigma == "shared" else (self.K,)
        if self.nu_is_parameter:
            shapes["nu"] = ()
        if self.softmax_weights:
            shapes["gamma"] = (self.K, self.D + 1)
        else:
            shapes["pi"] = (self.K,)
        return shapes

    def param_dims(self) -> dict[str, list[str]]:
        """Canonical dims of each parameter, as ArviZ ``dims`` takes them.

        Returns
        -------
        dict of str to list of str
            ``component`` and ``covariate`` names in ``param_shapes``' order, without
            (chain, draw).
        """
        dims = {"w": ["component", "covariate"]}
        if self.intercept:
            dims["b"] = ["component"]
        dims["sigma"] = [] if self.sigma == "shared" else ["component"]
        if self.nu_is_parameter:
            dims["nu"] = []
        if self.softmax_weights:
            dims["gamma"] = ["component", "gate_term"]
        else:
            dims["pi"] = ["component"]
        return dims

    def check_params(self, params: dict) -> dict[str, np.ndarray]:
        """A parameter point checked against the spec.

        Parameters
        ----------
        params : dict
            Exactly the spec's parameters (``param_shapes``), array_like.

        Returns
        -------
        dict of str to ndarray
            The same point as float arrays.

        Raises
        ------
        MixbenchError
            A parameter missing or unexpected, or of the wrong shape.
        """
        shapes = self.param_shapes()
        missing = sorted(set(shapes) - set(params))
        if missing:
            raise MixbenchError(f"params: missing {', '.join(missing)}")
        extra = sorted(set(params) - set(shapes))
        if extra:
            raise MixbenchError(f"params: unexpected {', '.join(extra)} for this spec")
        out = {}
        for name, shape in shapes.items():
            value = np.asarray(params[name], dtype=float)
            if value.shape != shape:
                raise MixbenchError(f"params.{name}: shape {value.shape}, expected {shape}")
            out[name] = value
        return out

    def with_(self, **changes) -> "MixtureSpec":
        """This spec with the fields named in ``changes`` replaced (its checks run again).

        Raises
        ------
        MixbenchError
            A changed field the spec refuses.
        """
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """The spec as plain data (JSON-ready), as ``from_dict`` takes it back; errors, nu and
        shared, weights and gamma_prior only where they differ from their defaults, so the specs of older runs keep their
        identity."""
        out = asdict(self)
        out["sigma_prior"] = self.sigma_prior.to_dict()
        if self.weights == "dirichlet":
            del out["weights"], out["gamma_prior"]
        if self.errors == "normal":
            del out["errors"], out["nu"]
        else:
            out["nu"] = self.nu.to_dict() if isinstance(self.nu, GammaPrior) else self.nu
        if self.shared == "none":
            del out["shared"]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "MixtureSpec":
        """The spec ``to_dict`` gave (a row's, a file's).

        Raises
        ------
        MixbenchError
            An unknown field or prior key, or a value the spec refuses.
        """
        data = dict(data)
        for name, kind in (("slope_prior", NormalPrior), ("intercept_prior", NormalPrior),
                           ("sigma_prior", SigmaPrior), ("gamma_prior", NormalPrior)):
            if name in data and isinstance(data[name], dict):
                unknown = sorted(set(data[name]) - set(kind.__dataclass_fields__))
                if unknown:
                    raise MixbenchError(f"{name}: unknown key(s) {', '.join(unknown)}; "
                                        f"known: {', '.join(kind.__dataclass_fields__)}")
                data[name] = kind(**data[name])
        if isinstance(data.get("pi_alpha"), list):
            data["pi_alpha"] = tuple(data["pi_alpha"])
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise MixbenchError(f"spec: unknown field(s) {', '.join(unknown)}")
        return cls(**data)

    def overridden(self, changes: dict) -> "MixtureSpec":
        """This spec with the fields of ``changes`` (a spec dict, as a cell or the CLI holds it)
        replacing its own. Changing ``errors`` without giving ``nu`` drops this spec's nu, so a
        Student-t scenario can be fitted with normal errors and the other way round."""
        base = self.to_dict()
        if "errors" in changes and "nu" not in changes:
            base.pop("nu", None)
        return MixtureSpec.from_dict({**base, **changes})


def random_point(spec: MixtureSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random parameter point inside the prior's support (ordered when the spec orders).

    Not a draw from the prior: slopes and intercepts N(0, 1.5), sigma uniform on
    (0.05, 0.95) x min(upper bound, 3 x scale), pi Dirichlet(2): points for testing densities
    where they are moderate.

    Parameters
    ----------
    spec : MixtureSpec
    rng : numpy.random.Generator

    Returns
    -------
    dict of str to ndarray
        The spec's parameters in their shapes (``MixtureSpec.param_shapes``).
    """
    point = {"w": rng.normal(0.0, 1.5, size=(spec.K, spec.D))}
    if spec.intercept:
        point["b"] = rng.normal(0.0, 1.5, size=spec.K)
    upper = min(spec.sigma_prior.upper, 3.0 * spec.sigma_prior.scale)
    size = () if spec.sigma == "shared" else (spec.K,)
    point["sigma"] = rng.uniform(0.05, 0.95, size=size) * upper
    if spec.nu_is_parameter:
        point["nu"] = rng.uniform(0.5, 30.0)
    if spec.softmax_weights:
        point["gamma"] = np.vstack([rng.normal(0.0, 1.0, size=(spec.K - 1, spec.D + 1)), np.zeros((1, spec.D + 1))])
    else:
        point["pi"] = rng.dirichlet(np.full(spec.K, 2.0))
    if spec.shared == "slopes":
        point["w"] = np.broadcast_to(point["w"][0], (spec.K, spec.D)).copy()
    elif spec.shared == "intercepts":
        point["b"] = np.full(spec.K, point["b"][0])
    if spec.ordering == "intercept":
        point["b"] = np.sort(point["b"])
    elif spec.ordering == "slope":
        order = np.argsort(point["w"][:, 0])
        point["w"] = point["w"].copy()
        point["w"][:, 0] = point["w"][order, 0]
    return point
