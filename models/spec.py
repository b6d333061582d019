"""The mixture-of-regressions spec: one definition, consumed by every backend.

    y_n ~ sum_k pi_k Normal(b_k + x_n . w_k, sigma_k)

with pi ~ Dirichlet(alpha), w_kd ~ Normal(mu, s), b_k ~ Normal(mu, s) (when there are intercepts),
sigma shared by all components or one per component, with a Uniform(0, upper) or HalfNormal(s)
prior. The defaults are the forum thread's: Dirichlet(1), Normal(0, 2), Uniform(0, 1).

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


@dataclass(frozen=True)
class SigmaPrior:
    """Prior on the noise scale: ``uniform`` on (0, scale) or ``halfnormal`` with scale ``scale``."""

    family: Literal["uniform", "halfnormal"] = "uniform"
    scale: float = 1.0

    def __post_init__(self):
        if self.family not in ("uniform", "halfnormal"):
            raise MixbenchError(
                f"sigma prior family: must be 'uniform' or 'halfnormal', got {self.family!r}"
            )
        object.__setattr__(self, "scale", _positive_finite("sigma prior scale", self.scale))

    @property
    def upper(self) -> float:
        """Upper bound of sigma's support (inf for HalfNormal)."""
        return self.scale if self.family == "uniform" else math.inf


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
            raise MixbenchError("ordering: 'intercept' needs intercept=True")
        if self.ordering == "slope" and self.D == 0:
            raise MixbenchError("ordering: 'slope' needs at least one covariate (D >= 1)")
        if self.likelihood not in LIKELIHOODS:
            raise MixbenchError(
                f"likelihood: must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}"
            )
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
                           ("sigma_prior", SigmaPrior)):
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
    def log_order_constant(self) -> float:
        """log(K!) when an ordering constraint restricts the iid prior to one of K! regions."""
        return math.lgamma(self.K + 1) if self.ordering != "none" else 0.0

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical parameter names and their shapes (without chain/draw)."""
        shapes = {"w": (self.K, self.D)}
        if self.intercept:
            shapes["b"] = (self.K,)
        shapes["sigma"] = () if self.sigma == "shared" else (self.K,)
        shapes["pi"] = (self.K,)
        return shapes

    def param_dims(self) -> dict[str, list[str]]:
        """Canonical dims of each parameter, as ArviZ ``dims`` (without chain/draw)."""
        dims = {"w": ["component", "covariate"]}
        if self.intercept:
            dims["b"] = ["component"]
        dims["sigma"] = [] if self.sigma == "shared" else ["component"]
        dims["pi"] = ["component"]
        return dims

    def check_params(self, params: dict) -> dict[str, np.ndarray]:
        """Validate a parameter point against the spec; return it as float arrays."""
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
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MixtureSpec":
        data = dict(data)
        for name, kind in (("slope_prior", NormalPrior), ("intercept_prior", NormalPrior),
                           ("sigma_prior", SigmaPrior)):
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


def random_point(spec: MixtureSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random parameter point inside the prior's support (ordered when the spec orders)."""
    point = {"w": rng.normal(0.0, 1.5, size=(spec.K, spec.D))}
    if spec.intercept:
        point["b"] = rng.normal(0.0, 1.5, size=spec.K)
    upper = min(spec.sigma_prior.upper, 3.0 * spec.sigma_prior.scale)
    size = () if spec.sigma == "shared" else (spec.K,)
    point["sigma"] = rng.uniform(0.05, 0.95, size=size) * upper
    point["pi"] = rng.dirichlet(np.full(spec.K, 2.0))
    if spec.ordering == "intercept":
        point["b"] = np.sort(point["b"])
    elif spec.ordering == "slope":
        order = np.argsort(point["w"][:, 0])
        point["w"] = point["w"].copy()
        point["w"][:, 0] = point["w"][order, 0]
    return point
