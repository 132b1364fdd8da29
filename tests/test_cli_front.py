"""`parnasc fmt`, `parnasc check` and `parnasc emit`'s options through the installed command."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

RunCli = Callable[..., subprocess.CompletedProcess[str]]  # the `run_cli` fixture (conftest.py)
ROOT = Path(__file__).resolve().parent.parent
MESSY = "model m # name\ninput 3x32x32 classes 10\npaths 1\nlevel a { out 8 ops skip|conv(k=3) }\n"
CANONICAL = (  # fmt writes the language version first
    "pnas 1\nmodel m  # name\ninput 3x32x32\nclasses 10\npaths 1\n"
    "level a {\n  out 8\n  ops skip | conv(k=3)\n}\n"
)


def test_fmt_check_reports_and_changes_nothing(run_cli: RunCli, tmp_path: Path) -> None:
    messy, tidy = tmp_path / "messy.pnas", tmp_path / "tidy.pnas"
    messy.write_text(MESSY)
    tidy.write_text(CANONICAL)
    res = run_cli("fmt", "--check", "messy.pnas", "tidy.pnas", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr == "messy.pnas: would reformat\n"
    assert messy.read_text() == MESSY
    assert run_cli("fmt", "--check", "tidy.pnas", cwd=tmp_path).returncode == 0


def test_fmt_rewrites_in_place_then_check_passes(run_cli: RunCli, tmp_path: Path) -> None:
    f = tmp_path / "messy.pnas"
    f.write_text(MESSY)
    res = run_cli("fmt", str(f), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f.read_text() == CANONICAL
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left nothing behind
    res = run_cli("fmt", "--check", str(f), "specs/cifar.pnas", cwd=ROOT)
    assert res.returncode == 0, res.stderr


def test_fmt_syntax_error_is_a_user_error(run_cli: RunCli, tmp_path: Path) -> None:
    (tmp_path / "bad.pnas").write_text("model m\nlevel a {\n  otu 8\n}\n")
    res = run_cli("fmt", "bad.pnas", cwd=tmp_path)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("bad.pnas:3:3: error: unexpected 'otu' in level 'a'")
    assert "hint: did you mean 'out'?" in res.stderr
    assert (tmp_path / "bad.pnas").read_text() == "model m\nlevel a {\n  otu 8\n}\n"


def test_emit_takes_onnx_and_has_no_no_onnx(run_cli: RunCli, tmp_path: Path) -> None:
    """`--onnx` names the default (and only) format; `--no-onnx` is no option."""
    supernet = ROOT / "examples" / "tiny.pnas"  # emit refuses it after reading the options
    res = run_cli("emit", supernet, "--onnx", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith(f"parnasc: error: {supernet}: not a concrete spec")
    res = run_cli("emit", supernet, "--no-onnx", cwd=tmp_path)
    assert res.returncode == 1
    assert "No such option: --no-onnx" in res.stderr
