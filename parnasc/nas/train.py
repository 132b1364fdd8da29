"""Training utilities shared by search and retraining, and `retrain` itself (the paper's
second training: the concrete network, starting from the weights reached in the search)."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from parnasc import __version__
from parnasc.cpus import allowed_cpus
from parnasc.errors import UserError
from parnasc.files import atomic_path
from parnasc.files import write_text as atomic_text
from parnasc.lang.spec import OptimSpec


def set_threads(n: int | None) -> int:
    """Intra-op threads for training (default: all cores of this process's affinity)."""
    n = n or len(allowed_cpus())
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


def load_checkpoint(path: Path, keys: tuple[str, ...] = ("net",)) -> dict[str, Any]:
    """Load a checkpoint safely (tensors and plain containers only); it must hold `keys`."""
    try:
        ck: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises several types for corrupt files
        msg = _one_line(exc)
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
        raise UserError(f"{path}: does not match {what}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """The most telling sentence of an exception message (torch's span lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    text = lines[0].split(". ")[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


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
            raise UserError(f"{self.path}: cannot read ({_one_line(exc)})") from None
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


RECORD_FORMAT = 2  # layout of settings.json / train_settings.json; bump when it changes
R = TypeVar("R", bound=BaseModel)


class DataRecord(BaseModel):
    """Where a run's data came from and which of it it used, so a resume uses the same."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: str | None  # absolute path; None: the official archive downloaded into the cache
    train_images: int | None = Field(ge=1)
    test_images: int | None = Field(ge=1)
    fingerprint: str  # sha256 of the images and labels used (see `fingerprint`)


def fingerprint(*arrays: np.ndarray) -> str:
    """sha256 of arrays' shapes, dtypes and bytes: the identity of the data a run used."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def read_record(path: Path, model: type[R], what: str) -> R:
    """Read and validate a run record (`settings.json`, `train_settings.json`): anything
    missing, truncated, malformed or from another format is a one-line UserError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path.parent}: not a {what} directory (no {path.name})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({_one_line(exc)})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); the file is damaged") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object, found a {type(raw).__name__}")
    fmt = raw.get("format")
    if fmt != RECORD_FORMAT:
        raise UserError(
            f"{path}: written by another version of parnasc (format {fmt!r}, this one reads "
            f"{RECORD_FORMAT}); start a new run"
        )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(map(str, e["loc"])) or "(top level)"
        raise UserError(f"{path}: {loc}: {e['msg']}") from None


class TrainRecord(BaseModel):
    """`train_settings.json`: everything that determines a retraining."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: int
    parnasc: str
    run_id: str  # new for every training started without --resume
    spec: str  # absolute path of the concrete spec
    spec_hash: str
    init: str  # "scratch", or the absolute path of the searched weights it started from
    epochs: int = Field(ge=0)
    data: DataRecord
    threads: int = Field(ge=1)  # the default of a resume (thread counts change float sums)

    def identity(self) -> dict[str, Any]:
        """Which training (and how long) a `model.pt` is the result of: a model left by an
        earlier training in the same directory does not pass for this one."""
        return self.model_dump(include={"run_id", "spec_hash", "init", "epochs"})


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


TRAIN_OUTPUTS = ("train_settings.json", "train_checkpoint.pt", "train_metrics.jsonl", "model.pt")


def read_train_checkpoint(out_dir: Path, epochs: int) -> dict[str, Any]:
    """`out_dir/train_checkpoint.pt`, checked: a damaged or foreign one is a UserError."""
    ck_path = out_dir / "train_checkpoint.pt"
    ck = load_checkpoint(ck_path, ("epoch", "net", "opt"))
    epoch = ck["epoch"]
    if not isinstance(epoch, int) or not 1 <= epoch <= epochs:
        raise UserError(f"{ck_path}: epoch {epoch!r} is outside the training's {epochs}")
    return ck


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
