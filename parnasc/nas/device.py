"""The device a search or a retraining runs on (`--device`): `cpu`, `cuda` or `cuda:N`,
by default CUDA where torch finds it, else the CPU. Like the thread count it is a speed
setting: runs record it as information, and a resume may use another device (float results
then differ in the last bits)."""

from __future__ import annotations

import re
from copy import copy
from typing import Any

import torch
from torch import nn

from parnasc.errors import OptionError

_NAME = re.compile(r"cpu|cuda(?::(\d+))?")


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device `name` names (None: CUDA if available, else the CPU), with its index for
    CUDA; a malformed name, or CUDA (or a CUDA index) this machine lacks, is a one-line
    OptionError naming `--device`."""
    if name is None:
        return resolve_device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    text = str(name)
    m = _NAME.fullmatch(text)
    if m is None:
        raise OptionError(f"--device {text}: expected cpu, cuda or cuda:N")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise OptionError(
            f"--device {text}: CUDA is not available on this machine (torch {torch.__version__})"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if m.group(1) is None else int(m.group(1))
    if index >= count:
        some = f"{count} CUDA devices (cuda:0 to cuda:{count - 1})"
        if count == 1:
            some = "1 CUDA device (cuda:0)"
        raise OptionError(f"--device {text}: this machine has {some}")
    return torch.device("cuda", index)


def module_device(net: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for a module with none)."""
    for p in net.parameters():
        return p.device
    for b in net.buffers():
        return b.device
    return torch.device("cpu")


def on_cpu(obj: Any) -> Any:
    """`obj` with every tensor in it (nested dicts, lists, tuples) on the CPU, so a file
    saved from it loads without the device; dict types and their attributes (a state dict's
    `_metadata`) are kept. On the CPU already, the tensors are the same objects."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        out = copy(obj)
        for k, v in obj.items():
            out[k] = on_cpu(v)
        return out
    if isinstance(obj, list):
        return [on_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(on_cpu(v) for v in obj)
    return obj


__all__ = ["module_device", "on_cpu", "resolve_device"]
