"""The Python API: `import parnasc` stays light and lists the pipeline; every step returns a
dataclass and prints nothing, on a small real CIFAR-10 subset; examples/api.py runs."""

from __future__ import annotations

import dataclasses
import os
import pydoc
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import parnasc
from parnasc.errors import OptionError

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = Path(
    os.environ.get("PARNASC_CIFAR") or ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"
)
HEAVY = ("torch", "onnx", "onnxruntime", "matplotlib")
API = ("compile", "search", "derive", "retrain", "emit", "Runtime", "classify", "bench")

TINY = (ROOT / "examples" / "tiny.pnas").read_text()  # compiled as text: no file to reread
DATA: dict[str, Any] = {"data": ARCHIVE, "train_images": 200, "test_images": 100, "threads": 1}


def _python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_parnasc_loads_nothing_heavy() -> None:
    code = (
        "import sys, parnasc\n"
        "parnasc.compile, parnasc.search, parnasc.SearchResult, parnasc.Settings\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert _python(code).strip() == "[]"


def test_help_lists_the_api() -> None:
    assert set(API) <= set(parnasc.__all__) <= set(dir(parnasc))
    text = _python("import parnasc, pydoc; print(pydoc.plain(pydoc.render_doc(parnasc)))")
    for name in API:
        assert f"{name}(" in text, name
    assert "search(spec" in text and "-> SearchResult" in text
    assert pydoc.getdoc(parnasc).startswith("parnasc: a spec-to-model compiler")


def test_a_refused_option_is_one_line_before_any_work(tmp_path: Path) -> None:
    supernet = parnasc.compile("tiny.pnas", source=TINY)
    with pytest.raises(OptionError, match="--cost time: expected one of flops, latency"):
        parnasc.search(supernet, run_dir=tmp_path / "run", cost="time", **DATA)
    with pytest.raises(OptionError, match=r"--cores 1: tiny\.pnas has 2 paths"):
        parnasc.search(supernet, run_dir=tmp_path / "run", cores=1, **DATA)
    assert not (tmp_path / "run").exists()


def _is_dataclass_of(obj: object, cls: type) -> None:
    assert isinstance(obj, cls) and dataclasses.is_dataclass(obj)


def test_the_pipeline_returns_dataclasses_and_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found at {ARCHIVE} (set PARNASC_CIFAR to its path)")
    supernet = parnasc.compile("tiny.pnas", source=TINY)
    _is_dataclass_of(supernet, parnasc.Compiled)
    assert supernet.spec.name == "tiny" and supernet.path is None
    events: list[tuple[str, int, int]] = []
    run = tmp_path / "run"
    result = parnasc.search(
        supernet, run_dir=run, cores=2, epochs=1, warmup=0, batch=32,
        progress=lambda phase, epoch, batch, values: events.append((phase, epoch, batch)),
        **DATA,
    )  # fmt: skip
    _is_dataclass_of(result, parnasc.SearchResult)
    _is_dataclass_of(result.settings, parnasc.Settings)
    assert result.run_dir == run and not result.up_to_date
    assert set(result.choices) == {"l1:p1", "l1:p2", "l2:p1", "l2:p2", "l1:sync"}
    assert all(abs(sum(p) - 1) < 1e-5 for p in result.probabilities.values())
    assert 0 <= result.val_acc <= 1 and result.cost_kind == "flops" and result.cost > 0
    assert result.settings.epochs == 1 and result.settings.cores == 2
    assert result.derived.is_file() and (run / "result.json").is_file()
    assert events[0] == ("start", 0, 0) and events[-1][0] == "epoch-end"
    assert {e[0] for e in events[1:-1]} == {"search"}

    with pytest.raises(OptionError, match=r"made from tiny\.pnas, which is gone; pass SPEC"):
        parnasc.search(run_dir=run, resume=True)  # a spec given as text has no file to reread
    again = parnasc.search(supernet, run_dir=run, resume=True)  # complete: nothing runs
    assert again.up_to_date and again.choices == result.choices
    assert again.probabilities == result.probabilities and again.settings == result.settings
    with pytest.raises(OptionError, match="a run is already there"):
        parnasc.search(supernet, run_dir=run, cores=2, **DATA)

    derived = parnasc.derive(supernet, result.probabilities, settings=result.settings)
    _is_dataclass_of(derived, parnasc.Derived)
    assert derived.choices == result.choices
    assert derived.text == result.derived.read_text()
    assert derived.concrete.spec.concrete
    with pytest.raises(ValueError, match="every decision"):
        parnasc.derive(supernet, {"l1:p1": [1.0, 0.0]})

    trained = parnasc.retrain(result.derived, epochs=1, **DATA)
    _is_dataclass_of(trained, parnasc.TrainResult)
    assert trained.out_dir == run and trained.model.is_file() and trained.epochs == 1
    assert 0 <= trained.test_acc <= 1

    emitted = parnasc.emit(run, tmp_path / "emit", measure=False)
    _is_dataclass_of(emitted, parnasc.EmitResult)
    assert emitted.model.is_file() and emitted.schedule.is_file() and emitted.cores == 2
    assert emitted.weights == str(run / "model.pt") and emitted.expected_ms > 0

    from PIL import Image

    from parnasc.data.loaders import load_data

    images = load_data(ARCHIVE, None, 10, seed=0).test_x[:2]
    files = []
    for i, img in enumerate(images):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(img.transpose(1, 2, 0)).save(files[-1])
    predictions = parnasc.classify(emitted.model_dir, files)
    assert [p.image for p in predictions] == files
    for p in predictions:
        _is_dataclass_of(p, parnasc.Prediction)
        assert 0 <= p.index < 10 and p.label and 0 < p.probability <= 1
    with parnasc.Runtime(emitted.model_dir, adapt=False) as rt:
        x = np.zeros((1, 3, 32, 32), np.float32)
        assert rt.run(x).shape == (1, 10)

    timed = parnasc.bench(emitted.model_dir, reps=100)
    _is_dataclass_of(timed, parnasc.BenchResult)
    assert [r["engine"] for r in timed.rows][-1] == "parnasc" and timed.bound is None
    assert timed.measured_ms > 0 and timed.machine
    got = capsys.readouterr()
    assert got.out == "" and got.err == ""


def test_example_runs(tmp_path: Path) -> None:
    """examples/api.py: search -> retrain -> emit -> run on 1,000 real images."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "api.py"), "--data", str(ARCHIVE),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,  # a hang guard, not a timing
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "compiled tiny: 2 paths, levels l1, l2"
    assert any(ln.startswith("search: validation accuracy ") for ln in lines)
    assert any(ln.startswith("emit: ") for ln in lines)
    assert lines[-1].startswith("run: ") and "test images right" in lines[-1]
    assert (tmp_path / "run" / "result.json").is_file()
    assert (tmp_path / "emit" / "schedule.json").is_file()
