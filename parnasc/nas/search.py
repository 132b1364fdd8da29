"""The resource-aware search: train the supernet's weights and architecture parameters with the
multi-part loss (equation 12), then prune to a concrete architecture.

Schedule: `warmup` epochs of weights only, then weights and architecture together. In the
default `joint` mode both step on the same training batch (the paper); `alternate` mode takes
first-order DARTS steps for the architecture on the held-out split instead.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from parnasc import __version__
from parnasc.errors import UserError
from parnasc.ir.graph import IR
from parnasc.ir.passes.prune import prune
from parnasc.lang.spec import OptimSpec, SearchSpec, Spec
from parnasc.nas.loss import CostModel, flops_costs, total_loss
from parnasc.nas.lower import Net, lower, transfer_weights
from parnasc.nas.train import (
    RECORD_FORMAT,
    DataRecord,
    JsonLog,
    Meter,
    Report,
    atomic_save,
    atomic_text,
    cosine_lr,
    epoch_seed,
    evaluate,
    load_checkpoint,
    load_state,
    make_optimizer,
    remove_temporaries,
)

SEARCH_OUTPUTS = (
    "settings.json",
    "checkpoint.pt",
    "metrics.jsonl",
    "arch.jsonl",
    "searched.pt",
    "supernet.pt",
    "derived.pnas",
    "result.json",
)


@dataclass(frozen=True)
class Settings:
    """Everything that determines a search run (recorded in every output)."""

    alpha: float
    beta: float
    cost: str
    epochs: int
    warmup: int
    batch: int
    seed: int
    mode: str
    val_fraction: float
    cores: int
    weights: dict[str, Any]
    arch: dict[str, Any]
    n_train: int | None = None
    recipe: str = "default"

    @classmethod
    def from_spec(cls, s: SearchSpec, cores: int, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "alpha": s.alpha,
            "beta": s.beta,
            "cost": s.cost,
            "epochs": s.epochs,
            "warmup": s.warmup,
            "batch": s.batch,
            "seed": s.seed,
            "mode": s.mode,
            "val_fraction": s.val_fraction,
            "cores": cores,
            "weights": s.weights.model_dump(),
            "arch": s.arch.model_dump(),
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


class _SettingsRecord(BaseModel):
    """`Settings` as recorded in settings.json, with the ranges of the spec's search section."""

    model_config = ConfigDict(extra="forbid", strict=True)

    alpha: float = Field(ge=0)
    beta: float = Field(ge=0)
    cost: Literal["flops", "latency"]
    epochs: int = Field(ge=1)
    warmup: int = Field(ge=0)
    batch: int = Field(ge=1)
    seed: int = Field(ge=0)
    mode: Literal["joint", "alternate"]
    val_fraction: float = Field(gt=0, lt=1)
    cores: int = Field(ge=1)
    weights: OptimSpec
    arch: OptimSpec
    n_train: int | None = Field(ge=20)
    recipe: Literal["default", "paper"]


class RunRecord(BaseModel):
    """`settings.json`: everything that determines a search run, read back by `--resume`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: int
    parnasc: str
    spec: str  # absolute path of the supernet spec
    spec_file: str  # the spec as named when the run began (derived.pnas's header names it)
    spec_hash: str
    settings: _SettingsRecord
    data: DataRecord | None  # None: a run made through the API with its own loaders
    threads: int = Field(ge=1)  # the default of a resume (thread counts change float sums)

    def run_settings(self) -> Settings:
        return Settings(**self.settings.model_dump())


assert set(_SettingsRecord.model_fields) == {f.name for f in fields(Settings)}


def is_complete(run_dir: Path) -> bool:
    """Whether the search in `run_dir` finished: result.json is written last, after every
    derived output, and removed before a resumed or extended search trains again."""
    return (run_dir / "result.json").is_file()


PAPER_RECIPE = {
    "weights": {"name": "sgd", "lr": 1e-4, "momentum": 0.0, "wd": 0.0, "nesterov": 0},
    "arch": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "wd": 0.0, "nesterov": 0},
    "warmup": 0,
    "mode": "joint",
}


def memory_per_core(ir: IR) -> list[int]:
    """Bytes each core needs for a concrete IR: float32 parameters of what it runs plus its
    peak activations (input + output of its largest op). Path k runs on core k; the shared
    stem, syncs, merge and head run on core 1."""
    cores = [0] * ir.paths
    peak = [0] * ir.paths
    for n in ir.nodes():
        if n.kind in ("input", "output"):
            continue
        c = n.candidate_costs()[0]
        core = (n.path or 1) - 1
        cores[core] += 4 * c.params
        in_bytes = sum(4 * _numel(s) for s in n.in_shapes)
        peak[core] = max(peak[core], in_bytes + c.act_bytes)
    return [a + b for a, b in zip(cores, peak, strict=True)]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for v in shape:
        n *= v
    return n


def derive(net: Net, ir: IR, budget: int | None) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Argmax per block, sync kept where P_sync > P_direct; then, if a memory budget is set and
    exceeded, swap the blocks that lose the least probability to their smallest candidate."""
    probs = {k: v.detach().tolist() for k, v in net.probabilities().items()}
    choices = {k: net.choices[k][max(range(len(p)), key=p.__getitem__)] for k, p in probs.items()}
    for k, p in probs.items():
        if k.endswith(":sync"):  # kept only if P_sync > P_direct (a tie removes it)
            choices[k] = net.choices[k][0 if p[0] > p[1] else 1]
    if budget is None:
        return choices, probs
    while max(memory_per_core(prune(ir, choices))) > budget:
        best: tuple[float, str, str] | None = None
        for k, labels in net.choices.items():
            if k.endswith(":sync"):
                continue
            node = ir.node(k.replace(":", "."))
            params = {c.label: c.cost.params for c in node.candidates}
            for lab in labels:
                if params[lab] < params[choices[k]]:
                    loss = probs[k][labels.index(choices[k])] - probs[k][labels.index(lab)]
                    if best is None or loss < best[0]:
                        best = (loss, k, lab)
        if best is None:
            raise UserError(f"no architecture fits the memory budget of {budget} bytes per core")
        choices[best[1]] = best[2]
    return choices, probs


def check_budget(ir: IR, budget: int | None) -> None:
    """Fail early when even the smallest architecture exceeds the memory budget."""
    if budget is None:
        return
    smallest: dict[str, str] = {}
    for n in ir.nodes():
        if n.kind == "block" and len(n.candidates) > 1:
            c = min(n.candidates, key=lambda c: c.cost.params)
            smallest[f"{n.level}:p{n.path}"] = c.label
        elif n.kind == "sync" and n.mode == "search":
            smallest[f"{n.level}:sync"] = "none"
    need = max(memory_per_core(prune(ir, smallest)))
    if need > budget:
        raise UserError(
            f"target memory {budget} bytes per core is below the smallest architecture's "
            f"{need} bytes; raise 'memory' in the target"
        )


def read_checkpoint(run_dir: Path, spec: Spec, settings: Settings) -> dict[str, Any] | None:
    """The checkpoint of `run_dir` (None if there is none yet), checked against the run: a
    damaged or foreign one is a UserError naming the file."""
    ck_path = run_dir / "checkpoint.pt"
    if not ck_path.exists():
        return None
    ck = load_checkpoint(ck_path, ("epoch", "net", "w_opt", "a_opt", "meta"))
    if not isinstance(ck["meta"], dict) or ck["meta"].get("spec_hash") != spec.spec_hash:
        raise UserError(f"{ck_path}: made from another spec than {spec.file}")
    epoch = ck["epoch"]
    if not isinstance(epoch, int) or not 1 <= epoch <= settings.epochs:
        raise UserError(f"{ck_path}: epoch {epoch!r} is outside the run's {settings.epochs}")
    return ck


def search(
    spec: Spec,
    ir: IR,
    settings: Settings,
    train: Any,
    val: Any,
    run_dir: Path,
    costs: CostModel | None = None,
    resume: bool = False,
    report: Report | None = None,
    data: DataRecord | None = None,
    checkpoint: dict[str, Any] | None = None,
    spec_path: Path | None = None,
) -> dict[str, Any]:
    """Run the search into `run_dir`; returns a summary (choices, probabilities, accuracy).

    `resume` continues from `checkpoint.pt` (from the start when there is none yet) up to
    `settings.epochs`, which may extend a finished run. A kill at any point leaves a state a
    resume continues from: the completion marker `result.json` is removed before training
    and written after every derived output; the logs are cut back to the checkpoint.
    `checkpoint` is the run's checkpoint when the caller already read it (`read_checkpoint`);
    `spec_path` is where the spec's file is now (default: `spec.file`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_budget(ir, spec.target.memory)
    costs = costs or flops_costs(ir)
    torch.manual_seed(settings.seed)
    net = lower(ir)
    w_opt = make_optimizer(net.weight_parameters(), _optim(settings.weights))
    a_opt = make_optimizer(list(net.arch.parameters()), _optim(settings.arch))
    ck_path = run_dir / "checkpoint.pt"
    log, arch_log = JsonLog(run_dir / "metrics.jsonl"), JsonLog(run_dir / "arch.jsonl")
    remove_temporaries(run_dir, SEARCH_OUTPUTS)
    start = 0
    ck = None
    if resume:
        ck = checkpoint if checkpoint is not None else read_checkpoint(run_dir, spec, settings)
    if ck is not None:
        load_state(net, ck["net"], ck_path, f"the supernet of {spec.file}")
        load_state(w_opt, ck["w_opt"], ck_path, "the weight optimizer of the settings")
        load_state(a_opt, ck["a_opt"], ck_path, "the architecture optimizer of the settings")
        start = ck["epoch"]
        (run_dir / "result.json").unlink(missing_ok=True)
        log.truncate_after(start)
        arch_log.truncate_after(start)
    else:  # a new run (or one killed before its first checkpoint): nothing old survives
        for f in (run_dir / "result.json", ck_path, log.path, arch_log.path):
            f.unlink(missing_ok=True)
    meta = {
        "parnasc": __version__,
        "spec": spec.file,
        "spec_hash": spec.spec_hash,
        "settings": json.dumps(asdict(settings), sort_keys=True),
    }
    spec_file = Path(spec_path or spec.file)
    record = {
        "format": RECORD_FORMAT,
        "parnasc": __version__,
        "spec": str(spec_file.resolve()) if spec_file.is_file() else str(spec_file),
        "spec_file": spec.file,
        "spec_hash": spec.spec_hash,
        "settings": asdict(settings),
        "data": None if data is None else data.model_dump(),
        "threads": torch.get_num_threads(),
    }
    atomic_text(run_dir / "settings.json", json.dumps(record, indent=1) + "\n")
    total = settings.epochs * len(train)
    for epoch in range(start + 1, settings.epochs + 1):
        epoch_seed(settings.seed, epoch)
        train.set_epoch(epoch)
        val.set_epoch(epoch)
        val_iter = _cycle(val)  # per epoch, so a resumed run draws the same held-out batches
        searching = epoch > settings.warmup
        net.train()
        meter = Meter()
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(train):
            cosine_lr(w_opt, settings.weights["lr"], (epoch - 1) * len(train) + i, total)
            if searching and settings.mode == "alternate":
                xv, yv = next(val_iter)
                loss, _ = total_loss(
                    net(xv), yv, net.probabilities(), costs, settings.alpha, settings.beta
                )
                a_opt.zero_grad(set_to_none=True)
                loss.backward()
                a_opt.step()
            logits = net(x)
            probs = net.probabilities()
            loss, parts = total_loss(logits, y, probs, costs, settings.alpha, settings.beta)
            w_opt.zero_grad(set_to_none=True)
            a_opt.zero_grad(set_to_none=True)
            loss.backward()
            w_opt.step()
            if searching and settings.mode == "joint":
                a_opt.step()
            meter.add(logits, y, parts)
            if report:
                report("search" if searching else "warmup", epoch, i + 1, meter.means())
        probs_now = {k: [round(v, 6) for v in p.tolist()] for k, p in net.probabilities().items()}
        row = {
            "epoch": epoch,
            "phase": "search" if searching else "warmup",
            **meter.means(),
            "val_acc": evaluate(net, iter(val)),
            "seconds": time.perf_counter() - t0,
        }
        log.append(row)
        arch_log.append({"epoch": epoch, "probabilities": probs_now})
        atomic_save(
            {
                "epoch": epoch,
                "net": net.state_dict(),
                "w_opt": w_opt.state_dict(),
                "a_opt": a_opt.state_dict(),
                "meta": meta,
            },
            ck_path,
        )
        if report:
            report(
                "epoch-end", epoch, len(train), {**row, "arch": probs_now, "labels": net.choices}
            )
    # The final phase: each file is atomic, result.json (the completion marker) comes last.
    choices, final_probs = derive(net, ir, spec.target.memory)
    concrete_ir = prune(ir, choices)
    concrete = lower(concrete_ir)
    transfer_weights(concrete, net, choices)
    atomic_save({"net": concrete.state_dict(), "meta": meta}, run_dir / "searched.pt")
    atomic_save({"net": net.state_dict(), "meta": meta}, run_dir / "supernet.pt")
    from parnasc.ir.to_pnas import concrete_spec_text

    text = concrete_spec_text(concrete_ir, spec, final_probs, asdict(settings))
    atomic_text(run_dir / "derived.pnas", text)
    summary = {
        **meta,
        "choices": choices,
        "probabilities": final_probs,
        "val_acc": evaluate(net, iter(val)),
        "cost": costs.cost_of(choices, net),
        "cost_kind": costs.kind,
        "memory_per_core": memory_per_core(concrete_ir),
    }
    atomic_text(run_dir / "result.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def _optim(d: dict[str, Any]) -> Any:
    from parnasc.lang.spec import OptimSpec

    return OptimSpec.model_validate(d)


def _cycle(loader: Any) -> Any:
    """Endless batches from `loader` (the held-out split is smaller than the training split)."""
    while True:
        yield from loader


__all__ = [
    "PAPER_RECIPE",
    "RunRecord",
    "Settings",
    "derive",
    "is_complete",
    "memory_per_core",
    "read_checkpoint",
    "search",
]
