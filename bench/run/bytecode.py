"""The environment's bytecode, compiled once where Python will not cache it itself.

Where ``PYTHONDONTWRITEBYTECODE`` is set (this project's machines set it), Python never writes the
``.pyc`` files of what it imports, so every cell process compiles the source of every module it
loads: about 6 s per process for NumPy, pandas, xarray, JAX, NumPyro and PyMC (docs/performance.md).
uv's ``compile-bytecode`` setting installs the ``.pyc`` files, but uv applies it on every
``uv run`` as well as on installs: it re-checks the whole ``site-packages`` (8600 files) and
prints "Bytecode compiled ..." each time (astral-sh/uv#12202). Here the compile runs once per set
of installed distributions, recorded by a stamp file; a later run costs one directory listing.
That is what a test session does (``ensure_bytecode``: its many processes all import the engines).

``mixbench run``, ``sweep`` and ``sbc`` instead write the bytecode of what they import as they
import it (``write_bytecode_as_imported``), as Python does by default: a run needs a fraction of
the environment's 9400 modules, and compiling all of them first held a first run's cells back
12.5 s on 2 cores (docs/performance.md, section 7), while the first run's floor is Stan's compile.
"""

from __future__ import annotations

import compileall
import hashlib
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

STAMP = ".mixbench-bytecode"
PROJECT_PACKAGES = ("models", "backends", "bench")


def _site_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]), Path(paths["platlib"])})


def fingerprint(site_dir: Path) -> str:
    """What the compiled files depend on: the interpreter and every installed distribution's
    name and version (their ``.dist-info`` directory names)."""
    names = sorted(entry for entry in os.listdir(site_dir) if entry.endswith(".dist-info"))
    blob = "\n".join([sys.version, sys.implementation.cache_tag or "", *names])
    return hashlib.sha256(blob.encode()).hexdigest()


def ensure_bytecode(stream=sys.stderr, force: bool = False, site_dirs: list[Path] | None = None,
                    project: bool = True) -> bool:
    """Compile ``site-packages`` (``site_dirs``, default the running environment's) and, with
    ``project``, this project's packages to bytecode, when Python is set not to write it and the
    installed distributions changed since the last compile.

    Returns True when a site directory was compiled. Does nothing where Python writes its own
    bytecode (the usual setting) unless ``force``; an unwritable environment is left as it is.
    """
    if not (force or sys.flags.dont_write_bytecode):
        return False
    compiled = False
    for site_dir in (_site_dirs() if site_dirs is None else [Path(d) for d in site_dirs]):
        if not site_dir.is_dir():
            continue
        stamp = site_dir / STAMP
        expected = fingerprint(site_dir)
        try:
            if stamp.read_text() == expected:
                continue
        except OSError:
            pass
        if not os.access(site_dir, os.W_OK):
            continue
        print(f"mixbench: compiling the bytecode of {site_dir} once (Python is set not to write it; "
              "a minute or two)", file=stream, flush=True)
        start = time.perf_counter()
        # In a process of its own: -qq skips files that do not compile (test data, other Python
        # versions' code) silently, as installers do, -W ignore the SyntaxWarnings old packages
        # raise when compiled; -j 0: one worker per core.
        subprocess.run([sys.executable, "-W", "ignore", "-m", "compileall", "-qq", "-j", "0", str(site_dir)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        temporary = stamp.with_suffix(f".{os.getpid()}")
        temporary.write_text(expected)
        os.replace(temporary, stamp)
        print(f"mixbench: bytecode compiled in {time.perf_counter() - start:.0f} s", file=stream, flush=True)
        compiled = True
    # The project's own modules change with every edit; compileall skips those up to date.
    root = Path(__file__).resolve().parents[2]
    for package in PROJECT_PACKAGES if project else ():
        if (root / package).is_dir() and os.access(root / package, os.W_OK):
            compileall.compile_dir(root / package, quiet=2, workers=1)
    return compiled


def write_bytecode_as_imported() -> None:
    """Let this process, and the cell processes it starts from now on, write the bytecode of each
    module they import, where Python is set not to (``PYTHONDONTWRITEBYTECODE``): the same files
    ``ensure_bytecode`` would write for them, beside their sources (a ``__pycache__`` directory),
    so that the next run reads them. Nothing changes where Python writes its own bytecode."""
    if sys.flags.dont_write_bytecode:
        sys.dont_write_bytecode = False
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
