"""The spec, the NumPy oracle, the scenarios and data loading: everything a backend consumes."""

from models.data import Dataset
from models.datafile import load_csv
from models.errors import MixbenchError
from models.oracle import log_density, log_likelihood, log_prior
from models.scenarios import DEFAULT_SCENARIO, SCENARIOS, Scenario, get_scenario
from models.spec import MixtureSpec, NormalPrior, SigmaPrior, random_point

__all__ = [
    "DEFAULT_SCENARIO", "SCENARIOS", "Dataset", "MixbenchError", "MixtureSpec", "NormalPrior",
    "Scenario", "SigmaPrior", "get_scenario", "load_csv", "log_density", "log_likelihood",
    "log_prior", "random_point",
]
