"""Imported first by the forkserver (bench.run.forkserver.COMMON_MODULES): it lets the server, and
every cell process forked from it, write the bytecode of what they import.

Where the command started with PYTHONDONTWRITEBYTECODE set, it turns the writing of bytecode on
for itself and the processes it starts (bench.run.bytecode.write_bytecode_as_imported), but
multiprocessing starts the server with ``-B`` (it copies ``sys.flags``), so no cell process wrote
any: every worker of every run compiled the source of NumPy, pandas, SciPy, xarray and the rest
again. The variable unset means the command has done so (or it was never set).
"""

import os
import sys

if "PYTHONDONTWRITEBYTECODE" not in os.environ:
    sys.dont_write_bytecode = False
