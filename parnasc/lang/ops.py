"""The op registry: every operation kind is defined once here (params, shape rule, cost rule,
torch builder). Adding an operation is one `register(OpKind(...))` call.

Costs follow equations (7)-(10) of the method: a k x k convolution with D_i input and D_o
output channels and a W_o x H_o output costs k^2*D_i*W_o*H_o*D_o multiplications and
(k^2*D_i - 1)*W_o*H_o*D_o additions; a fully connected layer O*I and O*(I-1). BatchNorm folds
into the convolution at deployment and ReLU is a comparison, so neither is counted. Pooling
counts its comparisons (max) or additions (average) as additions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, ...]  # (C, H, W) for feature maps, (F,) after global pooling
Params = Mapping[str, Any]
BYTES_PER_VALUE = 4  # float32 activations


class ShapeError(Exception):
    """An op cannot apply to its input shape; the message is shown at the op's span."""


class Cost(BaseModel):
    """Multiplications, additions, trainable parameters and output activation bytes."""

    model_config = ConfigDict(frozen=True)

    mul: int = 0
    add: int = 0
    params: int = 0
    act_bytes: int = 0

    @property
    def flops(self) -> int:
        return self.mul + self.add

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            mul=self.mul + other.mul,
            add=self.add + other.add,
            params=self.params + other.params,
            act_bytes=self.act_bytes + other.act_bytes,
        )


@dataclass(frozen=True)
class Param:
    """One keyword parameter of an op. `check` returns an error message or None."""

    name: str
    type: type
    default: Any = None  # None: required
    check: Callable[[Any], str | None] | None = None
    doc: str = ""


def positive(v: Any) -> str | None:
    return None if v >= 1 else "must be at least 1"


def odd_kernel(v: Any) -> str | None:
    return None if v >= 1 and v % 2 == 1 else "kernel size must be an odd number >= 1"


def probability(v: Any) -> str | None:
    return None if 0.0 <= v < 1.0 else "must be in [0, 1)"


@dataclass(frozen=True)
class OpKind:
    """An operation kind. `shape` and `cost` take the input shape and the resolved params."""

    name: str
    doc: str
    params: tuple[Param, ...]
    contexts: frozenset[str]  # where it may appear: "stem", "level", "head"
    shape: Callable[[Shape, Params], Shape]
    cost: Callable[[Shape, Shape, Params], Cost]
    build: Callable[[Shape, Shape, Params], nn.Module]

    def param(self, name: str) -> Param | None:
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}


REGISTRY: dict[str, OpKind] = {}


def register(kind: OpKind) -> OpKind:
    REGISTRY[kind.name] = kind
    return kind


# --- shape helpers --------------------------------------------------------------------------


def _spatial(shape: Shape, what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ShapeError(f"{what} needs a C x H x W feature map, got a flat vector of {shape[0]}")
    return shape[0], shape[1], shape[2]


def _same_out(h: int, k: int, stride: int, dilation: int) -> int:
    pad = dilation * (k - 1) // 2
    return (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _window(shape: Shape, p: Params, out_c: int, what: str) -> Shape:
    _, h, w = _spatial(shape, what)
    s = p.get("stride", 1)
    if s > 1 and (h < s or w < s):
        raise ShapeError(f"stride {s} would shrink the {h}x{w} map below 1x1")
    k, d = p["k"], p.get("dilation", 1)
    return (out_c, _same_out(h, k, s, d), _same_out(w, k, s, d))


def _act(shape: Shape) -> int:
    n = 1
    for v in shape:
        n *= v
    return n * BYTES_PER_VALUE


def conv_cost(k: int, d_in: int, out: Shape, groups: int = 1) -> Cost:
    """Equations (7)-(8) for a k x k convolution producing `out`; BN adds 2*D_o params."""
    d_o, h_o, w_o = out
    fan_in = k * k * d_in // groups
    return Cost(
        mul=fan_in * w_o * h_o * d_o,
        add=(fan_in - 1) * w_o * h_o * d_o,
        params=fan_in * d_o + 2 * d_o,
        act_bytes=_act(out),
    )


def fc_cost(i: int, o: int) -> Cost:
    """Equations (9)-(10); the bias adds O params."""
    return Cost(mul=o * i, add=o * (i - 1), params=o * i + o, act_bytes=o * BYTES_PER_VALUE)


# --- the ops ------------------------------------------------------------------------------

_K = Param("k", int, None, odd_kernel, "kernel size (odd)")
_OUT = Param("out", int, None, positive, "output channels (a level sets it)")
_STRIDE = Param("stride", int, 1, positive, "stride (a level sets it)")
_DIL = Param("dilation", int, 1, positive, "dilation")


def _conv_kind(
    name: str,
    doc: str,
    cost: Callable[[Shape, Shape, Params], Cost],
    build: Callable[[Shape, Shape, Params], nn.Module],
) -> OpKind:
    """A convolution: k, out, stride, dilation; in a stem or a level; same padding."""
    return OpKind(
        name, doc, (_K, _OUT, _STRIDE, _DIL), frozenset({"stem", "level"}), _conv_shape, cost, build
    )


def _conv_shape(shape: Shape, p: Params) -> Shape:
    return _window(shape, p, p["out"], "conv")


def _conv_cost(i: Shape, o: Shape, p: Params) -> Cost:
    return conv_cost(p["k"], i[0], o)


def _conv_build(i: Shape, o: Shape, p: Params) -> nn.Module:
    from torch import nn

    k, d = p["k"], p["dilation"]
    return nn.Sequential(
        nn.Conv2d(i[0], o[0], k, p["stride"], d * (k - 1) // 2, dilation=d, bias=False),
        nn.BatchNorm2d(o[0]),
        nn.ReLU(inplace=True),
    )


register(_conv_kind("conv", "k x k convolution + BatchNorm + ReLU", _conv_cost, _conv_build))


def _sep_cost(i: Shape, o: Shape, p: Params) -> Cost:
    mid = (i[0], o[1], o[2])
    return conv_cost(p["k"], i[0], mid, groups=i[0]) + conv_cost(1, i[0], o)


def _sep_build(i: Shape, o: Shape, p: Params) -> nn.Module:
    from torch import nn

    k, d, c = p["k"], p["dilation"], i[0]
    return nn.Sequential(
        nn.Conv2d(c, c, k, p["stride"], d * (k - 1) // 2, dilation=d, groups=c, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, o[0], 1, bias=False),
        nn.BatchNorm2d(o[0]),
        nn.ReLU(inplace=True),
    )


register(
    _conv_kind(
        "sepconv",
        "depthwise-separable conv: k x k depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU",
        _sep_cost,
        _sep_build,
    )
)


def _same_channels(shape: Shape, p: Params, what: str) -> Shape:
    c, _, _ = _spatial(shape, what)
    if p["out"] != c:
        raise ShapeError(f"{what} cannot change channels ({c} -> {p['out']})")
    return _window(shape, {**p, "k": p.get("k", 1), "dilation": 1}, c, what)


def _pool_cost(i: Shape, o: Shape, p: Params, avg: bool) -> Cost:
    c, h, w = o
    k2 = p["k"] * p["k"]
    return Cost(mul=c * h * w if avg else 0, add=(k2 - 1) * c * h * w, act_bytes=_act(o))


def _pool_build(i: Shape, o: Shape, p: Params, avg: bool) -> nn.Module:
    from torch import nn

    k, s = p["k"], p["stride"]
    if avg:
        return nn.AvgPool2d(k, s, k // 2, count_include_pad=False)
    return nn.MaxPool2d(k, s, k // 2)


def _pool_kind(name: str, avg: bool) -> OpKind:
    def shape(s: Shape, p: Params) -> Shape:
        return _same_channels(s, p, name)

    def cost(i: Shape, o: Shape, p: Params) -> Cost:
        return _pool_cost(i, o, p, avg)

    def build(i: Shape, o: Shape, p: Params) -> nn.Module:
        return _pool_build(i, o, p, avg)

    what = "average" if avg else "max"
    return OpKind(
        name,
        f"k x k {what} pooling (channels unchanged)",
        (_K, _OUT, _STRIDE),
        frozenset({"stem", "level"}),
        shape,
        cost,
        build,
    )


register(_pool_kind("maxpool", avg=False))
register(_pool_kind("avgpool", avg=True))


def _skip_shape(shape: Shape, p: Params) -> Shape:
    c = _spatial(shape, "skip")[0]
    if p["out"] != c:
        raise ShapeError(f"skip cannot change channels ({c} -> {p['out']})")
    if p["stride"] != 1:
        raise ShapeError(f"skip cannot apply stride {p['stride']}; use a pool or a conv")
    return shape


def _identity(i: Shape, o: Shape, p: Params) -> nn.Module:
    from torch import nn

    return nn.Identity()


register(
    OpKind(
        "skip",
        "identity (the input passes through)",
        (_OUT, _STRIDE),
        frozenset({"level"}),
        _skip_shape,
        lambda i, o, p: Cost(act_bytes=_act(o)),
        _identity,
    )
)


def _gap_shape(shape: Shape, p: Params) -> Shape:
    return (_spatial(shape, "gap")[0],)


def _gap_build(i: Shape, o: Shape, p: Params) -> nn.Module:
    from torch import nn

    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


register(
    OpKind(
        "gap",
        "global average pooling to a vector",
        (),
        frozenset({"head"}),
        _gap_shape,
        lambda i, o, p: Cost(
            mul=i[0], add=(i[1] * i[2] - 1) * i[0], act_bytes=o[0] * BYTES_PER_VALUE
        ),
        _gap_build,
    )
)


def _fc_shape(shape: Shape, p: Params) -> Shape:
    if len(shape) != 1:
        raise ShapeError(
            f"fc needs a flat vector, got a {'x'.join(map(str, shape))} map; put 'gap' first"
        )
    return (p["out"],)


def _fc_build(i: Shape, o: Shape, p: Params) -> nn.Module:
    from torch import nn

    if p["relu"]:
        return nn.Sequential(nn.Linear(i[0], o[0]), nn.ReLU(inplace=True))
    return nn.Linear(i[0], o[0])


register(
    OpKind(
        "fc",
        "fully connected layer (ReLU after it with relu=1)",
        (
            Param("out", int, None, positive, "output features"),
            Param("relu", int, 0, lambda v: None if v in (0, 1) else "must be 0 or 1"),
        ),
        frozenset({"head"}),
        _fc_shape,
        lambda i, o, p: fc_cost(i[0], o[0]),
        _fc_build,
    )
)


def _dropout_build(i: Shape, o: Shape, p: Params) -> nn.Module:
    from torch import nn

    return nn.Dropout(p["p"])


register(
    OpKind(
        "dropout",
        "dropout during training (identity at inference)",
        (Param("p", float, 0.5, probability, "drop probability"),),
        frozenset({"head"}),
        lambda s, p: s,
        lambda i, o, p: Cost(act_bytes=_act(o)),
        _dropout_build,
    )
)


# --- combines at sync sites and at the merge before the head ----------------------------------

COMBINERS = ("sum", "concat")


def combine_shape(combiner: str, shapes: list[Shape], reduce: bool) -> Shape:
    """Output of combining the paths; `reduce`: concat is followed by a 1x1 conv back to C."""
    first = shapes[0]
    for s in shapes[1:]:
        if s[1:] != first[1:] or (combiner == "sum" and s != first):
            raise ShapeError(
                "paths disagree in shape at the combine: "
                + ", ".join("x".join(map(str, s)) for s in shapes)
            )
    if combiner == "sum" or reduce:
        return first
    return (sum(s[0] for s in shapes), *first[1:])


def combine_cost(combiner: str, shapes: list[Shape], out: Shape, reduce: bool) -> Cost:
    """Sum: (P-1) additions per element. Concat+1x1 conv: equations (7)-(8) with k=1."""
    if combiner == "sum":
        n = 1
        for v in out:
            n *= v
        return Cost(add=(len(shapes) - 1) * n, act_bytes=n * BYTES_PER_VALUE)
    if not reduce:
        return Cost(act_bytes=_act(out))
    return conv_cost(1, sum(s[0] for s in shapes), out)


def resolve_params(kind: OpKind, given: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults; callers have already checked names, types and ranges."""
    return {p.name: given.get(p.name, p.default) for p in kind.params}


def canonical(kind: str, params: Mapping[str, Any], hidden: tuple[str, ...] = ()) -> str:
    """`conv(k=3, dilation=2)`: the op as written, omitting defaults and `hidden` params."""
    k = REGISTRY[kind]
    shown = [
        f"{p.name}={params[p.name]}"
        for p in k.params
        if p.name not in hidden and p.name in params and params[p.name] != p.default
    ]
    return f"{kind}({', '.join(shown)})" if shown else kind
