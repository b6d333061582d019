"""Fitting on standardised data and reporting on the data's scale (``--standardize``).

With intercepts, every covariate and the response are centred and scaled::

    x'_d = (x_d - m_d) / s_d,    y' = (y - m_y) / s_y

and the spec (its priors included) is the model of (x', y'). A draw there maps back exactly:

    w_kd = s_y w'_kd / s_d
    b_k = m_y + s_y b'_k - sum_d w_kd m_d
    sigma = s_y sigma',   pi = pi'

since b_k + x . w_k = m_y + s_y (b'_k + x' . w'_k). Without intercepts a mixture of lines through
the origin stays one only if nothing is centred, so x and y are scaled but not centred (m = 0).
m and s are the sample mean and sd (ddof 0); a constant covariate keeps s_d = 1.

The map theta -> theta' is affine with fixed coefficients, so log densities of the model on the
two scales differ by a constant: gaps between them are the same on both. An ordering by
intercept holds for b', the parameter the prior is stated on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data import Dataset
from models.errors import MixbenchError
from models.spec import MixtureSpec


@dataclass(frozen=True)
class Standardization:
    """Location and scale of each covariate and of the response, as fitted."""

    x_mean: tuple[float, ...]
    x_scale: tuple[float, ...]
    y_mean: float
    y_scale: float
    centred: bool

    @classmethod
    def of(cls, dataset: Dataset, spec: MixtureSpec) -> "Standardization":
        """The standardisation of ``dataset`` (module docstring): centred only when ``spec`` has
        intercepts.

        Parameters
        ----------
        dataset : Dataset
            On the data's scale.
        spec : MixtureSpec

        Returns
        -------
        Standardization
            Sample means and sds (ddof 0); a constant covariate keeps scale 1.

        Raises
        ------
        MixbenchError
            The response is constant (sd 0) or its sd is not finite.
        """
        y_scale = float(np.std(dataset.y))
        if not y_scale > 0 or not np.isfinite(y_scale):
            raise MixbenchError("--standardize: the response is constant (its sd is 0); nothing to scale by")
        x_scale = np.std(dataset.x, axis=0) if dataset.D else np.zeros(0)
        x_scale = np.where((x_scale > 0) & np.isfinite(x_scale), x_scale, 1.0)
        centred = bool(spec.intercept)
        x_mean = np.mean(dataset.x, axis=0) if (centred and dataset.D) else np.zeros(dataset.D)
        y_mean = float(np.mean(dataset.y)) if centred else 0.0
        return cls(tuple(map(float, x_mean)), tuple(map(float, x_scale)), y_mean, y_scale, centred)

    def to_dict(self) -> dict:
        """Plain data (JSON-ready), as ``from_dict`` takes it back."""
        return {"x_mean": list(self.x_mean), "x_scale": list(self.x_scale), "y_mean": self.y_mean,
                "y_scale": self.y_scale, "centred": self.centred}

    @classmethod
    def from_dict(cls, data: dict) -> "Standardization":
        """The standardisation ``to_dict`` gave.

        Raises
        ------
        KeyError
            A field missing from ``data``.
        """
        return cls(tuple(data["x_mean"]), tuple(data["x_scale"]), float(data["y_mean"]),
                   float(data["y_scale"]), bool(data["centred"]))

    def dataset(self, dataset: Dataset) -> Dataset:
        """The standardised data set.

        Parameters
        ----------
        dataset : Dataset
            On the data's scale, N observations.

        Returns
        -------
        Dataset
            x' of shape (N, D) and y' of shape (N,); no truth (the truth lives on the data's scale).
        """
        x = (dataset.x - np.asarray(self.x_mean)) / np.asarray(self.x_scale) if dataset.D else dataset.x
        y = (dataset.y - self.y_mean) / self.y_scale
        return Dataset(x=x, y=y, truth=None, name=f"{dataset.name}-standardized", covariates=dataset.covariates)

    def to_data(self, params: dict) -> dict[str, np.ndarray]:
        """Fitted-scale parameters -> the data's scale (the module docstring's map).

        Parameters
        ----------
        params : dict of str to array_like
            ``w`` (..., K, D), ``sigma``, ``pi`` and ``b`` when present; any leading axes, e.g.
            (chain, draw).

        Returns
        -------
        dict of str to ndarray
            The same names and shapes; ``pi`` unchanged.
        """
        out = {k: np.asarray(v, dtype=float) for k, v in params.items()}
        w = np.asarray(params["w"], dtype=float)  # (..., K, D)
        s_x, m_x = np.asarray(self.x_scale), np.asarray(self.x_mean)
        out["w"] = w * self.y_scale / s_x if w.shape[-1] else w
        if "b" in params:
            out["b"] = self.y_mean + self.y_scale * np.asarray(params["b"], dtype=float) - out["w"] @ m_x
        out["sigma"] = self.y_scale * np.asarray(params["sigma"], dtype=float)
        return out

    def to_fit(self, params: dict) -> dict[str, np.ndarray]:
        """Data-scale parameters -> the fitted scale (the inverse of ``to_data``).

        Parameters
        ----------
        params : dict of str to array_like
            As ``to_data`` takes them, on the data's scale.

        Returns
        -------
        dict of str to ndarray
            The same names and shapes.
        """
        out = {k: np.asarray(v, dtype=float) for k, v in params.items()}
        w = np.asarray(params["w"], dtype=float)
        s_x, m_x = np.asarray(self.x_scale), np.asarray(self.x_mean)
        out["w"] = w * s_x / self.y_scale if w.shape[-1] else w
        if "b" in params:
            out["b"] = (np.asarray(params["b"], dtype=float) - self.y_mean + w @ m_x) / self.y_scale
        out["sigma"] = np.asarray(params["sigma"], dtype=float) / self.y_scale
        return out
