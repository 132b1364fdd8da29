"""A convolution whose input gradient runs at full vector width where the input is narrow.

oneDNN computes the input gradient of a convolution with one vector of output channels per
pixel; a map of 8 channels (the stem's output in `specs/cifar.pnas`) fills half of an AVX-512
vector, so the gradient takes about twice as long as the forward convolution. `conv2d` gives
the same function as `F.conv2d` (no bias, one group, no dilation) but computes that gradient as
one forward convolution over the *phases* of the input map (polyphase): the pixels (Y*fh + a,
X*fw + b) of each phase (a, b) are a correlation of the output gradient with a sub-kernel of
the flipped weights, so all fh*fw phases are one convolution with fh*fw*C output channels
(fh = fw = 2 for stride 2, fh = 1, fw = 2 for stride 1), and a rearrangement puts the phases
back in place. The sums are the same, in another order; `tests/test_lower.py` compares the
gradient with torch's in float64.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

MAX_CHANNELS = 8  # wider inputs fill a vector already: their own gradient is as fast


def _axis(k: int, p: int, s: int, f: int, size: int, grad_size: int) -> tuple[Any, ...] | None:
    """One spatial axis: (new stride, per phase the (tap, offset) pairs, first offset, kernel
    extent, padding, crop) of the phase convolution, or None where it does not apply."""
    if size % f or f % s:
        return None
    t = f // s
    phases = []
    for ph in range(f):
        phases.append(tuple((k_, (ph + p - k_) // s) for k_ in range(k) if (ph + p - k_) % s == 0))
    offsets = [d for pairs in phases for _, d in pairs]
    if not offsets:
        return None
    dmin, dmax = min(offsets), max(offsets)
    extent = dmax - dmin + 1
    pad = max(0, -dmin)
    while (dmin + pad) % t:
        pad += 1
    while (grad_size + 2 * pad - extent) // t + 1 < size // f + (dmin + pad) // t:
        pad += t
    return t, tuple(phases), dmin, extent, pad, (dmin + pad) // t


@functools.lru_cache(maxsize=256)
def _plan(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    size: tuple[int, int],
    grad_size: tuple[int, int],
) -> tuple[Any, ...] | None:
    """The phase convolution for one configuration: (factors, strides, paddings, crops,
    extents, tap index map) or None. The map gives, per (phase h, phase w, a, b), the flat
    index of the kernel tap at that place of the sub-kernel, or kh*kw for a zero."""
    fs = tuple(2 if s == 2 else (1 if i == 0 else 2) for i, s in enumerate(stride))
    if any(s not in (1, 2) for s in stride):
        return None
    along_h = _axis(kernel[0], padding[0], stride[0], fs[0], size[0], grad_size[0])
    along_w = _axis(kernel[1], padding[1], stride[1], fs[1], size[1], grad_size[1])
    if along_h is None or along_w is None:
        return None
    th, ph_h, dmin_h, ah, pad_h, off_h = along_h
    tw, ph_w, dmin_w, aw, pad_w, off_w = along_w
    kh, kw = kernel
    index = torch.full((fs[0], fs[1], ah, aw), kh * kw, dtype=torch.long)
    for a, pairs_h in enumerate(ph_h):
        for b, pairs_w in enumerate(ph_w):
            for ky, dy in pairs_h:
                for kx, dx in pairs_w:
                    index[a, b, dy - dmin_h, dx - dmin_w] = ky * kw + kx
    return fs, (th, tw), (pad_h, pad_w), (off_h, off_w), (ah, aw), index


def input_grad(
    g: torch.Tensor,
    w: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor | None:
    """The gradient of conv2d(x, w, stride, padding) with respect to x (spatial `size`) for
    the output gradient `g`, by the phase convolution; None where the plan does not apply."""
    n, c_out, gh, gw = g.shape
    c_in, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    plan = _plan((kh, kw), stride, padding, size, (gh, gw))
    if plan is None:
        return None
    (fh, fw), strides, pads, (off_h, off_w), (ah, aw), index = plan
    taps = torch.cat(
        [w.transpose(0, 1).reshape(c_in, c_out, kh * kw), w.new_zeros(c_in, c_out, 1)], 2
    )
    sub = taps[:, :, index]  # [c_in, c_out, fh, fw, ah, aw]
    sub = sub.permute(2, 3, 0, 1, 4, 5).reshape(fh * fw * c_in, c_out, ah, aw)
    out = F.conv2d(g, sub.contiguous(memory_format=torch.channels_last), None, strides, pads)
    y, x = size[0] // fh, size[1] // fw
    out = out[:, :, off_h : off_h + y, off_w : off_w + x]
    # [n, (fh, fw, c_in), y, x] -> [n, c_in, y*fh, x*fw], channels_last
    out = out.permute(0, 2, 3, 1).reshape(n, y, x, fh, fw, c_in).permute(0, 1, 3, 2, 4, 5)
    return out.reshape(n, size[0], size[1], c_in).permute(0, 3, 1, 2)


class _InputGrad(torch.autograd.Function):
    """The identity on z = conv2d(x.detach(), w), whose own node gives w its gradient (and is
    skipped where w's gradient is not asked for); this one gives x its gradient by phases."""

    @staticmethod
    def forward(
        ctx: Any, z: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: Any, padding: Any
    ) -> torch.Tensor:
        ctx.save_for_backward(w)
        ctx.conf = (tuple(stride), tuple(padding), (x.shape[2], x.shape[3]))
        return z  # returned as is: a view of z for autograd, not to be modified in place

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> Any:
        (w,) = ctx.saved_tensors
        stride, padding, size = ctx.conf
        g_x = None
        if ctx.needs_input_grad[1]:
            g_x = input_grad(
                g.contiguous(memory_format=torch.channels_last), w, stride, padding, size
            )
        return g, g_x, None, None, None


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `conv2d(x, w, ...)` would compute x's gradient by phases: a narrow float32
    channels_last input on the CPU that needs a gradient, a kernel larger than 1x1, outside
    autocast (whose bfloat16 convolutions have no such plan)."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and x.dim() == 4
        and w.shape[1] <= MAX_CHANNELS
        and (w.shape[2], w.shape[3]) != (1, 1)
        and x.requires_grad
        and torch.is_grad_enabled()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether `forward(conv, x)` computes x's gradient by phases."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.bias is None
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and usable(x, conv.weight)
    )


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: Any, padding: Any) -> torch.Tensor:
    """F.conv2d(x, w, None, stride, padding), x's gradient by phases where the plan applies.
    The result must not be modified in place (a batch norm follows it here)."""
    stride, padding = tuple(stride), tuple(padding)
    size = (x.shape[2], x.shape[3])
    kernel = (w.shape[2], w.shape[3])
    out = tuple((size[i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(2))
    if _plan(kernel, stride, padding, size, out) is None:
        return F.conv2d(x, w, None, stride, padding)
    z = F.conv2d(x.detach(), w, None, stride, padding)
    return cast(torch.Tensor, _InputGrad.apply(z, x, w.detach(), stride, padding))


def forward(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)`, by `conv2d` where `applies` (then not to be modified in place)."""
    if applies(conv, x):
        c = conv
        assert isinstance(c, nn.Conv2d)
        return conv2d(x, c.weight, c.stride, c.padding)
    return cast(torch.Tensor, conv(x))
