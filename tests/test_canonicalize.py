"""The canonicalizing pass: fixture pairs (a spec's IR before -> after), idempotence, supernets
untouched, the pipeline and prune run it, the verifier and the derived .pnas round trip.

Fixtures: tests/golden/canonicalize/<name>.pnas, whose first line says `# changes: ...` or
`# unchanged: ...`, and <name>.ir.txt, the IR the other passes give, then the canonical IR (or
`# canonicalize: unchanged`). Regenerate them with
`PARNASC_REGEN=1 pytest tests/test_canonicalize.py` after an intended change, and review the diff.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from parnasc.ir import passes
from parnasc.ir.frontend import compile_file, compile_source
from parnasc.ir.graph import IR, Node, build, print_ir
from parnasc.ir.passes.canonicalize import canonicalize, is_concrete
from parnasc.ir.passes.costs import annotate_costs
from parnasc.ir.passes.prune import prune
from parnasc.ir.passes.shapes import infer_shapes
from parnasc.ir.passes.verify import VerifyError, verify
from parnasc.ir.to_pnas import concrete_spec_text
from parnasc.lang.parse import parse_file
from parnasc.lang.spec import resolve

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "golden" / "canonicalize"
CASES = sorted(FIXTURES.glob("*.pnas"))
SPECS = sorted([*(ROOT / "specs").glob("*.pnas"), *(ROOT / "examples").glob("*.pnas")])
UNCHANGED = "# canonicalize: unchanged\n"


def _before(path: Path) -> IR:
    """The IR of `path` through every pass but canonicalization."""
    return passes.run(build(resolve(parse_file(path))), (infer_shapes, annotate_costs))


def _settings() -> dict[str, object]:
    return {
        "alpha": 0.28,
        "beta": 0.01,
        "cost": "flops",
        "epochs": 1,
        "warmup": 0,
        "mode": "alternate",
        "seed": 0,
        "cores": 2,
        "weights": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "wd": 0.0, "nesterov": 0},
    }


def test_there_are_fixtures() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_fixture(case: Path) -> None:
    before = _before(case)
    text = print_ir(before)
    after = passes.run(before, (canonicalize,))
    changed = print_ir(after) != text
    got = text + "\n" + (print_ir(after) if changed else UNCHANGED)
    golden = case.with_suffix(".ir.txt")
    if os.environ.get("PARNASC_REGEN") == "1":
        golden.write_text(got, encoding="utf-8")
    assert golden.is_file(), f"no golden file {golden}; run with PARNASC_REGEN=1"
    assert got == golden.read_text(encoding="utf-8")
    first = case.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# changes:" if changed else "# unchanged:"), first


@pytest.mark.parametrize("case", [*CASES, *SPECS], ids=lambda p: p.stem)
def test_compile_runs_it_and_it_is_idempotent(case: Path) -> None:
    _, ir = compile_file(case)
    assert print_ir(ir) == print_ir(passes.run(_before(case), (canonicalize,)))
    again = IR.from_json(ir.to_json())
    assert canonicalize(again) == ir
    verify(ir)
    assert IR.from_json(json.loads(ir.dumps())) == ir


@pytest.mark.parametrize("case", [*CASES, *SPECS], ids=lambda p: p.stem)
def test_supernets_are_untouched(case: Path) -> None:
    before = _before(case)
    if is_concrete(before):
        return
    assert canonicalize(IR.from_json(before.to_json())) == before


def test_spans_survive_and_the_head_is_smaller() -> None:
    case = FIXTURES / "last_sync_concat.pnas"
    before, (_, after) = _before(case), compile_file(case)
    assert [n.span for n in after.nodes()] == [n.span for n in before.nodes()]
    assert after.data_inputs("merge") == ["b.sync"]
    assert after.node("merge").out_shape == (8, 4, 4)
    fc, fc_before = after.node("head.2"), before.node("head.2")
    assert fc.in_shapes == [(8,)] and fc_before.in_shapes == [(16,)]
    assert fc.candidates[0].cost.params == 8 * 16 + 16
    assert fc_before.candidates[0].cost.params == 16 * 16 + 16
    assert after.node("merge").cost.act_bytes * 2 == before.node("merge").cost.act_bytes


def test_prune_gives_the_canonical_ir_of_the_derived_spec() -> None:
    """Pruned IR == the compiled derived .pnas (which still says `merge concat`), node by node."""
    path = ROOT / "specs" / "cifar.pnas"
    spec, ir = compile_file(path)
    rng = random.Random(0)
    labels = {n.id: [c.label for c in n.candidates] for n in ir.nodes() if n.kind == "block"}
    for last in ("concat", "none"):
        blocks = [n for n in ir.nodes() if n.id in labels]
        choices = {f"{n.level}:p{n.path}": rng.choice(labels[n.id]) for n in blocks}
        choices |= {f"{lv}:sync": rng.choice(["concat", "none"]) for lv in ir.levels}
        choices["l4:sync"] = last
        pruned = prune(ir, choices)
        verify(pruned)
        assert (pruned.data_inputs("merge") == ["l4.sync"]) == (last == "concat")
        text = concrete_spec_text(pruned, spec, {}, _settings())
        assert "  merge concat\n" in text
        _, derived = compile_source(text, "derived.pnas")
        assert _structure(derived) == _structure(pruned)
        assert canonicalize(pruned) == pruned


def _structure(ir: IR) -> list[tuple[object, ...]]:
    """The IR without spans and metadata: ids, kinds, edges, shapes and costs."""

    def row(n: Node) -> tuple[object, ...]:
        costs = [c.cost for c in n.candidates] or [n.cost]
        labels = [c.label for c in n.candidates]
        return n.id, n.kind, n.mode, n.combiner, labels, n.in_shapes, n.out_shape, costs

    return [(*row(n), ir.edges(n.id)) for n in ir.nodes()]


def test_verifier_accepts_one_merge_input_only_from_an_always_on_sync() -> None:
    _, ir = compile_file(FIXTURES / "no_last_sync.pnas")
    ir.remove_edge("b.p2", "merge", 1)
    with pytest.raises(VerifyError, match="merge has 1 data inputs, expected 2"):
        verify(ir)


def test_remove_edge_names_a_missing_edge() -> None:
    _, ir = compile_file(FIXTURES / "no_last_sync.pnas")
    with pytest.raises(KeyError, match=re.escape("no data edge b.p1 -> merge at port 1")):
        ir.remove_edge("b.p1", "merge", 1)
