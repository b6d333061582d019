"""Process-wide JAX settings, set in one place for every worker whatever its grid.

JAX fixes two things per process before its first computation: how many CPU devices exist
(parallel chains need one device each, ``XLA_FLAGS``) and whether 64-bit floats are allowed
(``jax_enable_x64``). Set here, before any backend loads (``backends.get_backend`` calls
``configure``), a PyMC fit that uses JAX (its numpyro sampler) sees the same JAX in a process
that never loads the NumPyro backend as in one that does.
"""

from __future__ import annotations

import importlib.util
import os
import sys

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def configure() -> None:
    """Set one CPU device per core and 64-bit floats for this process, once; idempotent.

    Before JAX is imported only environment variables are set (JAX reads them at import), so a
    process that never uses JAX does not pay its import (0.3-1 s of CPU), nor does one where
    only arviz_base's unloaded placeholder for it is in ``sys.modules`` (every worker and the
    command's own process: asking that placeholder for anything imports all of JAX). Once JAX
    has started its backends the device count can no longer change: it is left as it is (fits
    then record the chains they ran one after another).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if not _imported("jax"):
        if DEVICE_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}={os.cpu_count() or 1}".strip()
        os.environ["JAX_ENABLE_X64"] = "1"
        return
    import jax
    from jax._src import xla_bridge  # only to ask whether JAX has started its backends

    if not xla_bridge.backends_are_initialized() and DEVICE_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}={os.cpu_count() or 1}".strip()
    jax.config.update("jax_enable_x64", True)


def _imported(name: str) -> bool:
    """Whether module ``name`` has been imported: a lazy placeholder (``importlib.util.LazyLoader``,
    as lazy_loader registers for arviz_base) has not run its code yet."""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, importlib.util._LazyModule)
