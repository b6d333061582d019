"""Stored JAX programs (backends/jax_programs.py): kept whole, loaded back, and safe to run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import lazy_module

# JAX and the backend's programs load when a test runs, not at collection (tests/test_imports.py).
jax = lazy_module("jax")
jax_programs = lazy_module("backends.jax_programs")


@pytest.fixture(autouse=True, scope="module")
def _numpyro_settings():
    """The numpyro backend's JAX settings (x64, the persistent cache), as its fits have them."""
    lazy_module("backends.numpyro").NumPyroBackend  # noqa: B018  (the first access runs the module)


ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__)


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return jax_programs.programs_dir()


def softplus_sum(x, scale):
    return jax.numpy.sum(jax.numpy.log1p(jax.numpy.exp(x * scale)))


def test_program_is_stored_per_signature_and_loaded_back(store):
    x = jax.numpy.linspace(-3.0, 3.0, 50)
    first = jax_programs.StoredJit(softplus_sum, {"program": "test-softplus"}, [THIS])
    expected = float(first(x, 2.0))
    assert len(list(store.glob("*.pkl"))) == 1
    first(jax.numpy.linspace(-3.0, 3.0, 51), 2.0)  # another shape: another program
    assert len(list(store.glob("*.pkl"))) == 2

    again = jax_programs.StoredJit(softplus_sum, {"program": "test-softplus"}, [THIS])
    assert float(again(x, 2.0)) == expected
    [program] = again.programs.values()
    assert program.loaded  # from disk, and it ran without being replaced
    other = jax_programs.StoredJit(softplus_sum, {"program": "test-softplus", "variant": 2}, [THIS])
    other(x, 2.0)
    assert not next(iter(other.programs.values())).loaded  # the description is part of the key


def test_program_that_jax_persistent_cache_already_holds_still_stores_whole(store):
    # A plain jit of the same function writes it to JAX's persistent cache (the backend keeps
    # every program there). An executable read back from that cache does not serialize whole;
    # the stored program must be compiled past it, and run once loaded.
    x = jax.numpy.linspace(-2.0, 2.0, 40)
    plain = float(jax.jit(softplus_sum)(x, 3.0))
    jax_programs.StoredJit(softplus_sum, {"program": "test-poison"}, [THIS])(x, 3.0)
    loaded = jax_programs.StoredJit(softplus_sum, {"program": "test-poison"}, [THIS])
    assert float(loaded(x, 3.0)) == pytest.approx(plain, rel=1e-15)
    assert next(iter(loaded.programs.values())).loaded


def test_torn_program_file_is_a_miss(store):
    x = jax.numpy.ones(5)
    jax_programs.StoredJit(softplus_sum, {"program": "test-torn"}, [THIS])(x, 1.0)
    for path in store.glob("*.pkl"):
        path.write_bytes(b"not a program")
    fresh = jax_programs.StoredJit(softplus_sum, {"program": "test-torn"}, [THIS])
    assert float(fresh(x, 1.0)) == pytest.approx(5 * np.log1p(np.e))
    assert not next(iter(fresh.programs.values())).loaded


LAPACK_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
import backends.numpyro
from backends.jax_programs import StoredJit
from pathlib import Path

def solve(a, b):
    return jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(a), b)

a = jnp.array([[4.0, 1.0], [1.0, 3.0]])
program = StoredJit(solve, {"program": "test-lapack"}, [Path(sys.argv[1])])
out = program(a, jnp.array([1.0, 2.0]))
print("RESULT " + json.dumps({"x": [float(v) for v in out], "loaded": next(iter(program.programs.values())).loaded}))
"""


def test_stored_program_with_lapack_runs_in_a_fresh_process(tmp_path):
    # jaxlib's CPU LAPACK kernels fetch their function pointers when a decomposition is first
    # lowered; a process that only loads programs must fetch them itself (it segfaulted).
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", LAPACK_SCRIPT, str(THIS)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        runs.append(json.loads(line.removeprefix("RESULT ")))
    assert [run["loaded"] for run in runs] == [False, True]
    np.testing.assert_allclose(runs[1]["x"], np.linalg.solve([[4.0, 1.0], [1.0, 3.0]], [1.0, 2.0]), rtol=1e-12)
