"""The native multicore executor (``csrc/executor.cpp``): building it and running plans with it.

The executor is a small C++ library that runs a plan's phases over pinned lanes with ONNX
Runtime's C API: lane 0 is the calling thread, lanes 1.. are native threads pinned to their
CPUs; the caller's input and output buffers are bound in place, intermediate tensors live in
buffers allocated once per input shape; barriers spin for a bounded time and then sleep on a
futex (an idle runtime uses no CPU).  One :meth:`NativeExecutor.run` is one ctypes call, made
with the GIL released (ctypes releases it around foreign calls).

Building (``python -m parnasc.deploy.native``, run by ``scripts/setup.sh``):

* ORT's C headers are not in the wheel.  They are fetched once with ``npm pack`` from the npm
  registry's ``com.github.asus4.onnxruntime@0.4.9`` (MIT; ORT 1.29's headers inside its iOS
  framework) into ``~/.cache/parnasc/ort-headers-1.29/`` (``$XDG_CACHE_HOME`` honoured); only
  the ``.h`` files are kept, never anything in the repository.
* ``g++ -std=c++20 -O2 -shared -fPIC`` builds ``csrc/build/libparnasc_native-<key>.so``
  (an ignored path; ``key`` hashes the source, the flags and the ORT version, so a change
  rebuilds and an unchanged tree does nothing).
* At run time the library ``dlopen``s the wheel's ``onnxruntime/capi/libonnxruntime.so.*`` by its
  path and asks for C API version 29 (``OrtGetApiBase()->GetApi(29)``), which newer ORT
  libraries still serve.

Where the library is missing (no compiler, no npm, not built yet) or ``PARNASC_NATIVE=0``,
:func:`load` returns None and says why once on stderr; the runtime then runs its Python plan.
``PARNASC_NATIVE_LIB`` names a library file to use instead of the built one.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = [
    "NativeError",
    "NativeExecutor",
    "NativeSegment",
    "build",
    "headers_dir",
    "library_file",
    "load",
    "ort_library",
    "unavailable_reason",
]

HEADERS_PACKAGE = "com.github.asus4.onnxruntime@0.4.9"
HEADERS_VERSION = "1.29"  # the ORT release whose headers that package carries (C API 29)
# where the headers lie inside the package tarball (its iOS simulator framework)
_HEADERS_IN_TARBALL = (
    "package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64_x86_64-simulator/"
    "onnxruntime.framework/Headers/"
)
SOURCE = Path(__file__).with_name("csrc") / "executor.cpp"
BUILD_DIR = SOURCE.parent / "build"
CXXFLAGS = ("-std=c++20", "-O2", "-Wall", "-Wextra", "-shared", "-fPIC")
LIBS = ("-ldl", "-lpthread")
# Inside a run a lane spins this long at a barrier before it sleeps (a run is well under 1 ms
# on the models here; waking a sleeping thread costs 50-70 us on the VMs measured); between
# runs it spins this long, so back-to-back runs find the lanes awake and an idle runtime goes
# to sleep within a fraction of a millisecond.
SPIN_RUN_US = 2000
SPIN_IDLE_US = 300
_ERR_LEN = 512


class NativeError(RuntimeError):
    """The native executor refused a plan or failed a run; the message is one line."""


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "parnasc"


def headers_dir() -> Path:
    """The cache directory of ORT's C headers (``onnxruntime_c_api.h`` and friends)."""
    return _cache_root() / f"ort-headers-{HEADERS_VERSION}"


def ort_library() -> Path | None:
    """The ONNX Runtime shared library the onnxruntime wheel ships, or None."""
    capi = Path(ort.__file__).parent / "capi"
    libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
    return libs[0] if libs else None


def library_file() -> Path:
    """Where the built library is (or would be) for this source, flags and ORT version."""
    override = os.environ.get("PARNASC_NATIVE_LIB")
    if override:
        return Path(override)
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join((*CXXFLAGS, *LIBS, str(ort.__version__))).encode())
    return BUILD_DIR / f"libparnasc_native-{h.hexdigest()[:12]}.so"


def fetch_headers(log: Callable[[str], None] = lambda _: None) -> Path:
    """ORT's C headers in the cache (fetched with ``npm pack`` the first time); their folder.

    Raises :class:`NativeError` when npm is missing or the download fails.
    """
    dest = headers_dir()
    if (dest / "onnxruntime_c_api.h").is_file():
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise NativeError("npm not found (needed once to fetch ONNX Runtime's C headers)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"fetching ONNX Runtime {HEADERS_VERSION} C headers ({HEADERS_PACKAGE}, ~150 MB, once)")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        # its own npm cache, so the 150 MB tarball is not kept in ~/.npm
        proc = subprocess.run(
            [npm, "pack", HEADERS_PACKAGE, "--silent", "--cache", str(Path(tmp) / "npm")],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            last = (proc.stderr.strip().splitlines() or ["no tarball written"])[-1]
            raise NativeError(f"npm pack {HEADERS_PACKAGE} failed: {last}")
        staged = Path(tmp) / "headers"
        staged.mkdir()
        with tarfile.open(tarballs[0], "r:gz") as tf:
            for m in tf:
                name = m.name.removeprefix(_HEADERS_IN_TARBALL)
                if name == m.name or "/" in name or not name.endswith(".h") or not m.isfile():
                    continue
                src = tf.extractfile(m)
                if src is not None:
                    (staged / name).write_bytes(src.read())
        if not (staged / "onnxruntime_c_api.h").is_file():
            raise NativeError(f"{HEADERS_PACKAGE} holds no onnxruntime_c_api.h where expected")
        staged.rename(dest)  # atomic: a concurrent or interrupted fetch leaves no half folder
    return dest


def build(log: Callable[[str], None] = lambda _: None) -> Path:
    """Build the library if it is not built yet (headers fetched first); its path.

    Raises :class:`NativeError` with the reason when it cannot be built.
    """
    lib = library_file()
    if lib.is_file():
        return lib
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise NativeError("no C++ compiler (g++) found")
    inc = fetch_headers(log)
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}.tmp")
    cmd = [cxx, *CXXFLAGS, f"-I{inc}", str(SOURCE), "-o", str(tmp), *LIBS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (proc.stderr.strip().splitlines() or ["no output"])[0]
        raise NativeError(f"compiling {SOURCE.name} failed: {first}")
    tmp.replace(lib)
    for old in lib.parent.glob("libparnasc_native-*.so"):  # earlier builds
        if old != lib:
            old.unlink(missing_ok=True)
    log(f"built {lib}")
    return lib


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "lib": CDLL | None, "why": str | None, "noted": bool

_P = ctypes.c_void_p
_I = ctypes.c_int
_S = ctypes.c_char_p
_SIGS: dict[str, tuple[Any, list[Any]]] = {
    "pn_open": (_P, [_S, _I, ctypes.POINTER(_I), _I, _I, _I, _S, _I]),
    "pn_add_segment": (
        _I,
        [
            _P,
            _I,
            _I,
            _S,
            _P,
            ctypes.c_size_t,
            _I,
            _I,
            _I,
            ctypes.POINTER(_S),
            ctypes.POINTER(_S),
            _S,
            _I,
        ],
    ),
    "pn_add_view": (_I, [_P, _S, _S, ctypes.c_int64, _I, ctypes.POINTER(ctypes.c_int64), _S, _I]),
    "pn_start": (_I, [_P, _S, _S, _S, _I]),
    "pn_prepare": (
        _I,
        [_P, ctypes.POINTER(ctypes.c_int64), _I, ctypes.POINTER(ctypes.c_int64), _S, _I],
    ),
    "pn_run": (_I, [_P, _P, _P, _S, _I]),
    "pn_set_timing": (None, [_P, _I]),
    "pn_timings": (_I, [_P, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64)]),
    "pn_threads": (_I, [_P]),
    "pn_close": (None, [_P]),
    "pn_api_version": (_I, []),
}


def _try_load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("PARNASC_NATIVE", "1") == "0":
        return None, "PARNASC_NATIVE=0"
    if ort_library() is None:
        return None, "the onnxruntime wheel ships no libonnxruntime shared library"
    lib_path = library_file()
    if not lib_path.is_file():
        return None, f"{lib_path.name} is not built (run: python -m parnasc.deploy.native)"
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as exc:
        return None, f"cannot load {lib_path}: {exc}"
    for name, (res, args) in _SIGS.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib, None


def load() -> ctypes.CDLL | None:
    """The native library, or None (the reason said once on stderr; see
    :func:`unavailable_reason`)."""
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["why"] = _try_load()
        if _state["lib"] is None and not _state.get("noted"):
            _state["noted"] = True
            print(
                f"parnasc: note: native executor unavailable ({_state['why']}); "
                "running the Python plan",
                file=sys.stderr,
            )
        lib: ctypes.CDLL | None = _state["lib"]
        return lib


def unavailable_reason() -> str | None:
    """Why the native executor cannot be used (None when it can); says nothing."""
    with _lock:
        if "lib" not in _state:
            _state["lib"], _state["why"] = _try_load()
        why: str | None = _state["why"]
        return why


# --------------------------------------------------------------------------------------------
# the executor
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NativeSegment:
    """A segment of a native plan: its model (file or serialized bytes), lane, intra-op
    threads, extra ORT session config entries, and whether ORT optimizes its graph (off for
    segments cut from ORT's own optimized graph)."""

    model: Path | bytes
    lane: int
    threads: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    optimize: bool = True


View = tuple[str, int, Sequence[int]]
"""A tensor written in place into part of another: (parent tensor, element offset, parent's
shape)."""


def _close_handle(lib: ctypes.CDLL, box: list[int | None]) -> None:
    """Free the native executor in ``box`` (joins its threads); idempotent."""
    h, box[0] = box[0], None
    if h:
        lib.pn_close(h)


@dataclass
class StepTimes:
    """Per-step medians (us) of timed native runs: each segment's start and end from the run's
    start, each lane's time waiting at barriers, and the whole run."""

    segment_start_us: list[float]
    segment_end_us: list[float]
    lane_wait_us: list[float]
    run_us: float


class NativeExecutor:
    """A plan (phases of :class:`NativeSegment`) run by the native library over lanes on
    ``cpus`` (lane i on ``cpus[i]``).

    ``pin``: pin lane i's thread to ``cpus[i]`` (with ``pin_caller`` the calling thread too,
    for the duration of each run: that costs ~25 us per run on the VM measured, so by default
    the caller is left to the OS).  Lanes that share a CPU, or run unpinned, never spin (they
    sleep at once at every wait).
    A session ORT cannot load, or a plan whose dataflow does not close (a tensor no earlier
    phase produces, the output missing), raises :class:`NativeError` with nothing left
    running.  :meth:`close` (also garbage collection and interpreter exit, through
    :func:`weakref.finalize`) joins the lane threads; a run in flight finishes first.
    """

    def __init__(
        self,
        lib: ctypes.CDLL,
        phases: Sequence[Sequence[NativeSegment]],
        cpus: Sequence[int],
        input_name: str,
        output_name: str,
        *,
        pin: bool = True,
        pin_caller: bool = False,
        spin_run_us: int = SPIN_RUN_US,
        spin_idle_us: int = SPIN_IDLE_US,
        on_load_error: Callable[[NativeSegment, str], Exception] | None = None,
        views: Mapping[str, View] | None = None,
    ) -> None:
        self._lib = lib
        self._lock = threading.Lock()
        self._err = ctypes.create_string_buffer(_ERR_LEN)
        self._box: list[int | None] = [None]
        self._finalizer = weakref.finalize(self, _close_handle, lib, self._box)
        self.cpus = list(cpus)
        self.n_segments = sum(len(ph) for ph in phases)
        shared = len(set(self.cpus)) < len(self.cpus) or not pin
        if shared:  # spinning on a CPU another lane needs only delays that lane
            spin_run_us = spin_idle_us = 0
        arr = (ctypes.c_int * len(self.cpus))(*self.cpus)
        h = lib.pn_open(
            str(ort_library()).encode(),
            len(self.cpus),
            arr,
            (2 if pin_caller else 1) if pin else 0,
            spin_run_us,
            spin_idle_us,
            self._err,
            _ERR_LEN,
        )
        if not h:
            raise NativeError(self._message())
        self._box[0] = h
        try:
            for k, ph in enumerate(phases):
                for seg in ph:
                    self._add(k, seg, on_load_error)
            for name, (parent, offset, shape) in (views or {}).items():
                dims = (ctypes.c_int64 * len(shape))(*shape)
                if lib.pn_add_view(
                    h, name.encode(), parent.encode(), offset, len(shape), dims, self._err, _ERR_LEN
                ):
                    raise NativeError(self._message())
            if lib.pn_start(h, input_name.encode(), output_name.encode(), self._err, _ERR_LEN):
                raise NativeError(self._message())
        except BaseException:
            self._finalizer()
            raise
        self._shape: tuple[int, ...] | None = None
        self._out_shape: tuple[int, ...] = ()

    def _message(self) -> str:
        return self._err.value.decode(errors="replace") or "native executor error"

    def _add(
        self,
        phase: int,
        seg: NativeSegment,
        on_load_error: Callable[[NativeSegment, str], Exception] | None,
    ) -> None:
        keys = (ctypes.c_char_p * max(1, len(seg.config)))(*[k.encode() for k in seg.config])
        vals = (ctypes.c_char_p * max(1, len(seg.config)))(
            *[v.encode() for v in seg.config.values()]
        )
        if isinstance(seg.model, Path):
            path, data, size = str(seg.model).encode(), None, 0
        else:
            path, data, size = (
                None,
                ctypes.cast(ctypes.c_char_p(seg.model), ctypes.c_void_p),
                len(seg.model),
            )
        rc = self._lib.pn_add_segment(
            self._box[0],
            phase,
            seg.lane,
            path,
            data,
            size,
            seg.threads,
            int(seg.optimize),
            len(seg.config),
            keys,
            vals,
            self._err,
            _ERR_LEN,
        )
        if rc:
            msg = self._message()
            raise on_load_error(seg, msg) if on_load_error else NativeError(msg)

    @property
    def threads(self) -> int:
        """Native lane threads running (0 once closed)."""
        h = self._box[0]
        return int(self._lib.pn_threads(h)) if h else 0

    def _prepare(self, shape: tuple[int, ...]) -> None:
        dims = (ctypes.c_int64 * len(shape))(*shape)
        out = (ctypes.c_int64 * 8)()
        nd = self._lib.pn_prepare(self._box[0], dims, len(shape), out, self._err, _ERR_LEN)
        if nd < 0:
            self._shape = None
            raise NativeError(self._message())
        self._shape = shape
        self._out_shape = tuple(int(out[i]) for i in range(nd))

    def run(self, x: np.ndarray) -> np.ndarray:
        """One inference of a float32 C-contiguous ``x``; the output in a new array."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self._lock:
            h = self._box[0]
            if not h:
                raise RuntimeError("Runtime is closed")
            if x.shape != self._shape:
                self._prepare(x.shape)
            y = np.empty(self._out_shape, dtype=np.float32)
            if self._lib.pn_run(h, x.ctypes.data, y.ctypes.data, self._err, _ERR_LEN):
                raise NativeError(self._message())
            return y

    def step_times(self, x: np.ndarray, reps: int) -> StepTimes:
        """Run ``x`` ``reps`` times with per-step timing on; the medians (:class:`StepTimes`)."""
        n_lanes = len(self.cpus)
        segs = np.zeros((reps, 2 * self.n_segments), dtype=np.int64)
        waits = np.zeros((reps, n_lanes), dtype=np.int64)
        runs = np.zeros(reps)
        seg_buf = (ctypes.c_int64 * (2 * self.n_segments))()
        wait_buf = (ctypes.c_int64 * n_lanes)()
        with self._lock:
            self._lib.pn_set_timing(self._box[0], 1)
        try:
            for i in range(reps):
                t0 = time.perf_counter()
                self.run(x)
                runs[i] = time.perf_counter() - t0
                with self._lock:
                    self._lib.pn_timings(self._box[0], seg_buf, wait_buf)
                segs[i] = np.ctypeslib.as_array(seg_buf)
                waits[i] = np.ctypeslib.as_array(wait_buf)
        finally:
            with self._lock:
                if self._box[0]:
                    self._lib.pn_set_timing(self._box[0], 0)
        med = np.median(segs, axis=0) / 1e3
        return StepTimes(
            segment_start_us=[float(v) for v in med[0::2]],
            segment_end_us=[float(v) for v in med[1::2]],
            lane_wait_us=[float(v) for v in np.median(waits, axis=0) / 1e3],
            run_us=float(np.median(runs)) * 1e6,
        )

    def close(self) -> None:
        """Join the lane threads and free the sessions (idempotent; waits for a run in
        flight)."""
        with self._lock:
            self._finalizer()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m parnasc.deploy.native``: build the library if needed (quiet when it is up
    to date); exit 1 with the reason on one line when it cannot be built."""
    del argv
    try:
        build(lambda m: print(f"parnasc native: {m}", file=sys.stderr))
    except (NativeError, OSError, subprocess.SubprocessError) as exc:
        print(f"parnasc native: not built: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
