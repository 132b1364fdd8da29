"""Training utilities shared by search and retraining, and `retrain` itself (the paper's
second training: the concrete network, starting from the weights reached in the search)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parnasc.cpus import allowed_cpus
from parnasc.errors import OptionError, UserError
from parnasc.files import atomic_path
from parnasc.files import write_text as atomic_text
from parnasc.ir.frontend import compile_file
from parnasc.lang.spec import OptimSpec, Spec
from parnasc.nas.lower import Net, lower
from parnasc.nas.runs import TrainRecord, one_line
from parnasc.version import __version__


@contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """torch's intra-op threads for the block (default: all cores of this process's
    affinity); the process's count is restored after."""
    before = torch.get_num_threads()
    n = n or len(allowed_cpus())
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


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


def load_checkpoint(path: Path, keys: tuple[str, ...] = ("net",)) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only); it must hold `keys`."""
    try:
        ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises several types for corrupt files
        msg = one_line(exc)
        if msg.startswith("Weights only load failed"):  # torch's advice does not apply here
            msg = "not a file of tensors and plain containers"
        raise UserError(
            f"{path}: cannot load checkpoint, damaged or not a parnasc checkpoint "
            f"({type(exc).__name__}: {msg})"
        ) from None
    if not isinstance(ck, dict):
        raise UserError(f"{path}: not a parnasc checkpoint (a {type(ck).__name__}, not a dict)")
    missing = [k for k in keys if k not in ck]
    if missing:
        raise UserError(f"{path}: not a parnasc checkpoint (no {', '.join(map(repr, missing))})")
    return ck


def load_state(target: Any, state: Any, path: Path, what: str) -> None:
    """`target.load_state_dict(state)` (a module or an optimizer), or a one-line UserError
    naming `path` when the saved state does not fit `what`."""
    try:
        target.load_state_dict(state)
    except Exception as exc:  # RuntimeError, KeyError, ValueError, TypeError from torch
        raise UserError(f"{path}: does not match {what}: {one_line(exc)}") from None


def remove_temporaries(directory: Path, names: tuple[str, ...]) -> None:
    """Remove the temporary files a `kill -9` during an atomic write of `names` left behind
    (`files.atomic_path` writes `.NAME.<random>.tmp<suffix>` beside NAME)."""
    for name in names:
        for f in directory.glob(f".{name}.*.tmp*"):
            f.unlink(missing_ok=True)


class JsonLog:
    """A JSON-lines log, one row per epoch, that can be cut back to an epoch on resume.

    Every append rewrites the file atomically, so a kill never leaves half a line; a trailing
    partial line (from an older parnasc, or a full disk) is dropped when the log is read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[dict[str, Any]]:
        """The rows; a damaged line other than the last is a UserError naming the file."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.path}: cannot read ({one_line(exc)})") from None
        out: list[dict[str, Any]] = []
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            try:
                row = json.loads(ln)
                if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                    raise ValueError("not a row with an integer 'epoch'")
            except ValueError:
                if i == len(lines) - 1:  # cut short mid-write: drop it
                    break
                raise UserError(f"{self.path}:{i + 1}: damaged log line") from None
            out.append(row)
        return out

    def truncate_after(self, epoch: int) -> None:
        """Keep the rows of epochs <= `epoch` (the checkpoint's) and drop the rest."""
        if self.path.exists():
            self._write([r for r in self.rows() if r["epoch"] <= epoch])

    def append(self, row: dict[str, Any]) -> None:
        self._write([*self.rows(), row])

    def _write(self, rows: list[dict[str, Any]]) -> None:
        atomic_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


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


# Progress of a run: (phase, epoch, batch, values). Phases: "start" (the epoch it resumes
# after, batch 0, values `epochs` and `batches` per epoch; a search adds `spec`, its absolute
# path; once, before the first batch), "warmup" / "search" / "train" (after each
# batch: running means), "epoch-end" / "train-end" (after each epoch: that epoch's row).
Report = Callable[[str, int, int, dict[str, Any]], None]


TRAIN_OUTPUTS = ("train_settings.json", "train_checkpoint.pt", "train_metrics.jsonl", "model.pt")


def read_train_checkpoint(out_dir: Path, epochs: int) -> dict[str, Any]:
    """`out_dir/train_checkpoint.pt`, checked: a damaged or foreign one is a UserError."""
    ck_path = out_dir / "train_checkpoint.pt"
    ck = load_checkpoint(ck_path, ("epoch", "net", "opt"))
    epoch = ck["epoch"]
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        raise UserError(f"{ck_path}: epoch {epoch!r} is outside the training's {epochs}")
    return ck


def trained_accuracy(out_dir: Path, record: TrainRecord) -> float | None:
    """The test accuracy of `out_dir/model.pt` if it is the result of the recorded training."""
    model = out_dir / "model.pt"
    if not model.exists():
        return None
    meta = load_checkpoint(model, ("net", "meta"))["meta"]
    if not isinstance(meta, dict) or meta.get("training") != record.identity():
        return None
    acc = meta.get("test_acc")
    return float(acc) if isinstance(acc, int | float) else None


def retrain(
    net: nn.Module,
    train: Any,
    test: Any,
    optim: OptimSpec,
    epochs: int,
    out_dir: Path,
    seed: int,
    settings: Mapping[str, Any],
    report: Report | None = None,
    resume: bool = False,
    record: TrainRecord | None = None,
) -> float:
    """Train a concrete network for `epochs`, checkpointing every epoch; returns test accuracy.

    `resume` continues from `train_checkpoint.pt` when there is one. A new training first
    removes the old checkpoint and log, then writes `record` (`train_settings.json`); the
    finished model (`model.pt`, written last) carries the record's identity."""
    ck_path = out_dir / "train_checkpoint.pt"
    log = JsonLog(out_dir / "train_metrics.jsonl")
    remove_temporaries(out_dir, TRAIN_OUTPUTS)
    opt = make_optimizer(list(net.parameters()), optim)
    start = 0
    if resume and ck_path.exists():
        ck = read_train_checkpoint(out_dir, epochs)
        load_state(net, ck["net"], ck_path, "the network of the spec")
        load_state(opt, ck["opt"], ck_path, "the optimizer of the spec")
        start = ck["epoch"]
        log.truncate_after(start)
    else:
        ck_path.unlink(missing_ok=True)
        log.path.unlink(missing_ok=True)
    if record is not None:
        atomic_text(out_dir / "train_settings.json", record.model_dump_json(indent=1) + "\n")
    total = epochs * len(train)
    if report:
        report("start", start, 0, {"epochs": epochs, "batches": len(train)})
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
            meter.add(logits, y, {"ce": loss.detach().item()})
            if report:
                report("train", epoch, i + 1, meter.means())
        row = {"epoch": epoch, **meter.means(), "test_acc": evaluate(net, iter(test))}
        log.append(row)
        atomic_save({"epoch": epoch, "net": net.state_dict(), "opt": opt.state_dict()}, ck_path)
        if report:
            report("train-end", epoch, len(train), row)
    acc = evaluate(net, iter(test))
    meta = {"parnasc": __version__, **settings, "test_acc": acc}
    if record is not None:
        meta["training"] = record.identity()
    atomic_save({"net": net.state_dict(), "meta": meta}, out_dir / "model.pt")
    return acc


def load_concrete(spec: Path, weights: Path | None) -> tuple[Spec, Net]:
    """Compile a concrete spec, lower it and load `weights` (None: its initial weights, seeded
    by the spec); the network is in eval mode. A `model.pt` retrained from another version of
    the spec, or weights that do not fit it, are one-line UserErrors."""
    s, ir = compile_file(spec)
    if not s.concrete:
        raise OptionError(f"{spec}: not a concrete spec; search it first ('parnasc search {spec}')")
    torch.manual_seed(s.search.seed)
    net = lower(ir)
    if weights is not None:
        ck = load_checkpoint(weights)
        meta = ck.get("meta")
        if weights.name == "model.pt" and isinstance(meta, dict):
            trained_for = meta.get("spec_hash")
            if trained_for is not None and trained_for != s.spec_hash:
                raise UserError(
                    f"{weights}: trained from another version of {spec} (edited or re-derived "
                    f"since); retrain it with 'parnasc train {spec}'"
                )
        load_state(net, ck["net"], weights, f"the network of {spec} (edited since it was saved?)")
    return s, net.eval()
