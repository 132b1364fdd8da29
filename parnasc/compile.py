"""The front end in one call: text -> syntax tree -> Spec -> IR with shapes and costs."""

from __future__ import annotations

from pathlib import Path

from parnasc import passes
from parnasc.errors import PnasError
from parnasc.ir import IR, build
from parnasc.parse import parse, parse_file
from parnasc.spec import Spec, resolve


def compile_source(text: str, file: str = "<input>") -> tuple[Spec, IR]:
    """Compile .pnas text; raises PnasError (with the source attached) on any user error."""
    doc = parse(text, file)
    try:
        spec = resolve(doc)
        ir = passes.run(build(spec))
    except PnasError as exc:
        exc.source = text
        raise
    return spec, ir


def compile_file(path: str | Path) -> tuple[Spec, IR]:
    doc = parse_file(path)
    return compile_source(doc.source, str(path))
