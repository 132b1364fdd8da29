"""Tests for parnasc.data: sources, safe unpickling, download, cache, subsets and Loader."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from parnasc.data import cifar as D
from parnasc.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR_MEAN,
    CIFAR_STD,
    Cifar,
    DataError,
    Loader,
    load_cifar10,
    load_images,
    normalize,
    split_train,
    subset,
)

SHARED = Path(
    os.environ.get("PARNASC_CIFAR")
    or Path(__file__).resolve().parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parnasc-cache")


@pytest.fixture(scope="session")
def full(cache_root: Path) -> tuple[Cifar, float]:
    """The real archive, decoded once per session (returns data and decode seconds)."""
    if not SHARED.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {SHARED} (set PARNASC_CIFAR to its path)")
    start = time.perf_counter()
    data = load_cifar10(SHARED, cache_dir=cache_root)
    return data, time.perf_counter() - start


def _images(n: int, seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, *size), dtype=np.uint8)


def _write_folder(
    root: Path,
    classes: tuple[str, ...],
    per_class: dict[str, int],
    size: tuple[int, int] = (32, 32),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write lossless PNGs as ``root/<split>/<class>/NNNN.png``; return expected arrays."""
    out = {}
    for s_i, (split, n) in enumerate(per_class.items()):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            imgs = _images(n, seed=100 * s_i + label, size=size)
            for i, img in enumerate(imgs):
                Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:04d}.png")
            xs.append(imgs)
            ys.append(np.full(n, label, np.int64))
        out[split] = (np.concatenate(xs), np.concatenate(ys))
    return out


def _tar(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz" if dest.name.endswith(("gz", "tgz")) else "w") as tf:
        tf.add(src, arcname=arcname)
    return dest


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch exactly as Python 2 + numpy 1.x pickled it (str opcodes, numpy.core globals)."""
    n, d = data.shape
    return b"".join(
        [
            b"\x80\x02}(",
            _py2_str(b"data"),
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85",
            _py2_str(b"b"),
            b"\x87R(K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", d) + b"\x86",
            b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + _py2_str(b"|"),
            b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + _py2_str(data.tobytes()) + b"tb",
            _py2_str(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e",
            _py2_str(b"batch_label") + _py2_str(b"training batch"),
            b"u.",
        ]
    )


def _write_batches(folder: Path, per_batch: int = 20) -> Cifar:
    """Write a small cifar-10-batches-py folder; odd batches py2-style, others py3 protocol 2."""
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i, name in enumerate(D._BATCH_FILES):
        x = _images(per_batch, seed=i)
        y = [int(v) for v in np.random.default_rng(50 + i).integers(0, 10, per_batch)]
        flat = x.reshape(per_batch, -1)
        if i % 2:
            blob = _py2_pickle(flat, y)
        else:
            blob = pickle.dumps({b"batch_label": b"x", b"data": flat, b"labels": y}, protocol=2)
        (folder / name).write_bytes(blob)
        xs.append(x)
        ys.append(np.array(y, np.int64))
    names = [c.upper().encode() for c in CIFAR10_CLASSES]
    meta = {b"label_names": names, b"num_vis": 3072, b"num_cases_per_batch": per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Cifar(
        np.concatenate(xs[:5]),
        np.concatenate(ys[:5]),
        xs[5],
        ys[5],
        tuple(c.upper() for c in CIFAR10_CLASSES),
    )


def _same(a: Cifar, b: Cifar) -> None:
    assert a.classes == b.classes
    for name in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a fresh folder; yields (base URL, folder)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


# --------------------------------------------------------------------------- real archive


def test_full_archive_counts_and_cache(full: tuple[Cifar, float], cache_root: Path) -> None:
    data, decode_s = full
    print(f"full archive decode: {decode_s:.1f}s")
    assert data.classes == CIFAR10_CLASSES
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert data.train_x.dtype == np.uint8 and data.test_x.dtype == np.uint8
    assert data.train_y.dtype == np.int64 and data.test_y.dtype == np.int64
    assert np.bincount(data.train_y).tolist() == [5000] * 10
    assert np.bincount(data.test_y).tolist() == [1000] * 10
    mean = data.train_x.mean(axis=(0, 2, 3)) / 255
    assert np.allclose(mean, CIFAR_MEAN, atol=0.01)
    assert len(list(cache_root.glob("cifar10-*.npz"))) == 1

    # The second load reads the cache and decodes nothing (the decoder must not be called).
    said: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("parnasc.data.cifar._load_source", _must_not_decode)
        again = load_cifar10(SHARED, cache_dir=cache_root, progress=said.append)
    assert any("from cache" in m for m in said)
    _same(data, again)


def _must_not_decode(*_args: object) -> None:
    raise AssertionError("decoded the archive although a valid cache exists")


def test_subset_balanced_and_deterministic(full: tuple[Cifar, float]) -> None:
    data, _ = full
    a = subset(data, 1000, 205, seed=3)
    assert a.train_x.shape == (1000, 3, 32, 32) and len(a.test_y) == 205
    assert np.bincount(a.train_y, minlength=10).tolist() == [100] * 10
    assert sorted(np.bincount(a.test_y, minlength=10).tolist()) == [20] * 5 + [21] * 5
    _same(a, subset(data, 1000, 205, seed=3))
    assert not np.array_equal(a.train_x, subset(data, 1000, 205, seed=4).train_x)
    whole = subset(data, None, 10, seed=0)
    assert len(whole.train_y) == 50000 and len(whole.test_y) == 10
    with pytest.raises(DataError, match="only 10000"):
        subset(data, None, 10001, seed=0)


def test_loader_normalises_real_data(full: tuple[Cifar, float]) -> None:
    data, _ = full
    loader = Loader(data.test_x, data.test_y, 1000, shuffle=False, augment=False, seed=0)
    xs = torch.cat([x for x, _ in loader])
    mean = xs.mean(dim=(0, 2, 3))
    std = xs.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=0.05), mean
    assert torch.allclose(std, torch.ones(3), atol=0.05), std


# --------------------------------------------------------------------------- splits


def test_split_train_deterministic_disjoint_stratified() -> None:
    y = np.repeat(np.arange(5), [40, 60, 80, 100, 120]).astype(np.int64)
    x = np.arange(len(y))
    (xt, yt), (xv, yv) = split_train(x, y, 0.25, seed=1)
    assert len(xt) + len(xv) == len(x)
    assert not set(xt.tolist()) & set(xv.tolist())
    assert sorted(xt.tolist() + xv.tolist()) == x.tolist()
    assert np.array_equal(y[xt], yt) and np.array_equal(y[xv], yv)
    assert np.bincount(yv).tolist() == [10, 15, 20, 25, 30]
    (xt2, _), (xv2, _) = split_train(x, y, 0.25, seed=1)
    assert np.array_equal(xt, xt2) and np.array_equal(xv, xv2)
    (_, _), (xv3, _) = split_train(x, y, 0.25, seed=2)
    assert not np.array_equal(xv, xv3)
    with pytest.raises(ValueError):
        split_train(x, y, 1.0, seed=0)


def test_retraining_uses_every_training_image_and_the_test_set() -> None:
    """The held-out split belongs to the search: retraining sees all training images."""
    from parnasc.data.loaders import make_loaders, retrain_loaders

    x = _images(330, seed=3)
    y = (np.arange(330) % 10).astype(np.int64)
    tx, ty = _images(70, seed=4), (np.arange(70) % 10).astype(np.int64)
    cifar = Cifar(x, y, tx, ty, CIFAR10_CLASSES)
    train, test = retrain_loaders(cifar, batch=32, seed=0)
    train.set_epoch(1)
    seen = sum(len(b) for b, _ in train)
    assert seen == 330 // 32 * 32 and len(train) == 330 // 32  # whole batches of all 330
    assert sum(len(b) for _, b in test) == 70
    search = make_loaders(cifar, batch=32, val_fraction=0.2, seed=0)
    assert len(search.train) < len(train)  # the search trains on 80% only


# --------------------------------------------------------------------------- Loader


def _labelled(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose top-left pixel encodes their index, plus labels = index % 10."""
    x = _images(n, seed=7)
    x[:, :, 0, 0] = np.arange(n)[:, None]
    return x, (np.arange(n) % 10).astype(np.int64)


def _unnormalise(xb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return (xb * std + mean).mul(255).round().to(torch.uint8)


def test_normalize_values() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = normalize(x)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    for c in range(3):
        assert out[0, c, 0, 0].item() == pytest.approx(-CIFAR_MEAN[c] / CIFAR_STD[c], rel=1e-5)
        assert out[1, c, 1, 1].item() == pytest.approx((1 - CIFAR_MEAN[c]) / CIFAR_STD[c], 1e-5)
    assert normalize(x[0]).shape == (3, 2, 2)
    with pytest.raises(TypeError):
        normalize(x.float())


def test_loader_shapes_order_and_len() -> None:
    x, y = _labelled(100)
    loader = Loader(x, y, 32, shuffle=False, augment=False, seed=0)
    assert len(loader) == 4
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert xb.shape == (32, 3, 32, 32) and xb.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(_unnormalise(xb), torch.from_numpy(x[:32]))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.from_numpy(y))
    dropped = Loader(x, y, 32, shuffle=True, augment=False, seed=0, drop_last=True)
    assert len(dropped) == 3 and [len(b[1]) for b in dropped] == [32, 32, 32]
    plain = Loader(x, y, 50, shuffle=False, augment=False, seed=0, channels_last=False)
    assert next(iter(plain))[0].is_contiguous()


def test_loader_shuffle_deterministic_per_epoch() -> None:
    x, y = _labelled(100)

    def run(epoch: int, seed: int = 5) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = Loader(x, y, 16, shuffle=True, augment=True, seed=seed)
        loader.set_epoch(epoch)
        return list(loader)

    first, again, other = run(3), run(3), run(4)
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, again, strict=True)
    )
    assert not torch.equal(first[0][1], other[0][1])
    assert not torch.equal(first[0][1], run(3, seed=6)[0][1])
    seen = torch.cat([b[1] for b in first])
    assert sorted(seen.tolist()) == sorted(y.tolist())
    # each label still belongs to its image: shuffle without augmentation keeps pixel (0, 0)
    loader = Loader(x, y, 16, shuffle=True, augment=False, seed=5)
    for xb, yb in loader:
        idx = _unnormalise(xb)[:, 0, 0, 0].long()
        assert torch.equal(idx % 10, yb)


def test_loader_augment_is_pad_crop_flip() -> None:
    x = _images(24, seed=9)
    y = np.zeros(24, np.int64)
    plain = next(iter(Loader(x, y, 24, shuffle=False, augment=False, seed=1)))[0]
    aug = next(iter(Loader(x, y, 24, shuffle=False, augment=True, seed=1)))[0]
    assert aug.shape == plain.shape and aug.dtype == torch.float32
    assert not torch.equal(aug, plain)
    got = _unnormalise(aug)
    padded = torch.nn.functional.pad(torch.from_numpy(x), (4, 4, 4, 4))
    kinds = set()
    for i in range(len(x)):
        matches = []
        for dy in range(9):
            for dx in range(9):
                crop = padded[i, :, dy : dy + 32, dx : dx + 32]
                matches += [
                    f for f in (False, True) if torch.equal(crop.flip(-1) if f else crop, got[i])
                ]
        assert matches, f"image {i} is not a padded crop/flip of its source"
        kinds.add(matches[0])
    assert kinds == {False, True}


def test_loader_cutout_sets_one_clipped_square_per_image_to_the_mean() -> None:
    x = _images(64, seed=3)
    y = np.zeros(64, np.int64)

    def batch(cutout: int) -> torch.Tensor:
        return next(iter(Loader(x, y, 64, shuffle=False, augment=True, seed=2, cutout=cutout)))[0]

    base, cut = batch(0), batch(8)
    # the crop and flip draws come first, so the images are the same outside the square
    hole = (cut == 0).all(dim=1)  # [b, h, w]: every channel at the normalised mean
    assert torch.equal(
        cut[~hole.unsqueeze(1).expand_as(cut)], base[~hole.unsqueeze(1).expand_as(base)]
    )
    sizes = set()
    for i in range(64):
        rows = hole[i].any(dim=1).nonzero().flatten()
        cols = hole[i].any(dim=0).nonzero().flatten()
        assert len(rows) and len(cols), f"image {i} has no square"
        h, w = len(rows), len(cols)
        assert int(hole[i].sum()) == h * w  # one axis-aligned rectangle
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        assert 4 <= h <= 8 and 4 <= w <= 8  # clipped at the border to no less than half
        sizes.add((h, w))
    assert (8, 8) in sizes and len(sizes) > 1
    assert torch.equal(batch(8), cut)  # drawn from the seeded generator
    with pytest.raises(ValueError):
        Loader(x, y, 8, shuffle=False, augment=True, seed=0, cutout=-1)


def test_loader_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        Loader(
            np.zeros((2, 3, 4, 4), np.float32), np.zeros(2), 1, shuffle=False, augment=False, seed=0
        )
    with pytest.raises(ValueError):
        Loader(
            np.zeros((2, 3, 4, 4), np.uint8), np.zeros(3), 1, shuffle=False, augment=False, seed=0
        )


# --------------------------------------------------------------------------- batches-py format


def test_batches_folder_and_tar(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    expected = _write_batches(folder)
    cache = tmp_path / "cache"
    got = load_cifar10(folder, cache_dir=cache)
    _same(got, expected)
    assert got.train_x.shape == (100, 3, 32, 32) and got.train_y.dtype == np.int64
    _same(load_cifar10(tmp_path, cache_dir=cache), expected)  # parent dir is found too

    archive = _tar(folder, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    messages: list[str] = []
    _same(load_cifar10(archive, cache_dir=cache, progress=messages.append), expected)
    assert any("cached" in m for m in messages)
    messages.clear()
    _same(load_cifar10(archive, cache_dir=cache, progress=messages.append), expected)
    assert any("from cache" in m for m in messages)


def test_batches_missing_file_and_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    _write_batches(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing"):
        load_cifar10(folder, cache_dir=tmp_path / "c")
    bad = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2, 3]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3: 4 images but 3 labels"):
        load_cifar10(folder, cache_dir=tmp_path / "c")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_safe_unpickler_refuses_globals(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    blob = pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        D._SafeUnpickler(io.BytesIO(blob)).load()
    folder = tmp_path / "b"
    _write_batches(folder)
    (folder / "data_batch_1").write_bytes(blob)
    with pytest.raises(DataError, match=r"data_batch_1: .*refusing to unpickle global"):
        load_cifar10(folder, cache_dir=tmp_path / "c")
    assert not marker.exists()
    evil_eval = b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1q\x00\x85R."
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        D._SafeUnpickler(io.BytesIO(evil_eval)).load()
    codec = pickle.dumps(b"ab", protocol=2).replace(b"latin1", b"rot_13")
    with pytest.raises(pickle.UnpicklingError, match="rot_13"):
        D._SafeUnpickler(io.BytesIO(codec)).load()


# --------------------------------------------------------------------------- download


def _official_archive(tmp_path: Path, dest: Path) -> tuple[Cifar, str]:
    expected = _write_batches(tmp_path / "src" / "cifar-10-batches-py")
    _tar(tmp_path / "src" / "cifar-10-batches-py", dest, "cifar-10-batches-py")
    return expected, hashlib.md5(dest.read_bytes()).hexdigest()


def test_download_md5_ok(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    expected, md5 = _official_archive(tmp_path, www / "cifar-10-python.tar.gz")
    cache = tmp_path / "cache"
    url = f"{base}/cifar-10-python.tar.gz"
    messages: list[str] = []
    _same(load_cifar10(None, cache_dir=cache, url=url, md5=md5, progress=messages.append), expected)
    assert any("downloading" in m for m in messages)
    assert (cache / "cifar-10-python.tar.gz").read_bytes() == (
        www / "cifar-10-python.tar.gz"
    ).read_bytes()
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]
    (www / "cifar-10-python.tar.gz").unlink()  # second call must not download again
    _same(load_cifar10(None, cache_dir=cache, url=url, md5=md5), expected)


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path, server: tuple[str, Path]) -> None:
    base, www = server
    _official_archive(tmp_path, www / "cifar-10-python.tar.gz")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="MD5 mismatch"):
        load_cifar10(cache_dir=cache, url=f"{base}/cifar-10-python.tar.gz", md5="0" * 32)
    assert list(cache.iterdir()) == []


def test_download_offline_and_404(tmp_path: Path, server: tuple[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    pattern = r"^could not download CIFAR-10 \(.+\); pass --data PATH to a local copy$"
    with pytest.raises(DataError, match=pattern):
        load_cifar10(cache_dir=cache, url=f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    base, _ = server
    with pytest.raises(DataError, match=pattern):
        load_cifar10(cache_dir=cache, url=f"{base}/missing.tar.gz")
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------- ImageFolder


def test_image_folder_directory_and_prefixed_tar(tmp_path: Path) -> None:
    classes = ("cat", "zebra", "ant")
    expected = _write_folder(tmp_path / "ds", classes, {"train": 3, "test": 2})
    cache = tmp_path / "cache"
    got = load_cifar10(tmp_path / "ds", cache_dir=cache)
    assert got.classes == ("ant", "cat", "zebra")  # non-CIFAR names: sorted
    order = {c: i for i, c in enumerate(got.classes)}
    assert np.bincount(got.train_y).tolist() == [3, 3, 3]
    assert got.train_x.shape == (9, 3, 32, 32) and got.test_x.shape == (6, 3, 32, 32)
    # rebuild the expected order: classes sorted, files in name order
    for split, gx, gy in (("train", got.train_x, got.train_y), ("test", got.test_x, got.test_y)):
        ex, ey = expected[split]
        remap = np.array([order[c] for c in classes])[ey]
        perm = np.argsort(remap, kind="stable")
        np.testing.assert_array_equal(gx, ex[perm])
        np.testing.assert_array_equal(gy, remap[perm])
    # one top-level folder inside a tar, and a top-level dir wrapping the tree
    wrapped = _tar(tmp_path / "ds", tmp_path / "wrapped.tgz", "cifar10")
    _same(load_cifar10(wrapped, cache_dir=cache), got)
    _same(load_cifar10(_tar(tmp_path / "ds", tmp_path / "flat.tar", "."), cache_dir=cache), got)
    (tmp_path / "outer").mkdir()
    (tmp_path / "ds").rename(tmp_path / "outer" / "inner")
    _same(load_cifar10(tmp_path / "outer", cache_dir=cache), got)


def test_image_folder_cifar_order_and_grayscale(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write_folder(root, CIFAR10_CLASSES, {"train": 1, "test": 1})
    Image.new("L", (32, 32), 77).save(root / "train" / "cat" / "0009.jpg")
    (root / "train" / "cat" / "notes.txt").write_text("ignored")
    got = load_cifar10(root, cache_dir=tmp_path / "cache")
    assert got.classes == CIFAR10_CLASSES
    assert np.bincount(got.train_y).tolist() == [1, 1, 1, 2, 1, 1, 1, 1, 1, 1]
    gray = got.train_x[np.flatnonzero(got.train_y == 3)[-1]]
    assert gray.shape == (3, 32, 32) and abs(int(gray.mean()) - 77) <= 2


def test_image_folder_errors(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    root = tmp_path / "ds"
    _write_folder(root, ("a", "b"), {"train": 2, "test": 1})
    (root / "test" / "b" / "0000.png").unlink()
    (root / "test" / "b").rmdir()
    with pytest.raises(DataError, match=r"ds: missing class folder test/b"):
        load_cifar10(root, cache_dir=cache)
    with pytest.raises(DataError, match="no such file"):
        load_cifar10(tmp_path / "nope", cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: unknown layout"):
        load_cifar10(tmp_path / "empty", cache_dir=cache)
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match=r"junk\.bin: not a tar"):
        load_cifar10(tmp_path / "junk.bin", cache_dir=cache)
    broken = tmp_path / "broken"
    _write_folder(broken, ("a",), {"train": 1, "test": 1})
    (broken / "train" / "a" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot decode image train/a/0000.png"):
        load_cifar10(broken, cache_dir=cache)


def test_wrong_image_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "small"
    expected = _write_folder(root, ("a", "b"), {"train": 2, "test": 2}, size=(16, 16))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"small: train/a/0000.png is 16x16 pixels, expected 32x32"):
        load_cifar10(root, cache_dir=cache)
    got = load_cifar10(root, cache_dir=cache, image_size=(16, 16))
    np.testing.assert_array_equal(got.train_x, expected["train"][0])
    # the same error surfaces from the worker pool
    monkeypatch.setattr(D, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(D, "_CHUNK", 3)
    with pytest.raises(DataError, match="is 16x16 pixels"):
        load_cifar10(root, cache_dir=tmp_path / "cache2")
    _same(load_cifar10(root, cache_dir=tmp_path / "cache2", image_size=(16, 16)), got)


def test_truncated_archive(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write_folder(root, ("a", "b"), {"train": 20, "test": 5})
    archive = _tar(root, tmp_path / "ds.tar.gz", ".")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) * 2 // 3])
    with pytest.raises(DataError, match=r"ds.tar.gz: corrupt or truncated archive"):
        load_cifar10(archive, cache_dir=tmp_path / "cache")
    archive.write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(DataError, match=r"ds.tar.gz: corrupt or truncated archive"):
        load_cifar10(archive, cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------- cache


def test_cache_keyed_by_mtime_and_corrupt_cache_rebuilt(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    expected = _write_batches(folder)
    archive = _tar(folder, tmp_path / "c.tar.gz", "cifar-10-batches-py")
    cache = tmp_path / "cache"
    load_cifar10(archive, cache_dir=cache)
    (entry,) = cache.glob("cifar10-*.npz")
    with np.load(entry, allow_pickle=False) as z:  # loadable without pickle
        assert z["train_x"].shape == (100, 3, 32, 32)
    entry.write_bytes(b"garbage")
    _same(load_cifar10(archive, cache_dir=cache), expected)
    assert entry.stat().st_size > 1000
    os.utime(archive, ns=(1, 1))
    _same(load_cifar10(archive, cache_dir=cache), expected)
    assert len(list(cache.glob("cifar10-*.npz"))) == 2


def test_default_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PARNASC_CACHE", str(tmp_path / "x"))
    assert D.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("PARNASC_CACHE")
    assert D.default_cache_dir() == Path.home() / ".cache" / "parnasc"


# --------------------------------------------------------------------------- load_images


def test_load_images(tmp_path: Path) -> None:
    rgb = _images(1, seed=3, size=(40, 20))[0].transpose(1, 2, 0)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "b.jpg", quality=95)
    Image.new("L", (8, 8), 200).save(tmp_path / "c.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 255)).save(tmp_path / "d.png")
    paths = [tmp_path / n for n in ("a.png", "b.jpg", "c.png", "d.png")]
    out = load_images(paths, (32, 32))
    assert out.shape == (4, 3, 32, 32) and out.dtype == np.uint8
    assert (out[2] == 200).all()
    assert out[3, :, 5, 5].tolist() == [10, 20, 30]
    same = load_images([tmp_path / "a.png"], (40, 20))
    np.testing.assert_array_equal(same[0], rgb.transpose(2, 0, 1))
    assert load_images([], (32, 32)).shape == (0, 3, 32, 32)
    with pytest.raises(DataError, match=r"missing\.png"):
        load_images([tmp_path / "missing.png"], (32, 32))
