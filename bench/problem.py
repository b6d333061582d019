"""What a cell fits and what its draws are scored with: the spec, the data, and the scale.

A ``Problem`` pairs the data set as given (data scale, with its truth when known) with the model
as fitted: the same data, or standardised (``models.standardize``) when asked. Backends fit
``fit_spec`` to ``fit_dataset``; ``to_data_scale`` brings their draws back, and every metric reads
draws on the data's scale. Log densities are the oracle's (models/oracle.py) of the fitted model,
evaluated at a data-scale point mapped to the fitted scale: the same function for a fit and for
the reference posterior, so gaps between them are exact (standardising shifts them all by one
constant).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import xarray as xr

from backends.base import Fit
from bench.relabel import SAMPLE_DIMS, posterior_dataset
from models.data import Dataset
from models.oracle import log_density, log_likelihood_terms
from models.spec import MixtureSpec
from models.standardize import Standardization


def thin_indices(n: int, most: int) -> np.ndarray:
    """At most ``most`` indices of 0..n-1, evenly spaced (all of them when n <= most)."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(int))


@dataclass(eq=False)
class Problem:
    """The model as fitted (``spec``: priors on the fitted scale) and the data as given."""

    spec: MixtureSpec
    dataset: Dataset
    standardization: Standardization | None = None
    name: str = field(default="")

    @classmethod
    def make(cls, spec: MixtureSpec, dataset: Dataset, standardize: bool = False) -> "Problem":
        dataset.check_against(spec)
        scaling = Standardization.of(dataset, spec) if standardize else None
        return cls(spec, dataset, scaling, dataset.name)

    @cached_property
    def fit_dataset(self) -> Dataset:
        """What backends fit: the data, standardised when asked (without the truth then)."""
        if self.standardization is None:
            return self.dataset
        return self.standardization.dataset(self.dataset)

    def identity(self) -> dict:
        """What makes two problems the same posterior: data digest, spec, standardisation."""
        return {"data_digest": self.dataset.digest(), "spec": self.spec.to_dict(),
                "standardization": self.standardization.to_dict() if self.standardization else None}

    # -- scales --------------------------------------------------------------------------------

    def to_fit_scale(self, point: dict) -> dict[str, np.ndarray]:
        if self.standardization is None:
            return {k: np.asarray(v, dtype=float) for k, v in point.items()}
        return self.standardization.to_fit(point)

    def to_data_scale_point(self, point: dict) -> dict[str, np.ndarray]:
        if self.standardization is None:
            return {k: np.asarray(v, dtype=float) for k, v in point.items()}
        return self.standardization.to_data(point)

    def to_data_scale_draws(self, draws: xr.DataTree) -> xr.DataTree:
        """A copy of ``draws`` with the posterior group mapped to the data scale."""
        if self.standardization is None:
            return draws
        ds = posterior_dataset(draws)
        mapped = self.standardization.to_data({name: ds[name].values for name in ds.data_vars})
        new = ds.assign({name: (ds[name].dims, mapped[name]) for name in ds.data_vars})
        new.attrs = {**ds.attrs, "standardized": "mapped back to the data scale (models/standardize.py)"}
        out = draws.copy()
        out["posterior"] = xr.DataTree(new)
        return out

    def to_data_scale(self, fit: Fit) -> Fit:
        """The fit with its draws and point on the data scale (the same fit without standardising)."""
        if self.standardization is None or not fit.ok:
            return fit
        changes = {}
        if fit.draws is not None:
            changes["draws"] = self.to_data_scale_draws(fit.draws)
        if fit.point is not None:
            changes["point"] = self.to_data_scale_point(fit.point)
        return dataclasses.replace(fit, **changes)

    def sigma_bounds(self) -> tuple[float, float]:
        """Support of sigma's prior on the data scale: (0, upper), upper = inf for HalfNormal."""
        scale = self.standardization.y_scale if self.standardization else 1.0
        return 0.0, self.spec.sigma_prior.upper * scale

    def sigma_prior_scale(self) -> float:
        """The sigma prior's scale parameter on the data scale."""
        scale = self.standardization.y_scale if self.standardization else 1.0
        return self.spec.sigma_prior.scale * scale

    # -- log densities -------------------------------------------------------------------------

    def log_density(self, point: dict) -> float:
        """The fitted model's log density (oracle convention) at a data-scale point."""
        fit = self.fit_dataset
        return float(log_density(self.spec, fit.x, fit.y, self.to_fit_scale(point)))

    def pointwise_log_likelihood(self, point: dict) -> np.ndarray:
        """log p(y_i | theta) for every observation on the data scale, shape (N,).

        On standardised data each term is the fitted model's minus log s_y (the Jacobian of
        y -> y'), so predictive densities are densities of y as given.
        """
        fit = self.fit_dataset
        terms = log_likelihood_terms(self.spec, fit.x, fit.y, self.to_fit_scale(point))
        if self.standardization is not None:
            terms = terms - math.log(self.standardization.y_scale)
        return terms

    def draw_log_densities(self, draws: xr.DataTree, per_chain: int) -> tuple[np.ndarray, np.ndarray]:
        """Log density of at most ``per_chain`` evenly spaced draws of each chain.

        Returns (values (chain, kept), kept draw indices). Non-finite draws give -inf.
        """
        ds = posterior_dataset(draws)
        keep = thin_indices(ds.sizes["draw"], per_chain)
        names = list(ds.data_vars)
        arrays = {n: ds[n].values for n in names}
        out = np.full((ds.sizes["chain"], keep.size), -np.inf)
        for c in range(ds.sizes["chain"]):
            for j, d in enumerate(keep):
                point = {n: arrays[n][c, d] for n in names}
                if all(np.all(np.isfinite(v)) for v in point.values()):
                    with np.errstate(all="ignore"):
                        out[c, j] = self.log_density(point)
        return out, keep

    def pointwise_draws(self, draws: xr.DataTree, index: list[tuple[int, int]]) -> np.ndarray:
        """Pointwise log likelihood at the given (chain, draw) pairs, shape (len(index), N)."""
        ds = posterior_dataset(draws)
        arrays = {n: ds[n].values for n in ds.data_vars}
        out = np.empty((len(index), self.dataset.N))
        for i, (c, d) in enumerate(index):
            with np.errstate(all="ignore"):
                out[i] = self.pointwise_log_likelihood({n: arrays[n][c, d] for n in arrays})
        return out


__all__ = ["Problem", "SAMPLE_DIMS", "thin_indices"]
