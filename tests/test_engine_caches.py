"""Every cache an engine loads code from is checked like mixbench's own, and a compiled artefact
is checked against the size and SHA-256 recorded when it was built before it is loaded."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from backends import artefacts
from backends.caches import CacheWarning
from backends.engine_caches import check_cache_dirs
from models.errors import MixbenchError

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


@pytest.fixture
def engine_env(tmp_path, monkeypatch):
    """Each engine's cache pointed into tmp_path by its documented setting; returns the directory
    each engine loads from (created private, as the engine would leave it)."""
    env = {"XDG_CACHE_HOME": tmp_path / "cache", "PYTENSOR_FLAGS": tmp_path / "pytensor",
           "JAX_COMPILATION_CACHE_DIR": tmp_path / "jax", "NUMBA_CACHE_DIR": tmp_path / "numba",
           "CMDSTAN": tmp_path / "cmdstan-2.36.0"}
    for name, path in env.items():
        monkeypatch.setenv(name, f"base_compiledir={path}" if name == "PYTENSOR_FLAGS" else str(path))
    loads_from = {
        "httpstan": tmp_path / "cache" / "httpstan" / "4.17.0" / "models" / "6gtz5z3h",
        "PyTensor": tmp_path / "pytensor" / "compiledir_Linux-x86_64" / "numba",
        "JAX": tmp_path / "jax", "Numba": tmp_path / "numba", "CmdStan": tmp_path / "cmdstan-2.36.0",
    }
    for path in loads_from.values():
        path.mkdir(parents=True)
    for path in tmp_path.rglob("*"):
        path.chmod(0o700)
    return loads_from


def test_private_engine_caches_pass(engine_env):
    check_cache_dirs()


@pytest.mark.parametrize("engine", ["httpstan", "PyTensor", "JAX", "Numba", "CmdStan"])
@pytest.mark.parametrize("how", ["world-writable", "foreign"])
def test_each_engine_cache_others_can_write_is_refused(engine_env, engine, how):
    planted = engine_env[engine]
    if how == "world-writable":
        planted.chmod(0o777)
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a directory to another user needs root")
        os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(MixbenchError) as info:
        check_cache_dirs()
    message = str(info.value)
    assert str(planted) in message and "\n" not in message
    assert ("writable by group and others" if how == "world-writable" else f"uid {NOBODY}") in message


def test_a_run_refuses_a_shared_httpstan_cache_before_any_cell(engine_env, tmp_path):
    """The issue's case: httpstan's cache open to everyone; ``mixbench run --backends stan`` stops
    in one line, exit 2, before any cell (no rows)."""
    engine_env["httpstan"].parent.parent.parent.chmod(0o777)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--backends", "stan", "--out", str(out)],
                            capture_output=True, text=True, cwd=ROOT, env=os.environ.copy(), timeout=300)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"mixbench run: error: httpstan's cache directory {tmp_path / 'cache' / 'httpstan'}: "
                           "writable by group and others (mode 0777)")
    assert not (out / "cells.jsonl").exists()


# -- artefacts: size and SHA-256 recorded at build, checked before load ---------------------------


def test_an_intact_artefact_passes_without_a_warning(tmp_path):
    library = tmp_path / "model.so"
    library.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    artefacts.record(library)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert artefacts.intact(library)
    assert not artefacts.intact(tmp_path / "absent.so")


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "1000 bytes where 10244 were built"),
    (lambda p: p.write_bytes(p.read_bytes()[::-1]), "SHA-256 differs"),
    (lambda p: Path(f"{p}.sha256").unlink(), "no size and SHA-256 were recorded"),
])
def test_a_cut_off_or_foreign_artefact_is_discarded_with_one_warning(tmp_path, damage, why):
    library = tmp_path / "model.so"
    library.write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    artefacts.record(library)
    damage(library)
    with pytest.warns(CacheWarning) as caught:
        assert not artefacts.intact(library)
    assert len(caught) == 1 and why in str(caught[0].message) and str(library) in str(caught[0].message)
    assert not library.exists() and not Path(f"{library}.sha256").exists()


@pytest.mark.slow
def test_a_cut_off_stan_gradient_library_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    """The issue's crash: a Stan library cut off by a crash. It is discarded and built again, and
    the rebuilt library loads and evaluates (before, loading it died of SIGBUS)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from backends.stan_gradient import build_library
    from models.stan_model import program_code

    library, cached = build_library(program_code())
    assert not cached
    size = library.stat().st_size
    library.write_bytes(library.read_bytes()[: size // 3])
    with pytest.warns(CacheWarning, match="cut off"):
        rebuilt, cached = build_library(program_code())
    assert rebuilt == library and not cached and library.stat().st_size == size
    assert build_library(program_code()) == (library, True)


def _cut(path: Path) -> int:
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 3])
    return size


def test_a_cut_off_httpstan_extension_module_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    """pystan's compiled model (httpstan's extension module) cut off: discarded with one warning
    and built again before pystan loads it. The backend's build of the module is replaced by one
    that writes the module file, as a compile would (a real compile is minutes: the gradient
    library's slow test above rebuilds a real one), and pystan's by one that records what it
    would load."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    import httpstan.cache
    import httpstan.models
    import stan

    import backends.stan.programs
    from backends.stan import StanBackend
    from models import Dataset, MixtureSpec
    from models.stan_model import program_code
    from tests.conftest import make_data

    name = httpstan.models.calculate_model_name(program_code())
    library = httpstan.cache.model_directory(name) / "stan_services_model.cpython-312-x86_64-linux-gnu.so"
    builds = []

    def compile_module(code, model_name):
        assert model_name == name
        library.parent.mkdir(parents=True, exist_ok=True)
        library.write_bytes(b"\x7fELF" + bytes(range(256)) * 64)

    def build(code, data):
        assert library.is_file()  # httpstan would compile what its cache lacks
        builds.append(library.stat().st_size)
        return "model"

    monkeypatch.setattr(backends.stan.programs, "build_httpstan_module", compile_module)
    monkeypatch.setattr(stan, "build", build)
    spec = MixtureSpec(K=2, D=1)
    x, y = make_data(spec, n=50, seed=1)
    assert StanBackend().pystan_model(spec, Dataset(x=x, y=y)) == ("model", False)
    assert Path(f"{library}.sha256").is_file()
    assert StanBackend().pystan_model(spec, Dataset(x=x, y=y)) == ("model", True)
    size = _cut(library)
    with pytest.warns(CacheWarning, match="cut off") as caught:
        assert StanBackend().pystan_model(spec, Dataset(x=x, y=y)) == ("model", False)
    assert len(caught) == 1 and str(library) in str(caught[0].message)
    assert builds == [size] * 3 and artefacts.intact(library)  # pystan never got the cut-off file


@pytest.mark.slow
@pytest.mark.cmdstan
def test_a_cut_off_cmdstan_executable_is_rebuilt_not_run(tmp_path, monkeypatch):
    from backends.stan import StanBackend, cmdstan_path

    if cmdstan_path() is None:
        pytest.skip("needs CmdStan")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first, compiled = StanBackend().cmdstan_model()
    exe = Path(first.exe_file)
    assert not compiled and Path(f"{exe}.sha256").is_file()
    size = _cut(exe)
    with pytest.warns(CacheWarning, match="cut off"):
        second, compiled = StanBackend().cmdstan_model()
    assert not compiled and Path(second.exe_file) == exe and exe.stat().st_size == size
    assert StanBackend().cmdstan_model()[1]  # and now served from the cache
