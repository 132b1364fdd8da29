"""The arithmetic of a search's or a retraining's training steps (`--precision`): `fp32`, or
`bf16` mixed precision (torch autocast: convolutions and matrix products in bfloat16, weights,
optimizer states, batch-norm statistics and losses in float32). `auto`, the default, takes
bf16 where the device computes it natively (AVX512-BF16 or AMX on the CPU, a CUDA device that
supports it) and fp32 elsewhere, where bf16 would be emulated and slower. Like the thread
count it is a speed setting recorded with the run; evaluation is always in float32."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from parnasc.errors import OptionError

PRECISIONS = ("auto", "bf16", "fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 convolutions in hardware."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def resolve_precision(name: str | None, device: torch.device | str) -> str:
    """`bf16` or `fp32` for `--precision name` on `device` (None: `auto`); a word outside
    PRECISIONS is a one-line OptionError."""
    name = name or "auto"
    if name not in PRECISIONS:
        raise OptionError(f"--precision {name}: expected one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    return name


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """The context a training step's forward pass runs in: torch autocast to bfloat16 for
    `bf16`, nothing for `fp32`."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def forward(net: nn.Module, x: torch.Tensor, precision: str) -> torch.Tensor:
    """`net(x)` for a training step: in `precision` on x's device, the logits as float32
    (what the losses take)."""
    with autocast(precision, x.device):
        return net(x).float()


__all__ = ["PRECISIONS", "autocast", "forward", "native_bf16", "resolve_precision"]
