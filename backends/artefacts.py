"""Compiled artefacts (shared libraries, executables) checked before they are loaded or run.

A library cut off by a crash, or one put there by someone else, crashes the process that loads
it (SIGBUS, SIGSEGV) or runs its code: nothing afterwards can catch it. So when an artefact is
built, its size and SHA-256 are written beside it (``<name>.sha256``), and before it is loaded
or run it is hashed again. An artefact without that record, or whose bytes differ, is deleted
with one CacheWarning and built again.

Used for the Stan backend's CmdStan executables, its gradient library, and httpstan's compiled
model extension modules.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from backends.caches import discard_entry, write_atomic

SUFFIX = ".sha256"


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def record(path: Path) -> None:
    """Write ``path``'s size and SHA-256 beside it, just after it was built."""
    path = Path(path)
    write_atomic(_record_path(path), f"{path.stat().st_size} {_digest(path)}\n".encode())


def intact(path: Path) -> bool:
    """Whether ``path`` is what was recorded when it was built. If not (no record, another size,
    other bytes) it and its record are deleted, with one CacheWarning; the caller builds it again.
    A missing ``path`` is False, without a warning."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        size, digest = _record_path(path).read_text().split()
        if int(size) != path.stat().st_size:
            raise ValueError(f"{path.stat().st_size} bytes where {size} were built (cut off?)")
        if digest != _digest(path):
            raise ValueError("its SHA-256 differs from the one recorded when it was built")
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            exc = ValueError("no size and SHA-256 were recorded when it was built (foreign, or built by a "
                             "mixbench before this check)")
        _record_path(path).unlink(missing_ok=True)
        discard_entry(path, exc)
        return False
    return True
