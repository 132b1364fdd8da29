"""Training utilities shared by search and retraining, and `retrain` itself (the paper's
second training: the concrete network, starting from the weights reached in the search)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parnasc import __version__
from parnasc.errors import UserError
from parnasc.files import atomic_path
from parnasc.files import write_text as atomic_text
from parnasc.spec import OptimSpec


def set_threads(n: int | None) -> int:
    """Intra-op threads for training (default: all cores of this process's affinity)."""
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def make_optimizer(params: list[nn.Parameter], o: OptimSpec) -> torch.optim.Optimizer:
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.wd, nesterov=bool(o.nesterov)
        )
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=(0.5, 0.999), weight_decay=o.wd)


def cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    """Cosine decay from `base` to 0 over `total` steps (set before each step)."""
    lr = 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(1, total)))
    for g in opt.param_groups:
        g["lr"] = lr


@torch.no_grad()
def evaluate(net: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy in [0, 1]."""
    net.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((net(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(1, total)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only)."""
    try:
        ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise UserError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
    return ck


class JsonLog:
    """An append-only JSON-lines log that can be cut back to an epoch on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, epoch: int) -> None:
        if not self.path.exists():
            return
        keep = [
            ln
            for ln in self.path.read_text().splitlines()
            if ln and json.loads(ln)["epoch"] <= epoch
        ]
        atomic_text(self.path, "".join(ln + "\n" for ln in keep))

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def epoch_seed(seed: int, epoch: int) -> None:
    """Seed torch's global RNG per epoch, so a resumed run draws what an uninterrupted one did."""
    torch.manual_seed(seed * 100_003 + epoch)


@dataclass
class Meter:
    n: int = 0
    correct: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def add(self, logits: torch.Tensor, y: torch.Tensor, parts: dict[str, float]) -> None:
        b = len(y)
        self.n += b
        self.correct += int((logits.argmax(1) == y).sum())
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * b

    def means(self) -> dict[str, float]:
        out = {k: v / max(1, self.n) for k, v in self.sums.items()}
        out["train_acc"] = self.correct / max(1, self.n)
        out["images_per_s"] = self.n / max(1e-9, time.perf_counter() - self.start)
        return out


Report = Callable[[str, int, int, dict[str, Any]], None]  # (phase, epoch, batch, values)


def retrain(
    net: nn.Module,
    train: Any,
    test: Any,
    optim: OptimSpec,
    epochs: int,
    out_dir: Path,
    seed: int,
    settings: dict[str, Any],
    report: Report | None = None,
    resume: bool = False,
) -> float:
    """Train a concrete network for `epochs`, checkpointing every epoch; returns test accuracy."""
    ck_path = out_dir / "train_checkpoint.pt"
    log = JsonLog(out_dir / "train_metrics.jsonl")
    opt = make_optimizer(list(net.parameters()), optim)
    start = 0
    if resume and ck_path.exists():
        ck = load_checkpoint(ck_path)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        start = int(ck["epoch"])
        log.truncate_after(start)
    elif not resume:
        log.path.unlink(missing_ok=True)
    total = epochs * len(train)
    for epoch in range(start + 1, epochs + 1):
        epoch_seed(seed, epoch)
        train.set_epoch(epoch)
        net.train()
        meter = Meter()
        for i, (x, y) in enumerate(train):
            cosine_lr(opt, optim.lr, (epoch - 1) * len(train) + i, total)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            meter.add(logits, y, {"ce": float(loss)})
            if report:
                report("train", epoch, i + 1, meter.means())
        row = {"epoch": epoch, **meter.means(), "test_acc": evaluate(net, iter(test))}
        log.append(row)
        atomic_save({"epoch": epoch, "net": net.state_dict(), "opt": opt.state_dict()}, ck_path)
        if report:
            report("train-end", epoch, len(train), row)
    acc = evaluate(net, iter(test))
    atomic_save(
        {"net": net.state_dict(), "meta": {"parnasc": __version__, **settings, "test_acc": acc}},
        out_dir / "model.pt",
    )
    return acc
