"""The parser: grammar copies, syntax tree, spans, comments, syntax errors in words, spec_hash."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parnasc.errors import PnasError
from parnasc.ir.frontend import compile_source
from parnasc.lang import parse as P
from parnasc.lang import syntax as S
from parnasc.lang.fmt import format_document
from parnasc.lang.spec import resolve, spec_hash

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT / "specs" / "cifar.pnas"
MINI = """model m
input 3x32x32
classes 10
paths 2
level a {
  out 8
  ops conv(k=3) | conv(k=5)
}
sync search
head {
  gap
  fc(out=classes)
}
"""


# --- grammar ---------------------------------------------------------------------------------


def test_one_grammar_file_shipped_in_the_package() -> None:
    assert P.grammar_path() == ROOT / "parnasc" / "lang" / "pnas.lark"
    lark = [p for p in ROOT.rglob("*.lark") if ".venv" not in p.parts]
    assert lark == [P.grammar_path()]


# --- syntax tree -------------------------------------------------------------------------------


def test_parse_cifar() -> None:
    doc = P.parse_file(CIFAR)
    kinds = [type(s).__name__ for s in doc.stmts]
    assert kinds[:4] == ["Model", "Input", "Classes", "Paths"]
    assert kinds.count("Level") == 4 and kinds.count("Sync") == 4
    assert doc.file == str(CIFAR)
    assert all(c.text.startswith("#") for c in doc.comments)
    assert doc.version is not None and doc.version.number == 1  # `pnas 1`, line 1
    assert doc.comments[0].own_line and doc.comments[0].line == 2


def test_sync_without_combiner() -> None:
    syncs = [s for s in P.parse(MINI).stmts if isinstance(s, S.Sync)]
    assert syncs == [S.Sync("search", None)]


def test_tree_shapes_and_spans() -> None:
    doc = P.parse("const w = -(2 + 3) * 4 / x\nsearch { weights sgd(lr=1e-05) memory 8MiB }\n")
    const, search = doc.stmts
    assert isinstance(const, S.Const) and const.name_span is not None
    assert const.value == S.BinOp(
        "/",
        S.BinOp("*", S.Neg(S.BinOp("+", S.Num(2), S.Num(3))), S.Num(4)),
        S.Ref("x"),
    )
    assert (const.name_span.line, const.name_span.column) == (1, 7)
    assert isinstance(search, S.Search)
    weights, memory = search.settings
    assert weights.value == S.Call("sgd", (S.Arg("lr", S.Num(1e-05)),))
    assert memory.value == S.Size("8MiB")
    assert memory.value.span is not None and memory.value.span.column == 39
    assert isinstance(weights.value, S.Call) and weights.value.name_span is not None
    assert weights.value.name_span.column == 18


def test_spans_do_not_affect_equality() -> None:
    a = P.parse("model m\nclasses 10\n")
    b = P.parse("\n\n   model    m   classes\n10")
    assert a == b
    assert a.stmts[0].span != b.stmts[0].span


def test_comments_are_collected_with_position() -> None:
    doc = P.parse("# top\nmodel m  # trailing\n  # indented\n")
    assert [(c.text, c.line, c.own_line) for c in doc.comments] == [
        ("# top", 1, True),
        ("# trailing", 2, False),
        ("# indented", 3, True),
    ]


def test_comments_belong_to_their_parse() -> None:
    """Parses in parallel threads, and a parse that fails between two, keep their own comments."""
    texts = [f"model m{i}  # c{i}\n" + "# x\n" * (i % 5) for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        docs = list(pool.map(P.parse, texts))
    for i, doc in enumerate(docs):
        assert [c.text for c in doc.comments] == [f"# c{i}"] + ["# x"] * (i % 5)
    with pytest.raises(PnasError):
        P.parse("model # half\n{")
    assert [c.text for c in P.parse("# only\n").comments] == ["# only"]


def test_parser_tables_are_cached_per_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built parser is cached in the user's cache folder, never beside the grammar; where
    that folder cannot be made, the parser is built without a cache."""
    monkeypatch.setenv("PARNASC_CACHE", str(tmp_path / "cache"))
    grammar = P.grammar_path().read_text(encoding="utf-8")
    where = P._parser_cache(grammar)
    assert isinstance(where, str) and Path(where).parent == tmp_path / "cache" / "lark"
    assert P._parser_cache(grammar + "\n") != where  # another grammar, another file
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PARNASC_CACHE", str(tmp_path / "file"))
    assert P._parser_cache(grammar) is False


def test_keywords_are_names_where_a_name_is_expected() -> None:
    doc = P.parse("level out { out 8 ops conv(out=3, stride=1) }\nhead { fc(out=classes) }\n")
    level = doc.stmts[0]
    assert isinstance(level, S.Level) and level.name == "out"


# --- syntax errors -----------------------------------------------------------------------------


def syntax_error(text: str) -> str:
    with pytest.raises(PnasError) as info:
        P.parse(text, "t.pnas")
    (diag,) = info.value.diagnostics
    assert diag.span is not None
    return f"{diag.span.line}:{diag.span.column}: {diag.message} | {diag.hint}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model", "1:6: unexpected end of file; expected a model name | None"),
        ("model\ninput 3x32x32", "1:1: 'model' needs a model name"),
        ("sync\nlevel a {}", "1:1: 'sync' needs a sync mode (always, search or none)"),
        ("level a { out }", "1:15: unexpected '}' in level 'a'; expected a number or constant"),
        ("paths 2 +", "1:10: unexpected end of file; expected a number or constant name"),
        ("paths 2 @", "1:9: unexpected character '@'; expected a new statement or end of file"),
        ("target { cores }", "1:16: unexpected '}' in the target block; expected a value"),
        ("search { 5 }", "1:10: unexpected '5' in the search block; expected a setting name or"),
        ("head { gap fc(out=3,) }", "1:21: unexpected ')' in the head block; expected a parameter"),
        ("stem { conv ops }", "1:13: unexpected 'ops' in the stem block; expected an operation"),
        ("const = 3", "1:7: unexpected '='; expected a constant name"),
        ("repeat 2 { levle a {} }", "did you mean 'level'?"),
        ("level a { out 8 stirde 2 }", "did you mean 'stride'?"),
        ("level a { ops conv(k=3), conv }", "separate the candidate operations with '|'"),
        ("head { fc(out=(3 + 2) }", "the '(' on line 1 column 10 has no matching ')'"),
        ("target { cores 2\nlevel x {}", "is a '}' missing before 'level' on line 2?"),
        ("model m}", "1:8: unexpected '}'; expected a new statement or end of file"),
        ("sync search concat sum", "1:20: unexpected 'sum'"),
        ("level a {\n  out 8\n\n\n", "2:8: unexpected end of file in level 'a'"),
    ],
)
def test_syntax_error_wording(text: str, expected: str) -> None:
    assert expected in syntax_error(text)


RAW = re.compile(r"\b(NAME|INT|FLOAT|SIZE|DIMS|RBRACE|LBRACE|VBAR|LPAR|RPAR|COMMA|\$END)\b")


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples on every run and machine
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data())
def test_damaged_specs_fail_cleanly(data: st.DataObject) -> None:
    """Delete, insert or swap a piece of a valid spec: only ever a located, worded PnasError."""
    text = CIFAR.read_text()
    tokens = re.findall(r"\s+|[A-Za-z_]\w*|\d+(?:\.\d+)?\w*|.", text)
    i = data.draw(st.integers(0, len(tokens) - 1))
    edit = data.draw(st.sampled_from(["delete", "insert", "replace"]))
    piece = data.draw(
        st.sampled_from(
            [
                "{",
                "}",
                "(",
                ")",
                "|",
                ",",
                "=",
                "level",
                "out",
                "7",
                "x",
                ";",
                "sync",
                "-",
                "1e-3",
                "8MiB",
                "\n",
                "head",
            ]
        )
    )
    if edit == "delete":
        tokens[i] = ""
    elif edit == "insert":
        tokens.insert(i, " " + piece + " ")
    else:
        tokens[i] = piece
    bad = "".join(tokens)
    try:
        compile_source(bad, "t.pnas")
    except PnasError as exc:
        lines = bad.splitlines()
        for d in exc.diagnostics:
            assert not RAW.search(d.message), d.message
            assert d.span is not None, d.message  # every diagnostic names its line
            assert 1 <= d.span.line <= max(1, len(lines))
        assert str(exc)  # renders


# --- spec_hash --------------------------------------------------------------------------------


def test_spec_hash_ignores_formatting_and_comments() -> None:
    text = CIFAR.read_text()
    messy = re.sub(r"\n\s*\n", "\n", text)  # drop blank lines
    messy = messy.replace("  ", "\t").replace("conv(k=3) | conv(k=5)", "conv( k=3 )|conv(k=5) # x")
    assert P.parse(messy).stmts == P.parse(text).stmts
    formatted = format_document(P.parse(messy))
    base = spec_hash(text)
    assert spec_hash(messy) == base
    assert spec_hash(formatted) == base
    assert resolve(P.parse(formatted)).spec_hash == resolve(P.parse(text)).spec_hash == base


def test_spec_hash_sees_meaning() -> None:
    text = CIFAR.read_text()
    assert "\n  epochs 20\n" in text  # a replace that finds nothing would prove nothing
    assert spec_hash(text.replace("\n  epochs 20\n", "\n  epochs 21\n")) != spec_hash(text)
    assert spec_hash(text.replace("conv(k=3) | conv(k=5)", "conv(k=5) | conv(k=3)")) != spec_hash(
        text
    )


def test_fractions_in_values() -> None:
    spec, _ = compile_source(MINI.replace("out 8", "out 16/2") + "search { alpha 1/4 }\n")
    assert spec.levels[0].out == 8
    assert spec.search.alpha == 0.25


# --- limits checked on the tree -----------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda n: "-" * n + "8", lambda n: " + ".join(["1"] * (n + 1))])
def test_expression_depth_limit(make: Any) -> None:
    """MAX_EXPR_DEPTH operators deep parse, format and resolve; one more is a located error
    (not a RecursionError from the transformer, the resolver or fmt)."""
    ok = MINI.replace("out 8", f"out {make(P.MAX_EXPR_DEPTH)}")
    doc = P.parse(ok)
    assert P.parse(format_document(doc)).stmts == doc.stmts
    spec, _ = compile_source(ok)
    assert spec.levels[0].out in (8, P.MAX_EXPR_DEPTH + 1)
    with pytest.raises(PnasError) as info:
        P.parse(MINI.replace("out 8", f"out {make(P.MAX_EXPR_DEPTH + 1)}"), "t.pnas")
    (d,) = info.value.diagnostics
    assert d.message == f"expression nested more than {P.MAX_EXPR_DEPTH} operators deep"
    assert d.span is not None and (d.span.line, d.span.column) == (6, 7)


def test_parentheses_alone_add_no_depth() -> None:
    doc = P.parse(MINI.replace("out 8", "out " + "(" * 1000 + "8" + ")" * 1000))
    assert P.parse(format_document(doc)).stmts == doc.stmts


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1e309", "number too large (beyond 1.8e308)"),  # read as inf, printed back as a name
        ("9" * (P.MAX_DIGITS + 1), f"number too long: more than {P.MAX_DIGITS} digits"),
    ],
)
def test_unreadable_numbers_are_located(value: str, message: str) -> None:
    with pytest.raises(PnasError) as info:
        P.parse(MINI.replace("out 8", f"out {value}"), "t.pnas")
    (d,) = info.value.diagnostics
    assert d.message == message
    assert d.span is not None and (d.span.line, d.span.column) == (6, 7)
    P.parse(MINI.replace("out 8", "out " + "9" * P.MAX_DIGITS))  # the longest that is read
