"""The PyMC backend (``PyMCBackend``, in ``backends.pymc.adapter``): the model object
(``backends.pymc.model``), its NUTS runs (``backends.pymc.nuts``) and its ADVI and Pathfinder
set-up and stores (``backends.pymc.vi``)."""

from backends.pymc.adapter import PyMCBackend

__all__ = ["PyMCBackend"]
