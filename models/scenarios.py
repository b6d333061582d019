"""Built-in scenarios: a true parameter point, a spec to fit, and a seeded data generator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from models.data import Dataset
from models.errors import MixbenchError
from models.families import DEFAULT_N as FAMILY_N, parse_point
from models.oracle import log_weights
from models.spec import MixtureSpec, NormalPrior, SigmaPrior


@dataclass(frozen=True)
class Scenario:
    """A data-generating process with known truth and the spec mixbench fits to it."""

    name: str
    description: str
    N: int
    spec: MixtureSpec
    truth: dict[str, np.ndarray] = field(repr=False)
    # Share of the observations replaced by gross outliers, y ~ Uniform(OUTLIER_RANGE) whatever
    # x: the contamination that pulls a normal-error mixture apart (Yao, Wei & Yu 2014).
    outlier_fraction: float = 0.0

    def simulate(self, seed: int, N: int | None = None) -> Dataset:
        """Draw a data set: x ~ U(-1, 1)^D, z ~ Categorical(pi) (pi(x_n) under softmax weights), y = b_z + x . w_z + sigma_z eps
        with eps ~ Normal(0, 1); then the first round(outlier_fraction N) observations' y are
        replaced by Uniform(OUTLIER_RANGE) draws (the truth describes the other points).

        Parameters
        ----------
        seed : int
            Seeds NumPy's default generator: the same seed, the same data.
        N : int, optional
            Observations; the scenario's own ``N`` by default.

        Returns
        -------
        Dataset
            x of shape (N, D), y of shape (N,), the truth, the scenario's name.

        Raises
        ------
        MixbenchError
            N < 1.
        """
        n = self.N if N is None else int(N)
        if n < 1:
            raise MixbenchError(f"N: must be at least 1, got {n}")
        rng = np.random.default_rng(seed)
        truth = self.spec.check_params(self.truth)
        x = rng.uniform(-1.0, 1.0, size=(n, self.spec.D))
        if self.spec.softmax_weights:
            # One categorical draw per observation from its softmax weights (inverse CDF).
            cdf = np.cumsum(np.exp(log_weights(self.spec, x, truth)), axis=1)
            z = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), self.spec.K - 1)
        else:
            z = rng.choice(self.spec.K, size=n, p=truth["pi"])
        mean = np.einsum("nd,nd->n", x, truth["w"][z])
        if self.spec.intercept:
            mean = mean + truth["b"][z]
        sigma = np.broadcast_to(truth["sigma"], (self.spec.K,))[z]
        y = mean + sigma * rng.standard_normal(n)
        n_out = round(self.outlier_fraction * n)
        y[:n_out] = rng.uniform(*OUTLIER_RANGE, size=n_out)
        return Dataset(x=x, y=y, truth=truth, name=self.name)


OUTLIER_RANGE = (8.0, 12.0)  # far above the lines' range |y| <= 3 on x in [-1, 1]


def _truth(**arrays) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=float) for k, v in arrays.items()}


# The thread's data: half the points on y = 3x, half on y = -x, noise sd 0.1, fitted with the
# thread's priors (Dirichlet(1), Normal(0, 2) slopes, Uniform(0, 1) shared sigma), no intercept.
_FORUM_SPEC = MixtureSpec(K=2, D=1, intercept=False, sigma="shared")
_FORUM_TRUTH = _truth(w=[[3.0], [-1.0]], sigma=0.1, pi=[0.5, 0.5])

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("forum", "The forum thread: N = 100000, slopes 3 and -1, sigma 0.1, weights 0.5/0.5",
                 100_000, _FORUM_SPEC, _FORUM_TRUTH),
        Scenario("forum-small", "The forum truth at N = 2000: the fast default",
                 2_000, _FORUM_SPEC, _FORUM_TRUTH),
        Scenario("forum-outliers",
                 "The forum's two lines (slopes 3 and -1, sd 0.1) with intercepts, N = 200, 10 of them "
                 "(5%) replaced by gross outliers y ~ U(8, 12); fitted with Student-t(4) errors",
                 200,
                 MixtureSpec(K=2, D=1, intercept=True, sigma="per-component", errors="student-t", nu=4.0,
                             slope_prior=NormalPrior(0.0, 5.0), intercept_prior=NormalPrior(0.0, 5.0),
                             sigma_prior=SigmaPrior("halfnormal", 5.0)),
                 _truth(w=[[3.0], [-1.0]], b=[0.0, 0.0], sigma=[0.1, 0.1], pi=[0.5, 0.5]),
                 outlier_fraction=0.05),
        Scenario("shared-slopes",
                 "One slope 1.5 for both components, intercepts -1 and 1, sds 0.3 and 0.6, weights 0.4/0.6, "
                 "N = 500: a regression whose error term is a two-component mixture",
                 500,
                 MixtureSpec(K=2, D=1, intercept=True, sigma="per-component", shared="slopes",
                             sigma_prior=SigmaPrior("halfnormal", 2.0)),
                 _truth(w=[[1.5], [1.5]], b=[-1.0, 1.0], sigma=[0.3, 0.6], pi=[0.4, 0.6])),
        Scenario("separated", "K = 2, D = 1 with intercepts -2 and 2, ordered by intercept, per-component sigma",
                 2_000,
                 MixtureSpec(K=2, D=1, intercept=True, sigma="per-component", ordering="intercept",
                             intercept_prior=NormalPrior(0.0, 5.0)),
                 _truth(w=[[1.0], [-1.0]], b=[-2.0, 2.0], sigma=[0.2, 0.3], pi=[0.4, 0.6])),
        Scenario("gmm3", "Intercept-only Gaussian mixture (D = 0), K = 3, means -3, 0, 3",
                 3_000,
                 MixtureSpec(K=3, D=0, intercept=True, sigma="shared", intercept_prior=NormalPrior(0.0, 5.0)),
                 _truth(w=np.zeros((3, 0)), b=[-3.0, 0.0, 3.0], sigma=0.5, pi=[0.3, 0.3, 0.4])),
        Scenario("three-lines", "K = 3, D = 2 with intercepts and per-component sigma",
                 5_000,
                 MixtureSpec(K=3, D=2, intercept=True, sigma="per-component"),
                 _truth(w=[[2.0, 0.5], [-1.0, 1.0], [0.0, -2.0]], b=[1.0, -1.0, 0.0],
                        sigma=[0.1, 0.2, 0.15], pi=[0.3, 0.3, 0.4])),
    ]
}

DEFAULT_SCENARIO = "forum-small"


def get_scenario(name: str) -> Scenario:
    """A built-in scenario, or a point of a scenario family by its name (models.families).

    Parameters
    ----------
    name : str
        A key of ``SCENARIOS``, or a family point such as ``lines-K2-D1-sep2-wmin0.5-sr1``.

    Returns
    -------
    Scenario
        A family point's has N = ``models.families.DEFAULT_N``.

    Raises
    ------
    MixbenchError
        An unknown name, or a family name whose values are out of range.
    """
    if name in SCENARIOS:
        return SCENARIOS[name]
    point = parse_point(name)
    if point is not None:
        return Scenario(point.name, point.description, FAMILY_N, point.spec, point.truth,
                        outlier_fraction=point.outliers)
    raise MixbenchError(
        f"scenario: unknown {name!r}; known: {', '.join(SCENARIOS)}, or a family point such as "
        "lines-K2-D1-sep2-wmin0.5-sr1"
    )
