"""A Stan program's log density and gradient callable from Python, the model built once.

pystan cannot serve a gradient benchmark: each of httpstan's log_prob_grad calls rebuilds the
model from its data, which at large N costs more than the gradient itself. This module compiles
the program with the stanc and the Stan headers that ship in httpstan's wheel, with httpstan's own
macros and optimisation flags, together with ``stan/cpp/gradient_shim.cpp`` (a small C interface)
into a shared library, and loads it with ctypes. The gradient it times is the one pystan's NUTS
takes at every leapfrog step (``stan::model::log_prob_grad<true, true>``).

Unlike httpstan, it can pass options to stanc (``--O1``): the formulation comparison uses that.
Libraries are cached under ``~/.cache/mixbench/stan/gradient/<hash>``, keyed by the program,
the stanc options, the shim, httpstan's version and the compiler, so each is built once.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

_REPO_STAN = Path(__file__).resolve().parents[1] / "stan"
SHIM_PATH = (_REPO_STAN if _REPO_STAN.is_dir() else Path(__file__).resolve().parent / "stan_programs") \
    / "cpp" / "gradient_shim.cpp"
_ERR_LEN = 2048


def _httpstan_dir() -> Path:
    import httpstan

    return Path(httpstan.__file__).resolve().parent


def cache_dir() -> Path:
    from backends.caches import store_dir

    return store_dir("stan") / "gradient"


# httpstan's build (httpstan/models.py): its macros and extra arguments, after Python's own
# extension CFLAGS (which carry -DNDEBUG and -O3: without NDEBUG, Eigen's bounds checks would
# run and the timing would not be the sampler's).
_MACROS = ("-DBOOST_DISABLE_ASSERTS", "-DBOOST_PHOENIX_NO_VARIADIC_EXPRESSION", "-DSTAN_THREADS",
           "-D_REENTRANT", "-D_GLIBCXX_USE_CXX11_ABI=0")
_HTTPSTAN_ARGS = ("-O3", "-std=c++17", "-Wno-sign-compare")


def compile_command(model_cpp: Path, library: Path) -> list[str]:
    here = _httpstan_dir()
    cxx = shlex.split(sysconfig.get_config_var("CXX") or "g++")
    cflags = shlex.split(sysconfig.get_config_var("CFLAGS") or "-DNDEBUG -O3")
    return [
        *cxx, *cflags, "-fPIC", "-shared", *_MACROS, *_HTTPSTAN_ARGS,
        # The shim includes the model's C++ so both share one translation unit.
        "-include", str(model_cpp),
        f"-I{here / 'include'}", str(SHIM_PATH), "-o", str(library),
        f"-L{here / 'lib'}", f"-Wl,-rpath,{here / 'lib'}",
        "-lsundials_cvodes", "-lsundials_idas", "-lsundials_nvecserial", "-ltbb",
    ]


@lru_cache(maxsize=1)
def _compiler_version() -> str:
    cxx = shlex.split(sysconfig.get_config_var("CXX") or "g++")[0]
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "unknown"


def library_key(code: str, stanc_args: Sequence[str]) -> str:
    import httpstan

    blob = "\0".join([code, " ".join(stanc_args), SHIM_PATH.read_text(), httpstan.__version__,
                      _compiler_version(), " ".join(compile_command(Path("m.cpp"), Path("m.so")))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_library(code: str, stanc_args: Sequence[str] = ()) -> tuple[Path, bool]:
    """The shared library of ``code`` compiled with ``stanc_args``; and whether it was cached."""
    from backends import artefacts
    from backends.caches import build_lock, private_dir

    key = library_key(code, stanc_args)
    directory = cache_dir() / key
    library = directory / "model.so"
    with build_lock("stan", f"gradient-{key}"):
        private_dir(directory)  # a library is loaded from here: only from a private directory
        if artefacts.intact(library):  # a cut-off or foreign library is discarded, not loaded
            return library, True
        with tempfile.TemporaryDirectory(prefix="mixbench-stanc-") as tmp:
            source = Path(tmp) / "model.stan"
            source.write_text(code)
            model_cpp = Path(tmp) / "model.cpp"
            stanc = [str(_httpstan_dir() / "stanc"), "--name", "mixbench_model", *stanc_args,
                     "--o", str(model_cpp), str(source)]
            done = subprocess.run(stanc, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"stanc failed: {done.stderr.strip()}")
            partial = Path(tmp) / "model.so"
            done = subprocess.run(compile_command(model_cpp, partial), capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"compiling the Stan model failed: {done.stderr.strip()[-4000:]}")
            (directory / "model.stan").write_text(code)
            (directory / "stanc_args.txt").write_text(" ".join(stanc_args) + "\n")
            # Moved in whole, so another process never loads a half-written library.
            shutil.move(str(partial), str(library))
            artefacts.record(library)
    return library, False


def _write_json(path: Path, values: Mapping[str, Any]) -> None:
    """Stan's JSON data format. Python's float repr round-trips exactly, so the data (and a
    parameter point) reach Stan bit for bit."""
    out = {}
    for name, value in values.items():
        array = np.asarray(value)
        out[name] = array.tolist() if array.ndim else array.item()
    path.write_text(json.dumps(out))


class StanGradient:
    """One model (program + data) in a shared library: f(theta) -> (log density, gradient)."""

    def __init__(self, library: Path, data: Mapping[str, Any]):
        self.library_path = Path(library)
        lib = ctypes.CDLL(str(library))
        double_p = ctypes.POINTER(ctypes.c_double)
        lib.mixbench_model_new.restype = ctypes.c_void_p
        lib.mixbench_model_new.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
        lib.mixbench_model_free.argtypes = [ctypes.c_void_p]
        lib.mixbench_num_unconstrained.argtypes = [ctypes.c_void_p]
        lib.mixbench_unconstrain.argtypes = [ctypes.c_void_p, ctypes.c_char_p, double_p, ctypes.c_char_p,
                                             ctypes.c_int]
        lib.mixbench_log_density_gradient.argtypes = [ctypes.c_void_p, double_p, ctypes.c_int, double_p,
                                                      double_p, ctypes.c_char_p, ctypes.c_int]
        self._lib = lib
        self._err = ctypes.create_string_buffer(_ERR_LEN)
        with tempfile.TemporaryDirectory(prefix="mixbench-stan-data-") as tmp:
            path = Path(tmp) / "data.json"
            _write_json(path, data)
            handle = lib.mixbench_model_new(str(path).encode(), self._err, _ERR_LEN)
        if not handle:
            raise RuntimeError(f"Stan model construction failed: {self._err.value.decode(errors='replace')}")
        self._model = ctypes.c_void_p(handle)
        self.dim = int(lib.mixbench_num_unconstrained(self._model))
        self._grad = np.zeros(self.dim)
        self._lp = ctypes.c_double()

    def __del__(self):
        model = getattr(self, "_model", None)
        if model is not None and model.value:
            self._lib.mixbench_model_free(model)
            self._model = None

    def unconstrain(self, params: Mapping[str, Any]) -> np.ndarray:
        """Constrained values of the program's parameters block -> the unconstrained point."""
        out = np.zeros(self.dim)
        with tempfile.TemporaryDirectory(prefix="mixbench-stan-params-") as tmp:
            path = Path(tmp) / "params.json"
            _write_json(path, params)
            code = self._lib.mixbench_unconstrain(self._model, str(path).encode(),
                                                  out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
                                                  self._err, _ERR_LEN)
        if code:
            raise RuntimeError(f"Stan could not unconstrain the point: {self._err.value.decode(errors='replace')}")
        return out

    def log_density_gradient(self, theta: np.ndarray, jacobian: bool = True) -> tuple[float, np.ndarray]:
        theta = np.ascontiguousarray(theta, dtype=np.float64)
        if theta.shape != (self.dim,):
            raise ValueError(f"theta has shape {theta.shape}, the model has {self.dim} unconstrained coordinates")
        grad = np.empty(self.dim)
        double_p = ctypes.POINTER(ctypes.c_double)
        code = self._lib.mixbench_log_density_gradient(
            self._model, theta.ctypes.data_as(double_p), int(jacobian), ctypes.byref(self._lp),
            grad.ctypes.data_as(double_p), self._err, _ERR_LEN)
        if code:
            raise RuntimeError(f"Stan log density failed: {self._err.value.decode(errors='replace')}")
        return self._lp.value, grad


def load(code: str, data: Mapping[str, Any], stanc_args: Sequence[str] = ()) -> tuple[StanGradient, bool]:
    """Build (or reuse) the library of ``code`` and instantiate it on ``data``."""
    library, cached = build_library(code, stanc_args)
    return StanGradient(library, data), cached

