"""Syntax tree -> validated Spec: constants evaluated, repeats expanded, every value checked.

One module per concern, sharing a `Scope` (the diagnostics collector and the constants):
`constants` (const, expressions, setting values), `calls` (operation calls), `levels` (the level
sequence, repeats, per-path candidates, syncs), `sections` (target, search, head) and
`statements` (the document as a whole; `resolve`). Independent errors are collected and
reported together.
"""

from parnasc.lang.resolve.statements import resolve

__all__ = ["resolve"]
