"""Atomic outputs: every file (and every emitted directory) is written beside its target and
renamed into place, so Ctrl-C or ``kill -9`` at any point leaves the old output or the new one,
never half of either.

A replaced file keeps the permission bits of the file it replaces; a new file gets the mode
``open()`` would give it (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "cache_dir", "recover_dir", "replace_dir", "write_bytes", "write_text"]


def cache_dir() -> Path:
    """parnasc's per-user cache folder: `$PARNASC_CACHE`, default `~/.cache/parnasc`."""
    return Path(os.environ.get("PARNASC_CACHE") or "~/.cache/parnasc").expanduser()


def _umask() -> int:
    """The process umask, read without changing it where the platform allows."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: the classic read-and-restore
    os.umask(mask)
    return mask


def _mode_for(path: Path, new: int) -> int:
    """Permission bits for a file or directory about to replace ``path``."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return new & ~_umask()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` (with ``path``'s mode,
    or the umask mode for a new file), on error or interruption it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _mode_for(path, 0o666))
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _siblings(path: Path, tag: str) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.{tag}-*"))


def recover_dir(path: Path) -> None:
    """Finish what an interrupted :func:`replace_dir` left: put a set-aside old directory back
    when ``path`` is missing, and remove staging and set-aside leftovers."""
    path = Path(path)
    old = _siblings(path, "old")
    if not path.exists() and old:
        os.replace(old.pop(), path)
    for leftover in old + _siblings(path, "new"):
        shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def replace_dir(path: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside ``path``; on success it replaces ``path`` as a
    whole, on error or interruption it is removed and ``path`` is left as it was.

    The swap is two renames (old aside, new in); a kill between them leaves the complete old
    directory aside, which the next :func:`replace_dir` or :func:`recover_dir` puts back.
    One writer at a time: a second one would take the first one's staging for a leftover.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        yield stage
        os.chmod(stage, _mode_for(path, 0o777))
        aside: Path | None = None
        if path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, aside)  # an empty directory target is replaced by the rename
        os.replace(stage, path)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
