"""The command line as a user meets it: --help and --version, one vocabulary with the
pytest-benchmark suite, progress on a terminal and in a pipe, and bytecode compiled once."""

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import build_parser, main
from bench.run.progress import Progress
from bench.run.bytecode import STAMP, ensure_bytecode, write_bytecode_as_imported
from models.errors import MixbenchError

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def _run_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["run"]


def test_version():
    from importlib.metadata import version

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"mixbench {version('mixbench')}"


@pytest.mark.parametrize("command", [[], ["run"], ["sweep"], ["report"], ["compare"], ["list"]])
def test_help_is_clean(command):
    text = cli(*command, "--help").stdout
    for noise in ("``", "SET_", "(default None)", "default: None", "%("):
        assert noise not in text, (noise, text)
    assert not re.search(r"[a-z]-\n\s+[a-z]", text), text  # no name broken at a hyphen


def test_every_run_option_says_what_it_does_and_its_default():
    for action in _run_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        assert action.help and len(action.help) > 15, action.option_strings
        needs_default = action.default not in (None, False) and not isinstance(action, argparse._StoreConstAction)
        if needs_default:
            assert "default" in action.help, action.option_strings


def test_the_benchmark_suite_takes_the_options_of_mixbench_run():
    """pytest bench/ --help lists every grid option of mixbench run under the same name and form."""
    from bench.benchmarks.conftest import RUN_ONLY

    text = subprocess.run([sys.executable, "-m", "pytest", "bench/benchmarks/test_fits.py", "--help", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    section = text[text.index("mixbench grid"):]
    for action in _run_parser()._actions:
        if action.dest in RUN_ONLY or not action.option_strings:
            continue
        for name in action.option_strings:
            assert name in section, name
    for gone in ("--n-obs", "--cell-time-limit", "--mixbench-out"):  # old names: accepted, not shown
        assert gone not in text


def test_the_benchmark_suite_builds_the_same_grid_as_mixbench_run():
    from bench.run.plan import run_cells

    args = ["--backends", "tests.fake_backends:QuickBackend", "--methods", "nuts,map", "--seeds", "0-2",
            "--N", "200,400", "--chains", "3"]
    expected = sorted(c.id for c in run_cells(build_parser().parse_args(["run", *args]))[0])
    result = subprocess.run([sys.executable, "-m", "pytest", "bench/benchmarks/test_fits.py", "--collect-only", "-q",
                             "-p", "no:cacheprovider", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    collected = [line for line in result.stdout.splitlines() if "test_fit[" in line]
    assert len(collected) == len(expected) == 12, result.stdout[-2000:]
    old = subprocess.run([sys.executable, "-m", "pytest", "bench/benchmarks/test_fits.py", "--collect-only", "-q",
                          "-p", "no:cacheprovider", "--backends", "tests.fake_backends:QuickBackend",
                          "--n-obs", "300", "--cell-time-limit", "5"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert "N300" in old.stdout, old.stdout[-2000:]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_piped_progress_prints_a_line_at_least_every_30_seconds(tmp_path):
    stream, clock = io.StringIO(), _Clock()
    (tmp_path / "a.log").write_text("Building\rBuilding: 41.0s\r\x1b[32mBuilding: 42.5s\x1b[0m\r\n      | ^~~~~\n")
    progress = Progress(1, stream=stream, log_dir=tmp_path, clock=clock)
    progress("plan", {"todo": 1, "finished_before": 0})
    progress("start", {"cell_id": "a"})
    times = []
    for step in range(1, 1801):  # 180 s of ticks every 0.1 s
        clock.now = step / 10
        before = stream.getvalue().count("\n")
        progress("tick", {"cell_id": "a", "elapsed": clock.now})
        if stream.getvalue().count("\n") > before:
            times.append(clock.now)
    progress("done", {"cell_id": "a", "status": "ok", "time_cell": 180.0})
    gaps = [b - a for a, b in zip([0.0, *times], [*times, 180.0])]
    assert len(times) >= 6 and max(gaps) < 30, gaps
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/1] a started" and lines[-1] == "[1/1] a ok in 180.0 s"
    assert "still running" in lines[1] and lines[1].endswith(": Building: 42.5s")  # the log's last plain line


def test_piped_progress_says_the_phase_and_skips_the_source_line_a_warning_echoes(tmp_path):
    """A compiling Stan cell whose log ends with a Python warning: the heartbeat names the cell,
    "compiling", and the warning, not the line of source Python prints under it."""
    stream, clock = io.StringIO(), _Clock()
    (tmp_path / "d.stan.nuts.s0.log").write_text(
        "/w/backends/caches.py:198: CacheWarning: cache entry /c/stan/x: failed to load; rebuilding\n"
        "  compiled = artefacts.intact(exe)  # a cut-off or foreign executable is discarded\n")
    progress = Progress(1, stream=stream, log_dir=tmp_path, clock=clock)
    progress("start", {"cell_id": "d.stan.nuts.s0"})
    clock.now = 31.0
    progress("tick", {"cell_id": "d.stan.nuts.s0", "elapsed": 31.0, "doing": "compile"})
    line = stream.getvalue().splitlines()[-1]
    assert line.startswith("  ... d.stan.nuts.s0 still running, compiling 31 s: ")
    assert "CacheWarning: cache entry" in line and "artefacts.intact" not in line


def test_piped_progress_leaves_out_the_compilers_diagnostics(tmp_path):
    """A Stan build's g++ output (seen in a real run: "507 | atomic<T*>: internal::...") is not
    shown as the cell's progress; the last line before it is."""
    stream, clock = io.StringIO(), _Clock()
    (tmp_path / "s.log").write_text(
        "Building the Stan program\n"
        "In file included from /h/tbb/atomic.h:3,\n"
        "                 from /h/stan/math.hpp:12,\n"
        "/h/tbb/atomic.h:507:8: warning: 'atomic' is deprecated [-Wdeprecated-declarations]\n"
        "  507 | atomic<T*>: internal::atomic_impl_with_arithmetic<T*,ptrdiff_t,T> {\n"
        "      |        ^~~~~~~~~~\n"
        "ce5::internal::split_ordered_list<std::pair<const std::pair<std::basic_string<char> > > >\n")
    progress = Progress(1, stream=stream, log_dir=tmp_path, clock=clock)
    progress("start", {"cell_id": "s"})
    clock.now = 31.0
    progress("tick", {"cell_id": "s", "elapsed": 31.0, "doing": "compile"})
    # Compiling: only a Python warning would be news; the compiler's lines never are.
    assert stream.getvalue().splitlines()[-1] == "  ... s still running, compiling 31 s"
    with open(tmp_path / "s.log", "a") as log:
        log.write("Chain 1: Iteration: 100 / 2000 [  5%]  (Warmup)\n")
    clock.now = 62.0
    progress("tick", {"cell_id": "s", "elapsed": 62.0, "doing": "warmup"})
    assert stream.getvalue().splitlines()[-1] == ("  ... s still running, warming up 62 s: "
                                                  "Chain 1: Iteration: 100 / 2000 [  5%]  (Warmup)")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_progress_shows_every_cell_in_flight():
    stream = _Terminal()
    progress = Progress(3, stream=stream)
    progress("start", {"cell_id": "a"})
    progress("start", {"cell_id": "b"})
    progress("tick", {"cell_id": "a", "elapsed": 12.0})
    progress("tick", {"cell_id": "b", "elapsed": 3.0})
    last = stream.getvalue().split("\r")[-1]
    assert "a 12 s" in last and "b 3 s" in last  # both cells on the one line, not taking turns
    progress("done", {"cell_id": "a", "status": "ok", "time_cell": 12.0})
    progress("tick", {"cell_id": "b", "elapsed": 4.0})
    last = stream.getvalue().split("\r")[-1]
    assert "b 4 s" in last and "a 12 s" not in last and "[1/3 done]" in last


def test_terminal_progress_says_what_a_cell_is_doing():
    stream = _Terminal()
    progress = Progress(2, stream=stream)
    progress("start", {"cell_id": "stan"})
    progress("start", {"cell_id": "pymc"})
    progress("tick", {"cell_id": "stan", "elapsed": 41.0, "doing": "compile"})
    progress("tick", {"cell_id": "pymc", "elapsed": 3.0, "doing": "compile_wait"})
    last = stream.getvalue().split("\r")[-1]
    assert "stan compiling 41 s" in last and "pymc waiting for another process's build 3 s" in last
    progress("tick", {"cell_id": "stan", "elapsed": 62.0, "doing": None})
    assert "stan 62 s" in stream.getvalue().split("\r")[-1]


def test_run_starts_the_longest_compile_first_with_a_worker_per_core(monkeypatch, tmp_path):
    import bench.cli

    seen = {}

    def fake_run_grid(cells, options, executor, progress):
        seen.update(backends=[c.backend for c in cells], jobs=executor.jobs)
        raise MixbenchError("stop here")

    monkeypatch.setattr(bench.cli, "run_grid", fake_run_grid)  # where the command line calls it
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    args = ["run", "--backends", "numpyro,pymc,stan", "--seeds", "0,1", "--reference", "none",
            "--out", str(tmp_path)]
    assert main(args) == 2
    assert seen == {"backends": ["stan", "stan", "pymc", "pymc", "numpyro", "numpyro"], "jobs": 6}
    assert main([*args, "--jobs", "1"]) == 2 and seen["jobs"] == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert main(args) == 2 and seen["jobs"] == 2


def test_bytecode_is_compiled_once_per_set_of_installed_distributions(tmp_path, capfd):
    site = tmp_path / "site-packages"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "__init__.py").write_text("X = 1\n")
    (site / "pkg" / "old.py").write_text('PATTERN = "\\-"\n')  # an invalid escape: a SyntaxWarning when compiled
    (site / "pkg-1.0.dist-info").mkdir()
    out = io.StringIO()
    assert ensure_bytecode(out, force=True, site_dirs=[site], project=False)
    assert list((site / "pkg" / "__pycache__").glob("__init__.*.pyc")) and (site / STAMP).is_file()
    assert "compiling the bytecode" in out.getvalue()
    assert list((site / "pkg" / "__pycache__").glob("old.*.pyc")) and "Warning" not in capfd.readouterr().err
    # Nothing installed since: no compile, no output.
    again = io.StringIO()
    assert not ensure_bytecode(again, force=True, site_dirs=[site], project=False) and again.getvalue() == ""
    (site / "other-2.0.dist-info").mkdir()
    (site / "other.py").write_text("Y = 2\n")
    assert ensure_bytecode(io.StringIO(), force=True, site_dirs=[site], project=False)
    assert list((site / "__pycache__").glob("other.*.pyc"))


def test_a_run_writes_the_bytecode_of_what_it_and_its_cell_processes_import(tmp_path, monkeypatch):
    (tmp_path / "fresh_module.py").write_text("X = 1\n")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "flags", type("F", (), {"dont_write_bytecode": True})())
    write_bytecode_as_imported()
    assert sys.dont_write_bytecode is False and "PYTHONDONTWRITEBYTECODE" not in os.environ
    # A process started afterwards (a forkserver, a cell) inherits it and writes what it imports.
    subprocess.run([sys.executable, "-c", "import fresh_module"], cwd=tmp_path, check=True)
    assert list((tmp_path / "__pycache__").glob("fresh_module.*.pyc"))


def test_bytecode_is_left_to_python_where_it_writes_its_own(tmp_path, monkeypatch):
    flags = sys.flags
    monkeypatch.setattr(sys, "flags", type("F", (), {"dont_write_bytecode": False})())
    try:
        assert not ensure_bytecode(io.StringIO(), site_dirs=[tmp_path], project=False)
    finally:
        monkeypatch.setattr(sys, "flags", flags)
    assert not (tmp_path / STAMP).exists()


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv")
def test_uv_run_prints_no_bytecode_line():
    """uv's compile-bytecode setting would recompile site-packages and say so on every uv run."""
    result = subprocess.run(["uv", "run", "--locked", "python", "-c", "pass"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Bytecode compiled" not in result.stderr, result.stderr


def test_the_command_exits_with_mains_code_and_leaves_no_objects_to_the_last_collection(monkeypatch):
    """The console command (``entry``) exits with ``main``'s code, after freezing the garbage
    collector's objects so that the interpreter's last collection has none to walk."""
    import gc

    import bench.cli

    monkeypatch.setattr(bench.cli, "main", lambda: 3)
    left = [[] for _ in range(100)]  # containers the collector tracks
    before = gc.get_freeze_count()
    try:
        with pytest.raises(SystemExit) as exited:
            bench.cli.entry()
        assert exited.value.code == 3
        assert gc.get_freeze_count() >= before + len(left)
    finally:
        gc.unfreeze()
