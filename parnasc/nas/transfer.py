"""Searched weights -> concrete network: the chosen candidates' weights of a supernet copied
into the network of the architecture derived from it.

A derived IR is canonical (parnasc.ir.passes.canonicalize): where the last sync is on, its merge
takes the synced tensor once, so the head's first fc has C inputs where the supernet's has P*C.
The supernet feeds that fc P identical copies of C channels, through channel-wise ops only, so
the concrete weight is the sum of the P column blocks of the supernet's: the same function.
"""

from __future__ import annotations

from typing import cast

from torch import nn

from parnasc.ir.graph import block_key
from parnasc.nas.lower import MixedOp, Net

# Modules that keep P identical channel blocks identical (gap is AdaptiveAvgPool2d + Flatten).
_CHANNELWISE = (nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.ReLU, nn.Identity)


class TransferError(ValueError):
    """The supernet's weights do not fit the concrete network."""


def transfer_weights(concrete: Net, supernet: Net, choices: dict[str, str]) -> None:
    """Copy the searched weights of the chosen candidates into the concrete network."""
    concrete.stem.load_state_dict(supernet.stem.state_dict())
    concrete.merge.load_state_dict(supernet.merge.state_dict())
    _load_head(concrete, supernet)
    for lv, comb in concrete.syncs.items():
        comb.load_state_dict(supernet.syncs[lv].state_dict())
    for p in range(1, concrete.n_paths + 1):
        for lv, block in cast(nn.ModuleDict, concrete.paths[f"p{p}"]).items():
            src = cast(nn.ModuleDict, supernet.paths[f"p{p}"])[lv]
            if isinstance(src, MixedOp):
                key = block_key(lv, p)
                src = src.ops[supernet.choices[key].index(choices[key])]
            block.load_state_dict(src.state_dict())


def _load_head(concrete: Net, supernet: Net) -> None:
    """The head's weights; where the concrete merge takes one tensor of the supernet's P, the
    first weighted layer's P column blocks summed (see the module docstring)."""
    copies = supernet.merge.inputs // concrete.merge.inputs
    if copies == 1:
        concrete.head.load_state_dict(supernet.head.state_dict())
        return
    if concrete.merge.kind != "concat" or concrete.merge.inputs != 1:
        raise TransferError(
            f"the concrete merge takes {concrete.merge.inputs} of the supernet's "
            f"{supernet.merge.inputs} inputs; only a concat merge of one tensor folds"
        )
    state = supernet.head.state_dict()
    first = _first_weighted(concrete.head)
    weight = f"{first}.weight"
    w = state[weight]
    state[weight] = w.reshape(w.shape[0], copies, w.shape[1] // copies).sum(dim=1)
    concrete.head.load_state_dict(state)


def _first_weighted(head: nn.Module) -> str:
    """The name of the head's first module with weights, which must be an nn.Linear reached
    through channel-wise modules only; else a TransferError."""
    for name, mod in head.named_modules():
        if isinstance(mod, nn.Linear):
            return name
        if next(mod.parameters(recurse=False), None) is not None:
            raise TransferError(f"head layer {name} ({type(mod).__name__}) cannot fold the merge")
        if not isinstance(mod, (nn.Sequential, *_CHANNELWISE)):
            raise TransferError(
                f"head module {name} ({type(mod).__name__}) is not channel-wise: the merge's "
                "copies cannot be folded past it"
            )
    raise TransferError("the head has no fc layer to fold the merge's copies into")


__all__ = ["TransferError", "transfer_weights"]
