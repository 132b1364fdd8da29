"""`parnasc.viz.show.draw`: a picture of every spec, in SVG, PNG and PDF."""

from __future__ import annotations

import functools
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from parnasc.ir.frontend import compile_file, compile_source
from parnasc.ir.graph import IR
from parnasc.viz.show import MAX_LEVELS, draw

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.pnas"))


@functools.cache
def compiled(spec: Path) -> IR:
    return compile_file(spec)[1]


def svg_text(path: Path) -> list[str]:
    """Every text run of an SVG (text stays text: svg.fonttype 'none')."""
    root = ET.parse(path).getroot()
    return [t.strip() for el in root.iter() for t in (el.text, el.tail) if t and t.strip()]


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_svg_and_png(spec: Path, tmp_path: Path) -> None:
    ir = compiled(spec)
    svg, png = tmp_path / "net.svg", tmp_path / "net.png"
    draw(ir, svg)
    draw(ir, png)
    assert svg.stat().st_size > 1000 and png.stat().st_size > 1000
    texts = svg_text(svg)
    for lv in ir.levels:
        assert lv in texts, f"level {lv} is not labelled"
    assert any(ir.meta["model"] in t for t in texts)
    with Image.open(png) as im:
        im.load()
        w, h = im.size
    assert 600 <= w <= 8000 and 600 <= h <= 12000, (w, h)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.png", "net.svg"]  # no temp files


def test_pdf_and_determinism(tmp_path: Path) -> None:
    ir = compiled(ROOT / "specs" / "cifar.pnas")
    draw(ir, tmp_path / "a.pdf")
    assert (tmp_path / "a.pdf").read_bytes().startswith(b"%PDF")
    draw(ir, tmp_path / "a.svg")
    draw(ir, tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported picture format"):
        draw(compiled(ROOT / "specs" / "cifar.pnas"), tmp_path / "net.jpg")
    assert not list(tmp_path.iterdir())


def test_long_supernet_is_abbreviated(tmp_path: Path) -> None:
    body = "\n".join(f"level l{i} {{ out 8 ops conv(k=3) | conv(k=5) }} sync search concat"
                     for i in range(1, 61))  # fmt: skip
    text = f"model long input 3x8x8 classes 2 paths 2 {body} head {{ gap fc(out=classes) }}"
    ir = compile_source(text)[1]
    draw(ir, tmp_path / "long.svg")
    texts = svg_text(tmp_path / "long.svg")
    shown = [lv for lv in ir.levels if lv in texts]
    assert len(shown) < MAX_LEVELS and "l1" in shown and "l60" in shown
    assert f"{60 - len(shown)} levels" in texts


def test_check_does_not_import_matplotlib_or_torch() -> None:
    code = (
        "import sys, parnasc.cli\n"
        "from parnasc.ir.frontend import compile_file\n"
        f"compile_file({str(ROOT / 'specs' / 'cifar.pnas')!r})\n"
        "heavy = sorted(m for m in ('matplotlib', 'torch', 'onnx') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_show_command(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cifar.png"
    r = run_cli("show", ROOT / "specs" / "cifar.pnas", "-o", out)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 1000
