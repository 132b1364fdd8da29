"""The front end in one call: text -> syntax tree -> Spec -> IR with shapes and costs.

Each entry runs the whole pipeline with the cyclic garbage collector paused once
(parnasc.ir.graph.gc_paused); the steps themselves do not touch it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from parnasc.errors import PnasError, Span
from parnasc.ir import passes
from parnasc.ir.graph import IR, build, gc_paused
from parnasc.lang.parse import parse, parse_bytes, parse_file
from parnasc.lang.spec import Spec, resolve
from parnasc.lang.syntax import Document


def compile_source(text: str, file: str = "<input>") -> tuple[Spec, IR]:
    """Compile .pnas text; raises PnasError on any user error."""
    with gc_paused():
        return _lower(parse(text, file))


def compile_file(path: str | Path) -> tuple[Spec, IR]:
    """Read and compile a .pnas file."""
    with gc_paused():
        return _lower(parse_file(path))


def compile_bytes(data: bytes, file: str = "<input>") -> tuple[Spec, IR]:
    """Compile the bytes of a .pnas file (e.g. read from git); `file` names it in diagnostics."""
    with gc_paused():
        return _lower(parse_bytes(data, file))


def _lower(doc: Document) -> tuple[Spec, IR]:
    """Resolve and lower a parsed document; PnasError carries the source for its carets."""
    try:
        spec = resolve(doc)
        ir = passes.run(build(spec))
    except PnasError as exc:
        exc.source = doc.source
        end = Span.end_of(doc.source)  # any diagnostic without a place: the end of the file
        exc.diagnostics = [d if d.span else replace(d, span=end) for d in exc.diagnostics]
        raise
    return spec, ir
