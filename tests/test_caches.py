"""The cache helpers (backends/caches.py): bounded stores, source digests."""

import os

from backends.caches import evict, mark_used, source_digest


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

    import pytest

    from backends.pytensor_store import load_or_build, store_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    lock = threading.Lock()  # cloudpickle cannot pickle a lock
    with pytest.warns(RuntimeWarning, match="not stored"):
        built, loaded = load_or_build({"function": "test-lock"}, lambda: lock)
    assert built is lock and not loaded
    assert not list(store_dir().glob("*.pkl"))
