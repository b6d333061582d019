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
