"""The built wheel holds the package with its one grammar file and works where it is installed."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_USE = """
import parnasc, parnasc.lang.parse as P
from parnasc.ir.frontend import compile_source
print(parnasc.__file__)
print(P.grammar_path())
spec, ir = compile_source(open(P.grammar_path().parents[2] / "CHECK.pnas").read(), "c.pnas")
print(spec.name, ir.paths)
"""


def test_wheel_ships_the_grammar_and_compiles_specs(tmp_path: Path) -> None:
    # Build offline with the venv's hatchling (a dev dependency), as pip would for an install.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("parnasc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.endswith(".lark")] == ["parnasc/lang/pnas.lark"]
    assert "parnasc/deploy/runtime.py" in names and not any(n.startswith("tests/") for n in names)
    # A pure wheel installs by unpacking it into site-packages: do that, and import from there.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    (site / "CHECK.pnas").write_text((ROOT / "examples" / "tiny.pnas").read_text())
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", _USE],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split("\n")
    assert out[0] == str(site / "parnasc" / "__init__.py")  # the wheel's copy, not the checkout
    assert out[1] == str(site / "parnasc" / "lang" / "pnas.lark")
    assert out[2] == "tiny 2"
