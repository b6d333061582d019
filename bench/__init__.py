"""Everything downstream of a backend's Fit: ``run`` (cells, executors, sweeps), ``score`` (one
fit's row), ``reference`` (reference posteriors), ``report`` (tables, figures, findings) and the
command line ``cli`` (docs/architecture.md)."""
