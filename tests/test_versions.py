"""The language version line `pnas N`: read, checked, written by fmt and by derived specs, not
part of the spec hash. (The located errors are golden cases in tests/errors/version_*.pnas.)"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from parnasc.errors import PnasError
from parnasc.ir.diff import spec_diff
from parnasc.ir.frontend import compile_file, compile_source
from parnasc.ir.passes.prune import prune
from parnasc.ir.to_pnas import concrete_spec_text
from parnasc.lang import versions
from parnasc.lang.fmt import format_document
from parnasc.lang.parse import parse
from parnasc.lang.spec import spec_hash

RunCli = Callable[..., subprocess.CompletedProcess[str]]
ROOT = Path(__file__).resolve().parent.parent
CHECKED_IN = sorted([*ROOT.glob("specs/*.pnas"), *ROOT.glob("examples/*.pnas")])
MINI = "model m\ninput 3x8x8\nclasses 2\npaths 1\nlevel a { out 4 ops conv(k=3) }\nhead { gap fc(out=classes) }\n"  # noqa: E501


def error(text: str) -> tuple[str, str]:
    with pytest.raises(PnasError) as info:
        parse(text, "v.pnas")
    (d,) = info.value.diagnostics
    assert d.span is not None
    return f"{d.span.line}:{d.span.column}: {d.message}", d.hint or ""


@pytest.mark.parametrize("spec", CHECKED_IN, ids=lambda p: p.name)
def test_checked_in_specs_state_the_current_version(spec: Path) -> None:
    doc = parse(spec.read_text(encoding="utf-8"))
    assert doc.version is not None and doc.version.number == versions.CURRENT


def test_the_version_line_is_not_part_of_the_meaning() -> None:
    with_line = "# c\npnas 1\n" + MINI
    assert parse(with_line).stmts == parse(MINI).stmts
    assert spec_hash(with_line) == spec_hash(MINI)
    assert not spec_diff(compile_source(with_line), compile_source(MINI)).changed
    # adding the line to a spec keeps its hash: runs recorded before it still match
    for spec in CHECKED_IN:
        text = spec.read_text(encoding="utf-8")
        assert text.startswith("pnas 1\n")
        assert spec_hash(text) == spec_hash(text.removeprefix("pnas 1\n"))


def test_fmt_writes_the_line_and_keeps_a_stated_one() -> None:
    assert format_document(parse(MINI)).startswith("pnas 1\nmodel m\n")
    assert format_document(parse("# about m\n" + MINI)).startswith("pnas 1\n# about m\nmodel m")
    kept = "# about m\n\npnas 1  # the language\nmodel m\n"
    assert format_document(parse(kept)) == kept
    assert format_document(parse("pnas   1 model m")) == "pnas 1\nmodel m\n"
    assert format_document(parse("")) == "" and format_document(parse("# x\n")) == "# x\n"


def test_fmt_check_asks_for_the_line(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "old.pnas").write_text(MINI)
    res = run_cli("fmt", "--check", "old.pnas", cwd=tmp_path)
    assert res.returncode == 1 and "old.pnas: would reformat" in res.stderr
    assert run_cli("check", "old.pnas", cwd=tmp_path).returncode == 0  # still version 1
    assert run_cli("fmt", "old.pnas", cwd=tmp_path).returncode == 0
    assert (tmp_path / "old.pnas").read_text().startswith("pnas 1\n")


def test_future_versions_fail_at_the_number() -> None:
    assert error("pnas 2\n" + MINI)[0] == (
        "1:6: this spec is written for pnas language version 2; this parnasc reads version 1"
    )
    # before the syntax of the rest is looked at
    assert error("# new\npnas 12\nmodel m { whatever => 3 }\n")[0].startswith(
        "2:6: this spec is written for pnas language version 12;"
    )
    assert "version 123456...(40 digits);" in error("pnas " + "1234567890" * 4 + "\n" + MINI)[0]
    assert error("pnas 0\n" + MINI) == (
        "1:6: there is no pnas language version 0; the first is 1",
        "write 'pnas 1'",
    )


def test_the_line_comes_first() -> None:
    where, hint = error(MINI + "pnas 1\n")
    assert where.startswith("7:1: unexpected 'pnas'")
    assert hint == "the version line 'pnas 1' comes first in the file, before every statement"
    expected = "1:6: unexpected 'model'; expected a version number such as 1"
    assert error("pnas model m")[0] == expected
    assert error("pnas 1.5\n" + MINI)[0].startswith("1:7: unexpected character '.'")


def test_an_old_version_no_longer_read_says_what_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How a later parnasc refuses a version it no longer reads as written (none yet)."""
    monkeypatch.setattr(versions, "CURRENT", 2)
    monkeypatch.setattr(versions, "UPGRADES", {1: ("write 'sync none' as nothing",)})
    where, hint = error("pnas 1\n" + MINI)
    assert where == (
        "1:6: pnas language version 1 is no longer read as written: write 'sync none' as nothing"
    )
    assert hint == "make these changes, then write 'pnas 2'"
    assert error(MINI)[0].startswith("1:1: pnas language version 1 is no longer read")  # implicit
    monkeypatch.setattr(versions, "UPGRADES", {})
    assert parse("pnas 1\n" + MINI).version is not None  # an older version read as written
    assert parse("pnas 2\n" + MINI).version is not None


def test_derived_specs_carry_the_line() -> None:
    spec, ir = compile_file(ROOT / "specs/cifar.pnas")
    choices = {f"{lv}:p{p}": "conv(k=3)" for lv in ir.levels for p in (1, 2)}
    choices.update({f"{lv}:sync": "none" for lv in ir.levels})
    settings = {
        "alpha": 0.28, "beta": 0.01, "cost": "flops", "epochs": 1, "warmup": 0,
        "mode": "joint", "seed": 0, "cores": 2, "weights": spec.search.weights.model_dump(),
    }  # fmt: skip
    text = concrete_spec_text(prune(ir, choices), spec, {}, settings)
    assert text.startswith("pnas 1\n# Derived by parnasc ")
    assert format_document(parse(text)) == text
