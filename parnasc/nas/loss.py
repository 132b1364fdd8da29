"""The multi-part loss of equation (12) and the costs it uses.

    loss = alpha * CE + beta * (loss_ops + loss_sync)

How the terms are normalised (equations 6 and 11): both are divided by `norm`, the cost of
the most expensive architecture of the search space (every block at its costliest candidate,
every sync site on, plus the fixed stem/merge/head). So loss_ops + loss_sync lies in [0, 1] and
equals the expected cost of the sampled architecture over the worst one, minus the fixed part.

* cost `flops`: C_{l,p,n} is the FLOPs (mul + add, equations 7-10) of candidate n of block
  (l, p) and C_sync the FLOPs of the combine at the sync site (concat + 1x1 conv, or a sum).
  loss_ops sums over levels and paths as in equation (6).
* cost `latency`: C_{l,p,n} is the measured single-thread latency (microseconds) of the
  candidate at its real shapes (parnasc.nas.latency) and C_sync the measured combine time plus a
  barrier. Paths run on separate cores and wait for each other only where they join (a sync
  site that is on, an always-on sync, the merge), so the time of the ops is the critical path:
  with t_p the finishing time of path p since the stem,

      t_p += sum_n P_op_{l,p,n} * T_{l,p,n}                  after each level l
      t_p  = P_sync_l * max_q t_q + P_direct_l * t_p           at a searchable sync site
      t_p  = max_q t_q                                       at an always-on sync
      loss_ops = max_p t_p / norm                            (the merge joins the paths)

  This is exact for every concrete architecture (one-hot probabilities): with all syncs on it
  is sum_l max_p T_{l,p}; with none it is max_p sum_l T_{l,p}. A join adds its C_sync to every
  path alike, so that part separates exactly into loss_sync (equation 11). `max` is
  differentiable almost everywhere: the gradient flows into the slowest path, which is what
  the search should shrink, and P_sync pays for the imbalance its join exposes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from parnasc.ir.graph import IR, arch_key, block_key, fixed_cost, flops_range, sync_key
from parnasc.nas.lower import Net


@dataclass
class CostModel:
    """The costs of a search space: per candidate of every block, per searchable sync site,
    and the fixed part every architecture runs (units: FLOPs, or microseconds). The block
    tensors live on the device of the probabilities they are weighed with (`to`)."""

    kind: str  # "flops" or "latency"
    blocks: dict[str, torch.Tensor]  # block key (`l1:p2`) -> cost per candidate
    syncs: dict[str, float]  # sync key (`l1:sync`) -> cost of that combine (searchable sites)
    fixed: float  # stem, fixed syncs, merge, head
    levels: list[str]
    paths: int
    joins: tuple[str, ...] = ()  # levels followed by an always-on sync (latency only)
    peak: float | None = None  # the most expensive architecture's cost, where known exactly

    @property
    def norm(self) -> float:
        """Cost of the most expensive architecture (`peak` when given)."""
        if self.peak is not None:
            return self.peak
        paths = range(1, self.paths + 1)
        if self.kind == "latency":
            ops = sum(
                max(float(self.blocks[block_key(lv, p)].max()) for p in paths) for lv in self.levels
            )
        else:
            ops = sum(float(c.max()) for c in self.blocks.values())
        return ops + sum(self.syncs.values()) + self.fixed

    @property
    def device(self) -> torch.device:
        """Where the block tensors are."""
        return next(iter(self.blocks.values())).device if self.blocks else torch.device("cpu")

    def to(self, device: torch.device | str) -> CostModel:
        """This cost model with its block tensors on `device` (itself when they are there);
        `peak` is fixed to `norm`, so the norm never reads the tensors back from it."""
        device = torch.device(device)
        if all(c.device == device for c in self.blocks.values()):
            return self
        blocks = {k: c.to(device) for k, c in self.blocks.items()}
        return replace(self, blocks=blocks, peak=self.norm)

    def terms(self, probs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss_ops, loss_sync) for the architecture probabilities `probs`, on their device
        (which must be the cost model's, see `to`)."""
        norm = self.norm
        device = next(iter(probs.values())).device if probs else self.device
        if self.kind == "latency":
            ops = self._critical_path(probs, device)
        else:
            ops = torch.stack(
                [(probs[k] * c).sum() if k in probs else c[0] for k, c in self.blocks.items()]
            ).sum()
        sync = torch.zeros((), device=device)
        for k, c in self.syncs.items():
            sync = sync + probs[k][0] * c
        return ops / norm, sync / norm

    def _critical_path(self, probs: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Expected finishing time of the slowest path (latency kind; see the module doc)."""
        t = torch.zeros(self.paths, device=device)
        for lv in self.levels:
            block = [
                (probs[k] * self.blocks[k]).sum()
                if (k := block_key(lv, p)) in probs
                else self.blocks[k][0]
                for p in range(1, self.paths + 1)
            ]
            t = t + torch.stack(block)
            if lv in self.joins:
                t = t.max().expand(self.paths)
            elif (k := sync_key(lv)) in self.syncs:
                q = probs[k][0] if k in probs else torch.ones((), device=device)
                t = q * t.max() + (1 - q) * t
        return t.max()

    def cost_of(self, choices: dict[str, str], net: Net) -> float:
        """Cost of one concrete architecture (same units as `norm`)."""
        onehot = {
            k: F.one_hot(torch.tensor(net.choices[k].index(v)), len(net.choices[k]))
            .float()
            .to(self.device)
            for k, v in choices.items()
        }
        ops, sync = self.terms(onehot)
        return float(ops + sync) * self.norm + self.fixed


def flops_costs(ir: IR) -> CostModel:
    """The `flops` cost model, straight from the IR's equation (7)-(10) annotations; the fixed
    part and the norm are the IR's own sums (`fixed_cost`, `flops_range`)."""
    blocks: dict[str, torch.Tensor] = {}
    syncs: dict[str, float] = {}
    for n in ir.nodes():
        if n.kind == "block":
            blocks[arch_key(n.id)] = torch.tensor([float(c.cost.flops) for c in n.candidates])
        elif n.kind == "sync" and n.mode == "search":
            syncs[arch_key(n.id)] = float(n.cost.flops)
    fixed = float(fixed_cost(ir).flops)
    peak = float(flops_range(ir)[1])
    return CostModel("flops", blocks, syncs, fixed, ir.levels, ir.paths, peak=peak)


def total_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    probs: dict[str, torch.Tensor],
    costs: CostModel,
    alpha: float,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Equation (12); returns the loss and its parts for logging."""
    ce = F.cross_entropy(logits, target)
    ops, sync = costs.terms(probs) if probs else (ce.new_zeros(()), ce.new_zeros(()))
    loss = alpha * ce + beta * (ops + sync)
    parts = {"ce": ce.item(), "ops": ops.item(), "sync": sync.item(), "loss": loss.item()}
    return loss, parts
