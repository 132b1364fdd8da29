"""`parnasc check --provenance DERIVED SUPERNET`: a derived spec is an unedited architecture of
the supernet's space, derived from the supernet as it is now."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import parnasc
from parnasc.errors import PnasError
from parnasc.ir.frontend import compile_file, compile_source
from parnasc.ir.graph import IR, arch_key
from parnasc.ir.passes.prune import prune
from parnasc.ir.provenance import ARCHITECTURE_PREFIX, architecture_hash, check_provenance
from parnasc.ir.to_pnas import concrete_spec_text
from parnasc.lang.fmt import canonical_text
from parnasc.lang.parse import parse

RunCli = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "tests" / "diff" / "base.pnas"
RECORDED = sorted(ROOT.glob("benchmarks/results/*/derived.pnas"))


def _probabilities(ir: IR, pick: int) -> dict[str, list[float]]:
    """Probabilities that make candidate `pick % n` win every block and keep every other
    searchable sync site."""
    probs: dict[str, list[float]] = {}
    for i, n in enumerate(n for n in ir.nodes() if n.kind in ("block", "sync")):
        if n.kind == "block" and len(n.candidates) > 1:
            k = len(n.candidates)
            p = [0.1 / (k - 1)] * k
            p[pick % k] = 0.9
            probs[arch_key(n.id)] = p
        elif n.kind == "sync" and n.mode == "search":
            probs[arch_key(n.id)] = [0.7, 0.3] if i % 2 else [0.2, 0.8]
    return probs


def _derive(ir: IR, probs: dict[str, list[float]]) -> dict[str, str]:
    out = {}
    for n in ir.nodes():
        key = arch_key(n.id)
        if key in probs and n.kind == "block":
            out[key] = n.candidates[max(range(len(probs[key])), key=probs[key].__getitem__)].label
        elif key in probs:
            out[key] = str(n.combiner) if probs[key][0] > probs[key][1] else "none"
    return out


@pytest.fixture
def derived(tmp_path: Path) -> Path:
    """A spec derived from tests/diff/base.pnas as a search writes it."""
    spec, ir = compile_file(BASE)
    probs = _probabilities(ir, pick=1)
    settings = {
        "alpha": 0.5, "beta": 0.01, "cost": "flops", "epochs": 4, "warmup": 1, "mode": "joint",
        "seed": 0, "cores": 2, "weights": spec.search.weights.model_dump(),
    }  # fmt: skip
    text = concrete_spec_text(prune(ir, _derive(ir, probs)), spec, probs, settings)
    out = tmp_path / "derived.pnas"
    out.write_text(text)
    return out


def problems(derived: Path, supernet: Path | str = BASE) -> list[str]:
    try:
        parnasc.check_provenance(derived, supernet)
    except PnasError as exc:
        return [f"{d.span.line if d.span else 0}: {d.message}" for d in exc.diagnostics]
    return []


def edit(path: Path, old: str, new: str, count: int = 1) -> Path:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))
    return path


def test_a_derived_spec_passes(derived: Path) -> None:
    text = derived.read_text()
    assert text.startswith("pnas 1\n# Derived by parnasc ")
    assert f"{ARCHITECTURE_PREFIX}{architecture_hash(parse(text))}\n" in text
    p = parnasc.check_provenance(derived, BASE)
    assert p.source_hash == compile_file(BASE)[0].spec_hash
    assert p.architecture_hash == architecture_hash(parse(text))
    assert p.choices["b_1:p1"] == "sepconv(k=3)" and set(p.choices) >= {"b_1:sync", "wide:p2"}


def test_the_supernet_reformatted_still_matches(derived: Path, tmp_path: Path) -> None:
    """Comments and layout are not part of the hash; another spelling of the same meaning
    (constants, an unrolled repeat: tests/diff/reformatted.pnas) is another spec."""
    text = canonical_text(parse(BASE.read_text()).stmts)  # no comments, no blank lines
    relaid = tmp_path / "relaid.pnas"
    relaid.write_text("# the same supernet, laid out anew\n" + text.replace("\n", "\n\n"))
    assert problems(derived, relaid) == []
    (found,) = problems(derived, ROOT / "tests/diff/reformatted.pnas")
    assert found.startswith("3: derived from a spec with sha256 ")


def test_retraining_settings_may_be_tuned(derived: Path) -> None:
    edit(derived, "retrain_epochs 10", "retrain_epochs 40")
    assert problems(derived) == []


def test_an_edited_op_is_caught(derived: Path) -> None:
    text = derived.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("  path 1 ops sepconv(k=3)"))
    edit(derived, line, line.replace("sepconv(k=3)", "conv(k=3)"))
    found = problems(derived)
    assert found[0].startswith("4: the architecture was edited after the search: its sha256 is ")
    assert "level 'b_1' path 1 was edited after the search: conv(k=3) is not what its " in found[1]
    assert len(found) == 2


def test_older_derived_specs_without_the_architecture_hash(derived: Path) -> None:
    """The probability comments stand in for the hash (the recorded runs have no hash line)."""
    text = derived.read_text()
    hash_line = next(ln for ln in text.splitlines() if ln.startswith(ARCHITECTURE_PREFIX))
    edit(derived, hash_line + "\n", "")
    assert problems(derived) == []
    line = next(ln for ln in text.splitlines() if ln.startswith("  path 1 ops sepconv(k=3)"))
    edit(derived, line, line.replace("sepconv(k=3)", "conv(k=3)"))
    (found,) = problems(derived)
    assert "level 'b_1' path 1 was edited after the search" in found


def test_not_a_member(derived: Path) -> None:
    hash_line = next(
        ln for ln in derived.read_text().splitlines() if ln.startswith(ARCHITECTURE_PREFIX)
    )
    edit(derived, hash_line + "\n", "")  # what membership alone catches
    edit(derived, "path 2 ops sepconv(k=3)", "path 2 ops conv(k=7)")
    edit(derived, "  out 16\n  stride 2", "  out 32\n  stride 2")
    edit(derived, "sync always concat", "sync always sum")
    found = problems(derived)
    assert any("level 'b_1' path 2: conv(k=7) is not a candidate of " in f for f in found), found
    assert any("level 'wide': out 32, but " in f and "has out 16" in f for f in found), found
    assert any("the sync after 'wide' combines with sum" in f for f in found), found


def test_a_removed_fixed_sync_and_an_added_one(derived: Path) -> None:
    hash_line = next(
        ln for ln in derived.read_text().splitlines() if ln.startswith(ARCHITECTURE_PREFIX)
    )
    edit(derived, hash_line + "\n", "")
    edit(derived, "sync always concat\n", "")
    found = problems(derived)
    assert any("always syncs after 'wide'; this spec has no sync there" in f for f in found)
    text = derived.read_text()
    assert "# no sync after b_1:" in text  # a sync the search removed, put back by hand
    edit(derived, "# no sync after b_1:", "sync always sum\n# no sync after b_1:")
    added = "the sync after 'b_1' was added after the search"
    assert any(added in f for f in problems(derived))


def test_another_supernet(derived: Path) -> None:
    (found,) = problems(derived, ROOT / "tests/diff/settings.pnas")  # other settings, same space
    assert found.startswith("3: derived from a spec with sha256 ")
    found_all = problems(derived, ROOT / "tests/diff/constants.pnas")
    assert found_all[0].startswith("3: derived from a spec with sha256 ")
    assert any("the stem is conv(k=3, out=8), but " in f for f in found_all)


def test_a_supernet_is_not_derived() -> None:
    assert problems(BASE) == [
        "1: no '# source spec sha256 ...' line in the header: not a spec a search derived",
        "22: not a concrete architecture: 8 block(s) with several candidates, 2 searchable "
        "sync site(s)",
    ]


@pytest.mark.parametrize("recorded", RECORDED, ids=lambda p: p.parent.name)
def test_recorded_runs_are_architectures_of_the_cifar_supernet(recorded: Path) -> None:
    """Runs derived from specs/cifar.pnas as it is now are members of its space; a run of an
    earlier version is reported by the hash check first (what the hash check is for)."""
    found = problems(recorded, ROOT / "specs/cifar.pnas")
    header = next(ln for ln in recorded.read_text().splitlines() if "source spec sha256" in ln)
    if header.endswith(compile_file(ROOT / "specs/cifar.pnas")[0].spec_hash):
        assert found == []
    else:
        # the hash check reports the edit first; what else differs depends on the edit
        assert found and "derived from a spec with sha256 " in found[0]


def test_cli(derived: Path, run_cli: RunCli, tmp_path: Path) -> None:
    res = run_cli("check", "--provenance", derived, BASE)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    edit(derived, "retrain_epochs 10", "retrain_epochs 11")
    edit(derived, "  out 16\n  stride 2", "  out 16\n  stride 1")
    res = run_cli("check", "--provenance", derived.name, BASE, cwd=derived.parent)
    assert res.returncode == 1
    first = res.stderr.splitlines()[0]
    assert first.startswith("derived.pnas:4:23: error: the architecture was edited after the")
    assert "Traceback" not in res.stderr
    res = run_cli("check", "--provenance", derived)
    assert res.returncode == 1
    assert res.stderr == (
        "parnasc: error: --provenance takes two files, DERIVED.pnas SUPERNET.pnas (got 1)\n"
    )


def test_every_derivation_passes() -> None:
    """Derived under other probabilities (other ops, other sync sites kept), each passes."""
    spec, ir = compile_file(BASE)
    for pick in range(4):
        probs = _probabilities(ir, pick)
        settings = {
            "alpha": 1.0, "beta": 0.0, "cost": "flops", "epochs": 1, "warmup": 0, "mode": "joint",
            "seed": pick, "cores": 2, "weights": spec.search.weights.model_dump(),
        }  # fmt: skip
        text = concrete_spec_text(prune(ir, _derive(ir, probs)), spec, probs, settings)
        d_spec, _ = compile_source(text, "d.pnas")
        result = check_provenance(parse(text, "d.pnas"), d_spec, spec)
        assert result.choices == _derive(ir, probs)
