"""httpstan's build of the Stan program (pystan route) without debug information: the flags the
Stan backend gives setuptools are Python's own (sysconfig's CFLAGS) less -g, for that build only."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from backends.stan.install import httpstan_build_env, httpstan_compile_flags

pytestmark = pytest.mark.stan

ROOT = Path(__file__).resolve().parents[1]


def test_flags_are_sysconfigs_without_debug():
    python_flags = sysconfig.get_config_var("CFLAGS").split()
    flags = httpstan_compile_flags().split()
    assert flags == [f for f in python_flags if f not in ("-g", "-g1", "-g2", "-g3", "-ggdb")]
    assert not any(f.startswith("-g") for f in flags)
    if "-O3" in python_flags:
        assert "-O3" in flags


def test_setuptools_compiler_sees_the_flags_only_inside_the_build(monkeypatch):
    """setuptools' C++ compiler command (the one httpstan's .cpp goes through) loses -g and keeps
    the rest of Python's flags, -fPIC (CCSHARED) included; outside the build nothing changed."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    monkeypatch.delenv("CFLAGS", raising=False)
    monkeypatch.delenv("CXXFLAGS", raising=False)

    def cxx_command() -> list[str]:
        compiler = new_compiler()
        customize_compiler(compiler)
        return compiler.compiler_so_cxx

    before = cxx_command()
    with httpstan_build_env():
        assert os.environ["CFLAGS"] == os.environ["CXXFLAGS"] == httpstan_compile_flags()
        inside = cxx_command()
    assert "CFLAGS" not in os.environ and "CXXFLAGS" not in os.environ
    assert cxx_command() == before
    assert "-g" not in inside
    assert [f for f in before if f != "-g"] == inside
    ccshared = sysconfig.get_config_var("CCSHARED")
    if ccshared:
        assert set(ccshared.split()) <= set(inside)


def test_flags_the_user_set_are_kept(monkeypatch):
    monkeypatch.setenv("CXXFLAGS", "-O2 -g")
    monkeypatch.delenv("CFLAGS", raising=False)
    with httpstan_build_env():
        assert os.environ["CXXFLAGS"] == "-O2 -g"
        assert os.environ["CFLAGS"] == httpstan_compile_flags()
    assert os.environ["CXXFLAGS"] == "-O2 -g" and "CFLAGS" not in os.environ


def test_httpstan_module_is_built_with_o2_and_recorded_as_httpstan_records_it(tmp_path, monkeypatch):
    """The Stan backend builds httpstan's module itself, with -O2 as the last -O on the
    compiler's line, and leaves what httpstan's own build request leaves (stanc's warnings as
    stanc gives them, the compiler's output), so that pystan's build then finds it."""
    import httpstan.cache
    import httpstan.compile
    import httpstan.models

    from backends.stan.programs import build_httpstan_module, retry_stanc_timeout
    from models.stan_model import program_code

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    async def fake_build(code, extra_compile_args=None):
        calls.append((code, extra_compile_args))
        return "compiler said this"

    monkeypatch.setattr(httpstan.models, "build_services_extension_module", fake_build)
    code = program_code()
    name = httpstan.models.calculate_model_name(code)
    stale = httpstan.cache.model_directory(name) / "stale.so"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a killed build")

    build_httpstan_module(code, name)

    assert len(calls) == 1 and calls[0][0] == code
    levels = [arg for arg in calls[0][1] if arg.startswith("-O")]
    assert levels[-1] == "-O2" and "-std=c++17" in calls[0][1]
    assert not stale.exists()
    assert httpstan.cache.load_services_extension_module_compiler_output(name) == "compiler said this"
    _, warnings = retry_stanc_timeout(lambda: httpstan.compile.compile(code, f"model_{name.split('/')[1]}"))
    def without_tmpdir(text):  # stanc names the file in httpstan's temporary directory
        return re.sub(r"httpstan_[^/]+/", "", text)

    assert warnings and without_tmpdir(httpstan.cache.load_stanc_warnings(name)) == without_tmpdir(warnings)


def test_stanc_time_outs_are_retried_then_raised():
    import subprocess

    from backends.stan.programs import retry_stanc_timeout

    calls = []

    def flaky(fails):
        def call():
            calls.append(1)
            if len(calls) <= fails:
                raise subprocess.TimeoutExpired("stanc", 1)
            return "cpp"
        return call

    assert retry_stanc_timeout(flaky(2), attempts=3) == "cpp" and len(calls) == 3
    calls.clear()
    with pytest.raises(subprocess.TimeoutExpired):
        retry_stanc_timeout(flaky(3), attempts=3)
    assert len(calls) == 3


BUILD = r"""
import json, sys
import httpstan.cache, httpstan.models
import numpy as np
from backends import FitSettings
from backends import get_backend
from models import get_scenario
from models.stan_model import program_code

scenario = get_scenario("forum-small")
data = scenario.simulate(1, N=200)
fit = get_backend("stan").fit(scenario.spec, data, "nuts",
                              FitSettings(chains=1, warmup=150, draws=100, sampler="pystan"), seed=3)
name = httpstan.models.calculate_model_name(program_code())
print(json.dumps({"status": fit.status, "reason": fit.reason,
                  "sigma": float(fit.draws["posterior"]["sigma"].mean()) if fit.ok else None,
                  "libraries": [str(p) for p in httpstan.cache.model_directory(name).glob("*.so")]}))
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
def test_pystan_build_has_no_debug_info_and_samples(tmp_path):
    """A real build through pystan, in an empty cache (minutes): the program's own code in the
    extension module has no debug information, and NUTS on it recovers the forum-small data's sigma."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("CFLAGS", None)
    env.pop("CXXFLAGS", None)
    out = subprocess.run([sys.executable, "-c", BUILD], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result["reason"]
    assert result["libraries"] and all(Path(p).is_relative_to(tmp_path) for p in result["libraries"])
    for library in result["libraries"]:
        # The DWARF compile units: httpstan links its own prebuilt stan_services.o, which carries
        # debug information of its own (built with -g in httpstan's wheel); the program's
        # model_*.cpp, compiled here, must not (with -g it is a compile unit of its own).
        dump = subprocess.run(["readelf", "--debug-dump=info", "--dwarf-depth=1", library],
                              capture_output=True, text=True, check=True).stdout
        units = [line.rsplit(": ", 1)[-1].strip() for line in dump.splitlines() if "DW_AT_name" in line]
        assert units and all(u.endswith("stan_services.cpp") for u in units), units
    from models import get_scenario

    truth = float(get_scenario("forum-small").truth["sigma"])
    assert abs(result["sigma"] - truth) < 0.3 * truth
