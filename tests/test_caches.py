"""The cache helpers (backends/caches.py): bounded stores, source digests; entries loaded only from
private directories, and an entry that fails to load discarded and rebuilt with one warning; one
build lock per program, a wait for another process's build timed as its own phase."""

import multiprocessing as mp
import os
import stat
import time
import warnings
from pathlib import Path

import cloudpickle
import pytest

from backends.base import Backend, Fit, stopwatch
from backends.caches import (
    CacheWarning,
    build_lock,
    cache_root,
    evict,
    mark_used,
    private_dir,
    set_wait_listener,
    source_digest,
)
from backends.engine_caches import check_cache_dirs
from bench.run.executors import WAIT_MESSAGE, WaitClock, over_limit, receive_row
from models.errors import MixbenchError
from models.scenarios import get_scenario


def _entry(directory, name, size, mtime):
    path = directory / name
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_evict_removes_least_recently_used_until_under_the_bound(tmp_path):
    old = _entry(tmp_path, "old.pkl", 400, 1_000)
    middle = _entry(tmp_path, "middle.pkl", 400, 2_000)
    new = _entry(tmp_path, "new.pkl", 400, 3_000)
    other = _entry(tmp_path, "notes.txt", 5_000, 500)  # not an entry: never counted or removed
    assert evict(tmp_path, max_bytes=900) == [old]
    assert {p.name for p in tmp_path.iterdir()} == {"middle.pkl", "new.pkl", "notes.txt"}
    assert evict(tmp_path, max_bytes=900) == []
    assert evict(tmp_path, max_bytes=0) == [middle, new]
    assert other.exists()


def test_a_used_entry_outlives_a_newer_unused_one(tmp_path):
    first = _entry(tmp_path, "first.pkl", 400, 1_000)
    second = _entry(tmp_path, "second.pkl", 400, 2_000)
    mark_used(first)
    assert evict(tmp_path, max_bytes=500) == [second]


def test_source_digest_follows_content_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "m.py").write_text("x = 1\n")
    (b / "m.py").write_text("x = 1\n")
    assert source_digest([a / "m.py"]) == source_digest([b / "m.py"])
    (b / "m.py").write_text("x = 2\n")
    os.utime(b / "m.py", (5_000, 5_000))  # a new mtime: the digest must not come from a stale memo
    assert source_digest([a / "m.py"]) != source_digest([b / "m.py"])


def test_an_object_that_cannot_be_stored_still_works_and_says_so(monkeypatch, tmp_path):
    import threading

    from backends.pytensor_store import load_or_build, store_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lock = threading.Lock()  # cloudpickle cannot pickle a lock
    with pytest.warns(RuntimeWarning, match="not stored"):
        built, loaded = load_or_build({"function": "test-lock"}, lambda: lock)
    assert built is lock and not loaded
    assert not list(store_dir().glob("*.pkl"))


# -- entries load only from private directories; an entry that fails to load is rebuilt --------


@pytest.fixture
def cache_home(monkeypatch, tmp_path):
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_private_dir_creates_every_level_under_the_root_0700(cache_home):
    store = private_dir(cache_root() / "nutpie" / "abc")
    assert store == cache_home / "mixbench" / "nutpie" / "abc"
    for level in (cache_home / "mixbench", cache_home / "mixbench" / "nutpie", store):
        assert mode(level) == 0o700
    (cache_home / "mixbench").chmod(0o755)  # a private enough directory made earlier is accepted
    assert private_dir(store) == store and mode(cache_home / "mixbench") == 0o755


@pytest.mark.parametrize("bits, who", [(0o770, "group"), (0o707, "others"), (0o777, "group and others")])
def test_a_directory_others_can_write_is_refused(cache_home, bits, who):
    root = private_dir(cache_root())
    root.chmod(bits)
    with pytest.raises(MixbenchError) as info:
        private_dir(root / "jax-programs")
    assert str(info.value) == (f"cache directory {root}: writable by {who} (mode {bits:04o}); remove it or run "
                               "chmod go-w on it; mixbench loads compiled code only from your own private "
                               "directories (README.md, on caches)")
    assert not (root / "jax-programs").exists()


def test_a_directory_owned_by_someone_else_is_refused(cache_home, monkeypatch):
    store = private_dir(cache_root() / "pytensor-functions")
    if os.geteuid() == 0:
        os.chown(store, 4321, 4321)
        owner, me = 4321, 0
    else:  # only root can give a directory away: be someone else instead
        me = os.getuid() + 1
        owner = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: me)
    with pytest.raises(MixbenchError, match=rf"cache directory {store}: owned by uid {owner}, not by you \(uid {me}\)"):
        private_dir(store)


def test_check_cache_dirs_creates_nothing_and_checks_each_store(cache_home):
    check_cache_dirs()
    assert not cache_home.exists()
    private_dir(cache_root() / "stan").chmod(0o775)
    with pytest.raises(MixbenchError, match=r"cache directory .*/mixbench/stan: writable by group"):
        check_cache_dirs()


class Planted:
    """Unpickling it runs code: it writes a file, as a planted entry could do anything."""

    def __init__(self, witness):
        self.witness = str(witness)

    def __reduce__(self):
        return (Path.write_text, (Path(self.witness), "planted code ran"))


def test_a_planted_entry_in_a_shared_store_is_never_loaded(cache_home, tmp_path):
    from backends import pytensor_store

    description = {"function": "test-planted"}
    store = private_dir(cache_root() / "pytensor-functions")
    witness = tmp_path / "witness"
    (store / f"{pytensor_store.function_key(description)}.pkl").write_bytes(cloudpickle.dumps(Planted(witness)))
    store.chmod(0o777)  # as a shared folder would be
    with pytest.raises(MixbenchError, match="writable by group and others"):
        pytensor_store.load_or_build(description, lambda: {"built": True})
    assert not witness.exists()


@pytest.mark.parametrize("damage", ["torn", "wrong type", "another key"])
def test_a_stored_function_that_fails_to_load_is_rebuilt_with_one_warning(cache_home, damage):
    from backends import pytensor_store

    description = {"function": f"test-{damage}"}
    builds = []

    def build():
        builds.append(1)
        return {"value": 3}

    assert pytensor_store.load_or_build(description, build) == ({"value": 3}, False)
    [entry] = pytensor_store.store_dir().glob("*.pkl")
    if damage == "torn":
        entry.write_bytes(entry.read_bytes()[:40])
    elif damage == "wrong type":
        entry.write_bytes(cloudpickle.dumps(42))  # loads fine, but is no stored function
    else:
        entry.write_bytes(pytensor_store._wrap("0" * 32, {"value": 4}))
    with pytest.warns(CacheWarning) as record:
        assert pytensor_store.load_or_build(description, build) == ({"value": 3}, False)
    assert len(record) == 1 and str(record[0].message).startswith(f"cache entry {entry}: failed to load (")
    assert "discarded, compiling it again" in str(record[0].message)
    assert len(builds) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pytensor_store.load_or_build(description, build) == ({"value": 3}, True)  # rebuilt entry loads
    assert len(builds) == 2


def test_a_stored_jax_program_that_fails_to_load_is_compiled_again_with_one_warning(cache_home):
    import jax.numpy as jnp

    from backends import jax_programs
    from backends.jax_programs import StoredJit

    def double_sum(x):
        return jnp.sum(2.0 * x)

    x = jnp.arange(4.0)
    StoredJit(double_sum, {"program": "test-faults"}, [Path(__file__)])(x)
    [entry] = jax_programs.programs_dir().glob("*.pkl")
    entry.write_bytes(entry.read_bytes()[:64])
    fresh = StoredJit(double_sum, {"program": "test-faults"}, [Path(__file__)])
    with pytest.warns(CacheWarning, match=rf"cache entry {entry}: failed to load .* discarded, compiling it again"):
        assert float(fresh(x)) == 12.0
    assert not next(iter(fresh.programs.values())).loaded
    again = StoredJit(double_sum, {"program": "test-faults"}, [Path(__file__)])
    assert float(again(x)) == 12.0 and next(iter(again.programs.values())).loaded
    jax_programs.programs_dir().chmod(0o777)
    with pytest.raises(MixbenchError, match="jax-programs: writable by group and others"):
        StoredJit(double_sum, {"program": "test-faults"}, [Path(__file__)])(x)


def test_a_run_with_an_unsafe_cache_is_refused_before_any_cell(cache_home, tmp_path, capsys, monkeypatch):
    from bench.cli import main
    from tests.fake_backends import MARKER_ENV, executions

    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    root = private_dir(cache_root())
    root.chmod(0o775)
    code = main(["run", "--backends", "tests.fake_backends:QuickBackend", "--N", "200", "--out", str(tmp_path / "out"),
                 "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"mixbench run: error: cache directory {root}: writable by group (mode 0775)")
    assert executions(marker) == []


# --- build locks: one per program, a wait for another process's build is its own phase --------

BUILD_SECONDS = 0.5  # the fake compile


class _BuildingBackend(Backend):
    """A fit that builds program ``key`` once into the "stan" store under its build lock (the
    fake compile sleeps BUILD_SECONDS), as the Stan backend builds its executable. ``holding`` is
    set once the lock is held; the build then waits for ``release`` (when given)."""

    name = "building"
    methods = {"nuts": "_sample"}

    def __init__(self, key: str, holding=None, release=None):
        self.key, self.holding, self.release = key, holding, release

    def versions(self):
        return {}

    def log_density(self, spec, dataset, params):
        return 0.0

    def _sample(self, spec, dataset, method, settings, seed):
        timings = {}
        with stopwatch(timings, "compile"), build_lock("stan", self.key) as directory:
            if self.holding is not None:
                self.holding.set()
            if self.release is not None:
                self.release.wait()
            program = directory / self.key
            if not program.exists():
                time.sleep(BUILD_SECONDS)
                program.write_text("built")
        return Fit(backend=self.name, method=method, status="ok", timings=timings)


def _fit_timings(backend: Backend) -> dict[str, float]:
    scenario = get_scenario("forum-small")
    return backend.fit(scenario.spec, scenario.simulate(0, N=20), "nuts").timings


def _hold_and_build(cache: str, key: str, holding, release, results) -> None:
    os.environ["XDG_CACHE_HOME"] = cache
    results.put(_fit_timings(_BuildingBackend(key, holding, release)))


@pytest.fixture
def builder(cache_home):
    """Start another process whose fit holds the build lock of a program (its first argument)
    until this process starts waiting for a build lock; yields the start function, then the other
    process's fit timings are in ``results``."""
    context = mp.get_context("spawn")
    holding, release, results = context.Event(), context.Event(), context.Queue()
    processes = []

    def start(key: str):
        process = context.Process(target=_hold_and_build,
                                  args=(str(cache_home), key, holding, release, results))
        process.start()
        processes.append(process)
        holding.wait()
        # Release the other build as soon as this process waits: a wrongly shared lock then shows
        # as a wait instead of a deadlock.
        set_wait_listener(lambda event: release.set() if event == "start" else None)
        return release, results

    yield start
    set_wait_listener(None)
    release.set()
    for process in processes:
        process.join()


def test_builds_of_different_programs_do_not_wait_for_each_other(builder):
    release, results = builder("program-a")
    timings = _fit_timings(_BuildingBackend("program-b"))
    assert "compile_wait" not in timings and not release.is_set()
    assert timings["compile"] >= BUILD_SECONDS  # it built program-b itself


def test_a_wait_for_another_build_of_the_same_program_is_its_own_phase(builder):
    release, results = builder("program-a")
    waiter = _fit_timings(_BuildingBackend("program-a"))
    built = results.get()
    # The other process compiled (BUILD_SECONDS, after this one began waiting); this one waited
    # that long and then found the program built: its compile is the lock's bookkeeping only.
    assert built["compile"] >= BUILD_SECONDS and "compile_wait" not in built
    assert waiter["compile_wait"] >= BUILD_SECONDS
    assert waiter["compile"] < BUILD_SECONDS


def test_the_time_limit_leaves_out_the_waits_a_worker_reports():
    receiver, sender = mp.Pipe(duplex=False)
    clock = WaitClock()
    sender.send((WAIT_MESSAGE, "start"))
    assert receive_row(receiver, clock) is None and clock.since is not None
    clock.since -= 100.0  # as if the wait had lasted 100 s so far
    assert not over_limit(elapsed=120.0, clock=clock, time_limit=30.0)
    assert over_limit(elapsed=140.0, clock=clock, time_limit=30.0)
    sender.send((WAIT_MESSAGE, "end"))
    sender.send({"status": "ok"})
    assert receive_row(receiver, clock) == {"status": "ok"}
    assert clock.since is None and clock.waited >= 100.0
