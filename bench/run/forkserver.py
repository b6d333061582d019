"""The forkserver that cell processes fork from: the modules every cell imports, and the
environment the server started with.

Light on purpose (the standard library only): the ``mixbench`` command starts the server before
it imports the rest of the suite (``bench.launch``), so that the server's imports and the
command's own, about 0.9 s of CPU each, run side by side on two cores instead of one after the
other. The executors start it later, with the first cell's backend module too, when it is not
running yet (``bench.run.executors.preload_modules``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Sequence
from multiprocessing import forkserver

# What every cell imports before and after its fit (about 3 s, docs/performance.md). Under the
# forkserver start method a server process imports these once per run and each worker is forked
# from it: a fresh process that never ran an engine, without paying the imports again.
# bench.run.server_bytecode first: the bytecode of the rest is then written (its docstring).
# dask.array: xarray imports it (its chunk managers) at the first DataTree a process builds, which
# was 0.12-0.14 s of CPU in the extraction of every worker's first cell.
COMMON_MODULES = ("bench.run.server_bytecode", "numpy", "scipy.stats", "pandas", "xarray", "dask.array", "arviz_base",
                  "arviz_stats", "backends", "backends.base", "bench.run.harness", "bench.score.metrics",
                  "bench.score.relabel", "models.scenarios")

_server_environ: dict[str, str] | None = None


def set_preload(modules: Sequence[str]) -> None:
    """The modules the server imports when it starts (no effect on one already running: it keeps
    what it imported), and this process's environment as the server's, if it has not started."""
    global _server_environ
    mp.get_context("forkserver").set_forkserver_preload(list(modules))
    if _server_environ is None:
        _server_environ = dict(os.environ)


def start(modules: Sequence[str] = COMMON_MODULES) -> None:
    """Start the server now, importing ``modules``, unless it runs already."""
    set_preload(modules)
    forkserver.ensure_running()


def environ_changes() -> tuple[dict[str, str], list[str]]:
    """What this process changed in its environment since the server started: (set, unset), for
    a cell process forked from the server to apply (the server kept the environment it started
    with)."""
    base = _server_environ or {}
    current = dict(os.environ)
    return ({k: v for k, v in current.items() if base.get(k) != v}, [k for k in base if k not in current])
