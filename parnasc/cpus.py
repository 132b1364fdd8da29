"""The CPUs this process may use, pinning to them, and the CPU model; without
``os.sched_getaffinity`` (macOS) everything runs unpinned and a note says so once."""

from __future__ import annotations

import os
import platform
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

__all__ = ["allowed_cpus", "can_pin", "cpu_model", "set_affinity"]

_unpinned_noted = False
_note_lock = threading.Lock()


def can_pin() -> bool:
    """Whether this platform can read and set CPU affinity (``os.sched_*affinity``)."""
    return hasattr(os, "sched_getaffinity") and hasattr(os, "sched_setaffinity")


def _note_unpinned() -> None:
    """Say once per process, on stderr, that CPU pinning is unavailable."""
    global _unpinned_noted
    with _note_lock:
        if _unpinned_noted:
            return
        _unpinned_noted = True
    print(
        "parnasc: note: no os.sched_getaffinity/os.sched_setaffinity on this platform; "
        f"using CPUs 0..{(os.cpu_count() or 1) - 1} unpinned",
        file=sys.stderr,
    )


def allowed_cpus() -> list[int]:
    """The CPU ids this process may run on, ascending (``os.sched_getaffinity``).

    Without affinity support: ``0 .. os.cpu_count()-1``, and a one-time note on stderr.
    """
    if can_pin():
        return sorted(os.sched_getaffinity(0))
    _note_unpinned()
    return list(range(os.cpu_count() or 1))


def set_affinity(cpus: Iterable[int]) -> bool:
    """Pin the calling thread to ``cpus``; False (nothing changed) where that is unsupported
    or refused (e.g. a restricted cpuset)."""
    if not can_pin():
        _note_unpinned()
        return False
    try:
        os.sched_setaffinity(0, set(cpus))
    except OSError:
        return False
    return True


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
