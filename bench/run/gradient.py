"""The gradient-cost problem shared by the gradient benchmark and the formulation comparisons.

The model is the forum's (one slope per component, no intercept, shared sigma, the thread's
priors) with K = 2 or 3 components, on data simulated from a K-component truth; the point is
the truth, mapped by each engine to its own unconstrained space. The cost of one log density +
gradient there is what every leapfrog step of NUTS pays.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from models.scenarios import Scenario, get_scenario

GRADIENT_NS = (1_000, 10_000, 100_000, 1_000_000)
GRADIENT_KS = (2, 3)
DATA_SEED = 0


def gradient_scenario(K: int) -> Scenario:
    """The forum scenario for K = 2; for K = 3 the same spec with a third line, y = x."""
    forum = get_scenario("forum")
    if K == 2:
        return forum
    if K != 3:
        raise ValueError(f"gradient problems have K = 2 or 3, got {K}")
    truth = {"w": np.array([[3.0], [-1.0], [1.0]]), "sigma": np.array(0.1), "pi": np.full(3, 1 / 3)}
    return Scenario("forum-k3", "The forum spec with K = 3: slopes 3, -1 and 1, sigma 0.1, equal weights",
                    forum.N, forum.spec.with_(K=3), truth)


def gradient_problem(N: int, K: int):
    """(spec, dataset with its truth) of the gradient-cost problem at size N with K components."""
    scenario = gradient_scenario(K)
    return scenario.spec, scenario.simulate(DATA_SEED, N=N)


@dataclass(frozen=True)
class CallTiming:
    """Seconds per call: median and spread over repeats, each repeat a loop of ``calls`` calls."""

    median: float
    minimum: float
    maximum: float
    repeats: int
    calls: int

    def to_dict(self) -> dict[str, float | int]:
        return {"median_s": self.median, "min_s": self.minimum, "max_s": self.maximum,
                "repeats": self.repeats, "calls_per_repeat": self.calls}


def time_calls(f: Callable[[np.ndarray], object], x: np.ndarray, repeats: int = 7,
               min_repeat_s: float = 0.2, warmup_calls: int = 3) -> CallTiming:
    """Time ``f(x)``: a few warm-up calls, then ``repeats`` loops each long enough (``min_repeat_s``)
    for the clock's resolution not to matter. The median resists other processes' bursts on a
    shared machine; min and max say how noisy the machine was."""
    for _ in range(warmup_calls):
        f(x)
    start = time.perf_counter()
    f(x)
    one = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(min_repeat_s / one))
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            f(x)
        per_call.append((time.perf_counter() - start) / calls)
    return CallTiming(statistics.median(per_call), min(per_call), max(per_call), repeats, calls)


def finite_difference_gradient(f: Callable[[np.ndarray], tuple[float, np.ndarray]], x: np.ndarray,
                               step: float = 1e-5) -> np.ndarray:
    """Central differences of f's value, coordinate by coordinate (for checking gradients)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    for i in range(x.size):
        h = step * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        out[i] = (float(f(up)[0]) - float(f(down)[0])) / (2 * h)
    return out

