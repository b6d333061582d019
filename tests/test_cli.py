"""The command line: one-line errors with a non-zero exit for bad input, and working commands."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_one_line_error(result, needle: str):
    assert result.returncode == 2, result
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert needle in err, err


@pytest.mark.parametrize("args, needle", [
    (["run", "--backends", "tensorflow"], "backend: unknown 'tensorflow'"),
    (["run", "--methods", "gibbs"], "method: unknown 'gibbs'"),
    (["run", "--scenario", "nope"], "scenario: unknown 'nope'"),
    (["run", "--K", "0"], "--K: must be at least 1"),
    (["run", "--K", "two"], "--K: not an integer"),
    (["run", "--seeds", "a,b"], "--seeds: not a seed list"),
    (["run", "--seeds", "5-2"], "--seeds: not a seed list"),
    (["run", "--chains", "0"], "--chains: must be at least 1"),
    (["run", "--target-accept", "1.5"], "settings.target_accept: must be in (0, 1)"),
    (["run", "--precision", "float16"], "settings.precision"),
    (["run", "--sigma", "each"], "--sigma: invalid choice"),
    (["run", "--errors", "cauchy"], "--errors: invalid choice"),
    (["run", "--nu", "gamma:2"], "--nu: expected a number or gamma:SHAPE,RATE"),
    (["run", "--errors", "student-t", "--nu", "-1"], "--nu: nu: must be a positive finite number"),
    (["run", "--nu", "4"], "nu: only for errors = 'student-t'"),
    (["run", "--shared", "slopes", "--scenario", "gmm3"], "shared: 'slopes' needs at least one covariate"),
    (["run", "--weights", "logistic"], "--weights: invalid choice"),
    (["run", "--weights", "softmax", "--gamma-prior", "0,-1"], "--gamma-prior: Normal prior sigma: must be a positive"),
    (["run", "--shared", "intercepts"], "shared: 'intercepts' needs intercepts: --intercept, or intercept = true in a spec file"),
    (["sweep", "--vary", "outliers=0.9", "--seeds", "0"], "outliers: must lie in [0, 0.5]"),
    (["run", "--ordering", "intercept"], "ordering: 'intercept' needs intercepts: --intercept, or intercept = true in a spec file"),
    (["run", "--covariates", "x"], "--covariates: only applies with --data"),
    (["run", "--scenario", "forum", "--data", "x.csv"], "not allowed with argument"),
    (["report", "does-not-exist"], "does-not-exist: not found"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments(args, needle):
    assert_one_line_error(run_cli(*args), needle)


@pytest.mark.parametrize("args, needle", [
    (["run", "--backends", "numpyro", "--methods", "advi-meanfield", "--optimizer", "foo"], "--optimizer: unknown 'foo'"),
    (["run", "--sampler", "foo"], "--sampler: unknown 'foo'; known: cmdstanpy, numpyro, nutpie, pymc, pystan"),
    (["run", "--backends", "numpyro", "--sampler", "nutpie"], "--sampler: unknown 'nutpie'; known: numpyro"),
    (["sweep", "--vary", "sep=1", "--seeds", "0", "--spec", "ordering=sideways"], "ordering: must be one of"),
    (["sweep", "--vary", "sep=1", "--seeds", "0", "--methods", "nuts:sigma=each"], "sigma: must be one of"),
    (["run", "--backends", "numpyro", "--draws", "10000000000"], "GiB available here"),
    (["sweep", "--vary", "sep=1", "--seeds", "0", "--vi-draws", "100000000000"], "GiB available here"),
    (["run", "--scheduler", "notaurl"], "--scheduler: 'notaurl' is not a scheduler address"),
    (["run", "--scheduler", "tcp://host:99999"], "is not a scheduler address"),
    (["sweep", "--vary", "sep=1", "--scheduler", "tcp://"], "is not a scheduler address"),
    (["run", "--backends", "os:abort"], "backend: 'os:abort' is not a mixbench Backend subclass"),
    (["run", "--backends", "tests.fake_backends:Nope"], "backend: cannot load 'tests.fake_backends:Nope'"),
    (["run", "--data", "results"], "data file results: is a directory"),
])
def test_option_values_checked_before_any_cell(tmp_path, args, needle):
    """Each is refused in one line, exit 2, and nothing was run: the output folder has no rows."""
    assert_one_line_error(run_cli(*args, "--out", str(tmp_path / "out")), needle)
    assert not (tmp_path / "out" / "cells.jsonl").exists()


def test_fit_bytes_counts_draws_parameters_and_log_likelihood():
    from backends.base import FitSettings
    from bench.run.preflight import LOO_MAX_VALUES, fit_bytes
    from models.spec import MixtureSpec

    spec = MixtureSpec(K=3, D=2, intercept=True, sigma="per-component")  # 6 w + 3 b + 3 sigma + 3 pi
    settings = FitSettings(chains=4, draws=500, vi_draws=700, map_starts=5)
    assert fit_bytes(spec, 100, "nuts", settings) == 8 * (2000 * 15 + 2000 * 100 + 100 * 3)
    assert fit_bytes(spec, 100, "advi-fullrank", settings) == 8 * (700 * 15 + 700 * 100 + 100 * 3)
    assert fit_bytes(spec, 10**6, "map", settings) == 8 * (5 * 15 + 5 * 10**6 + 10**6 * 3)
    assert fit_bytes(spec, 10**6, "nuts", settings) == 8 * (2000 * 15 + int(LOO_MAX_VALUES) + 10**6 * 3)


def test_engine_name_tables_match_the_backends():
    # The command line checks names against backends.fit's tables without importing an engine;
    # each name must be one the engine really has.
    import numpyro.optim
    import pymc.variational

    from backends import base
    from backends.numpyro import model as numpyro_model
    from backends.numpyro import vi as numpyro_vi

    assert set(numpyro_vi._OPTIMIZERS) == set(base.OPTIMIZERS["numpyro"])
    assert all(callable(getattr(pymc.variational, name, None)) for name in base.OPTIMIZERS["pymc"])
    assert all(callable(numpyro_vi._OPTIMIZERS[name]) and hasattr(numpyro.optim, type(numpyro_vi._OPTIMIZERS[name](0.1)).__name__)
               for name in base.OPTIMIZERS["numpyro"])
    assert numpyro_model.ENGINE in base.SAMPLERS["numpyro"]


def test_malformed_data_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\nfoo,3\n")
    assert_one_line_error(run_cli("run", "--data", str(bad)), "column 'x' has a non-numeric value 'foo'")
    assert_one_line_error(run_cli("run", "--data", str(tmp_path / "absent.csv")), "not found")
    assert_one_line_error(run_cli("run", "--data", str(bad), "--response", "z"), "no response column 'z'")


def test_repeated_covariate_is_an_error(tmp_path):
    """--covariates size,size would fit D = 2 identical columns, whose slopes are unidentifiable."""
    data = tmp_path / "real.csv"
    data.write_text("size,minutes\n1,2\n2,3\n3,5\n")
    result = run_cli("run", "--data", str(data), "--response", "minutes", "--covariates", "size,size",
                     "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "covariate column(s) size given more than once")
    assert not (tmp_path / "out" / "cells.jsonl").exists()


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not valid JSON"),
    ('{"benchmarks": 3}', "not a pytest-benchmark JSON file"),
    ('{"benchmarks": []}', "no cell rows found"),
])
def test_malformed_benchmark_json(tmp_path, content, needle):
    path = tmp_path / "bench.json"
    path.write_text(content)
    assert_one_line_error(run_cli("report", str(path)), needle)


def test_malformed_rows_file(tmp_path):
    (tmp_path / "cells.jsonl").write_text('["a list, not a row"]\n')
    result = run_cli("report", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"mixbench: warning: results file {tmp_path / 'cells.jsonl'}: skipped 1 unreadable line(s): line 1 (not a cell row)",
        f"mixbench report: error: no cell rows found in {tmp_path}",
    ]
    (tmp_path / "cells.jsonl").write_text("")
    assert_one_line_error(run_cli("report", str(tmp_path)), "no cell rows found")


def test_help_on_every_command():
    for args in (["--help"], ["run", "--help"], ["report", "--help"], ["list", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "usage: mixbench" in result.stdout


def test_run_with_a_plugged_in_backend_writes_rows_and_report(tmp_path, capsys):
    args = ["run", "--backends", "tests.fake_backends:QuickBackend", "--seeds", "0,1", "--N", "200",
            "--chains", "2", "--draws", "100", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Posterior means" in out and "truth" in out and "report.md" in out
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "Recovered the truth on every seed: tests.fake_backends:QuickBackend / nuts (2 of 2" in text
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html


# -- every failure reachable from the command line: one line, a non-zero exit --------------------

import errno  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402

QUICK = "tests.fake_backends:QuickBackend"
QUICK_RUN = ["run", "--backends", QUICK, "--N", "200", "--chains", "2", "--draws", "100", "--no-report"]


def in_process(capsys, *args) -> tuple[int, list[str], str]:
    """main(args): its exit code, its stderr lines, its stdout."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def assert_error(code, err_lines, expected_code, line):
    assert code == expected_code, err_lines
    assert err_lines == [line]


def refuse_writes_under(directory: Path, monkeypatch):
    """Make ``directory`` read-only: its mode, and, for root (whom modes do not stop), the file
    system calls that create or write files under it raise PermissionError as they would."""
    directory.chmod(0o555)
    if os.geteuid() != 0:
        return

    def guard(method):
        def refused(self, *args, **kwargs):
            path = pathlib.Path(self)
            if path == directory or directory in path.parents:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return method(self, *args, **kwargs)
        return refused

    for name in ("mkdir", "touch", "write_text", "write_bytes"):
        monkeypatch.setattr(pathlib.Path, name, guard(getattr(pathlib.Path, name)))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run directory with one ok row, its run.json and its slope trace."""
    from bench.run.harness import RunOptions, make_grid, run_grid

    out = tmp_path_factory.mktemp("finished") / "run"
    cells = make_grid(["forum-small"], [QUICK], ["nuts"], [0], settings={"chains": 2, "draws": 100}, n=200)
    [row] = run_grid(cells, RunOptions(out))
    assert row["status"] == "ok" and (out / row["slope_trace_file"]).is_file()
    return out


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


@pytest.mark.parametrize("command", ["run", "report"])
def test_out_that_is_a_file_or_under_a_file(command, run_dir, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    for out, why in ((a_file, "is a file"), (a_file / "sub", f"is under {a_file}, which is a file")):
        args = [*QUICK_RUN, "--out", str(out)] if command == "run" else ["report", str(run_dir), "--out", str(out)]
        code, err, _ = in_process(capsys, *args)
        assert_error(code, err, 2, f"mixbench {command}: error: output directory {out}: {why}, not a directory")


@pytest.mark.parametrize("command", ["run", "report"])
def test_out_in_a_read_only_directory(command, run_dir, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "out"
    refuse_writes_under(locked, monkeypatch)
    args = [*QUICK_RUN, "--out", str(out)] if command == "run" else ["report", str(run_dir), "--out", str(out)]
    code, err, _ = in_process(capsys, *args)
    assert_error(code, err, 2, f"mixbench {command}: error: output directory {out}: cannot be written (Permission denied)")


def test_unreadable_data_file(tmp_path, capsys, monkeypatch):
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n" + "".join(f"{i / 10},{i % 3}\n" for i in range(50)))
    csv.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: refuse as the kernel would refuse anyone else
        real = pathlib.Path.read_bytes
        monkeypatch.setattr(pathlib.Path, "read_bytes", lambda self: (_ for _ in ()).throw(
            PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))) if self == csv else real(self))
    code, err, _ = in_process(capsys, "run", "--data", str(csv), "--out", str(tmp_path / "out"))
    assert_error(code, err, 2, f"mixbench run: error: data file {csv}: cannot be read (Permission denied)")


@pytest.mark.parametrize("args, line", [
    (["--data", "{csv}", "--N", "50"],
     "--N: only applies to a built-in scenario (a data file's N is its number of rows)"),
    (["--K", "1000"],
     "K: 1000 components for N = 2000 observations leaves fewer than 10 per component (K may be at most 200)"),
    (["--data", "{csv}", "--K", "6"],
     "K: 6 components for N = 50 observations leaves fewer than 10 per component (K may be at most 5)"),
    (["--N", "100,2000", "--methods", "advi-minibatch-meanfield", "--batch-size", "500"],
     "settings.batch_size: 500 is larger than the data (N = 100)"),
    (["--data", "{tiny}"],
     "K: 2 components for N = 6 observations leaves fewer than 10 per component (a mixture of K = 2 needs N >= 20)"),
])
def test_impossible_sizes_are_refused_before_any_cell(args, line, tmp_path, capsys):
    csv = tmp_path / "data.csv"
    csv.write_text("x,y\n" + "".join(f"{i / 10},{i % 3}\n" for i in range(50)))
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("x,y\n" + "".join(f"{i / 10},{i % 3}\n" for i in range(6)))
    args = [a.format(csv=csv, tiny=tiny) for a in args]
    code, err, _ = in_process(capsys, "run", "--backends", QUICK, *args, "--out", str(tmp_path / "out"))
    assert_error(code, err, 2, f"mixbench run: error: {line}")
    assert not (tmp_path / "out").exists()


def test_a_reference_for_too_few_observations_is_refused_before_any_fit(tmp_path, capsys):
    """``mixbench reference`` applies run's size rule: one row for K = 2 is refused in one line, not
    sampled for minutes into a provisional reference."""
    one = tmp_path / "one.csv"
    one.write_text("x,y\n0.5,1.0\n")
    code, err, _ = in_process(capsys, "reference", "--data", str(one), "--out", str(tmp_path / "ref"))
    assert_error(code, err, 2, "mixbench reference: error: K: 2 components for N = 1 observations leaves fewer "
                               "than 10 per component (a mixture of K = 2 needs N >= 20)")
    assert not (tmp_path / "ref").exists()


def test_report_skips_unreadable_lines_naming_them(run_dir, capsys):
    rows = run_dir / "cells.jsonl"
    rng = np.random.default_rng(1)
    garbage = bytes(b for b in rng.integers(0, 256, 400).astype(np.uint8).tobytes() if b != 10)
    rows.write_bytes(garbage + b"\n" + rows.read_bytes() + b"\x00\xff{{{\n")
    code, err, out = in_process(capsys, "report", str(run_dir))
    assert code == 0
    assert err == [f"mixbench: warning: results file {rows}: skipped 2 unreadable line(s): "
                   "line 1 (not UTF-8 text), line 3 (not UTF-8 text)"]
    assert "1 cells on forum-small: 1 ok" in (run_dir / "report.md").read_text()


def test_run_resumes_past_unreadable_lines(run_dir, capsys):
    rows = run_dir / "cells.jsonl"
    rows.write_bytes(rows.read_bytes() + b"\xde\xad\xbe\xef\n")
    code, err, _ = in_process(capsys, *QUICK_RUN, "--seeds", "0,1", "--out", str(run_dir))
    assert code == 0
    assert err[0] == f"mixbench: warning: results file {rows}: skipped 1 unreadable line(s): line 2 (not UTF-8 text)"
    assert err[1] == "resuming: 1 cells already finished, 1 to run"


def test_report_with_a_corrupt_run_record(run_dir, capsys):
    (run_dir / "run.json").write_text('{"created": "2025-01-0')
    code, err, _ = in_process(capsys, "report", str(run_dir))
    assert code == 0
    assert err == [f"mixbench: warning: {run_dir / 'run.json'}: skipped, cannot be read (not valid JSON)"]
    assert (run_dir / "report.html").is_file()


def test_report_with_a_cut_off_draws_file(run_dir, capsys):
    [trace] = (run_dir / "draws").glob("*.slopes.npy")
    trace.write_bytes(trace.read_bytes()[:100])
    code, err, _ = in_process(capsys, "report", str(run_dir))
    assert code == 0
    assert len(err) == 1 and err[0].startswith(f"mixbench: warning: {trace}: skipped, cannot be read (")
    assert "Slope traces" not in (run_dir / "report.md").read_text()  # the figure is left out, nothing else


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "report.md")


def test_report_on_a_full_disk(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(pathlib.Path, "write_text", _disk_full)
    code, err, _ = in_process(capsys, "report", str(run_dir))
    assert_error(code, err, 1, "mixbench report: error: report.md: No space left on device")


def test_a_full_disk_without_a_file_name_names_the_output_directory(run_dir, tmp_path, capsys, monkeypatch):
    """A write on an open file that fails (ENOSPC) carries no file name: the line names the
    directory the command was writing into."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    code, err, _ = in_process(capsys, "report", str(run_dir), "--out", str(tmp_path / "rep"))
    assert_error(code, err, 1, f"mixbench report: error: {tmp_path / 'rep'}: No space left on device "
                               "(while writing there)")


def test_run_on_a_full_disk_goes_on_and_says_which_rows_are_missing(tmp_path, capsys, monkeypatch):
    import bench.run.harness as harness

    monkeypatch.setattr(harness, "_write_all", _disk_full)
    out = tmp_path / "out"
    code, err, stdout = in_process(capsys, *QUICK_RUN, "--seeds", "0,1", "--out", str(out))
    assert code == 1
    assert "Posterior means" in stdout  # both cells ran and are summarised
    cells = [line for line in err if line.startswith("mixbench: warning:") and "could not be written" in line]
    assert len(cells) == 2 and all("(No space left on device); the cell runs again on resume" in c for c in cells)
    assert err[-1] == (f"mixbench run: error: 2 row(s) could not be written to {out / 'cells.jsonl'}; "
                       "free space and rerun to run those cells again")


def test_debug_shows_the_traceback(tmp_path, capsys):
    code, err, _ = in_process(capsys, "--debug", "report", str(tmp_path))
    assert code == 2 and err[0] == "Traceback (most recent call last):"
    assert err[-1] == f"mixbench report: error: {tmp_path}: no cells.jsonl in this directory"
    code, err, _ = in_process(capsys, "report", str(tmp_path), "--debug")
    assert code == 2 and err[0] == "Traceback (most recent call last):"


def test_an_unexpected_error_is_still_one_line(run_dir, capsys, monkeypatch):
    import bench.cli

    def broken(paths, out):
        raise RuntimeError("something nobody foresaw\nwith a second line")

    monkeypatch.setattr(bench.cli, "write_report", broken)
    code, err, _ = in_process(capsys, "report", str(run_dir))
    assert_error(code, err, 1, "mixbench report: internal error: RuntimeError: something nobody foresaw "
                               "(rerun with --debug for the traceback)")


def test_list_says_the_cmdstan_sentence_once_and_how_data_files_are_scored(monkeypatch):
    import backends.stan.adapter
    import bench.run.availability as availability

    monkeypatch.setattr(backends.stan.adapter, "cmdstan_path", lambda: None)
    monkeypatch.setattr(availability, "cmdstan_path", lambda: None)
    text = availability.describe()
    assert text.count("cmdstanpy.install_cmdstan") == 1 and "CmdStan: not found" in text
    assert text.count("needs CmdStan (not found here; see Engines above)") == 5  # ADVI x2, Pathfinder, MAP, Laplace
    assert "scored against its reference posterior" in text and "pivot" not in text


@pytest.mark.parametrize("command, given", [("run", []), ("report", ["results"]), ("sweep", [])])
def test_unknown_argument_names_the_subcommand(command, given, capsys):
    """An unknown option is the subcommand's error, as every other bad argument of it is."""
    with pytest.raises(SystemExit) as info:
        main([command, *given, "--no-pathfinder-resample"])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"mixbench {command}: error: unrecognized arguments: --no-pathfinder-resample\n"
