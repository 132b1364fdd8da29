"""The formatter: canonical output, comments kept, idempotent, and parse(fmt(x)) == parse(x)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parnasc.lang import parse as P
from parnasc.lang import syntax as S
from parnasc.lang.fmt import canonical_text, fmt_expr, format_document

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.pnas")) + sorted((ROOT / "examples").glob("*.pnas"))
FAST = settings(  # derandomized: the same examples on every run and machine
    max_examples=80,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def fmt(text: str) -> str:
    return format_document(P.parse(text))


def comment_texts(text: str) -> Counter[str]:
    return Counter(c.text for c in P.parse(text).comments)


def assert_fmt_sound(text: str) -> str:
    """fmt keeps the tree and every comment, and is idempotent; returns fmt(text)."""
    once = fmt(text)
    assert fmt(once) == once
    assert P.parse(once).stmts == P.parse(text).stmts
    assert comment_texts(once) == comment_texts(text)
    return once


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_specs_format_soundly(spec: Path) -> None:
    text = spec.read_text()
    assert assert_fmt_sound(text) == text  # the checked-in files are in canonical format


def test_cifar_spec_is_canonical() -> None:
    text = (ROOT / "specs" / "cifar.pnas").read_text()
    assert fmt(text) == text


MESSY = [
    # trailing comments everywhere, comments before '}', several blank lines
    """# header

# second header
model   m   # the name
input 3x32x32
classes 10
paths 2 # two paths
const w = (8 * 2)   # width
# before target
target { cores 2 # two
  memory 8MiB
  # before close
}
stem { conv(k=5,out=8) }


level l1 { out w ops conv(k=3)|conv( k=5 ) } # after block
sync search concat
repeat 2 {
  # in repeat
  level b { out 16
    # inside b
    ops conv(k=3) # c1
      | conv(k=5) # c2
  stride 2 }
  sync always   # after sync
}
head {
  merge concat gap
  fc(out=classes)
  # before head close
}
search { weights sgd() alpha 1/4 beta 1e-05 }
# trailing end
""",
    # everything on one line, comment at the very end without a newline
    "model m input 3x32x32 classes 10 paths 1 level a { out 8 ops skip } head { gap } # end",
    # comments only, and comments inside expressions spread over lines
    "# only a comment\n\n\n# another\n",
    "classes 10 +\n# in the middle\n  3 # after\nconst x = -(-1)\n",
    # a comment right after '{' and one on the closing line
    "level a { # open\n  out 8\n  ops conv(k=3)\n} # close\n",
    # tabs and CRLF-free odd spacing, a repeat with a comment before its '}'
    "repeat\t2\t{\n\tlevel x {out 1 ops skip}\n\t# end of repeat\n\t}\n",
    "",
]


@pytest.mark.parametrize("text", MESSY)
def test_messy_inputs(text: str) -> None:
    assert_fmt_sound(text)


def test_messy_canonical_form() -> None:
    assert (
        fmt(MESSY[0])
        == """pnas 1
# header

# second header
model m  # the name
input 3x32x32
classes 10
paths 2  # two paths
const w = 8 * 2  # width
# before target
target {
  cores 2  # two
  memory 8MiB
  # before close
}
stem {
  conv(k=5, out=8)
}

level l1 {
  out w
  ops conv(k=3) | conv(k=5)
}  # after block
sync search concat
repeat 2 {
  # in repeat
  level b {
    out 16
    # inside b
    # c1
    # c2
    ops conv(k=3) | conv(k=5)
    stride 2
  }
  sync always  # after sync
}
head {
  merge concat
  gap
  fc(out=classes)
  # before head close
}
search {
  weights sgd()
  alpha 1 / 4
  beta 1e-05
}
# trailing end
"""
    )


def test_call_without_arguments_keeps_parentheses_in_values() -> None:
    text = "search { weights sgd() }\nstem { conv() }\n"
    out = fmt(text)
    assert "weights sgd()" in out and "  conv\n" in out
    assert P.parse(out).stmts == P.parse(text).stmts


@pytest.mark.parametrize(
    ("src", "printed"),
    [
        ("(1 + 2) * 3", "(1 + 2) * 3"),
        ("1 + (2 * 3)", "1 + 2 * 3"),
        ("1 - (2 - 3)", "1 - (2 - 3)"),
        ("(1 - 2) - 3", "1 - 2 - 3"),
        ("8 / (4 / 2)", "8 / (4 / 2)"),
        ("-(1 + 2)", "-(1 + 2)"),
        ("- -3", "--3"),
        ("2 - -x", "2 - -x"),
        ("3e-4", "0.0003"),
        ("1E5", "100000.0"),
    ],
)
def test_expression_printing(src: str, printed: str) -> None:
    (const,) = P.parse(f"const c = {src}").stmts
    assert isinstance(const, S.Const)
    assert fmt_expr(const.value) == printed


# --- random syntax trees ------------------------------------------------------------------------

# Names that are not keywords, including ones that look like numbers, sizes or settings words.
NAMES = st.sampled_from(
    ["a", "w", "x_1", "_", "e5", "E", "inf", "nan", "MiB", "x3x3", "conv", "sum", "sgd", "lr"]
)
INTS = st.integers(0, 10**9)
FLOATS = st.floats(0, 1e12, allow_nan=False, allow_infinity=False).map(abs)
NUMS = st.one_of(INTS, FLOATS).map(S.Num)


def exprs() -> st.SearchStrategy[S.Expr]:
    return st.recursive(
        st.one_of(NUMS, NAMES.map(S.Ref)),
        lambda inner: st.one_of(
            st.builds(S.BinOp, st.sampled_from("+-*/"), inner, inner),
            st.builds(S.Neg, inner),
        ),
        max_leaves=5,
    )


SIZES = st.builds(
    lambda n, frac, unit: S.Size(f"{n}{frac}{unit}"),
    st.integers(0, 4096),
    st.sampled_from(["", ".5", ".25"]),
    st.sampled_from(["B", "KB", "KiB", "MB", "MiB", "GB", "GiB"]),
)


def values() -> st.SearchStrategy[S.Value]:
    def calls(inner: st.SearchStrategy[S.Value]) -> st.SearchStrategy[S.Value]:
        args = st.lists(st.builds(S.Arg, NAMES, inner), max_size=3).map(tuple)
        return st.builds(S.Call, NAMES, args)

    return st.recursive(st.one_of(exprs(), SIZES), calls, max_leaves=4)


OPS = st.builds(S.Call, NAMES, st.lists(st.builds(S.Arg, NAMES, values()), max_size=3).map(tuple))
OPLIST = st.lists(OPS, min_size=1, max_size=3).map(tuple)
SETTINGS = st.lists(st.builds(S.Setting, NAMES, values()), max_size=4).map(tuple)
LEVEL_ITEMS = st.one_of(
    st.builds(S.Out, exprs()),
    st.builds(S.Stride, exprs()),
    st.builds(S.Ops, OPLIST),
    st.builds(S.PathOps, exprs(), OPLIST),
)
LEVELS = st.builds(S.Level, NAMES, st.lists(LEVEL_ITEMS, max_size=4).map(tuple))
SYNCS = st.builds(S.Sync, NAMES, st.one_of(st.none(), NAMES))
DIM = st.integers(0, 512)
STMTS = st.one_of(
    st.builds(S.Model, NAMES),
    st.builds(S.Input, DIM, DIM, DIM),
    st.builds(S.Classes, exprs()),
    st.builds(S.Paths, exprs()),
    st.builds(S.Target, SETTINGS),
    st.builds(S.Const, NAMES, exprs()),
    st.builds(S.Stem, st.lists(OPS, max_size=3).map(tuple)),
    LEVELS,
    SYNCS,
    st.builds(S.Repeat, exprs(), st.lists(st.one_of(LEVELS, SYNCS), max_size=3).map(tuple)),
    st.builds(S.Head, st.lists(st.one_of(st.builds(S.Merge, NAMES), OPS), max_size=4).map(tuple)),
    st.builds(S.Search, SETTINGS),
)
DOCS = st.lists(STMTS, max_size=6).map(tuple)


@FAST
@given(stmts=DOCS)
def test_round_trip_random_trees(stmts: tuple[S.Stmt, ...]) -> None:
    text = format_document(S.Document(stmts))
    assert text == ("pnas 1\n" if stmts else "") + canonical_text(stmts)  # the version first
    assert P.parse(text).stmts == stmts
    assert fmt(text) == text


@FAST
@given(stmts=DOCS, data=st.data())
def test_random_comments_and_blank_lines_are_kept(
    stmts: tuple[S.Stmt, ...], data: st.DataObject
) -> None:
    """Sprinkle comments (own-line and trailing) and blank lines into canonical text."""
    out: list[str] = []
    for k, line in enumerate(canonical_text(stmts).splitlines()):
        indent = line[: len(line) - len(line.lstrip())]
        if data.draw(st.booleans()):
            out.append("")
        if data.draw(st.booleans()):
            out.append(f"{indent}# above {k}")
        trailing = data.draw(st.booleans())
        out.append(line + (f"  # after {k}" if trailing else ""))
    if data.draw(st.booleans()):
        out.append("# at the end")
    text = "\n".join(out) + "\n"
    once = assert_fmt_sound(text)
    assert P.parse(once).stmts == stmts


def test_line_ends_lark_does_not_count_keep_fmt_idempotent() -> None:
    """U+0085 and U+2028 inside a comment are not line ends for the parser, nor for fmt's blank
    lines (str.splitlines counted them and moved every later blank line)."""
    text = "pnas 1\n# a\x85b\u2028c\n\nmodel m  # x\n\ninput 3x32x32\n"
    once = assert_fmt_sound(text)
    assert once == text
