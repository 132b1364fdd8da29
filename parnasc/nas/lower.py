"""IR -> torch.nn.Module. A searchable IR lowers to a supernet (softmax-weighted candidates,
equations 1-2; searchable sync sites, equation 3); a concrete IR lowers to a plain network.

Both share one layout, which emit and the runtime rely on:
`stem`, `paths[p<k>][<level>]`, `syncs[<level>]`, `merge`, `head`, and `levels`.
Architecture parameters live in `arch`, a ParameterDict keyed by `parnasc.ir.graph.block_key`
(`l2:p1`) and `sync_key` (`l2:sync`) as `arch_choices` lists them, apart from the weights.

A supernet's forward is fused (`Net.fused`, on by default) without changing what it computes
or how its parameters are stored (one module per candidate, so state_dicts, checkpoints and
`transfer_weights` are unchanged):

* a candidate that ends in BatchNorm + ReLU (conv, sepconv, a concat sync's 1x1 reduce) takes
  its mixing probability P >= 0 into the BN's affine, relu(BN(z; P*gamma, P*beta)) =
  P * relu(BN(z; gamma, beta)), so the weighted sum of equation (2) is a plain sum and no
  full-size product (nor its backward) is computed; other candidates are multiplied as before;
* a level whose paths all read the same tensor (after the stem or an always-on sync) runs
  candidate j of every path as one convolution (the paths' weights concatenated) and one
  batch norm over the concatenated channels, writing the running statistics back to each
  candidate's BN as `nn.BatchNorm2d` does; the paths' outputs stay one tensor for the sync;
* equation (3) is one autograd function for all paths (`_Direct`);
* the input gradient of a convolution over an 8-channel input is one full-width convolution
  over the input's phases (`parnasc.nas.conv_grad`);
* the gradient that the head's global average pooling sends back reaches the paths in their
  channels_last layout (`_GradLikeInput`).

The last two also apply to concrete networks, in training only (not under no_grad, so not in
exports).

`tests/test_lower.py` checks outputs, gradients and BN statistics against `fused = False`, the
plain per-candidate computation.
"""

from __future__ import annotations

import itertools
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from parnasc.ir.graph import IR, Node, arch_key, block_key, sync_key
from parnasc.lang import ops
from parnasc.nas import conv_grad


def _foldable(m: nn.Module) -> bool:
    """A module that ends in BatchNorm2d (affine) + ReLU, so a factor >= 0 folds into the BN."""
    if type(m) is not nn.Sequential or len(m) < 2:
        return False
    bn, relu = m[-2], m[-1]
    return type(bn) is nn.BatchNorm2d and bn.affine and type(relu) is nn.ReLU


def _bn_factor(bn: nn.BatchNorm2d) -> float:
    """The bookkeeping of `nn.BatchNorm2d.forward`: count the batch in train mode and return
    the running-average factor."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    return factor


def _scaled_bn_relu(bn: nn.BatchNorm2d, z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """p * relu(bn(z)) for a scalar p >= 0 in one pass: relu(bn(z) with weight p*gamma and
    bias p*beta). Running statistics are updated as `bn(z)` updates them."""
    factor = _bn_factor(bn)
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return F.batch_norm(
        z,
        bn.running_mean if keep else None,
        bn.running_var if keep else None,
        bn.weight * p,
        bn.bias * p,
        use_batch,
        factor,
        bn.eps,
    ).relu_()


def _sequential(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """m(x); where m is a Sequential, a convolution followed by a batch norm takes its input
    gradient by phases (`conv_grad`)."""
    if type(m) is not nn.Sequential:
        return cast(torch.Tensor, m(x))
    layers: list[nn.Module] = list(m)
    for i, layer in enumerate(layers):
        bn_next = i + 1 < len(layers) and type(layers[i + 1]) is nn.BatchNorm2d
        x = conv_grad.forward(layer, x) if bn_next else layer(x)
    return x


def _folded(m: nn.Module, x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """p * m(x) for a `_foldable` module and p >= 0."""
    layers = list(cast(nn.Sequential, m))
    for layer, after in itertools.pairwise(layers[:-1]):  # up to the BN's input
        # a conv's input gradient by phases where a batch norm (not in place) reads its output
        x = conv_grad.forward(layer, x) if type(after) is nn.BatchNorm2d else layer(x)
    return _scaled_bn_relu(cast(nn.BatchNorm2d, layers[-2]), x, p)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) in one pass without a temporary where both are dense in the same layout."""
    cl = torch.channels_last
    if a.dim() == 4 and a.is_contiguous(memory_format=cl) and b.is_contiguous(memory_format=cl):
        return torch.dot(a.permute(0, 2, 3, 1).reshape(-1), b.permute(0, 2, 3, 1).reshape(-1))
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.reshape(-1), b.reshape(-1))
    return (a * b).sum()


class _Direct(torch.autograd.Function):
    """Equation (3) for all paths at once: outs_i = s + w * x_i (s = the combine's output
    already times P_sync, w = P_direct), with a backward that reads each tensor once: the
    gradient of w as dot products instead of full-size products and their sums."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, w: torch.Tensor, *xs: torch.Tensor) -> Any:
        ctx.save_for_backward(w, *xs)
        ctx.set_materialize_grads(False)  # an output that reaches no loss: None, not zeros
        return tuple(torch.addcmul(s, x, w) for x in xs)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> Any:
        w, *xs = ctx.saved_tensors
        live = [(g, x) for g, x in zip(grads, xs, strict=True) if g is not None]
        g_s = g_w = None
        if ctx.needs_input_grad[0] and live:
            g_s = live[0][0].clone() if len(live) == 1 else live[0][0] + live[1][0]
            for g, _ in live[2:]:
                g_s.add_(g)
        if ctx.needs_input_grad[1] and live:
            g_w = torch.stack([_dot(g, x) for g, x in live]).sum().reshape(w.shape)
        g_xs = [
            None if g is None or not ctx.needs_input_grad[2 + i] else g * w
            for i, g in enumerate(grads)
        ]
        return (g_s, g_w, *g_xs)


class _GradLikeInput(torch.autograd.Function):
    """The identity, whose backward returns the gradient in the memory format of the input.
    Global average pooling's backward expands the pooled gradient into a contiguous (NCHW)
    tensor; without this, every elementwise op, batch norm and convolution backward of the
    last level would mix that layout with its channels_last activations."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        cl = torch.channels_last
        ctx.cl = x.dim() == 4 and x.is_contiguous(memory_format=cl) and not x.is_contiguous()
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.contiguous(memory_format=torch.channels_last) if ctx.cl else g


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

    def forward(self, xs: list[torch.Tensor], stacked: torch.Tensor | None = None) -> torch.Tensor:
        """`stacked`: `xs` already concatenated along the channels, which concat reuses."""
        if len(xs) > self.inputs:
            xs, stacked = xs[: self.inputs], None
        if self.kind == "sum":
            out = xs[0]
            for x in xs[1:]:
                out = out + x
            return out
        cat = stacked if stacked is not None else torch.cat(xs, dim=1)
        return cat if self.reduce is None else self.reduce(cat)

    def mix(
        self, xs: list[torch.Tensor], w: torch.Tensor, stacked: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Equation (3) at a searchable site, fused: every path continues with
        `combine(xs) * w[0] + x_i * w[1]`, w[0] folded into the reduce's BN where there is one.
        `stacked`: `xs` already concatenated along the channels (one tensor)."""
        w_sync, w_direct = w.unbind()
        if self.reduce is not None and _foldable(self.reduce) and len(xs) == self.inputs:
            cat = stacked if stacked is not None else torch.cat(xs, dim=1)
            sw = _folded(self.reduce, cat, w_sync)
        else:
            sw = self(xs, stacked) * w_sync
        return list(_Direct.apply(sw, w_direct, *xs))


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

    def forward_folded(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """`forward` for weights >= 0 (a softmax): a candidate ending in BN + ReLU takes its
        weight inside the BN (`_scaled_bn_relu`), the others are multiplied."""
        out: torch.Tensor | None = None
        fresh = False  # `out` is a sum this method made, free to add into in place
        ws = weights.unbind()  # one view per candidate, one node in the graph
        for i, op in enumerate(self.ops):
            if _foldable(op):
                term = _folded(op, x, ws[i])
                if out is None:
                    out = term  # relu_'s output, which its backward keeps: never written to
                    continue
            else:
                term = op(x) * ws[i]
                if out is None:
                    out, fresh = term, True
                    continue
            if fresh:
                out = out.add_(term)
            else:
                out, fresh = out + term, True
        assert out is not None
        return out


def _shared_level(blocks: list[nn.Module]) -> bool:
    """Whether candidate j of every path of a level can run as one convolution and one batch
    norm where all paths read the same tensor: each block a MixedOp of the same number of
    plain conv + BN + ReLU candidates, candidate j alike on every path (same convolution
    settings, same BN settings with a running average), all with the same output channels."""
    if not blocks or not all(isinstance(b, MixedOp) for b in blocks):
        return False
    mixed = cast(list[MixedOp], blocks)
    k = len(mixed[0].ops)
    if any(len(b.ops) != k for b in mixed):
        return False
    width = None
    for j in range(k):
        first = None
        for b in mixed:
            op = b.ops[j]
            if not (type(op) is nn.Sequential and len(op) == 3 and _foldable(op)):
                return False
            conv, bn = op[0], op[1]
            if type(conv) is not nn.Conv2d or conv.bias is not None:
                return False
            if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                return False
            if bn.momentum is None or not bn.track_running_stats:
                return False
            sig = (
                conv.in_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                conv.groups,
                bn.eps,
                bn.momentum,
            )
            if first is None:
                first = sig
            if sig != first or conv.out_channels != (width or conv.out_channels):
                return False
            width = conv.out_channels
    return True


def _run_shared_level(
    blocks: list[MixedOp], x: torch.Tensor, weights: list[torch.Tensor]
) -> torch.Tensor | None:
    """All paths of a `_shared_level` level on the same input `x`: the paths' outputs
    concatenated along the channels (path p at channels p*C..(p+1)*C). `weights[p]`: the
    probabilities (>= 0) of path p's candidates. None where the BNs are not all in one mode."""
    k = len(blocks[0].ops)
    seqs_of = [[cast(nn.Sequential, b.ops[j]) for b in blocks] for j in range(k)]
    training = seqs_of[0][0][1].training
    if any(s[1].training != training for seqs in seqs_of for s in seqs):
        return None
    ws = [w.unbind() for w in weights]
    out: torch.Tensor | None = None
    for j, seqs in enumerate(seqs_of):
        convs = [cast(nn.Conv2d, s[0]) for s in seqs]
        bns = [cast(nn.BatchNorm2d, s[1]) for s in seqs]
        c0 = convs[0]
        weight = torch.cat([c.weight for c in convs])
        pad = cast(tuple[int, int], c0.padding)
        if c0.dilation == (1, 1) and c0.groups == 1 and conv_grad.usable(x, weight):
            z = conv_grad.conv2d(x, weight, c0.stride, pad)
        else:
            z = F.conv2d(x, weight, None, c0.stride, pad, c0.dilation, c0.groups)
        factor = [_bn_factor(bn) for bn in bns][-1]  # counts every BN's batch; all alike
        gamma = torch.cat([bn.weight * w[j] for bn, w in zip(bns, ws, strict=True)])
        beta = torch.cat([bn.bias * w[j] for bn, w in zip(bns, ws, strict=True)])
        mean = torch.cat([cast(torch.Tensor, bn.running_mean) for bn in bns])
        var = torch.cat([cast(torch.Tensor, bn.running_var) for bn in bns])
        y = F.batch_norm(z, mean, var, gamma, beta, training, factor, bns[0].eps).relu_()
        if training:  # write the updated statistics back, as each nn.BatchNorm2d would
            with torch.no_grad():
                for bn, m, v in zip(bns, mean.chunk(len(bns)), var.chunk(len(bns)), strict=True):
                    cast(torch.Tensor, bn.running_mean).copy_(m)
                    cast(torch.Tensor, bn.running_var).copy_(v)
        out = y if out is None else (out + y if j == 1 else out.add_(y))
    assert out is not None
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
        # The fused forward (see the module's docstring); False: the plain per-candidate one.
        self.fused = True
        # Levels whose paths all read one tensor (the stem's, an always-on sync's) and whose
        # candidates fit `_shared_level`: the fused forward runs each as one level.
        self.shared_levels: set[str] = set()
        one_input = True
        for lv in self.levels:
            if one_input and _shared_level([self._block(lv, p) for p in self._ps]):
                self.shared_levels.add(lv)
            one_input = lv in self.syncs and not self.search_sync[lv]

    @property
    def _ps(self) -> range:
        return range(1, self.n_paths + 1)

    def _block(self, lv: str, p: int) -> nn.Module:
        return cast(nn.ModuleDict, self.paths[f"p{p}"])[lv]

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
        # Supernets only; a block of one op (every block of a concrete network) runs as it is,
        # only its convolutions' input gradients by phases (exact, faster) where `fused`.
        fused = self.fused and bool(probs)
        x = self.stem(x)
        outs = [x] * self.n_paths
        for lv in self.levels:
            blocks = [self._block(lv, p) for p in self._ps]
            stacked = None  # the paths' outputs as one tensor, where the level made them so
            if fused and lv in self.shared_levels and all(o is outs[0] for o in outs):
                weights = [probs[block_key(lv, p)] for p in self._ps]
                stacked = _run_shared_level(cast(list[MixedOp], blocks), outs[0], weights)
            if stacked is not None:
                outs = list(stacked.chunk(self.n_paths, dim=1))
            else:
                outs = [
                    self._run_block(lv, p, b, o, probs, fused, self.fused)
                    for p, b, o in zip(self._ps, blocks, outs, strict=True)
                ]
            if lv in self.syncs:
                comb = cast(Combine, self.syncs[lv])
                if not self.search_sync.get(lv):
                    outs = [comb(outs, stacked)] * self.n_paths
                elif fused:
                    outs = comb.mix(outs, probs[sync_key(lv)], stacked)
                else:
                    w = probs[sync_key(lv)]
                    sw = comb(outs) * w[0]  # shared by all paths
                    outs = [torch.addcmul(sw, o, w[1]) for o in outs]  # equation (3)
        merged = self.merge(outs)
        if self.fused and merged.requires_grad:
            merged = _GradLikeInput.apply(merged)
        return cast(torch.Tensor, self.head(merged))

    @staticmethod
    def _run_block(
        lv: str,
        p: int,
        block: nn.Module,
        x: torch.Tensor,
        probs: dict[str, torch.Tensor],
        fused: bool,
        phases: bool,
    ) -> torch.Tensor:
        if not isinstance(block, MixedOp):
            return _sequential(block, x) if phases else block(x)
        w = probs[block_key(lv, p)]
        return block.forward_folded(x, w) if fused else block(x, w)


def lower(ir: IR) -> Net:
    """Build the torch module of `ir` (supernet or concrete), in channels_last layout."""
    net = Net(ir)
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
