"""Fuzzing the front end: mutants of every spec in specs/ and examples/ either compile or fail
with located diagnostics, never with another exception, a hang or a blow-up of memory.

The mutations: token deletions, duplications, swaps and replacements, insertions of keywords,
punctuation, stray characters (non-ASCII, NUL, tabs, CR, line separators Lark does not count),
extreme numbers (0, -1, 1e308, 1e309, 2**40, 20 and 5000 digits), huge counts (`repeat
100000000`, `paths 1000000`, `input 3x100000x100000`) and deeply nested expressions, and
truncations at any character (and, through the CLI, at any byte). Every run draws the same
examples (`derandomize=True`) and writes no example database into the tree (`database=None`).
"""

from __future__ import annotations

import random
import re
import subprocess
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from parnasc.errors import PnasError, source_lines
from parnasc.ir.frontend import compile_source
from parnasc.lang.fmt import format_document
from parnasc.lang.parse import parse

RunCli = Callable[..., subprocess.CompletedProcess[str]]  # the `run_cli` fixture (conftest.py)
ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "specs").glob("*.pnas")) + sorted((ROOT / "examples").glob("*.pnas"))
TEXTS = [p.read_text(encoding="utf-8") for p in SOURCES]
FILE = "fuzz.pnas"
LOCATED = re.compile(r"^(?P<file>[^:\s]+\.pnas):(?P<line>\d+):(?P<col>\d+): error: ")
RAW = re.compile(r"\b(NAME|INT|FLOAT|SIZE|DIMS|RBRACE|LBRACE|VBAR|LPAR|RPAR|COMMA|\$END)\b")
FUZZ = settings(
    max_examples=800,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# A token: whitespace, a comment, a word, a number with its suffix, or one other character.
TOKEN = re.compile(r"\s+|#[^\n]*|[A-Za-z_]\w*|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\w*|.", re.S)
STRAY = ["\x00", "\t", "\r", "\r\n", "\x0b", "\x0c", "\x85", "\u2028", "\ufeff", "é", "→", "😀"]
EXTREME = [
    "0", "-1", "1e308", "1e309", "1e-400", "2.5", "1 / 3", "1 / 0", "99999999999999999999",
    "1099511627776", "100000", "100000000", "9" * 5000, "1" * 400 + ".5", "1e308 * 10",
    "99999999999999999999 * 99999999999999999999", "0x0x0", "1x1x1", "3x100000x100000",
    "99999999999999999999x1x1", "0B", "99999999999999999999GiB", "0.5B",
]  # fmt: skip
DEEP = [
    "-" * 150 + "1",
    "(" * 400 + "1" + ")" * 400,
    " + ".join(["1"] * 150),
    " * ".join(["2"] * 60),  # 59 operators: deep, but within the limit
    "1" + " / 3" * 120,
]
STATEMENTS = [
    "repeat 100000000 {", "repeat 100000 { level z { out 8 ops skip } }", "paths 1000000",
    "paths 64", "input 3x100000x100000", "out 1099511627776", "out 2 * 2 * 2 * 1099511627776",
    "stride 64", "classes 1000000", "level l1 { }", "head { }", "sync search concat",
    "path 64 ops skip", "path 0 ops skip", "const C = 1e308", "const classes = 3",
    "conv(k=999999, dilation=1000000)", "fc(out=1000000)", "maxpool(k=999999)",
    "dropout(p=0.9999)", "adam(lr=1e308)", "sgd()", "memory 1e308", "cores 1024",
    "seed 4294967296", "merge sum",
]  # fmt: skip
WORDS = [
    "{", "}", "(", ")", "|", ",", "=", "+", "-", "*", "/", ";", "x", "\n", "#",
    "model", "input", "classes", "paths", "target", "const", "stem", "level", "sync", "repeat",
    "head", "search", "out", "stride", "ops", "path", "merge", "conv", "sepconv", "skip", "gap",
    "fc", "k", "always", "none", "sum", "concat", "C",
]  # fmt: skip
PIECES = WORDS + STRAY + EXTREME + DEEP + STATEMENTS
EDITS = ("delete", "duplicate", "swap", "replace", "insert", "stray", "truncate")

Pick = Callable[[int], int]  # pick(n): a number in [0, n)


def mutate(text: str, pick: Pick, edits: int) -> str:
    """`edits` random edits of `text`, each choice made by `pick`."""
    tokens = TOKEN.findall(text)
    for _ in range(edits):
        if not tokens:
            tokens = [""]
        edit, i = EDITS[pick(len(EDITS))], pick(len(tokens))
        if edit == "delete":
            del tokens[i]
        elif edit == "duplicate":
            tokens.insert(i, tokens[i])
        elif edit == "swap":
            j = pick(len(tokens))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif edit == "replace":
            tokens[i] = PIECES[pick(len(PIECES))]
        elif edit == "insert":
            tokens.insert(i, " " + PIECES[pick(len(PIECES))] + " ")
        else:  # a stray character or a truncation, at any character
            flat = "".join(tokens)
            at = pick(len(flat) + 1)
            extra = STRAY[pick(len(STRAY))] if edit == "stray" else ""
            tokens = [flat[:at] + extra + (flat[at:] if edit == "stray" else "")]
    return "".join(tokens)


@st.composite
def mutants(draw: st.DrawFn) -> str:
    text = TEXTS[draw(st.integers(0, len(TEXTS) - 1))]
    edits = draw(st.integers(1, 4))
    return mutate(text, lambda n: draw(st.integers(0, n - 1)), edits)


def assert_located(exc: PnasError, text: str, file: str = FILE) -> None:
    """Every diagnostic renders as `file:line:col: error: ...` at a place inside `text`."""
    lines = source_lines(text)
    for d in exc.diagnostics:
        first = d.render(exc.source).split("\n")[0]
        m = LOCATED.match(first)
        assert m is not None and m["file"] == file, first
        line, col = int(m["line"]), int(m["col"])
        assert 1 <= line <= len(lines), first
        assert 1 <= col <= len(lines[line - 1]) + 1, first
        assert not RAW.search(d.message), d.message
    assert str(exc)


def compile_or_located_error(text: str) -> None:
    try:
        compile_source(text, FILE)
    except PnasError as exc:
        assert_located(exc, text)


def test_every_spec_is_a_seed() -> None:
    assert len(SOURCES) >= 10
    for text in TEXTS:
        compile_source(text, FILE)  # the seeds themselves are valid


@FUZZ
@given(mutants())
def test_mutants_compile_or_fail_located(text: str) -> None:
    note(repr(text))
    compile_or_located_error(text)


@FUZZ
@given(mutants())
def test_mutants_that_parse_format_round_trip(text: str) -> None:
    """fmt of anything that parses re-parses to the same tree and comments, and is a fixpoint."""
    note(repr(text))
    try:
        doc = parse(text, FILE)
    except PnasError as exc:
        assert_located(exc, text)
        return
    once = format_document(doc)
    again = parse(once, FILE)
    assert again.stmts == doc.stmts
    assert Counter(c.text for c in again.comments) == Counter(c.text for c in doc.comments)
    assert format_document(again) == once


@FUZZ
@given(st.sampled_from(TEXTS), st.data())
def test_truncated_specs_fail_located(text: str, data: st.DataObject) -> None:
    """A spec cut short anywhere, inside its leading comments included."""
    cut = text[: data.draw(st.integers(0, len(text) - 1), label="cut")]
    compile_or_located_error(cut)


# --- extreme values: rejected by range checks, with a span, without a blow-up ---------------

BASE = """model m
input {input}
classes 10
paths {paths}
{body}
head {{
  gap
  fc(out=classes)
}}
"""
LEVEL = "level a {{\n  out {out}\n  ops conv(k=3) | conv(k=5)\n}}"


def spec(input: str = "3x32x32", paths: str = "2", body: str = "", out: str = "8") -> str:
    return BASE.format(input=input, paths=paths, body=body or LEVEL.format(out=out))


EXTREMES = {
    "repeat_1e8": spec(body="repeat 100000000 {\n" + LEVEL.format(out=8) + "\n}"),
    "repeat_levels": spec(body="repeat 10000 {\n" + (LEVEL.format(out=8) + "\n") * 2 + "}"),
    "many_repeats": spec(
        paths="1", body=("repeat 10000 {\n" + LEVEL.format(out=8) + "\n}\n") * 100
    ),
    "blocks": spec(paths="64", body="repeat 10000 {\n" + LEVEL.format(out=8) + "\n}"),
    "paths_1e6": spec(paths="1000000"),
    "paths_20_digits": spec(paths="99999999999999999999"),
    "input_huge": spec(input="3x100000x100000"),
    "input_digits": spec(input="9" * 5000 + "x1x1"),
    "out_2_40": spec(out="1099511627776"),
    "out_product": spec(out="2 * 2 * 1099511627776 * 1099511627776"),
    "out_inf": spec(out="1e309"),
    "out_float_overflow": spec(out="1e308 * 1e308"),
    "out_5000_digits": spec(out="9" * 5000),
    "out_deep_neg": spec(out="-" * 5000 + "8"),
    "out_deep_sum": spec(out=" + ".join(["1"] * 5000)),
    "out_tiny_fraction": spec(out="1" + " / 99999999999999999999" * 20),
    "memory_digits": spec(body="target { memory " + "9" * 5000 + "GiB }\n" + LEVEL.format(out=8)),
    "kernel_huge": spec(body=LEVEL.format(out=8).replace("conv(k=5)", "conv(k=99999999999)")),
}


@pytest.mark.parametrize("name", sorted(EXTREMES))
def test_extreme_values_are_rejected_with_a_span(name: str) -> None:
    text = EXTREMES[name]
    parse("model warm\n")  # load the cached parser before measuring memory
    tracemalloc.start()
    try:
        with pytest.raises(PnasError) as info:
            compile_source(text, FILE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert_located(info.value, text)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB to reject {name}"


# --- the real command, on a handful of mutated files ----------------------------------------


def cli_cases(tmp_path: Path) -> list[Path]:
    """Ten mutants (fixed seeds), a file cut inside a UTF-8 character, an empty file and one with
    a byte-order mark and CRLF line ends."""
    files = []
    for seed in range(10):
        rng = random.Random(seed)
        text = mutate(TEXTS[seed % len(TEXTS)], rng.randrange, 1 + seed % 3)
        f = tmp_path / f"mutant{seed}.pnas"
        f.write_text(text, encoding="utf-8", newline="")
        files.append(f)
    cut = "# cut inside a character\nmodel café\n".encode()
    (tmp_path / "cut_utf8.pnas").write_bytes(cut[: cut.index("é".encode()) + 1])
    (tmp_path / "empty.pnas").write_bytes(b"")
    (tmp_path / "bom.pnas").write_bytes(b"\xef\xbb\xbf" + TEXTS[-1].replace("\n", "\r\n").encode())
    files += [tmp_path / n for n in ("cut_utf8.pnas", "empty.pnas", "bom.pnas")]
    return files


def assert_clean_cli(res: subprocess.CompletedProcess[str], names: set[str]) -> None:
    assert res.returncode in (0, 1), res.stderr
    assert "Traceback" not in res.stderr
    for line in res.stderr.splitlines():
        if ": error: " in line and not line.startswith(" "):
            m = LOCATED.match(line)
            assert m is not None and m["file"] in names, line


def test_cli_check_and_fmt_on_mutants(run_cli: RunCli, tmp_path: Path) -> None:
    files = cli_cases(tmp_path)
    names = {f.name for f in files}
    check = run_cli("check", *(f.name for f in files), cwd=tmp_path)
    assert_clean_cli(check, names)
    assert check.returncode == 1  # the empty file at least is an error
    assert "empty.pnas:1:1: error: " in check.stderr
    assert "cut_utf8.pnas:2:10: error: file is not UTF-8 text" in check.stderr
    assert "bom.pnas" not in check.stderr
    before = {f: f.read_bytes() for f in files}
    fmt = run_cli("fmt", "--check", *(f.name for f in files), cwd=tmp_path)
    assert_clean_cli(fmt, names)
    assert {f: f.read_bytes() for f in files} == before  # --check changes nothing
