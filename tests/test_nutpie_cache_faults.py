"""nutpie's stored callbacks (backends/nutpie_cache.py): any damaged part of an entry, Numba's own
index and machine code included, is discarded whole with one warning and compiled again."""

import warnings

import pytest

from backends.caches import CacheWarning
from models import get_scenario

BACKEND = "pymc"


@pytest.fixture
def nutpie_store(monkeypatch, tmp_path):
    from backends.pymc import model as pymc_backend
    from backends.nutpie_cache import nutpie_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(pymc_backend, "_CACHE", type(pymc_backend._CACHE)())
    return nutpie_dir()


def _compile_fresh(spec, data):
    from backends.pymc import model as pymc_backend

    pymc_backend._CACHE.clear()  # forget the model held in memory: the next one comes from disk
    return pymc_backend.compiled(spec, data).nutpie()


# Numba's index is the case that failed every later run; each case compiles twice (~20 s).
@pytest.mark.parametrize("damaged", ["*.nbi", pytest.param("*.nbc", marks=pytest.mark.slow),
                                     pytest.param("callbacks.py", marks=pytest.mark.slow)])
def test_a_damaged_entry_is_compiled_again_with_one_warning(backend, nutpie_store, damaged):
    sc = get_scenario("forum")
    data = sc.simulate(1, N=300)
    first = _compile_fresh(sc.spec, data)
    [entry] = [p for p in nutpie_store.iterdir() if p.is_dir()]
    files = sorted(entry.rglob(damaged))
    assert files, f"no {damaged} in {entry}"
    for path in files:
        path.write_bytes(path.read_bytes()[:7])  # cut off, as by a full disk or a killed process
    with pytest.warns(CacheWarning) as record:
        model = _compile_fresh(sc.spec, data)
    assert len(record) == 1
    assert str(record[0].message).startswith(f"cache entry {entry}: failed to load (")
    assert model.logp_func is not None and model.n_dim == first.n_dim  # compiled afresh from PyMC
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        loaded = _compile_fresh(sc.spec, data)  # the rebuilt entry loads, silently
    assert loaded.cache_hits == 2 and loaded.logp_func is None
