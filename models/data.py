"""Datasets: what every backend fits. Built by a scenario's generator or loaded from a file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from models.errors import MixbenchError
from models.spec import MixtureSpec


@dataclass(frozen=True, eq=False)
class Dataset:
    """Covariates ``x`` (N x D), response ``y`` (N,), and the true parameters when known."""

    x: np.ndarray
    y: np.ndarray
    truth: dict[str, np.ndarray] | None = None
    name: str = "data"
    covariates: tuple[str, ...] | None = None

    def __post_init__(self):
        x = np.asarray(self.x, dtype=float)
        y = np.asarray(self.y, dtype=float)
        if x.ndim == 1:
            raise MixbenchError(f"x: must be 2-D (N x D), got shape {x.shape}; use x[:, None] for one covariate")
        if x.ndim != 2:
            raise MixbenchError(f"x: must be 2-D (N x D), got shape {x.shape}")
        if y.ndim != 1:
            raise MixbenchError(f"y: must be 1-D (N,), got shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise MixbenchError(f"x and y: shapes disagree, x has {x.shape[0]} rows and y has {y.shape[0]}")
        if y.shape[0] == 0:
            raise MixbenchError("y: no observations")
        for name, arr in (("x", x), ("y", y)):
            if np.isnan(arr).any():
                raise MixbenchError(f"{name}: contains NaN ({int(np.isnan(arr).sum())} values)")
            if np.isinf(arr).any():
                raise MixbenchError(f"{name}: contains inf ({int(np.isinf(arr).sum())} values)")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        if self.covariates is None:
            object.__setattr__(self, "covariates", tuple(f"x{d}" for d in range(x.shape[1])))

    def digest(self) -> str:
        """A content hash of x and y: backends key their compiled-model caches on it.

        Returns
        -------
        str
            32 hexadecimal digits (BLAKE2b, 16 bytes) over the shapes and bytes of x and y.
        """
        h = hashlib.blake2b(digest_size=16)
        for arr in (self.x, self.y):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()

    @property
    def N(self) -> int:
        return self.y.shape[0]

    @property
    def D(self) -> int:
        return self.x.shape[1]

    def check_against(self, spec: MixtureSpec) -> None:
        """Check that the data fit ``spec``.

        Raises
        ------
        MixbenchError
            x has a number of columns other than ``spec.D``, or the truth's parameters are not
            the spec's (nu may be missing).
        """
        if self.D != spec.D:
            raise MixbenchError(f"x: has {self.D} covariate columns but the spec has D = {spec.D}")
        # A truth may lack nu: data simulated with normal errors (and outliers) have no true
        # degrees of freedom; a Student-t fit of them is scored on its other parameters.
        expected = set(spec.param_shapes())
        if self.truth is not None and set(self.truth) not in (expected, expected - {"nu"}):
            raise MixbenchError(
                f"truth: parameters {sorted(self.truth)} do not match the spec's {sorted(spec.param_shapes())}"
            )
