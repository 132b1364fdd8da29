"""Diagnostics: golden error files, exit codes, tracebacks, and the Diagnostic/Collector API.

Golden files: tests/errors/<name>.pnas is a bad spec and <name>.err the exact stderr of
`parnasc check <name>.pnas` run inside tests/errors. Regenerate with PARNASC_REGEN=1 and review
every changed .err by eye: the message must be clear and the line:col right.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from parnasc import cli
from parnasc.errors import Collector, Diagnostic, PnasError, Span, did_you_mean, source_lines
from parnasc.ir.frontend import compile_source

RunCli = Callable[..., subprocess.CompletedProcess[str]]  # the `run_cli` fixture (conftest.py)
ROOT = Path(__file__).resolve().parent.parent
ERRORS = ROOT / "tests" / "errors"
CASES = sorted(p.stem for p in ERRORS.glob("*.pnas"))
REGEN = os.environ.get("PARNASC_REGEN") == "1"
LOCATED = re.compile(r"^(?P<file>[^:\s]+\.pnas):(?P<line>\d+):(?P<col>\d+): error: ", re.M)


def check_stderr(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run `parnasc check <name>.pnas` in-process (the CLI's own code path) in tests/errors."""
    monkeypatch.chdir(ERRORS)
    monkeypatch.delenv("PARNASC_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["parnasc", "check", f"{name}.pnas"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize("name", CASES)
def test_golden(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, err = check_stderr(name, monkeypatch, capsys)
    assert rc == 1, err
    golden = ERRORS / f"{name}.err"
    if REGEN:
        golden.write_text(err, encoding="utf-8")
    assert err == golden.read_text(encoding="utf-8")
    assert "Traceback" not in err
    source = source_lines((ERRORS / f"{name}.pnas").read_text(encoding="utf-8"))
    headers = [ln for ln in err.splitlines() if ": error: " in ln]
    assert headers and all(LOCATED.match(h) for h in headers), err  # every error is located
    for m in LOCATED.finditer(err):  # every location exists in the file
        assert m["file"] == f"{name}.pnas"
        line, col = int(m["line"]), int(m["col"])
        assert 1 <= line <= len(source)
        assert 1 <= col <= len(source[line - 1]) + 1


def test_golden_set_is_complete() -> None:
    assert len(CASES) >= 30
    errs = {p.stem for p in ERRORS.glob("*.err")}
    assert errs == set(CASES), "each .pnas needs its .err and no .err may be stale"
    for name in CASES:  # each case says what is wrong in its first line (the empty file aside)
        text = (ERRORS / f"{name}.pnas").read_text(encoding="utf-8")
        assert text.startswith("# ") or (name == "empty" and text == "")


def test_three_independent_errors_in_one_run() -> None:
    err = (ERRORS / "multiple_errors.err").read_text()
    places = {(m["line"], m["col"]) for m in LOCATED.finditer(err)}
    assert len(places) >= 3
    for text in ("unknown operation 'cnov'", "unknown combiner 'cat'", "got 0", "'epoch'"):
        assert text in err


def test_no_raw_token_names_in_syntax_errors() -> None:
    for name in CASES:
        err = (ERRORS / f"{name}.err").read_text()
        assert not re.search(r"\b(NAME|INT|FLOAT|RBRACE|LBRACE|VBAR|LPAR|RPAR|\$END)\b", err)


# --- exit codes and tracebacks through the real command ---------------------------------------


def test_user_error_exits_1_without_traceback(run_cli: RunCli) -> None:
    res = run_cli("check", "syntax_missing_brace.pnas", "op_typo.pnas", cwd=ERRORS)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr == (
        (ERRORS / "syntax_missing_brace.err").read_text() + (ERRORS / "op_typo.err").read_text()
    )


def test_shape_error_exits_1_without_traceback(run_cli: RunCli) -> None:
    res = run_cli("check", "shape_fc_before_gap.pnas", cwd=ERRORS)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("shape_fc_before_gap.pnas:")


def test_debug_shows_traceback(run_cli: RunCli) -> None:
    res = run_cli("check", "op_typo.pnas", cwd=ERRORS, env={"PARNASC_DEBUG": "1"})
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr
    assert "PnasError" in res.stderr


def test_valid_specs_pass_check(run_cli: RunCli) -> None:
    specs = sorted((ROOT / "specs").glob("*.pnas")) + sorted((ROOT / "examples").glob("*.pnas"))
    res = run_cli("check", *specs, cwd=ROOT)
    assert res.returncode == 0, res.stderr


def test_unreadable_file_is_a_user_error(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "latin.pnas").write_bytes(b"model caf\xe9\n")
    res = run_cli("check", "missing.pnas", "latin.pnas", cwd=tmp_path)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert "missing.pnas: error: cannot read file" in res.stderr  # no text: no line to name
    assert "latin.pnas:1:10: error: file is not UTF-8 text\n  model caf\ufffd\n           ^\n" in (
        res.stderr
    )


# --- Diagnostic and Collector ----------------------------------------------------------------


def test_render_points_at_span_with_tabs_expanded() -> None:
    d = Diagnostic("bad", "f.pnas", Span(line=2, column=5, end_line=2, end_column=8), "try x")
    assert d.render("model m\n\tout 123\n") == (
        "f.pnas:2:5: error: bad\n   out 123\n      ^^^\n  hint: try x"
    )


def test_render_multiline_span_underlines_to_end_of_first_line() -> None:
    d = Diagnostic("bad", "f.pnas", Span(line=1, column=3, end_line=3, end_column=2))
    assert d.render("a {\nb\n}\n").splitlines()[-1] == "    ^"


def test_render_without_span_or_source() -> None:
    assert Diagnostic("missing", "f.pnas").render("x") == "f.pnas: error: missing"
    d = Diagnostic("bad", None, Span(line=9, column=1, end_line=9, end_column=2))
    assert d.render(None) == "<input>:9:1: error: bad"
    assert d.render("one line") == "<input>:9:1: error: bad"  # line past the end: no excerpt


def test_collector_sorts_and_drops_exact_duplicates() -> None:
    c = Collector("f.pnas", "x\ny\n")
    late = Span(line=2, column=1, end_line=2, end_column=2)
    early = Span(line=1, column=1, end_line=1, end_column=2)
    c.error("b", late)
    c.error("b", late)  # a repeated level reports the same fault once
    c.error("a", early)
    c.error("no place")  # with the source known: at the end of the file, so last
    with pytest.raises(PnasError) as info:
        c.raise_if_any()
    assert [d.message for d in info.value.diagnostics] == ["a", "b", "no place"]
    assert info.value.diagnostics[-1].span == Span.point(2, 2)
    Collector("f.pnas").raise_if_any()  # nothing collected: no error


def test_did_you_mean() -> None:
    assert did_you_mean("levle", ["level", "head"]) == "did you mean 'level'?"
    assert did_you_mean("zzz", ["level", "head"]) is None


@pytest.mark.parametrize(
    ("text", "message", "where"),
    [
        ("paths 3", "duplicate 'paths' statement", "1:1"),
        ("const a = 1/0\nconst b = a", "division by zero", "1:13"),
        ("const a = 1\nconst a = 2", "constant 'a' is already defined", "2:7"),
        ("repeat 0 { }", "repeat count must be between 1 and 10000, got 0", "1:8"),
        ("search { alpha 1/4 epochs 2.5 }", "setting 'epochs' must be a whole number", "1:27"),
        ("search { weights 0.1 }", "search setting 'weights' must be an optimizer", "1:18"),
        ("search { arch adam(lrr=1) }", "optimizer 'adam' has no parameter 'lrr'", "1:20"),
        ("search { arch adam(wd=0.1) }", "optimizer 'adam' needs parameter 'lr'", "1:15"),
        ("search { mode fast }", "search setting 'mode' must be 'joint' or 'alternate'", "1:15"),
        ("level a { out 8 ops conv(k=3, k=5) }", "duplicate parameter 'k'", "1:31"),
        ("level a { out 8 ops conv(k=3, stride=2) }", "'stride' is set on the level", "1:31"),
        ("level a { out 8 ops conv(k=SMALL) }", "unknown constant 'SMALL'", "1:28"),
        ("level a { out 8 ops conv(k=3MiB) }", "parameter 'k' of 'conv' must be a number", "1:28"),
        ("level a { out 8 path 1 ops conv path 1 ops skip }", "duplicate 'path 1 ops'", "1:33"),
        ("head { merge sum merge concat gap }", "duplicate 'merge' in the head", "1:18"),
        ("head { gap fc(out=3) }", "the last fc must output one value per class", "1:12"),
        ("stem { skip }", "'skip' is a level operation; it cannot be used in a stem", "1:8"),
        ("level a { out 8 ops conv(k=3) }\nsync none sum", "'sync none' takes no combiner", "2:11"),
        ("input 0x32x32", "duplicate 'input' statement", "1:1"),
    ],
)
def test_semantic_error_points_at_value(text: str, message: str, where: str) -> None:
    base = "model m\ninput 3x32x32\nclasses 10\npaths 2\n"
    extra = "" if "level" in text else "level z { out 8 ops conv(k=3) }\n"
    head = "" if "head" in text else "head { gap fc(out=classes) }\n"
    with pytest.raises(PnasError) as info:
        compile_source(base + extra + head + text + "\n", "t.pnas")
    offset = len((base + extra + head).splitlines())
    hits = [d for d in info.value.diagnostics if message in d.message]
    assert hits, str(info.value)
    span = hits[0].span
    assert span is not None
    assert f"{span.line - offset}:{span.column}" == where, str(info.value)


def test_failed_constant_is_reported_once() -> None:
    with pytest.raises(PnasError) as info:
        compile_source(
            "model m\ninput 3x32x32\npaths 2\nconst w = 8/0\n"
            "level a { out w ops conv(k=3) }\nhead { gap fc(out=classes) }\n"
        )
    messages = [d.message for d in info.value.diagnostics]
    # `classes` is missing and `w` failed: neither cascades into "unknown constant"
    assert messages == ["division by zero", "missing 'classes' statement"]


# --- file-level errors, odd characters, long lines ---------------------------------------------


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("", (1, 1)),
        ("\n\n  \n", (1, 1)),
        ("# a\n# bc\n", (2, 5)),
        ("# a\n# bc", (2, 5)),  # cut short inside a comment
        ("model m\n\n\n", (1, 8)),
        ("model m\r\n", (1, 8)),
    ],
)
def test_end_of_file_span(source: str, where: tuple[int, int]) -> None:
    assert Span.end_of(source) == Span.point(*where)


@pytest.mark.parametrize(
    ("text", "message", "where"),
    [
        ("", "the spec has no statements (the file holds nothing)", "1:1"),
        (" \n\t\n", "the spec has no statements (the file holds nothing)", "1:1"),
        ("# only\n# comments\n", "no statements (the file holds only comments)", "2:11"),
        ("model m\ninput 3x32x32\n", "missing 'classes' and 'paths' statements", "2:14"),
    ],
)
def test_file_level_errors_are_located(text: str, message: str, where: str) -> None:
    with pytest.raises(PnasError) as info:
        compile_source(text, "t.pnas")
    assert any(message in d.message for d in info.value.diagnostics), str(info.value)
    for d in info.value.diagnostics:
        assert d.span is not None
        first = d.render(text).splitlines()[0]
        assert re.match(r"^t\.pnas:\d+:\d+: error: ", first), first
    hit = next(d for d in info.value.diagnostics if message in d.message)
    assert str(hit.span) == where


def test_empty_file_renders_without_an_excerpt() -> None:
    with pytest.raises(PnasError) as info:
        compile_source("", "t.pnas")
    assert str(info.value) == (
        "t.pnas:1:1: error: the spec has no statements (the file holds nothing)\n"
        "  hint: start with e.g. model mynet, input 3x32x32, classes 10, paths 2; "
        "then levels and a head"
    )


def test_render_counts_lines_as_the_parser_does() -> None:
    """U+2028, U+0085, form feeds and CR do not end a line for Lark: the excerpt must agree."""
    source = "# a\u2028b\x85c\x0cd\re\nout 0\n"
    d = Diagnostic("bad", "f.pnas", Span.point(2, 5))
    assert d.render(source).splitlines()[1:] == ["  out 0", "      ^"]


def test_render_blanks_control_characters() -> None:
    d = Diagnostic("bad", "f.pnas", Span.point(1, 3))
    assert d.render("a\x00b\tc\r\n").splitlines()[1:] == ["  a b c", "    ^"]


def test_render_cuts_long_lines_around_the_caret() -> None:
    line = "x" * 300 + "!" + "y" * 300
    d = Diagnostic("bad", "f.pnas", Span(line=1, column=301, end_line=1, end_column=400))
    _, text, caret = d.render(line).splitlines()
    assert text.startswith("  ...x") and text.endswith("y...")
    assert text[caret.index("^")] == "!"
    assert len(text) < 120 and len(caret) < 120


def test_byte_order_mark_and_crlf_are_read(tmp_path: Path) -> None:
    spec = (ROOT / "examples" / "tiny.pnas").read_text(encoding="utf-8")
    f = tmp_path / "bom.pnas"
    f.write_bytes(b"\xef\xbb\xbf" + spec.replace("\n", "\r\n").encode())
    from parnasc.ir.frontend import compile_file

    spec_, _ = compile_file(f)
    assert spec_.name == "tiny"
