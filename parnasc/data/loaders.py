"""The data of a run: CIFAR-10 from a source (subset when asked), checked against the spec's
input, and the loaders of its training, held-out and test splits (search) or of all training
images and the test images (retraining)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from parnasc.data.cifar import Cifar, Loader, load_cifar10, split_train, subset
from parnasc.errors import OptionError

CIFAR_INPUT = (3, 32, 32)
TEST_BATCH = 500


def load_data(
    source: Path | None,
    train_images: int | None,
    test_images: int | None,
    seed: int,
    log: Callable[[str], None] | None = None,
) -> Cifar:
    """CIFAR-10 from `source` (None: the official archive, downloaded into the cache), as a
    class-balanced subset of `train_images` / `test_images` when given (None: a whole split);
    `log` receives the loader's one-line messages."""
    cifar = load_cifar10(source, progress=log)
    if train_images is not None or test_images is not None:
        cifar = subset(cifar, train_images, test_images, seed)
    return cifar


def check_input(shape: tuple[int, int, int]) -> None:
    """Refuse a spec whose input is not CIFAR-10's 3x32x32."""
    if tuple(shape) != CIFAR_INPUT:
        raise OptionError(
            f"the data is 3x32x32 CIFAR-10 but the spec's input is {'x'.join(map(str, shape))}"
        )


@dataclass(frozen=True)
class Loaders:
    """Batches of a run: `train` (shuffled, augmented, whole batches), `val` (the held-out
    `val_fraction` of the training images, shuffled) and `test` (in order)."""

    train: Loader
    val: Loader
    test: Loader


def make_loaders(
    cifar: Cifar,
    batch: int,
    val_fraction: float,
    seed: int,
    augment: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> Loaders:
    """Split the training images (stratified, by `seed`) and build the three loaders;
    `augment` crops and flips the training batches; `shard` (rank, world): every loader
    yields that rank's share of each batch (`Loader`)."""
    (xt, yt), (xv, yv) = split_train(cifar.train_x, cifar.train_y, val_fraction, seed)
    tx, ty = cifar.test_x, cifar.test_y
    return Loaders(
        train=Loader(
            xt, yt, batch, shuffle=True, augment=augment, seed=seed, drop_last=True, shard=shard
        ),
        val=Loader(xv, yv, batch, shuffle=True, augment=False, seed=seed + 1, shard=shard),
        test=Loader(tx, ty, TEST_BATCH, shuffle=False, augment=False, seed=0, shard=shard),
    )


def retrain_loaders(
    cifar: Cifar,
    batch: int,
    seed: int,
    augment: bool = True,
    cutout: int = 0,
    shard: tuple[int, int] = (0, 1),
) -> tuple[Loader, Loader]:
    """Batches for retraining a derived network: every training image (shuffled, whole
    batches, cropped and flipped with `augment`, plus a `cutout` square when > 0; the held-out
    split belongs to the search alone) and the test images; `shard` (rank, world): this
    rank's share of each batch (`Loader`)."""
    train = Loader(
        cifar.train_x,
        cifar.train_y,
        batch,
        shuffle=True,
        augment=augment,
        seed=seed,
        drop_last=True,
        cutout=cutout,
        shard=shard,
    )
    tx, ty = cifar.test_x, cifar.test_y
    test = Loader(tx, ty, TEST_BATCH, shuffle=False, augment=False, seed=0, shard=shard)
    return train, test


__all__ = ["Loaders", "check_input", "load_data", "make_loaders", "retrain_loaders"]
