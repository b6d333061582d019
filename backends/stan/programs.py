"""The Stan backend's model object: stan/mixture.stan compiled once per process, by httpstan
(pystan, per spec and data) and by CmdStan (one executable in the "stan" cache store per program
and CmdStan version), each build locked and checked intact (backends.artefacts)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, TypeVar


from backends import artefacts
from backends.base import note_compile
from models.data import Dataset
from models.spec import MixtureSpec
from models.stan_model import (
    program_code,
    stan_data,
)
from backends.stan.install import (_compile_lock, _httpstan_build_intact, _httpstan_libraries, _quiet, cmdstan_path,
                                   cmdstan_version, httpstan_build_env)

class StanPrograms:
    """The compiled Stan program, built once per process: pystan's model per (spec, data) and
    CmdStan's executable (``StanBackend`` inherits them)."""

    def __init__(self):
        # (spec, data digest) -> stan.Model: pystan builds (compile cached by httpstan, plus a
        # round trip with the data) once per spec and data set in this process.
        self._pystan_models: OrderedDict[tuple, Any] = OrderedDict()
        self._cmdstan_model = None


    def pystan_model(self, spec: MixtureSpec, dataset: Dataset) -> tuple[Any, bool]:
        """The pystan model for this spec and data, and whether its program was already compiled."""
        import httpstan.cache
        import httpstan.models

        key = (spec, dataset.digest())
        if key in self._pystan_models:
            self._pystan_models.move_to_end(key)
            note_compile("warm")
            return self._pystan_models[key], True
        note_compile("cold")
        code = program_code()
        name = httpstan.models.calculate_model_name(code)
        with _compile_lock(f"httpstan-{name.replace('/', '-')}"):
            compiled = name in httpstan.cache.list_model_names() and _httpstan_build_intact(name)
            with _quiet(), httpstan_build_env():
                model, compiled = self._pystan_build(name, code, spec, dataset, compiled)
            if not compiled:
                for library in _httpstan_libraries(name):
                    artefacts.record(library)
        self._pystan_models[key] = model
        while len(self._pystan_models) > 8:
            self._pystan_models.popitem(last=False)
        return model, compiled

    @staticmethod
    def _pystan_build(name: str, code: str, spec: MixtureSpec, dataset: Dataset, compiled: bool) -> tuple[Any, bool]:
        """pystan's build of the program with this data, and whether httpstan's cached build served."""
        import httpstan.cache
        import stan

        if not compiled:
            build_httpstan_module(code, name)
        try:
            return stan.build(code, data=stan_data(spec, dataset)), compiled
        except Exception:
            if not compiled:
                raise
            # A build killed part-way leaves httpstan an entry it cannot load (its server then
            # answers 500 for every later build): discard it and build once more.
            warnings.warn(f"httpstan's cached build of the Stan program ({name}) failed to load; rebuilding",
                          RuntimeWarning, stacklevel=2)
            httpstan.cache.delete_model_directory(name)
            build_httpstan_module(code, name)
            return stan.build(code, data=stan_data(spec, dataset)), False

    def cmdstan_model(self) -> tuple[Any, bool]:
        """The CmdStan executable, compiled once into the "stan" cache store per program and CmdStan version."""
        import cmdstanpy

        if self._cmdstan_model is not None:
            note_compile("warm")
            return self._cmdstan_model, True
        note_compile("cold")
        code = program_code()
        key = hashlib.sha256(f"{code}\0{cmdstan_path()}\0{cmdstan_version()}".encode()).hexdigest()[:16]
        from backends.caches import private_dir, store_dir

        directory = private_dir(store_dir("stan") / key)
        source = directory / "mixture.stan"
        if not source.exists():  # written once, so the executable stays newer than its source
            source.write_text(code)
        exe = source.with_suffix(".exe" if os.name == "nt" else "")
        with _compile_lock(f"cmdstan-{key}"):
            compiled = artefacts.intact(exe)  # a cut-off or foreign executable is discarded, not run
            with _quiet():
                exe_path = cmdstanpy.compile_stan_file(source)
            if not compiled:
                artefacts.record(Path(exe_path))
            self._cmdstan_model = cmdstanpy.CmdStanModel(stan_file=source, exe_file=exe_path)
        return self._cmdstan_model, compiled


STANC_ATTEMPTS = 5
T = TypeVar("T")

# httpstan's own arguments with -O2 for its -O3: 8-10% less compile CPU, the same sampling speed
# and bit-identical draws on this program (docs/performance.md, section 7). They come last on
# the compiler's command line (setuptools' extra_postargs), so their -O is the one that counts.
HTTPSTAN_COMPILE_ARGS = ("-O2", "-std=c++17", "-Wno-sign-compare")


def build_httpstan_module(code: str, name: str) -> None:
    """Build httpstan's extension module for ``code`` (model ``name``) into httpstan's cache with
    HTTPSTAN_COMPILE_ARGS, and record beside it what httpstan's own build request records (the
    compiler's output, stanc's warnings), so that ``stan.build`` then loads it instead of
    compiling: pystan passes httpstan no compile arguments, while httpstan's
    ``models.build_services_extension_module`` takes them. The steps are those of httpstan's
    ``views.handle_create_model``. Raises what that build raises (stanc's ValueError, a compiler
    error)."""
    import asyncio

    import httpstan.cache
    import httpstan.compile
    import httpstan.models

    def build() -> None:
        httpstan.cache.delete_model_directory(name)
        _, stanc_warnings = httpstan.compile.compile(code, f"model_{name.split('/')[1]}")
        httpstan.cache.dump_stanc_warnings(stanc_warnings, name)
        output = asyncio.run(httpstan.models.build_services_extension_module(
            code, extra_compile_args=list(HTTPSTAN_COMPILE_ARGS)))
        httpstan.cache.dump_services_extension_module_compiler_output(output, name)

    retry_stanc_timeout(build)


def retry_stanc_timeout(call: Callable[[], T], attempts: int = STANC_ATTEMPTS) -> T:
    """``call()``, made up to ``attempts`` times while it raises subprocess.TimeoutExpired (raised
    again after the last): httpstan runs stanc (0.4 s on this program) with a fixed 1 s time-out
    (httpstan/compile.py), which a loaded machine exceeds now and then. stanc runs before the C++
    compile, so a retry repeats only stanc."""
    for _ in range(attempts - 1):
        try:
            return call()
        except subprocess.TimeoutExpired:
            pass
    return call()
