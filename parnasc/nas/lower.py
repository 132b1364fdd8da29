"""IR -> torch.nn.Module. A searchable IR lowers to a supernet (softmax-weighted candidates,
equations 1-2; searchable sync sites, equation 3); a concrete IR lowers to a plain network.

Both share one layout, which emit and the runtime rely on:
`stem`, `paths[p<k>][<level>]`, `syncs[<level>]`, `merge`, `head`, and `levels`.
Architecture parameters live in `arch`, a ParameterDict keyed by `parnasc.ir.graph.block_key`
(`l2:p1`) and `sync_key` (`l2:sync`) as `arch_choices` lists them, apart from the weights.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from parnasc.ir.graph import IR, Node, arch_key, block_key, sync_key
from parnasc.lang import ops


class Combine(nn.Module):
    """Combine the path outputs: `sum` (equation 4) or `concat`, optionally followed by a
    1x1 conv + BN + ReLU back to `channels` (the paper's sync combiner)."""

    def __init__(self, kind: str, paths: int, channels: int, reduce: bool) -> None:
        super().__init__()
        self.kind = kind
        self.inputs = paths  # a canonical merge (one IR input) takes the first of its P tensors
        self.reduce: nn.Module | None = None
        if kind == "concat" and reduce:
            self.reduce = nn.Sequential(
                nn.Conv2d(paths * channels, channels, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            )

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        xs = xs[: self.inputs]
        if self.kind == "sum":
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out
        cat = torch.cat(xs, dim=1)
        return cat if self.reduce is None else self.reduce(cat)


class MixedOp(nn.Module):
    """A block of the supernet: the softmax-weighted sum of its candidates (equation 2)."""

    def __init__(self, candidates: list[nn.Module]) -> None:
        super().__init__()
        self.ops = nn.ModuleList(candidates)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.ops[0](x) * weights[0]  # a fresh tensor, so the fused in-place adds are safe
        for i in range(1, len(self.ops)):
            out = out.addcmul_(self.ops[i](x), weights[i])  # out += OP_i(x) * P_i, one pass
        return out


def _build_op(n: Node, index: int = 0) -> nn.Module:
    c = n.candidates[index]
    assert n.out_shape is not None
    return ops.REGISTRY[c.kind].build(n.in_shapes[0], n.out_shape, c.params)


def arch_choices(ir: IR) -> dict[str, list[str]]:
    """The decisions of the search space of `ir`: architecture key -> candidate labels, for
    every block with several candidates (path by path, level by level) and then every
    searchable sync site (`[combiner, "none"]`: sync, direct). The order of `Net.arch`."""
    choices: dict[str, list[str]] = {}
    for p in range(1, ir.paths + 1):
        for lv in ir.levels:
            b = ir.block(lv, p)
            if len(b.candidates) > 1:
                choices[arch_key(b.id)] = [c.label for c in b.candidates]
    for lv in ir.levels:
        s = ir.sync(lv)
        if s is not None and s.mode == "search":
            assert s.combiner is not None
            choices[arch_key(s.id)] = [s.combiner, "none"]
    return choices


class Net(nn.Module):
    """The lowered network; a supernet when the IR has choices left, else a concrete model."""

    def __init__(self, ir: IR) -> None:
        super().__init__()
        self.levels: list[str] = ir.levels
        self.n_paths = ir.paths
        self.stem = nn.Sequential(
            *(_build_op(n) for n in ir.nodes() if n.kind == "op" and n.id.startswith("stem."))
        )
        self.head = nn.Sequential(
            *(_build_op(n) for n in ir.nodes() if n.kind == "op" and n.id.startswith("head."))
        )
        self.paths = nn.ModuleDict()
        self.syncs = nn.ModuleDict()
        self.arch = nn.ParameterDict()
        self.search_sync: dict[str, bool] = {}
        self.temperature = 1.0  # of the softmax over the architecture parameters
        self.choices = arch_choices(ir)  # arch key -> candidate labels
        for key, labels in self.choices.items():
            self.arch[key] = nn.Parameter(torch.zeros(len(labels)))
        for p in range(1, ir.paths + 1):
            blocks = nn.ModuleDict()
            for lv in ir.levels:
                b = ir.block(lv, p)
                if len(b.candidates) == 1:
                    blocks[lv] = _build_op(b)
                else:
                    blocks[lv] = MixedOp([_build_op(b, i) for i in range(len(b.candidates))])
            self.paths[f"p{p}"] = blocks
        for lv in ir.levels:
            s = ir.sync(lv)
            if s is None:
                continue
            assert s.combiner is not None and s.out_shape is not None
            self.syncs[lv] = Combine(s.combiner, ir.paths, s.out_shape[0], reduce=True)
            self.search_sync[lv] = s.mode == "search"
        m = ir.node("merge")
        assert m.combiner is not None and m.out_shape is not None
        self.merge = Combine(m.combiner, len(ir.data_inputs(m.id)), m.out_shape[0], reduce=False)

    @property
    def is_supernet(self) -> bool:
        return len(self.arch) > 0

    def weight_parameters(self) -> list[nn.Parameter]:
        """Network weights: everything except the architecture parameters."""
        arch = {id(p) for p in self.arch.parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Softmax of every architecture parameter over `temperature` (equations 1 and 3;
        the search anneals the temperature, 1 leaves the paper's plain softmax)."""
        t = self.temperature
        return {k: F.softmax(v / t if t != 1.0 else v, dim=0) for k, v in self.arch.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities() if self.arch else {}
        x = self.stem(x)
        outs = [x] * self.n_paths
        for lv in self.levels:
            new = []
            for p in range(self.n_paths):
                block = cast(nn.ModuleDict, self.paths[f"p{p + 1}"])[lv]
                if isinstance(block, MixedOp):
                    new.append(block(outs[p], probs[block_key(lv, p + 1)]))
                else:
                    new.append(block(outs[p]))
            outs = new
            if lv in self.syncs:
                s = self.syncs[lv](outs)
                if self.search_sync.get(lv):
                    w = probs[sync_key(lv)]
                    sw = s * w[0]  # shared by all paths
                    outs = [torch.addcmul(sw, o, w[1]) for o in outs]  # equation (3)
                else:
                    outs = [s] * self.n_paths
        return self.head(self.merge(outs))


def lower(ir: IR) -> Net:
    """Build the torch module of `ir` (supernet or concrete), in channels_last layout."""
    net = Net(ir)
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
