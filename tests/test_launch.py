"""The mixbench command's entry point (bench.launch): which commands start the forkserver before
the suite is imported, and that they still fail as the CLI says."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.launch import runs_local_cells

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, expected", [
    (["run"], True), (["run", "--backends", "numpyro"], True), (["sweep", "--jobs", "2"], True), (["sbc"], True),
    (["run", "--executor", "fresh"], True), (["run", "--executor", "warm"], True),
    ([], False), (["report", "results"], False), (["list"], False), (["--version"], False),
    (["run", "--help"], False), (["sweep", "-h"], False),
    (["run", "--executor", "dask"], False), (["run", "--executor=dask"], False),
    (["run", "--scheduler", "tcp://127.0.0.1:8786"], False), (["sweep", "--scheduler=tcp://127.0.0.1:8786"], False),
])
def test_which_commands_start_the_forkserver_first(argv, expected):
    assert runs_local_cells(argv) is expected


ENTRY = """
import json, sys
from multiprocessing import forkserver
import bench.launch
sys.argv = ["mixbench", *{argv!r}]
try:
    bench.launch.entry()
except SystemExit as exc:
    code = exc.code
print("RESULT " + json.dumps({{"code": code, "server": forkserver._forkserver._forkserver_pid is not None}}))
"""


@pytest.mark.parametrize("argv, server", [(["run", "--scenario", "no-such-scenario"], True),
                                          (["report", "/no/such/run"], False)])
def test_the_entry_point_fails_as_the_cli_does_with_or_without_a_server(argv, server):
    done = subprocess.run([sys.executable, "-c", ENTRY.format(argv=argv)], cwd=ROOT, capture_output=True, text=True)
    line = [text for text in done.stdout.splitlines() if text.startswith("RESULT ")]
    assert line, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads(line[-1][len("RESULT "):]) == {"code": 2, "server": server}
    assert done.stderr.startswith(f"mixbench {argv[0]}: ") and "Traceback" not in done.stderr


# The command with PYTHONDONTWRITEBYTECODE set: it turns bytecode writing on, starts the server
# (with -B, copied by multiprocessing from sys.flags), and a process forked from the server
# imports a module: its bytecode is written.
SERVER_BYTECODE = """
import multiprocessing as mp, sys
from bench.run.bytecode import write_bytecode_as_imported
from bench.run.forkserver import COMMON_MODULES, start

def child():
    import fresh_in_cell  # noqa: F401

if __name__ == "__main__":
    write_bytecode_as_imported()
    start([COMMON_MODULES[0], "fresh_in_server"])
    process = mp.get_context("forkserver").Process(target=child)
    process.start()
    process.join()
    sys.exit(process.exitcode)
"""


def test_the_server_and_its_cell_processes_write_bytecode(tmp_path):
    import os

    for name in ("fresh_in_server", "fresh_in_cell"):
        (tmp_path / f"{name}.py").write_text("X = 1\n")
    (tmp_path / "script.py").write_text(SERVER_BYTECODE)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    env.pop("PYTHONPYCACHEPREFIX", None)
    done = subprocess.run([sys.executable, str(tmp_path / "script.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = sorted(path.name.split(".")[0] for path in (tmp_path / "__pycache__").glob("*.pyc"))
    assert written == ["fresh_in_cell", "fresh_in_server"]
