"""CIFAR-10 loading, caching, subsetting and batching.

Images are held as uint8 NCHW arrays ``[N, 3, H, W]`` and labels as int64 ``[N]``. Sources,
auto-detected from a path:

* an ImageFolder-style tree ``train/<class>/*`` and ``test/<class>/*``, as a directory or as a
  ``.tar``/``.tar.gz``/``.tgz`` archive (optionally under one top-level folder), e.g. the shared
  ``cifar10-jpeg.tar.gz``;
* the official ``cifar-10-batches-py`` folder or ``cifar-10-python.tar.gz`` archive, read with a
  restricted unpickler that only rebuilds numpy arrays;
* nothing: the official archive is downloaded into the cache dir and checked against its MD5.

Decoded arrays are cached as ``.npz`` (no pickle) in the cache dir (``$PARNASC_CACHE``, default
``~/.cache/parnasc``), keyed by the source's path, sizes and mtimes.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import pickle
import posixpath
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from parnasc.errors import UserError
from parnasc.files import atomic_path, cache_dir

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "Cifar",
    "DataError",
    "Loader",
    "default_cache_dir",
    "load_cifar10",
    "load_images",
    "normalize",
    "split_train",
    "subset",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

_CACHE_VERSION = 1
_IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff"})
_BATCH_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
_META_FILE = "batches.meta"
_KNOWN_ARCHIVES = ("cifar-10-python.tar.gz", "cifar10-jpeg.tar.gz")
_SPLITS = ("train", "test")
_DECODE_WORKERS = 2
_POOL_MIN_IMAGES = 4000
_CHUNK = 1000

Progress = Callable[[str], None]


class DataError(UserError):
    """A user-facing data problem; the message is one line and names the offending path."""


@dataclass(frozen=True, eq=False)
class Cifar:
    """Both splits as uint8 NCHW images ``[N, 3, H, W]`` and int64 labels ``[N]``."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def default_cache_dir() -> Path:
    """``$PARNASC_CACHE`` if set, else ``~/.cache/parnasc`` (:func:`parnasc.files.cache_dir`)."""
    return cache_dir()


# --------------------------------------------------------------------------- safe unpickling


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to latin-1, as numpy/py3 pickles of bytes use it."""
    if not isinstance(obj, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, "latin-1", errors)


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    reconstruct = np.array(0).__reduce__()[0]  # numpy's ndarray rebuild function
    scalar = np.int64(0).__reduce__()[0]
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = reconstruct
        table[(module, "scalar")] = scalar
    return table


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild plain containers and numpy arrays/scalars."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"refusing to unpickle global {module}.{name} (only numpy arrays are allowed)"
            )
        return obj


def _safe_unpickle(blob: bytes, where: str) -> Any:
    """Unpickle CIFAR batch bytes (python-2 strings read as bytes) or raise DataError."""
    try:
        return _SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
    ) as e:
        raise DataError(f"{where}: cannot read pickled CIFAR batch ({_one_line(e)})") from None


# --------------------------------------------------------------------------- decoding


def _decode_chunk(task: tuple[str, list[tuple[str, bytes]], tuple[int, int]]) -> np.ndarray:
    """Decode encoded images to uint8 ``[k, H, W, 3]``; runs in pool workers."""
    source, items, (h, w) = task
    out = np.empty((len(items), h, w, 3), np.uint8)
    for i, (name, blob) in enumerate(items):
        try:
            with Image.open(io.BytesIO(blob)) as im:
                if im.size != (w, h):
                    raise DataError(
                        f"{source}: {name} is {im.size[0]}x{im.size[1]} pixels, expected "
                        f"{w}x{h} (pass image_size=(H, W) for other sizes)"
                    )
                out[i] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{source}: cannot decode image {name} ({_one_line(e)})") from None
    return out


def _decode_all(
    source: str, items: list[tuple[str, bytes]], size: tuple[int, int], say: Progress
) -> np.ndarray:
    """Decode all images (in a small process pool when worthwhile) to uint8 NCHW."""
    tasks = [(source, items[i : i + _CHUNK], size) for i in range(0, len(items), _CHUNK)]
    workers = min(_DECODE_WORKERS, os.cpu_count() or 1)
    say(f"decoding {len(items)} images from {source}")
    if workers < 2 or len(items) < _POOL_MIN_IMAGES:
        parts = [_decode_chunk(t) for t in tasks]
    else:
        method = "fork" if sys.platform.startswith("linux") else "spawn"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork of a threaded process
            pool = mp.get_context(method).Pool(workers)
        with pool:
            parts = list(pool.imap(_decode_chunk, tasks))
    if not parts:
        return np.empty((0, 3, *size), np.uint8)
    return np.ascontiguousarray(np.concatenate(parts).transpose(0, 3, 1, 2))


# --------------------------------------------------------------------------- source formats


def _from_batches(
    source: str, blobs: dict[str, bytes], size: tuple[int, int], say: Progress
) -> Cifar:
    """Build a Cifar from the official python batches (file name -> raw pickle bytes)."""
    classes = CIFAR10_CLASSES
    if _META_FILE in blobs:
        meta = _safe_unpickle(blobs[_META_FILE], f"{source}/{_META_FILE}")
        names = (
            meta.get(b"label_names", meta.get("label_names")) if isinstance(meta, dict) else None
        )
        if isinstance(names, list) and names:
            classes = tuple(n.decode("latin-1") if isinstance(n, bytes) else str(n) for n in names)
    h, w = size
    xs: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    ys: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    say(f"reading CIFAR-10 python batches from {source}")
    for fname in _BATCH_FILES:
        where = f"{source}/{fname}"
        if fname not in blobs:
            raise DataError(f"{where}: missing batch file")
        batch = _safe_unpickle(blobs[fname], where)
        if not isinstance(batch, dict):
            raise DataError(f"{where}: not a CIFAR batch (expected a dict)")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise DataError(f"{where}: 'data' is not a 2-D uint8 array")
        if data.shape[1] != 3 * h * w:
            raise DataError(
                f"{where}: rows have {data.shape[1]} values, expected {3 * h * w} "
                f"for {h}x{w} RGB images"
            )
        try:
            y = np.asarray(labels, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise DataError(f"{where}: 'labels' is not a list of integers") from None
        if labels is None or len(y) != len(data):
            raise DataError(f"{where}: {len(data)} images but {len(y)} labels")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{where}: labels outside 0..{len(classes) - 1}")
        split = "test" if fname == "test_batch" else "train"
        xs[split].append(data.reshape(-1, 3, h, w))
        ys[split].append(y)
    return Cifar(
        train_x=np.ascontiguousarray(np.concatenate(xs["train"])),
        train_y=np.concatenate(ys["train"]),
        test_x=np.ascontiguousarray(np.concatenate(xs["test"])),
        test_y=np.concatenate(ys["test"]),
        classes=classes,
    )


def _from_image_folder(
    source: str, files: list[tuple[str, bytes]], size: tuple[int, int], say: Progress
) -> Cifar:
    """Build a Cifar from ``train/<class>/*`` + ``test/<class>/*`` files (posix path, bytes)."""
    paths = [
        (tuple(p for p in name.split("/") if p not in ("", ".")), name, blob)
        for name, blob in files
    ]
    if any(p[0] in _SPLITS for p, _, _ in paths):
        prefix = 0
    elif (
        paths
        and len({p[0] for p, _, _ in paths}) == 1
        and any(len(p) > 1 and p[1] in _SPLITS for p, _, _ in paths)
    ):
        prefix = 1  # a single top-level folder
    else:
        raise DataError(
            f"{source}: unknown layout; expected train/<class>/* and test/<class>/* images "
            "or the cifar-10-batches-py files"
        )
    groups: dict[str, dict[str, list[tuple[str, str, bytes]]]] = {s: {} for s in _SPLITS}
    for parts, name, blob in paths:
        rest = parts[prefix:]
        if len(rest) >= 3 and rest[0] in _SPLITS:
            groups[rest[0]].setdefault(rest[1], []).append(("/".join(rest[2:]), name, blob))
    for split in _SPLITS:
        if not groups[split]:
            raise DataError(f"{source}: no images under {split}/<class>/")
    names = set(groups["train"]) | set(groups["test"])
    for split in _SPLITS:
        if missing := sorted(names - set(groups[split])):
            raise DataError(f"{source}: missing class folder {split}/{missing[0]}")
    classes = CIFAR10_CLASSES if names == set(CIFAR10_CLASSES) else tuple(sorted(names))
    items: list[tuple[str, bytes]] = []
    labels: dict[str, list[int]] = {s: [] for s in _SPLITS}
    for split in _SPLITS:
        for label, cls in enumerate(classes):
            for _, name, blob in sorted(groups[split][cls]):
                items.append((name, blob))
                labels[split].append(label)
    x = _decode_all(source, items, size, say)  # both splits in one pool run
    n_train = len(labels["train"])
    return Cifar(
        train_x=x[:n_train],
        train_y=np.asarray(labels["train"], np.int64),
        test_x=x[n_train:],
        test_y=np.asarray(labels["test"], np.int64),
        classes=classes,
    )


def _is_image(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and posixpath.splitext(base)[1].lower() in _IMAGE_EXTS


def _load_tar(path: Path, size: tuple[int, int], say: Progress) -> Cifar:
    source = str(path)
    files: list[tuple[str, bytes]] = []
    batches: dict[str, bytes] = {}
    say(f"reading {source}")
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                wanted_batch = base in _BATCH_FILES or base == _META_FILE
                if not (wanted_batch or _is_image(member.name)):
                    continue
                fobj = tf.extractfile(member)
                if fobj is None:
                    continue
                blob = fobj.read()
                if wanted_batch:
                    batches[base] = blob
                else:
                    name = member.name[2:] if member.name.startswith("./") else member.name
                    files.append((name, blob))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{source}: corrupt or truncated archive ({_one_line(e)})") from None
    if "data_batch_1" in batches:
        return _from_batches(source, batches, size, say)
    return _from_image_folder(source, files, size, say)


def _image_root(path: Path) -> Path | None:
    """``path`` or its single subfolder if it holds ``train/`` and ``test/`` folders."""
    if all((path / s).is_dir() for s in _SPLITS):
        return path
    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and all((subdirs[0] / s).is_dir() for s in _SPLITS):
        return subdirs[0]
    return None


def _image_files(root: Path) -> list[Path]:
    return sorted(
        p for s in _SPLITS for p in (root / s).rglob("*") if p.is_file() and _is_image(p.name)
    )


def _resolve_source(path: Path) -> tuple[str, Path]:
    """Classify a user path as ('tar' | 'batches' | 'images', concrete path)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        name = path.name.lower()
        if name.endswith((".tar", ".tar.gz", ".tgz")):
            return "tar", path
        try:
            if tarfile.is_tarfile(path):
                return "tar", path
        except OSError as e:
            raise DataError(f"{path}: cannot read ({_one_line(e)})") from None
        raise DataError(f"{path}: not a tar archive or a dataset directory")
    if not path.is_dir():
        raise DataError(f"{path}: not a file or directory")
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file():
            return "batches", candidate
    try:
        root = _image_root(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_one_line(e)})") from None
    if root is not None:
        return "images", root
    for archive in _KNOWN_ARCHIVES:
        if (path / archive).is_file():
            return "tar", path / archive
    raise DataError(
        f"{path}: unknown layout; expected train/<class>/* and test/<class>/* folders, "
        "a cifar-10-batches-py folder, or a .tar/.tar.gz/.tgz of either"
    )


def _load_source(kind: str, path: Path, size: tuple[int, int], say: Progress) -> Cifar:
    if kind == "tar":
        return _load_tar(path, size, say)
    try:
        if kind == "batches":
            blobs = {
                f: (path / f).read_bytes()
                for f in (*_BATCH_FILES, _META_FILE)
                if (path / f).is_file()
            }
            return _from_batches(str(path), blobs, size, say)
        files = [(p.relative_to(path).as_posix(), p.read_bytes()) for p in _image_files(path)]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_one_line(e)})") from None
    return _from_image_folder(str(path), files, size, say)


# --------------------------------------------------------------------------- cache


def _cache_key(kind: str, path: Path, size: tuple[int, int]) -> str:
    if kind == "tar":
        files = [path]
    elif kind == "batches":
        files = [path / f for f in (*_BATCH_FILES, _META_FILE) if (path / f).is_file()]
    else:
        files = _image_files(path)
    entries = []
    for f in files:
        st = f.stat()
        entries.append(
            [f.relative_to(path).as_posix() if f != path else "", st.st_size, st.st_mtime_ns]
        )
    blob = json.dumps([_CACHE_VERSION, kind, str(path.resolve()), list(size), entries])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache(file: Path, size: tuple[int, int]) -> Cifar | None:
    if not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as z:
            data = Cifar(
                train_x=z["train_x"],
                train_y=z["train_y"],
                test_x=z["test_x"],
                test_y=z["test_y"],
                classes=tuple(str(c) for c in z["classes"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        if x.dtype != np.uint8 or x.shape[1:] != (3, *size) or y.shape != (len(x),):
            return None
    return data


def _write_cache(file: Path, data: Cifar, say: Progress) -> None:
    try:
        with atomic_path(file) as tmp, tmp.open("wb") as f:
            np.savez(
                f,
                train_x=data.train_x,
                train_y=data.train_y,
                test_x=data.test_x,
                test_y=data.test_y,
                classes=np.array(data.classes, dtype=str),
            )
        say(f"cached decoded arrays at {file}")
    except OSError as e:
        say(f"warning: could not write cache {file} ({_one_line(e)})")


# --------------------------------------------------------------------------- download


def _download(url: str, md5: str, dest: Path, say: Progress) -> None:
    """Fetch ``url`` to ``dest`` atomically, checking its MD5; nothing is left on failure."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest.parent}: cannot create cache dir ({_one_line(e)})") from None
    digest = hashlib.md5(usedforsecurity=False)
    with atomic_path(dest) as tmp:
        say(f"downloading {url} to {dest}")
        try:
            with tmp.open("wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0)
                done, shown = 0, -1
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if total and (pct := 100 * done // total) // 10 != shown:
                        shown = pct // 10
                        say(f"downloaded {done >> 20} of {total >> 20} MiB ({pct}%)")
        except (urllib.error.URLError, HTTPException, OSError, ValueError) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            raise DataError(
                f"could not download CIFAR-10 ({url}: {_one_line(reason)}); "
                "pass --data PATH to a local copy"
            ) from None
        if digest.hexdigest() != md5.lower():
            raise DataError(
                f"{url}: MD5 mismatch (got {digest.hexdigest()}, expected {md5}); download "
                "discarded; pass --data PATH to a local copy"
            )


def _url_filename(url: str) -> str:
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name or "cifar-10-python.tar.gz"


# --------------------------------------------------------------------------- public API


def load_cifar10(
    path: str | Path | None = None,
    *,
    cache_dir: Path | None = None,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    image_size: tuple[int, int] = (32, 32),
    progress: Progress | None = None,
) -> Cifar:
    """Load CIFAR-10 from ``path`` (format auto-detected) or download it when ``path`` is None.

    Decoded arrays are cached in ``cache_dir`` (default :func:`default_cache_dir`); images must
    be ``image_size`` (H, W). Raises :class:`DataError` on any data problem.
    """
    say: Progress = progress or (lambda _msg: None)
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if path is None:
        src = cdir / _url_filename(url)
        if not src.is_file():
            _download(url, md5, src, say)
    else:
        src = Path(path).expanduser()
    kind, concrete = _resolve_source(src)
    try:
        key = _cache_key(kind, concrete, image_size)
    except OSError as e:
        raise DataError(f"{concrete}: cannot read ({_one_line(e)})") from None
    cache_file = cdir / f"cifar10-{key}.npz"
    cached = _read_cache(cache_file, image_size)
    if cached is not None:
        say(f"loaded {concrete} from cache {cache_file}")
        return cached
    data = _load_source(kind, concrete, image_size, say)
    _write_cache(cache_file, data, say)
    return data


def _balanced_indices(
    y: np.ndarray, n: int, n_classes: int, rng: np.random.Generator, what: str
) -> np.ndarray:
    if n > len(y) or n < 0:
        raise DataError(f"requested {n} {what} images but only {len(y)} are available")
    quota = np.full(n_classes, n // n_classes)
    quota[rng.permutation(n_classes)[: n % n_classes]] += 1
    picked = []
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < quota[c]:
            raise DataError(
                f"requested {quota[c]} {what} images of class {c} but only {len(idx)} exist"
            )
        picked.append(rng.permutation(idx)[: quota[c]])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, np.int64)


def subset(data: Cifar, n_train: int | None, n_test: int | None, seed: int) -> Cifar:
    """Deterministic class-balanced subset (None keeps a whole split); original order is kept."""
    k = len(data.classes)
    tr = (
        np.arange(len(data.train_y))
        if n_train is None
        else _balanced_indices(data.train_y, n_train, k, np.random.default_rng([seed, 0]), "train")
    )
    te = (
        np.arange(len(data.test_y))
        if n_test is None
        else _balanced_indices(data.test_y, n_test, k, np.random.default_rng([seed, 1]), "test")
    )
    return Cifar(data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te], data.classes)


def split_train(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified held-out split: ``((x_train, y_train), (x_val, y_val))``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    rng = np.random.default_rng([seed, 2])
    val_parts = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        val_parts.append(idx[: round(len(idx) * val_fraction)])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, np.int64)
    if len(val) == 0 or len(val) == len(y):
        raise ValueError(f"val_fraction {val_fraction} leaves an empty split of {len(y)} samples")
    mask = np.ones(len(y), bool)
    mask[val] = False
    train = np.flatnonzero(mask)
    return (x[train], y[train]), (x[val], y[val])


_MEAN_T = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
_STD_T = torch.tensor(CIFAR_STD).view(3, 1, 1)


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float32 ``(x / 255 - mean) / std`` (memory format kept)."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize expects a uint8 tensor, got {x_uint8.dtype}")
    return x_uint8.float().div_(255.0).sub_(_MEAN_T).div_(_STD_T)


def load_images(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    """Load image files as RGB resized to ``size`` (H, W); returns uint8 ``[N, 3, H, W]``."""
    h, w = size
    out = np.empty((len(paths), h, w, 3), np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                rgb = ImageOps.exif_transpose(im).convert("RGB")
                if rgb.size != (w, h):
                    rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
                out[i] = np.asarray(rgb)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise DataError(f"{p}: cannot read image ({_one_line(e)})") from None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _generator(seed: int, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([seed & (2**64 - 1), epoch & (2**64 - 1)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


class Loader:
    """Iterates normalised float32 NCHW batches ``(x, y)`` from uint8 NCHW arrays.

    Shuffling and augmentation (random 32-crop with 4 zero padding, horizontal flip, and with
    ``cutout`` > 0 one ``cutout`` x ``cutout`` square per image set to the mean, its centre
    anywhere in the image) are batched tensor ops drawn from a generator seeded by
    ``(seed, epoch)``; call :meth:`set_epoch` each epoch so a resumed run replays the same
    batches. ``shard=(rank, world)`` yields only that rank's share of every batch of n images
    (rows ``rank * n // world`` up to ``(rank + 1) * n // world``) with the draws of the whole
    batch, so ``world`` loaders together give exactly one unsharded loader's batches.
    """

    pad = 4

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        seed: int,
        drop_last: bool = False,
        channels_last: bool = True,
        cutout: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"Loader expects uint8 [N, 3, H, W] images, got {x.dtype} {x.shape}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cutout < 0:
            raise ValueError(f"cutout must be >= 0, got {cutout}")
        if not (x.flags.writeable and x.flags.c_contiguous):
            x = np.array(x, order="C")
        self.x = torch.from_numpy(x)  # shares memory with a writable C-contiguous ``x``
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64).copy())
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.cutout = cutout
        self.shard = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation draws are produced next."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _augment(
        self, xb: torch.Tensor, g: torch.Generator, size: int, share: slice
    ) -> torch.Tensor:
        """Crop and flip `xb`, the rows `share` of a batch of `size` images: the draws are the
        whole batch's (from `g`), so every share of a batch gets the draws of its rows."""
        p = self.pad
        off = torch.randint(0, 2 * p + 1, (size, 2), generator=g)[share]
        flip = torch.randint(0, 2, (size, 1), generator=g).bool()[share]
        b, c, h, w = xb.shape
        padded = torch.zeros((b, c, h + 2 * p, w + 2 * p), dtype=xb.dtype)
        padded[:, :, p : p + h, p : p + w] = xb
        cols = torch.arange(w)
        cols = torch.where(flip, cols.flip(0), cols) + off[:, 1:2]  # [b, w]
        rows = torch.arange(h) + off[:, 0:1]  # [b, h]
        bi = torch.arange(b).view(b, 1, 1, 1)
        ci = torch.arange(c).view(1, c, 1, 1)
        return padded[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]

    def _cutout_mask(
        self, size: int, h: int, w: int, g: torch.Generator, share: slice
    ) -> torch.Tensor:
        """``[b, 1, h, w]`` float mask of the rows `share` of a batch of `size` images (the
        draws are the whole batch's): 0 inside each image's square (clipped at the border)."""
        s = self.cutout
        top = torch.randint(0, h, (size, 1), generator=g)[share] - s // 2
        left = torch.randint(0, w, (size, 1), generator=g)[share] - s // 2
        rows = torch.arange(h)
        cols = torch.arange(w)
        in_rows = (rows >= top) & (rows < top + s)  # [b, h]
        in_cols = (cols >= left) & (cols < left + s)  # [b, w]
        return (~(in_rows[:, :, None] & in_cols[:, None, :])).float().unsqueeze(1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = _generator(self.seed, self.epoch)
        n = len(self.y)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        rank, world = self.shard
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            size = len(idx)
            share = slice(rank * size // world, (rank + 1) * size // world)
            if world > 1:
                idx = idx[share]
            xb = self.x.index_select(0, idx)
            if self.augment:
                xb = self._augment(xb, g, size, share)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            xf = normalize(xb)
            if self.augment and self.cutout:
                _, _, h, w = xf.shape
                xf.mul_(self._cutout_mask(size, h, w, g, share))  # normalised 0 is the mean
            yield xf, self.y.index_select(0, idx)
