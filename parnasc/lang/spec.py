"""The validated Spec and how to get one: `resolve(parse(text))`.

The models live in `parnasc.lang.model`, the resolver in `parnasc.lang.resolve`, the size bounds
in `parnasc.lang.limits`; this module is where the rest of parnasc imports them from.
"""

from parnasc.lang.limits import (
    MAX_BLOCKS,
    MAX_INPUT_VALUES,
    MAX_LEVELS,
    MAX_NUMBER,
    MAX_PARAM,
    MAX_PATHS,
)
from parnasc.lang.model import (
    SYNC_MODES,
    HeadSpec,
    LevelSpec,
    OpSpec,
    OptimSpec,
    SearchSpec,
    Spec,
    SyncSpec,
    TargetSpec,
    spec_hash,
)
from parnasc.lang.resolve import resolve
from parnasc.lang.resolve.constants import Number, size_bytes

__all__ = [
    "MAX_BLOCKS",
    "MAX_INPUT_VALUES",
    "MAX_LEVELS",
    "MAX_NUMBER",
    "MAX_PARAM",
    "MAX_PATHS",
    "SYNC_MODES",
    "HeadSpec",
    "LevelSpec",
    "Number",
    "OpSpec",
    "OptimSpec",
    "SearchSpec",
    "Spec",
    "SyncSpec",
    "TargetSpec",
    "resolve",
    "size_bytes",
    "spec_hash",
]
