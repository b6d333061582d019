"""Scenario families: simulated scenarios with named difficulty axes, one stable name per point.

The family ``lines`` is a mixture of K regression lines on D covariates, no intercepts (the
forum thread's model), with these axes:

- ``sep``: separation, the smallest gap between neighbouring component lines relative to their
  noise: min over neighbours j, k of RMS_x(line_j(x) - line_k(x)) / sqrt((sigma_j^2 + sigma_k^2) / 2),
  with x ~ U(-1, 1)^D as the scenarios simulate it, where RMS_x(x . dw) = |dw| / sqrt(3)
  (Var U(-1, 1) = 1/3): for lines, what the distance between two Gaussian means in units of
  their pooled sd is for a Gaussian mixture.
- ``w_min``: the smallest mixing weight, given to component 0; the others share the rest equally
  (at most 1/K; 1/K is balanced).
- ``K``: components (2-5); ``D``: covariates (1-5); ``sigma_ratio``: largest over smallest
  per-component sigma (1: one shared sigma).
- ``outliers``: the share of observations replaced by gross outliers, y ~ U(8, 12) whatever x
  (models/scenarios.py OUTLIER_RANGE): the contamination under which a normal-error mixture
  breaks and a Student-t one (a line's ``errors=student-t``) should not (Yao, Wei & Yu 2014).
- ``gate``: the weight-regression strength: the weights are a softmax regression on x_1,
  gamma_k = (log(pi_k / pi_K), gate (K - 1 - k) / (K - 1), 0, ...) (models/spec.py), so component
  0's log odds against the reference (the last) change by 2 gate across x_1 in [-1, 1]; ``w_min``
  sets the weights at x = 0. A point with gate > 0 is fitted with softmax weights.
- ``N``: observations; carried by the cell (``Cell.n``), not by the point's name.

The truth: first slopes evenly spaced on [-2, 2] (component k: -2 + 4 k / (K - 1)), so the slope
scale stays O(1) under the thread's Normal(0, 2) slope prior whatever the difficulty; covariates
beyond the first carry the same slope in every component (0.5, -0.5, ...): they add parameters
without adding separation. The noise sets the separation: sigma_k = s * sigma_ratio^(k / (K - 1)),
with s solved so the hardest neighbour pair (the last, noisiest) sits at exactly ``sep``.

The fitted spec is the thread's (Dirichlet(1), Normal(0, 2) slopes) with a Uniform(0, 10) sigma
prior instead of Uniform(0, 1), so the noisier points stay inside the prior's support; shared
sigma when sigma_ratio = 1, one per component otherwise.

A point's name spells every axis but N: ``lines-K2-D1-sep2-wmin0.5-sr1``, then ``-out0.05`` and
``-gate2`` where those are not 0 (so the names of older points are unchanged); ``get_scenario``
accepts it anywhere a built-in scenario name is accepted, so cells (bench.run.harness) carry a family
point exactly like a built-in scenario.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from models.errors import MixbenchError
from models.spec import MixtureSpec, SigmaPrior

SIGMA_UPPER = 10.0  # the family's Uniform(0, SIGMA_UPPER) sigma prior
# A point whose noisiest sigma exceeds this share of the prior's upper bound is refused: the
# prior, not the data, would then decide where sigma lands.
SIGMA_MAX_SHARE = 0.5
SLOPE_SPAN = 2.0  # first slopes on [-SLOPE_SPAN, SLOPE_SPAN]
DEFAULT_N = 1000


@dataclass(frozen=True)
class Axis:
    name: str
    kind: type
    default: float | int
    harder: str  # "lower" or "higher": which direction makes the problem harder
    low: float
    high: float
    text: str


# The axes of the family, in the order the point's name spells them. N is an axis of every
# sweep (Cell.n) and listed here so a sweep can vary it like the others.
AXES: dict[str, Axis] = {a.name: a for a in [
    Axis("K", int, 2, "higher", 2, 5, "mixture components"),
    Axis("D", int, 1, "higher", 1, 5, "covariates"),
    Axis("sep", float, 4.0, "lower", 1e-3, 1e3,
         "separation: smallest RMS gap between neighbouring lines over their pooled sigma"),
    Axis("w_min", float, math.nan, "lower", 1e-3, 1.0, "smallest mixing weight (1/K: balanced)"),
    Axis("sigma_ratio", float, 1.0, "higher", 1.0, 100.0, "largest / smallest per-component sigma"),
    Axis("outliers", float, 0.0, "higher", 0.0, 0.5, "share of observations replaced by gross outliers"),
    Axis("gate", float, 0.0, "higher", 0.0, 20.0, "weight-regression strength (softmax slope on x_1)"),
    Axis("N", int, DEFAULT_N, "lower", 10, 10_000_000, "observations"),
]}
NAME_AXES = ("K", "D", "sep", "w_min", "sigma_ratio", "outliers", "gate")
# Axes spelled in a point's name only where they differ from 0.
_OPTIONAL_AXES = ("outliers", "gate")
_NAME_KEYS = {"K": "K", "D": "D", "sep": "sep", "w_min": "wmin", "sigma_ratio": "sr", "outliers": "out",
              "gate": "gate"}
FAMILY = "lines"
_NAME_RE = re.compile(r"^lines-K(?P<K>\d+)-D(?P<D>\d+)-sep(?P<sep>[0-9.e+-]+?)-wmin(?P<w_min>[0-9.e+-]+?)"
                      r"-sr(?P<sigma_ratio>[0-9.e+]+?)(?:-out(?P<outliers>[0-9.e+-]+?))?"
                      r"(?:-gate(?P<gate>[0-9.e+-]+?))?$")


def _number_text(value: float) -> str:
    """A short stable spelling: 2 -> '2', 0.25 -> '0.25', 1/3 -> '0.333333'."""
    return f"{float(value):.6g}"


def check_axis(name: str, value) -> float | int:
    """``value`` as the axis's type, checked against its range.

    Parameters
    ----------
    name : str
        An axis of ``AXES``.
    value : object
        A number or its text.

    Returns
    -------
    float or int

    Raises
    ------
    MixbenchError
        One line naming the axis: an unknown axis, a non-number or a value out of range.
    """
    if name not in AXES:
        raise MixbenchError(f"axis: unknown {name!r}; the {FAMILY} family has {', '.join(AXES)}")
    axis = AXES[name]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MixbenchError(f"{name}: not a number: {value!r}") from None
    if not math.isfinite(number):
        raise MixbenchError(f"{name}: must be finite, got {value!r}")
    if axis.kind is int:
        if not number.is_integer():
            raise MixbenchError(f"{name}: must be an integer, got {value!r}")
        number = int(number)
    if not axis.low <= number <= axis.high:
        raise MixbenchError(f"{name}: must lie in [{_number_text(axis.low)}, {_number_text(axis.high)}], "
                            f"got {value!r}")
    return number


@dataclass(frozen=True)
class FamilyPoint:
    """One point of the ``lines`` family: every axis but N (see the module docstring)."""

    K: int = 2
    D: int = 1
    sep: float = 4.0
    w_min: float | None = None  # None: 1/K
    sigma_ratio: float = 1.0
    outliers: float = 0.0
    gate: float = 0.0

    def __post_init__(self):
        for name in NAME_AXES:
            value = getattr(self, name)
            if name == "w_min" and value is None:
                continue
            object.__setattr__(self, name, check_axis(name, value))
        if self.w_min is None:
            object.__setattr__(self, "w_min", 1.0 / self.K)
        elif self.w_min > 1.0 / self.K + 1e-12:
            raise MixbenchError(f"w_min: the smallest of {self.K} weights is at most 1/K = "
                                f"{_number_text(1 / self.K)}, got {_number_text(self.w_min)}")
        largest = float(np.max(self.sigmas))
        if largest > SIGMA_MAX_SHARE * SIGMA_UPPER:
            least = self.sep * largest / (SIGMA_MAX_SHARE * SIGMA_UPPER)
            raise MixbenchError(f"sep: {_number_text(self.sep)} needs sigma = {largest:.3g}, beyond half the "
                                f"family's Uniform(0, {SIGMA_UPPER:g}) prior; use sep >= {least:.3g} at "
                                f"K = {self.K}, sigma_ratio = {_number_text(self.sigma_ratio)}")

    @property
    def name(self) -> str:
        parts = [f"{_NAME_KEYS[a]}{_number_text(getattr(self, a)) if a not in ('K', 'D') else getattr(self, a)}"
                 for a in NAME_AXES if a not in _OPTIONAL_AXES or getattr(self, a) != 0]
        return "-".join([FAMILY, *parts])

    @property
    def params(self) -> dict[str, float | int]:
        """The point's axes as row columns (bench.run.harness.cell_ids)."""
        return {a: getattr(self, a) for a in NAME_AXES}

    @property
    def slopes(self) -> np.ndarray:
        """First slopes of the components, (K,): evenly spaced on [-SLOPE_SPAN, SLOPE_SPAN]."""
        return np.linspace(-SLOPE_SPAN, SLOPE_SPAN, self.K)

    @property
    def sigmas(self) -> np.ndarray:
        """Per-component sigma, (K,): s * sigma_ratio^(k / (K - 1)), the last neighbour pair at ``sep``."""
        growth = self.sigma_ratio ** (np.arange(self.K) / (self.K - 1))
        gap = (self.slopes[1] - self.slopes[0]) / math.sqrt(3.0)  # RMS over x ~ U(-1, 1)
        pooled = math.sqrt((growth[-2] ** 2 + growth[-1] ** 2) / 2.0)
        return gap / (self.sep * pooled) * growth

    @property
    def weights(self) -> np.ndarray:
        rest = (1.0 - self.w_min) / (self.K - 1)
        return np.array([self.w_min] + [rest] * (self.K - 1))

    @property
    def spec(self) -> MixtureSpec:
        return MixtureSpec(K=self.K, D=self.D, intercept=False,
                           sigma="shared" if self.sigma_ratio == 1.0 else "per-component",
                           sigma_prior=SigmaPrior("uniform", SIGMA_UPPER),
                           weights="softmax" if self.gate else "dirichlet")

    @property
    def truth(self) -> dict[str, np.ndarray]:
        w = np.zeros((self.K, self.D))
        w[:, 0] = self.slopes
        for d in range(1, self.D):
            w[:, d] = 0.5 * (-1) ** (d - 1)  # the same in every component: no separation
        sigma = self.sigmas
        truth = {"w": w, "sigma": np.asarray(sigma[0]) if self.sigma_ratio == 1.0 else sigma}
        if not self.gate:
            return {**truth, "pi": self.weights}
        gamma = np.zeros((self.K, self.D + 1))
        gamma[:, 0] = np.log(self.weights / self.weights[-1])
        gamma[:, 1] = self.gate * (self.K - 1 - np.arange(self.K)) / (self.K - 1)
        return {**truth, "gamma": gamma}

    def separation(self) -> float:
        """The separation the truth has, computed from it (equals ``sep``; tests check it)."""
        return separation(self.truth, self.D)

    @property
    def description(self) -> str:
        """One line naming the family and the point's coordinates (a scenario's description)."""
        return (f"{FAMILY} family: K = {self.K}, D = {self.D}, separation {_number_text(self.sep)}, "
                f"smallest weight {_number_text(self.w_min)}, sigma ratio {_number_text(self.sigma_ratio)}"
                + (f", outliers {_number_text(self.outliers)}" if self.outliers else "")
                + (f", weight-regression strength {_number_text(self.gate)}" if self.gate else ""))


def separation(params: dict[str, np.ndarray], D: int) -> float:
    """How far apart the components are, in units of their noise.

    The minimum, over components adjacent in their first slope, of the RMS gap between their
    lines over x ~ U(-1, 1)^D divided by the pooled sigma:
    sqrt(|dw|^2 / 3 + db^2) / sqrt((sigma_j^2 + sigma_k^2) / 2) (E[x_d^2] = 1/3 on U(-1, 1)).

    Parameters
    ----------
    params : dict
        ``w`` of shape (K, D), ``sigma`` (shared or per component), ``b`` when present.
    D : int

    Returns
    -------
    float
    """
    w = np.asarray(params["w"], dtype=float).reshape(-1, D)
    K = w.shape[0]
    b = np.asarray(params.get("b", np.zeros(K)), dtype=float)
    sigma = np.broadcast_to(np.asarray(params["sigma"], dtype=float), (K,))
    order = np.argsort(w[:, 0])
    gaps = []
    for j, k in zip(order[:-1], order[1:]):
        rms = math.sqrt(float(np.sum((w[j] - w[k]) ** 2)) / 3.0 + float(b[j] - b[k]) ** 2)
        gaps.append(rms / math.sqrt((sigma[j] ** 2 + sigma[k] ** 2) / 2.0))
    return min(gaps)


def parse_point(name: str) -> FamilyPoint | None:
    """The family point a scenario name spells.

    Parameters
    ----------
    name : str
        E.g. ``lines-K2-D1-sep2-wmin0.5-sr1``.

    Returns
    -------
    FamilyPoint or None
        None when ``name`` is not a family name.

    Raises
    ------
    MixbenchError
        A family name whose values are out of range (``AXES``).
    """
    match = _NAME_RE.match(name)
    if match is None:
        return None
    values = match.groupdict()
    return FamilyPoint(K=int(values["K"]), D=int(values["D"]), sep=float(values["sep"]),
                       w_min=float(values["w_min"]), sigma_ratio=float(values["sigma_ratio"]),
                       outliers=float(values["outliers"] or 0.0), gate=float(values["gate"] or 0.0))


def point_params(scenario: str) -> dict[str, float | int]:
    """The axes of a family point named ``scenario`` as row columns.

    Returns
    -------
    dict of str to float or int
        Axis name -> value; empty for any other name, an out-of-range one included.
    """
    try:
        point = parse_point(scenario)
    except MixbenchError:
        return {}
    return point.params if point is not None else {}
