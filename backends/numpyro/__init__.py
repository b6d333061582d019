"""The NumPyro backend (``NumPyroBackend``, in ``backends.numpyro.adapter``): the model object
(``backends.numpyro.model``), its NUTS programs (``backends.numpyro.nuts``) and its SVI, Laplace
and Pathfinder programs (``backends.numpyro.vi``)."""

from backends.numpyro.adapter import NumPyroBackend

__all__ = ["NumPyroBackend"]
