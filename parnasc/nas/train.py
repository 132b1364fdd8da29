"""Training utilities shared by search and retraining, and `retrain` itself (the paper's
second training: the concrete network, starting from the weights reached in the search)."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
from parnasc.nas.device import module_device, on_cpu, resolve_device
from parnasc.nas.dist import SOLO, Ranks
from parnasc.nas.lower import Net, lower
from parnasc.nas.precision import forward
from parnasc.nas.recipes import TRAIN_RECIPES, Recipe
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


def make_optimizer(params: Iterable[Any], o: OptimSpec) -> torch.optim.Optimizer:
    """The optimizer `o` over `params` (parameters, or param groups that may set their own
    `weight_decay`)."""
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, weight_decay=o.wd, nesterov=bool(o.nesterov)
        )
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=o.lr, betas=(0.5, 0.999), weight_decay=o.wd)


def param_groups(net: nn.Module, wd: float, decay_norms: bool) -> list[dict[str, Any]]:
    """The weights of `net` in optimizer groups: with `decay_norms` False, batch-norm and bias
    parameters (one-dimensional ones) are kept out of weight decay."""
    params = [p for p in net.parameters() if p.requires_grad]
    if decay_norms:
        return [{"params": params, "weight_decay": wd}]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def set_lr(opt: torch.optim.Optimizer, schedule: str, base: float, step: int, total: int) -> None:
    """Set the learning rate before step `step` of `total`: `constant` keeps `base`, `cosine`
    decays from `base` to 0."""
    lr = base
    if schedule == "cosine":
        lr = 0.5 * base * (1 + math.cos(math.pi * min(step, total) / max(1, total)))
    for g in opt.param_groups:
        g["lr"] = lr


class WeightAverage:
    """An exponential moving average of a network's parameters and buffers (batch-norm
    statistics included), evaluated and kept instead of the last weights. The decay ramps up
    as (1 + t) / (10 + t) over the first steps, so early weights fade fast."""

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.net = copy.deepcopy(net)
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.steps += 1
        w = 1 - min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(list(self.net.parameters()), list(net.parameters()), w)
        for mine, theirs in zip(self.net.buffers(), net.buffers(), strict=True):
            if mine.is_floating_point():
                mine.lerp_(theirs, w)
            else:
                mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.steps = int(state["steps"])


@torch.no_grad()
def evaluate(
    net: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    flip: bool = False,
    ranks: Ranks = SOLO,
) -> float:
    """Top-1 accuracy in [0, 1], the batches moved to the network's device; `flip` averages
    the logits of each image and its mirror image (test-time augmentation). With `ranks`,
    `batches` are this rank's shares and the counts are summed over the ranks."""
    net.eval()
    device = module_device(net)
    correct = total = 0
    for x, y in batches:
        if not len(y):  # a share of a batch smaller than the ranks
            continue
        x, y = to_device(x, y, device)
        logits = net(x)
        if flip:
            logits = logits + net(x.flip(3))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    correct, total = (int(v) for v in ranks.sum([correct, total]))
    return correct / max(1, total)


def to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on `device` (the same tensors where they are there already)."""
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint.
    Tensors are saved from the CPU (`device.on_cpu`), so the file loads on any machine."""
    with atomic_path(path) as tmp:
        torch.save(on_cpu(obj), tmp)


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

    def merged(self, ranks: Ranks) -> Meter:
        """This meter with the counts and sums of every rank (its own start time)."""
        keys = sorted(self.sums)
        n, correct, *sums = ranks.sum([self.n, self.correct, *(self.sums[k] for k in keys)])
        return Meter(int(n), int(correct), dict(zip(keys, sums, strict=True)), self.start)

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


def trained_accuracy(out_dir: Path, record: TrainRecord) -> Accuracy | None:
    """The test accuracy of `out_dir/model.pt` if it is the result of the recorded training."""
    model = out_dir / "model.pt"
    if not model.exists():
        return None
    meta = load_checkpoint(model, ("net", "meta"))["meta"]
    if not isinstance(meta, dict) or meta.get("training") != record.identity():
        return None
    acc, tta = meta.get("test_acc"), meta.get("test_acc_tta")
    if not isinstance(acc, int | float):
        return None
    return Accuracy(float(acc), float(tta) if isinstance(tta, int | float) else None)


@dataclass(frozen=True)
class Accuracy:
    """Test accuracy of a trained network, plain and with flip test-time augmentation."""

    plain: float
    flip: float | None = None


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
    recipe: Recipe = TRAIN_RECIPES["default"],
    device: torch.device | str | None = None,
    ranks: Ranks = SOLO,
    precision: str = "fp32",
) -> Accuracy:
    """Train a concrete network for `epochs` with `recipe` (its optimizer when it names one,
    else `optim`), checkpointing every epoch; returns the test accuracy of the network kept
    (the weight average when the recipe keeps one).

    `resume` continues from `train_checkpoint.pt` when there is one. A new training first
    removes the old checkpoint and log, then writes `record` (`train_settings.json`); the
    finished model (`model.pt`, written last) carries the record's identity. `net` is moved
    to `device` (default: the CPU) with its optimizer state, weight average and batches;
    the files hold CPU tensors. With `ranks` (data-parallel, `parnasc.nas.dist`) the loaders
    yield this rank's shares, gradients and metrics are reduced over the ranks, and rank 0
    alone writes files. `precision` (`fp32` or `bf16`, `parnasc.nas.precision`) is the
    arithmetic of the training steps; the evaluations are in float32."""
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    net.to(dev)
    ck_path = out_dir / "train_checkpoint.pt"
    log = JsonLog(out_dir / "train_metrics.jsonl")
    main = ranks.main
    if main:
        remove_temporaries(out_dir, TRAIN_OUTPUTS)
    if recipe.weights is not None:
        optim = OptimSpec.model_validate(recipe.weights)
    opt = make_optimizer(param_groups(net, optim.wd, recipe.decay_norms), optim)
    average = WeightAverage(net, recipe.ema) if recipe.ema is not None else None
    kept = net if average is None else average.net
    start = 0
    if resume and ck_path.exists():
        ck = read_train_checkpoint(out_dir, epochs)
        load_state(net, ck["net"], ck_path, "the network of the spec")
        load_state(opt, ck["opt"], ck_path, "the optimizer of the spec")
        if average is not None:
            load_state(average, ck.get("ema"), ck_path, "the weight average of the recipe")
        start = ck["epoch"]
        if main:
            log.truncate_after(start)
    elif main:
        ck_path.unlink(missing_ok=True)
        log.path.unlink(missing_ok=True)
    ranks.broadcast_module(net)  # after every rank has read what it needs: rank 0 writes next
    if average is not None:
        ranks.broadcast_module(average.net)
    if record is not None and main:
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
            set_lr(opt, recipe.schedule, optim.lr, (epoch - 1) * len(train) + i, total)
            x, y = to_device(x, y, dev)
            logits = forward(net, x, precision)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            ranks.average_gradients(net.parameters(), len(y))
            opt.step()
            if average is not None:
                average.update(net)
            meter.add(logits, y, {"ce": loss.detach().item()})
            if report:
                report("train", epoch, i + 1, ranks.progress(meter.means()))
        nets = [net] if average is None else [net, average.net]
        for n in nets:
            ranks.average_buffers(n)
        ranks.check_same(f"the network after epoch {epoch}", *nets)
        test_acc = evaluate(kept, iter(test), ranks=ranks)
        row = {"epoch": epoch, **ranks.row(meter), "test_acc": test_acc}
        state = {"epoch": epoch, "net": net.state_dict(), "opt": opt.state_dict()}
        if average is not None:
            state["ema"] = average.state_dict()
        if main:
            log.append(row)
            atomic_save(state, ck_path)
        if report:
            report("train-end", epoch, len(train), row)
    plain = evaluate(kept, iter(test), ranks=ranks)
    acc = Accuracy(plain, evaluate(kept, iter(test), flip=True, ranks=ranks))
    meta = {"parnasc": __version__, **settings, "test_acc": acc.plain, "test_acc_tta": acc.flip}
    if average is not None:
        meta["test_acc_last_weights"] = evaluate(net, iter(test), ranks=ranks)
    if record is not None:
        meta["training"] = record.identity()
    if main:
        atomic_save({"net": kept.state_dict(), "meta": meta}, out_dir / "model.pt")
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
