"""Searched weights -> concrete network: the chosen candidates' weights of a supernet copied
into the network of the architecture derived from it."""

from __future__ import annotations

from typing import cast

from torch import nn

from parnasc.ir.graph import block_key
from parnasc.nas.lower import MixedOp, Net


def transfer_weights(concrete: Net, supernet: Net, choices: dict[str, str]) -> None:
    """Copy the searched weights of the chosen candidates into the concrete network."""
    own = {"stem": concrete.stem, "head": concrete.head, "merge": concrete.merge}
    for name, mod in own.items():
        mod.load_state_dict(getattr(supernet, name).state_dict())
    for lv, comb in concrete.syncs.items():
        comb.load_state_dict(supernet.syncs[lv].state_dict())
    for p in range(1, concrete.n_paths + 1):
        for lv, block in cast(nn.ModuleDict, concrete.paths[f"p{p}"]).items():
            src = cast(nn.ModuleDict, supernet.paths[f"p{p}"])[lv]
            if isinstance(src, MixedOp):
                key = block_key(lv, p)
                src = src.ops[supernet.choices[key].index(choices[key])]
            block.load_state_dict(src.state_dict())
