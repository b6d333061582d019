"""The executor a run uses, chosen by its name (``bench.run.executors.EXECUTORS``).

Apart from bench.run.executors so that the Dask executor, built on that module's pieces, is imported
by neither of them in turn: the import graph stays a tree (docs/architecture.md).
"""

from __future__ import annotations

from bench.run.dask_executor import DaskExecutor
from bench.run.executors import EXECUTORS, CellExecutor, LocalProcessExecutor, WarmProcessExecutor
from bench.run.preflight import check_scheduler
from models.errors import MixbenchError


def make_executor(kind: str | None = None, jobs: int = 1, scheduler: str | None = None) -> CellExecutor:
    """The executor named ``kind``.

    Parameters
    ----------
    kind : {"warm", "fresh", "dask"}, optional
        None: dask when a ``scheduler`` address is given, else warm.
    jobs : int
        Worker processes of a local executor (or of the LocalCluster dask starts without a
        scheduler).
    scheduler : str, optional
        The address of a Dask scheduler, e.g. ``"tcp://127.0.0.1:8786"``.

    Returns
    -------
    CellExecutor

    Raises
    ------
    MixbenchError
        An unknown kind, a scheduler with a local executor, or a scheduler address that is not one.
    """
    if scheduler is not None:
        if kind not in (None, "dask"):
            raise MixbenchError(f"--scheduler: sends the cells to a Dask cluster; it does not go with --executor {kind}")
        check_scheduler(scheduler)
    kind = kind or ("dask" if scheduler is not None else "warm")
    if kind == "warm":
        return WarmProcessExecutor(jobs=jobs)
    if kind == "fresh":
        return LocalProcessExecutor(jobs=jobs)
    if kind == "dask":
        return DaskExecutor(address=scheduler, jobs=jobs)
    raise MixbenchError(f"--executor: unknown {kind!r}; known: {', '.join(EXECUTORS)}")
