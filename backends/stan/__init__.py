"""The Stan backend (``StanBackend``, in ``backends.stan.adapter``): the engines as installed
(``backends.stan.install``), the compiled program (``backends.stan.programs``), the native runs
(``backends.stan.runs``) and the parsers of what the engines write (``backends.stan.parsers``).
The names below are the package's public ones (bench/ and the tests use them)."""

from backends.stan.adapter import StanBackend
from backends.stan.install import NO_CMDSTAN, cmdstan_path, cmdstan_version, pystan_stan_version
from backends.stan.parsers import (advi_log_densities, advi_progress, pathfinder_log_densities, pathfinder_progress,
                                   read_elbo_trace)

__all__ = ["NO_CMDSTAN", "StanBackend", "advi_log_densities", "advi_progress", "cmdstan_path", "cmdstan_version",
           "pathfinder_log_densities", "pathfinder_progress", "pystan_stan_version", "read_elbo_trace"]
