"""The resource-aware search: train the supernet's weights and architecture parameters with the
multi-part loss (equation 12), then prune to a concrete architecture within the memory budget.

Schedule: `warmup` epochs of weights only, then weights and architecture together. In the
default `joint` mode both step on the same training batch (the paper); `alternate` mode takes
first-order DARTS steps for the architecture on the held-out split instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from parnasc.errors import UserError
from parnasc.ir.decisions import decisions
from parnasc.ir.graph import IR, Node, arch_key
from parnasc.ir.passes.prune import prune
from parnasc.ir.resources import memory_per_core
from parnasc.ir.to_pnas import concrete_spec_text
from parnasc.lang.spec import OptimSpec, Spec
from parnasc.nas.device import resolve_device
from parnasc.nas.dist import SOLO, Ranks
from parnasc.nas.loss import CostModel, flops_costs, total_loss
from parnasc.nas.lower import Net, arch_choices, lower
from parnasc.nas.precision import forward
from parnasc.nas.recipes import Settings, recipe
from parnasc.nas.runs import RECORD_FORMAT, DataRecord, SearchResult
from parnasc.nas.train import (
    JsonLog,
    Meter,
    Report,
    atomic_save,
    atomic_text,
    epoch_seed,
    evaluate,
    load_checkpoint,
    load_state,
    make_optimizer,
    remove_temporaries,
    set_lr,
    to_device,
)
from parnasc.nas.transfer import transfer_weights
from parnasc.version import __version__

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


def _decisions(ir: IR) -> tuple[dict[str, Node], set[str]]:
    """The blocks with several candidates by architecture key, and the searchable syncs' keys."""
    blocks = {arch_key(n.id): n for n in ir.nodes() if n.kind == "block" and len(n.candidates) > 1}
    syncs = {arch_key(n.id) for n in ir.nodes() if n.kind == "sync" and n.mode == "search"}
    return blocks, syncs


def derive(probs: Mapping[str, Sequence[float]], ir: IR, budget: int | None) -> dict[str, str]:
    """The architecture of the supernet `ir` under the probabilities `probs` (architecture
    key -> probability per candidate): argmax per block, a sync kept where P_sync > P_direct
    (a tie removes it); then, if a memory budget per core is set and exceeded, the blocks that
    lose the least probability swap to smaller candidates until it fits."""
    labels = arch_choices(ir)
    if set(probs) != set(labels) or any(len(probs[k]) != len(v) for k, v in labels.items()):
        want = ", ".join(f"{k} ({len(v)})" for k, v in labels.items())
        raise ValueError(f"probabilities must give every decision of {ir!r}: {want}")
    blocks, syncs = _decisions(ir)
    choices: dict[str, str] = {}
    for k, p in probs.items():
        if k in syncs:
            choices[k] = labels[k][0 if p[0] > p[1] else 1]
        else:
            choices[k] = labels[k][max(range(len(p)), key=p.__getitem__)]
    if budget is None:
        return choices
    while max(memory_per_core(prune(ir, choices))) > budget:
        swap: tuple[float, str, str] | None = None
        for k, cands in labels.items():
            if k in syncs:
                continue
            params = {c.label: c.cost.params for c in blocks[k].candidates}
            for lab in cands:
                if params[lab] < params[choices[k]]:
                    loss = probs[k][cands.index(choices[k])] - probs[k][cands.index(lab)]
                    if swap is None or loss < swap[0]:
                        swap = (loss, k, lab)
        if swap is None:
            raise UserError(f"no architecture fits the memory budget of {budget} bytes per core")
        choices[swap[1]] = swap[2]
    return choices


def check_budget(ir: IR, budget: int | None) -> None:
    """Fail early when even the smallest architecture exceeds the memory budget."""
    if budget is None:
        return
    blocks, syncs = _decisions(ir)
    smallest = {k: min(n.candidates, key=lambda c: c.cost.params).label for k, n in blocks.items()}
    smallest.update({k: "none" for k in syncs})
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
    device: torch.device | str | None = None,
    ranks: Ranks = SOLO,
    precision: str = "fp32",
) -> SearchResult:
    """Search the supernet `ir` with the loaders `train` and `val` (`parnasc.data.cifar.Loader`
    or anything with `set_epoch`, `len` and batches), writing the run directory `run_dir`.

    `resume` continues from `checkpoint.pt` (from the start when there is none yet) up to
    `settings.epochs`, which may extend a finished run. A kill at any point leaves a state a
    resume continues from: the completion marker `result.json` is removed before training
    and written after every derived output; the logs are cut back to the checkpoint.
    `checkpoint` is the run's checkpoint when the caller already read it (`read_checkpoint`);
    `data` is recorded in settings.json (None: the caller's own loaders); `spec_path` is where
    the spec's file is now (default: `spec.file`). `costs` defaults to the flops cost model.
    The supernet, its optimizers' states, the cost model and the batches live on `device`
    (default: the CPU; recorded in settings.json); the files hold CPU tensors. `precision`
    (`fp32` or `bf16`, `parnasc.nas.precision`) is the arithmetic of the training steps.

    With `ranks` (data-parallel, `parnasc.nas.dist`), `train` and `val` yield this rank's
    shares of every batch; gradients, batch-norm statistics and metrics are reduced over the
    ranks, the same architecture is derived on each, and rank 0 alone writes files."""
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    main = ranks.main
    run_dir.mkdir(parents=True, exist_ok=True)
    check_budget(ir, spec.target.memory)
    costs = (costs or flops_costs(ir)).to(dev)
    torch.manual_seed(settings.seed)
    net = lower(ir).to(dev)
    w_opt = make_optimizer(net.weight_parameters(), OptimSpec.model_validate(settings.weights))
    a_opt = make_optimizer(list(net.arch.parameters()), OptimSpec.model_validate(settings.arch))
    ck_path = run_dir / "checkpoint.pt"
    log, arch_log = JsonLog(run_dir / "metrics.jsonl"), JsonLog(run_dir / "arch.jsonl")
    start = 0
    ck = None
    if resume:
        ck = checkpoint if checkpoint is not None else read_checkpoint(run_dir, spec, settings)
    if ck is not None:
        load_state(net, ck["net"], ck_path, f"the supernet of {spec.file}")
        load_state(w_opt, ck["w_opt"], ck_path, "the weight optimizer of the settings")
        load_state(a_opt, ck["a_opt"], ck_path, "the architecture optimizer of the settings")
        start = ck["epoch"]
    ranks.broadcast_module(net)  # every rank has read what it needs: rank 0 may write now
    if main:
        remove_temporaries(run_dir, SEARCH_OUTPUTS)
    if ck is not None and main:
        (run_dir / "result.json").unlink(missing_ok=True)
        log.truncate_after(start)
        arch_log.truncate_after(start)
    elif main:  # a new run (or one killed before its first checkpoint): nothing old survives
        for f in (run_dir / "result.json", ck_path, log.path, arch_log.path):
            f.unlink(missing_ok=True)
    meta = {
        "parnasc": __version__,
        "spec": spec.file,
        "spec_hash": spec.spec_hash,
        "settings": json.dumps(asdict(settings), sort_keys=True),
    }
    record = _run_record(
        spec, settings, data, Path(spec_path or spec.file), dev, ranks.world, precision
    )
    if main:
        atomic_text(run_dir / "settings.json", json.dumps(record, indent=1) + "\n")
    if report:
        begin = {"epochs": settings.epochs, "batches": len(train), "spec": record["spec"]}
        report("start", start, 0, begin)
    for epoch in range(start + 1, settings.epochs + 1):
        t0 = time.perf_counter()
        phase, means, agree = _epoch(
            net, w_opt, a_opt, train, val, costs, settings, epoch, report, dev, ranks, precision
        )
        net.temperature = _temperature_after(settings, epoch)
        ranks.average_buffers(net)
        ranks.check_same(f"the supernet after epoch {epoch}", net)
        probs = {k: [round(v, 6) for v in p.tolist()] for k, p in net.probabilities().items()}
        row = {
            "epoch": epoch,
            "phase": phase,
            **means,
            "val_acc": evaluate(net, iter(val), ranks=ranks),
            "seconds": time.perf_counter() - t0,
        }
        ds = decisions(probs)
        arch_row = {
            "epoch": epoch,
            "temperature": round(net.temperature, 6),
            "probabilities": probs,
            "margin": {k: round(d.margin, 6) for k, d in ds.items()},
            "entropy": {k: round(d.entropy, 6) for k, d in ds.items()},
            "undecided": sum(not d.decided for d in ds.values()),
            "agreement": agree,
        }
        state = {"epoch": epoch, "net": net.state_dict(), "w_opt": w_opt.state_dict()}
        if main:
            log.append(row)
            arch_log.append(arch_row)
            atomic_save({**state, "a_opt": a_opt.state_dict(), "meta": meta}, ck_path)
        if report:
            arch = {"arch": probs, "labels": net.choices, "temperature": net.temperature}
            report("epoch-end", epoch, len(train), {**row, **arch})
    net.temperature = _temperature_after(settings, settings.epochs)
    return _finish(spec, ir, settings, net, val, costs, run_dir, meta, ranks)


def _temperature_after(settings: Settings, epoch: int) -> float:
    """The temperature at the end of `epoch` (of the last search step so far): the one the
    logged and derived probabilities use."""
    done = max(0, epoch - settings.warmup)
    return settings.temperature(done / max(1, settings.epochs - settings.warmup))


def _run_record(
    spec: Spec,
    settings: Settings,
    data: DataRecord | None,
    spec_file: Path,
    device: torch.device,
    processes: int,
    precision: str,
) -> dict[str, Any]:
    """The content of settings.json (`parnasc.nas.runs.RunRecord`)."""
    return {
        "format": RECORD_FORMAT,
        "parnasc": __version__,
        "spec": str(spec_file.resolve()) if spec_file.is_file() else str(spec_file),
        "spec_file": spec.file,
        "spec_hash": spec.spec_hash,
        "settings": asdict(settings),
        "data": None if data is None else data.model_dump(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "processes": processes,
        "precision": precision,
    }


class GradientAgreement:
    """How consistently the loss pushes each decision one way over an epoch's architecture
    steps: for each candidate's logit, |sum of its gradients| / sqrt(sum of their squares),
    the largest over the decision's candidates. Gradients of random sign give about 1; a
    gradient of one sign over n steps gives up to sqrt(n). Values well above 2 mean the
    epoch's data agree on where the decision should go; values near 1, that its logits only
    random-walk (docs/search.md, "Deciding")."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.squares: dict[str, torch.Tensor] = {}

    def add(self, net: Net) -> None:
        """Take the architecture gradients of the step about to be made."""
        for k, p in net.arch.items():
            if p.grad is None:
                continue
            g = p.grad.detach().double()  # float32 squares of tiny gradients underflow
            if k in self.sums:
                self.sums[k] += g
                self.squares[k] += g * g
            else:
                self.sums[k], self.squares[k] = g.clone(), g * g

    def values(self) -> dict[str, float]:
        out = {}
        for k, s in self.sums.items():
            root = self.squares[k].sqrt()
            z = torch.where(root > 0, s.abs() / root, torch.zeros_like(s))
            out[k] = round(float(z.max()), 3)
        return out


def _epoch(
    net: Net,
    w_opt: torch.optim.Optimizer,
    a_opt: torch.optim.Optimizer,
    train: Any,
    val: Any,
    costs: CostModel,
    settings: Settings,
    epoch: int,
    report: Report | None,
    device: torch.device,
    ranks: Ranks,
    precision: str,
) -> tuple[str, dict[str, float], dict[str, float]]:
    """One epoch of weight steps (and architecture steps after the warm-up), the batches moved
    to `device`, the forward passes in `precision`, the gradients averaged over `ranks`;
    returns its phase (`warmup` or `search`), the means of its batches over the ranks and the
    gradient agreement of every decision (`GradientAgreement`; empty in a warm-up epoch)."""
    epoch_seed(settings.seed, epoch)
    train.set_epoch(epoch)
    val.set_epoch(epoch)
    val_iter = _cycle(val)  # per epoch, so a resumed run draws the same held-out batches
    phase = "search" if epoch > settings.warmup else "warmup"
    total = settings.epochs * len(train)
    searched = (settings.epochs - settings.warmup) * len(train)
    schedule = recipe(settings.recipe).schedule
    net.train()
    meter = Meter()
    agreement = GradientAgreement()
    for i, (x, y) in enumerate(train):
        set_lr(w_opt, schedule, settings.weights["lr"], (epoch - 1) * len(train) + i, total)
        x, y = to_device(x, y, device)
        done = (epoch - settings.warmup - 1) * len(train) + i + 1  # search steps after this
        net.temperature = settings.temperature(done / max(1, searched))
        if phase == "search" and settings.mode == "alternate":
            xv, yv = next(val_iter)
            a_opt.zero_grad(set_to_none=True)
            if len(yv):  # a share of a held-out batch smaller than the ranks may be empty
                xv, yv = to_device(xv, yv, device)
                loss, _ = total_loss(
                    forward(net, xv, precision),
                    yv,
                    net.probabilities(),
                    costs,
                    settings.alpha,
                    settings.beta,
                )
                # The architecture's gradient alone: the weights' would be discarded unused.
                arch = list(net.arch.parameters())
                grads = torch.autograd.grad(loss, arch, allow_unused=True)
                for p, g in zip(arch, grads, strict=True):
                    p.grad = g
            ranks.average_gradients(net.arch.parameters(), len(yv))
            agreement.add(net)
            a_opt.step()
        logits = forward(net, x, precision)
        probs = net.probabilities()
        loss, parts = total_loss(logits, y, probs, costs, settings.alpha, settings.beta)
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        loss.backward()
        ranks.average_gradients(net.parameters(), len(y))
        w_opt.step()
        if phase == "search" and settings.mode == "joint":
            agreement.add(net)
            a_opt.step()
        meter.add(logits, y, parts)
        if report:
            report(phase, epoch, i + 1, ranks.progress(meter.means()))
    return phase, ranks.row(meter), agreement.values()


def _finish(
    spec: Spec,
    ir: IR,
    settings: Settings,
    net: Net,
    val: Any,
    costs: CostModel,
    run_dir: Path,
    meta: dict[str, Any],
    ranks: Ranks,
) -> SearchResult:
    """Derive, write the derived outputs (each atomic; rank 0) and last result.json, the
    marker. The concrete network is built on the CPU; the searched weights are copied into
    it there. Every rank derives the same architecture (checked)."""
    probs = {k: v.detach().tolist() for k, v in net.probabilities().items()}
    choices = derive(probs, ir, spec.target.memory)
    concrete_ir = prune(ir, choices)
    concrete = lower(concrete_ir)
    transfer_weights(concrete, net, choices)
    ranks.check_same("the derived architecture", concrete, choices, probs)
    result = SearchResult(
        run_dir=run_dir,
        spec_hash=spec.spec_hash,
        settings=settings,
        choices=choices,
        probabilities=probs,
        val_acc=evaluate(net, iter(val), ranks=ranks),
        cost=costs.cost_of(choices, net),
        cost_kind=costs.kind,
        memory_per_core=memory_per_core(concrete_ir),
    )
    if not ranks.main:
        return result
    atomic_save({"net": concrete.state_dict(), "meta": meta}, run_dir / "searched.pt")
    atomic_save({"net": net.state_dict(), "meta": meta}, run_dir / "supernet.pt")
    text = concrete_spec_text(concrete_ir, spec, probs, asdict(settings))
    atomic_text(run_dir / "derived.pnas", text)
    summary = {
        **meta,
        "choices": choices,
        "probabilities": probs,
        "val_acc": result.val_acc,
        "cost": result.cost,
        "cost_kind": result.cost_kind,
        "memory_per_core": result.memory_per_core,
    }
    atomic_text(run_dir / "result.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return result


def _cycle(loader: Any) -> Iterator[Any]:
    """Endless batches from `loader` (the held-out split is smaller than the training split)."""
    while True:
        yield from loader


__all__ = [
    "SEARCH_OUTPUTS",
    "check_budget",
    "derive",
    "memory_per_core",
    "read_checkpoint",
    "search",
]
