"""Experiments: one-off comparisons run by hand (``python -m bench.experiments.<name>``), apart
from the library, the CLI and the benchmark suite. Their findings are in docs/performance.md."""
