"""The ``mixbench`` command's entry point (``bench.cli.entry`` does the work).

For the commands that run cells in local processes (run, sweep and sbc, without Dask), the
forkserver those processes fork from starts first, importing the modules every cell needs
(``bench.run.forkserver``), while this process imports the suite: about 0.9 s of CPU each, side by
side on two cores instead of one after the other. A command that ends before any cell (an error
in its arguments, nothing left to run) leaves the server to exit with it. Bytecode is written as
imported from the start (``bench.run.bytecode``), the suite's own imports included.
"""

from __future__ import annotations

import sys

CELL_COMMANDS = ("run", "sweep", "sbc")


def runs_local_cells(argv: list[str]) -> bool:
    """Whether ``argv`` (the arguments after ``mixbench``) names a command that runs cells in
    local processes: not help, not ``--executor dask`` or ``--scheduler`` (a Dask cluster)."""
    if not argv or argv[0] not in CELL_COMMANDS:
        return False
    words = set(argv[1:])
    dask = {"--executor=dask", "--scheduler"} & words or any(
        flag == "--executor" and value == "dask" for flag, value in zip(argv, argv[1:]))
    return not ({"-h", "--help"} & words or dask or any(word.startswith("--scheduler=") for word in words))


def entry() -> None:
    if runs_local_cells(sys.argv[1:]):
        from bench.run.bytecode import write_bytecode_as_imported
        from bench.run.forkserver import start

        write_bytecode_as_imported()  # before the server starts: it inherits the environment
        start()
    from bench.cli import entry as cli_entry

    cli_entry()
