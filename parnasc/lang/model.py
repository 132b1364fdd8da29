"""The validated Spec of a .pnas file (pydantic models, frozen), and its hash.

Every value keeps the span it came from, so errors found later (in the IR passes) point at the
.pnas line. `parnasc.lang.resolve` makes a Spec from a syntax tree.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from parnasc.errors import Span
from parnasc.lang import ops
from parnasc.lang.fmt import canonical_text
from parnasc.lang.parse import parse
from parnasc.lang.syntax import Document

SYNC_MODES = ("always", "search", "none")


class OpSpec(BaseModel):
    """One operation with all parameters resolved (defaults filled)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    params: dict[str, Any]
    span: Span | None = None

    @property
    def label(self) -> str:
        return ops.canonical(self.kind, self.params, hidden=("out", "stride"))


class SyncSpec(BaseModel):
    """The sync site after a level: always there or searchable, and how the paths combine."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["always", "search"]
    combiner: Literal["sum", "concat"]
    span: Span | None = None


class LevelSpec(BaseModel):
    """A level: output channels, stride, and the candidate ops of each path (index 0 = path 1)."""

    model_config = ConfigDict(frozen=True)

    label: str
    out: int
    stride: int
    candidates: list[list[OpSpec]]
    sync: SyncSpec | None = None
    span: Span | None = None


class HeadSpec(BaseModel):
    """The head: how the paths merge, then its operations."""

    model_config = ConfigDict(frozen=True)

    merge: Literal["sum", "concat"] = "concat"
    ops: list[OpSpec]
    span: Span | None = None


class TargetSpec(BaseModel):
    """The `target { ... }` section: cores, and memory per core in bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cores: int | None = Field(default=None, ge=1, le=1024)
    memory: int | None = Field(default=None, ge=1, le=2**60, description="bytes per core")


class OptimSpec(BaseModel):
    """An optimizer: `sgd(lr=0.05, momentum=0.9, wd=3e-4)` or `adam(lr=3e-4, wd=1e-3)`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["sgd", "adam", "adamw"]
    lr: float = Field(gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    wd: float = Field(default=0.0, ge=0, lt=1)
    nesterov: int = Field(default=0, ge=0, le=1)


class SearchSpec(BaseModel):
    """The `search { ... }` section; every field can be overridden on the command line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(default=1.0, ge=0, le=1e6)
    beta: float = Field(default=0.01, ge=0, le=1e6)
    cost: Literal["flops", "latency"] = "flops"
    epochs: int = Field(default=10, ge=1, le=10000)
    warmup: int = Field(default=1, ge=0, le=10000)
    batch: int = Field(default=128, ge=1, le=65536)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    mode: Literal["joint", "alternate"] = "joint"
    weights: OptimSpec = OptimSpec(name="sgd", lr=0.05, momentum=0.9, wd=3e-4, nesterov=1)
    arch: OptimSpec = OptimSpec(name="adam", lr=0.03, wd=0.0)
    tau: float = Field(default=1.0, ge=1e-3, le=100)  # docs/search.md, "Deciding"
    tau_end: float = Field(default=0.02, ge=1e-3, le=100)
    retrain_epochs: int = Field(default=10, ge=0, le=10000)


class Spec(BaseModel):
    """A validated supernet spec."""

    model_config = ConfigDict(frozen=True)

    name: str
    input: tuple[int, int, int]
    classes: int
    paths: int
    target: TargetSpec = TargetSpec()
    stem: list[OpSpec]
    levels: list[LevelSpec]
    head: HeadSpec
    search: SearchSpec = SearchSpec()
    file: str = "<input>"
    spec_hash: str = ""
    spans: dict[str, Span] = Field(default_factory=dict)  # "paths", "input", ... -> span

    @property
    def concrete(self) -> bool:
        """One candidate per block and no searchable sync site."""
        return all(len(c) == 1 for lv in self.levels for c in lv.candidates) and all(
            lv.sync is None or lv.sync.mode == "always" for lv in self.levels
        )


def spec_hash(source: Document | str) -> str:
    """sha256 of the canonical text without comments: formatting and comments do not change it."""
    doc = parse(source) if isinstance(source, str) else source
    return hashlib.sha256(canonical_text(doc.stmts).encode()).hexdigest()
